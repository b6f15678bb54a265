//! A bound on a config's nesting depth, checked before any parser sees the text.
//!
//! Why: libyaml (the scanner under serde_norway) tokenises the whole document before serde's
//! recursion limit applies, and for every token it walks its list of possible simple keys, which
//! holds one entry per open flow collection. `[[[…]]]` n levels deep therefore costs n² steps: 60 000
//! levels took 29 s and 100 000 took 92 s here before "recursion limit exceeded". serde_json is
//! linear and stops at 128, but a file without a `.json` name also goes to the YAML parser.
//!
//! How: one pass over the bytes that follows libyaml's token rules (quoted and plain scalars,
//! comments, flow indicators, block scalars, anchors, tags, document markers, the Unicode line
//! breaks). Where the right reading depends on state this pass does not keep (the block
//! indentation that decides whether a plain scalar continues on the next line or where a block
//! scalar ends, which characters a tag takes) it follows every reading at once: a small set of
//! scanner modes, each holding the deepest flow level any reading in that mode can have. So the
//! flow level it reports is never below libyaml's (`estimate_is_never_below_libyaml` checks this
//! against libyaml itself), and JSON, whose strings and brackets follow the same rules, is covered
//! too. Block nesting is bounded from the indentation: collections nested in block style start at
//! strictly increasing columns, at most two per column (a sequence may sit at its mapping's column),
//! plus one per `- ` / `? ` indicator on the line; that bound is added to the flow level.
//!
//! The cost is a few operations per byte and the memory is constant.

use crate::{Error, Result};

/// Deepest nesting accepted, as estimated here. coremltools' layout nests four levels (document,
/// `op_type_configs`, entry, `n_m_ratio` list); both parsers refuse more than 128 on their own.
pub const MAX_CONFIG_DEPTH: u32 = 128;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Between tokens: whitespace, or the start of the next token.
    Token,
    /// Inside a plain scalar.
    Plain,
    /// After blanks inside a plain scalar, on the same line.
    PlainGap,
    /// After a line break inside a plain scalar.
    PlainGapBreak,
    Single,
    /// The second quote of `''` inside a single-quoted scalar.
    SingleQuoteSkip,
    Double,
    /// The character after a backslash in a double-quoted scalar.
    DoubleEscape,
    Comment,
    /// The rest of the `|` / `>` line.
    BlockHeader,
    /// A line of a block scalar's content.
    BlockContent,
    Anchor,
    Tag,
    /// The rest of `---` / `...`.
    Skip2,
    Skip1,
}

const MODES: usize = 15;
const SLOTS: usize = MODES * 2;
const NONE: u32 = u32::MAX;

/// The deepest flow level per (mode, in flow collection) and the list of occupied slots.
struct States {
    depth: [u32; SLOTS],
    live: [u8; SLOTS],
    len: usize,
}

impl States {
    fn new() -> Self {
        States {
            depth: [NONE; SLOTS],
            live: [0; SLOTS],
            len: 0,
        }
    }

    fn clear(&mut self) {
        for &s in &self.live[..self.len] {
            self.depth[s as usize] = NONE;
        }
        self.len = 0;
    }

    fn emit(&mut self, mode: Mode, depth: u32) {
        let slot = mode as usize * 2 + usize::from(depth > 0);
        if self.depth[slot] == NONE {
            self.live[self.len] = slot as u8;
            self.len += 1;
            self.depth[slot] = depth;
        } else if depth > self.depth[slot] {
            self.depth[slot] = depth;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Mode, u32)> + '_ {
        self.live[..self.len].iter().map(|&s| {
            const ALL: [Mode; MODES] = [
                Mode::Token,
                Mode::Plain,
                Mode::PlainGap,
                Mode::PlainGapBreak,
                Mode::Single,
                Mode::SingleQuoteSkip,
                Mode::Double,
                Mode::DoubleEscape,
                Mode::Comment,
                Mode::BlockHeader,
                Mode::BlockContent,
                Mode::Anchor,
                Mode::Tag,
                Mode::Skip2,
                Mode::Skip1,
            ];
            (ALL[s as usize / 2], self.depth[s as usize])
        })
    }
}

/// One character as the scanner sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Byte(u8),
    /// `\n`, `\r`, `\r\n`, NEL, LS or PS: all line breaks to libyaml.
    Break,
    /// U+FEFF, which libyaml skips at the start of a line.
    Bom,
}

fn unit_at(b: &[u8], i: usize) -> (Unit, usize) {
    match b[i] {
        b'\r' if b.get(i + 1) == Some(&b'\n') => (Unit::Break, 2),
        b'\r' | b'\n' => (Unit::Break, 1),
        0xC2 if b.get(i + 1) == Some(&0x85) => (Unit::Break, 2),
        0xE2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xA8 | 0xA9)) => (Unit::Break, 3),
        0xEF if b.get(i + 1) == Some(&0xBB) && b.get(i + 2) == Some(&0xBF) => (Unit::Bom, 3),
        x => (Unit::Byte(x), 1),
    }
}

/// libyaml's `IS_BLANKZ`: blank, line break, NUL or end of input.
fn blankz_at(b: &[u8], i: usize) -> bool {
    match b.get(i) {
        None | Some(b' ' | b'\t' | b'\r' | b'\n' | 0) => true,
        Some(_) => matches!(unit_at(b, i).0, Unit::Break),
    }
}

/// Characters libyaml takes into a tag (`yaml_parser_scan_tag_uri` and the `!<…>` brackets),
/// except `,` `[` `]`, which it takes only in some tags.
fn is_tag_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_;/?:@&=+$.%!~*'()<>".contains(&b)
}

/// What the scan found: the deepest flow level and the deepest estimated nesting, with where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    pub max_flow: u32,
    pub max_total: u32,
    /// 1-based line and column (in bytes) where `max_total` first exceeded the limit, if it did.
    pub exceeded_at: Option<(usize, usize)>,
}

struct Scanner<'a> {
    bytes: &'a [u8],
    /// Index of the current unit and of the one after it.
    at: usize,
    next_at: usize,
    column: usize,
    /// A `- ` or `? ` block indicator was read in block context.
    block_indicator: bool,
}

impl Scanner<'_> {
    fn byte_after(&self) -> Option<u8> {
        self.bytes.get(self.next_at).copied()
    }

    fn blank_after(&self) -> bool {
        blankz_at(self.bytes, self.next_at)
    }

    fn document_marker(&self) -> bool {
        let b = self.bytes;
        let i = self.at;
        self.column == 0 && (b[i..].starts_with(b"---") || b[i..].starts_with(b"...")) && blankz_at(b, i + 3)
    }

    fn step(&mut self, mode: Mode, d: u32, u: Unit, out: &mut States) {
        let flow = d > 0;
        match mode {
            Mode::Token => match u {
                Unit::Break => out.emit(Mode::Token, d),
                Unit::Bom if self.column == 0 => out.emit(Mode::Token, d),
                Unit::Bom => out.emit(Mode::Plain, d),
                Unit::Byte(b) => match b {
                    b' ' | b'\t' => out.emit(Mode::Token, d),
                    b'#' => out.emit(Mode::Comment, d),
                    b'-' | b'.' if self.document_marker() => out.emit(Mode::Skip2, d),
                    // A directive: its own line, nothing in it opens a collection.
                    b'%' if self.column == 0 => out.emit(Mode::Comment, d),
                    b'[' | b'{' => out.emit(Mode::Token, d + 1),
                    b']' | b'}' => out.emit(Mode::Token, d.saturating_sub(1)),
                    b',' => out.emit(Mode::Token, d),
                    b'-' if self.blank_after() => {
                        self.block_indicator |= !flow;
                        out.emit(Mode::Token, d)
                    }
                    b'?' | b':' if flow || self.blank_after() => {
                        self.block_indicator |= !flow && b == b'?';
                        out.emit(Mode::Token, d)
                    }
                    b'*' | b'&' => out.emit(Mode::Anchor, d),
                    b'!' => out.emit(Mode::Tag, d),
                    b'|' | b'>' if !flow => out.emit(Mode::BlockHeader, d),
                    b'\'' => out.emit(Mode::Single, d),
                    b'"' => out.emit(Mode::Double, d),
                    // A plain scalar, or a character libyaml refuses (it stops there, so any
                    // reading of the rest is an over-estimate).
                    _ => out.emit(Mode::Plain, d),
                },
            },
            Mode::Plain => match u {
                Unit::Break => out.emit(Mode::PlainGapBreak, d),
                Unit::Byte(b' ' | b'\t') => out.emit(Mode::PlainGap, d),
                Unit::Byte(b':')
                    if self.blank_after()
                        || (flow
                            && matches!(
                                self.byte_after(),
                                Some(b',' | b'?' | b'[' | b']' | b'{' | b'}')
                            )) =>
                {
                    self.step(Mode::Token, d, u, out)
                }
                Unit::Byte(b',' | b'[' | b']' | b'{' | b'}') if flow => self.step(Mode::Token, d, u, out),
                _ => out.emit(Mode::Plain, d),
            },
            Mode::PlainGap | Mode::PlainGapBreak => match u {
                Unit::Byte(b' ' | b'\t') => out.emit(mode, d),
                Unit::Break => out.emit(Mode::PlainGapBreak, d),
                _ => {
                    let broke = mode == Mode::PlainGapBreak;
                    if u == Unit::Byte(b'#') || (broke && self.document_marker()) {
                        self.step(Mode::Token, d, u, out);
                    } else if broke && !flow {
                        // Continues only if indented past the enclosing block: both readings.
                        self.step(Mode::Token, d, u, out);
                        self.step(Mode::Plain, d, u, out);
                    } else {
                        self.step(Mode::Plain, d, u, out);
                    }
                }
            },
            Mode::Single => match u {
                Unit::Byte(b'\'') if self.byte_after() == Some(b'\'') => out.emit(Mode::SingleQuoteSkip, d),
                Unit::Byte(b'\'') => out.emit(Mode::Token, d),
                _ => out.emit(Mode::Single, d),
            },
            Mode::SingleQuoteSkip => out.emit(Mode::Single, d),
            Mode::Double => match u {
                Unit::Byte(b'\\') => out.emit(Mode::DoubleEscape, d),
                Unit::Byte(b'"') => out.emit(Mode::Token, d),
                _ => out.emit(Mode::Double, d),
            },
            Mode::DoubleEscape => out.emit(Mode::Double, d),
            Mode::Comment => match u {
                Unit::Break => out.emit(Mode::Token, d),
                _ => out.emit(Mode::Comment, d),
            },
            // Where a block scalar ends depends on indentation: every next line is read both as
            // content and as a new token.
            Mode::BlockHeader | Mode::BlockContent => match u {
                Unit::Break => {
                    out.emit(Mode::BlockContent, d);
                    out.emit(Mode::Token, d);
                }
                _ => out.emit(mode, d),
            },
            Mode::Anchor => match u {
                Unit::Byte(b) if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                    out.emit(Mode::Anchor, d)
                }
                _ => self.step(Mode::Token, d, u, out),
            },
            Mode::Tag => match u {
                Unit::Byte(b) if is_tag_char(b) => out.emit(Mode::Tag, d),
                Unit::Byte(b',' | b'[' | b']') => {
                    out.emit(Mode::Tag, d);
                    self.step(Mode::Token, d, u, out);
                }
                _ => self.step(Mode::Token, d, u, out),
            },
            Mode::Skip2 => out.emit(Mode::Skip1, d),
            Mode::Skip1 => out.emit(Mode::Token, d),
        }
    }
}

/// Scans `text`, stopping as soon as the estimate passes `limit`.
pub(crate) fn scan(text: &str, limit: u32) -> Scan {
    // libyaml's reader drops a byte-order mark at the start of the stream (the scanner then skips
    // one more at the start of a line).
    let bytes = text.strip_prefix('\u{feff}').unwrap_or(text).as_bytes();
    let mut cur = States::new();
    let mut next = States::new();
    cur.emit(Mode::Token, 0);
    let mut s = Scanner {
        bytes,
        at: 0,
        next_at: 0,
        column: 0,
        block_indicator: false,
    };
    let (mut line, mut first_on_line) = (1usize, true);
    // Block nesting bound of the current line (kept through lines that are all inside a flow
    // collection, whose nesting adds to it).
    let mut block = 0u32;
    let mut result = Scan {
        max_flow: 0,
        max_total: 0,
        exceeded_at: None,
    };
    while s.at < bytes.len() {
        let (u, n) = unit_at(bytes, s.at);
        s.next_at = s.at + n;
        if first_on_line && !matches!(u, Unit::Break | Unit::Byte(b' ' | b'\t')) {
            first_on_line = false;
            let block_line = cur
                .iter()
                .any(|(m, d)| d == 0 && matches!(m, Mode::Token | Mode::PlainGapBreak | Mode::BlockContent));
            if block_line && u != Unit::Byte(b'#') {
                block = u32::try_from(s.column)
                    .unwrap_or(u32::MAX / 4)
                    .saturating_mul(2)
                    .saturating_add(2);
            }
        }
        s.block_indicator = false;
        for (mode, d) in cur.iter() {
            s.step(mode, d, u, &mut next);
        }
        if s.block_indicator {
            block = block.saturating_add(1);
        }
        for (_, d) in next.iter() {
            result.max_flow = result.max_flow.max(d);
            let total = d.saturating_add(block);
            if total > result.max_total {
                result.max_total = total;
                if total > limit {
                    result.exceeded_at = Some((line, s.column + 1));
                    return result;
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
        next.clear();
        if u == Unit::Break {
            line += 1;
            s.column = 0;
            first_on_line = true;
        } else {
            s.column += 1;
        }
        s.at = s.next_at;
    }
    result
}

/// Refuses text nested deeper than [`MAX_CONFIG_DEPTH`] (as estimated by [`scan`]).
pub(crate) fn check_depth(text: &str) -> Result<()> {
    match scan(text, MAX_CONFIG_DEPTH).exceeded_at {
        None => Ok(()),
        Some((line, column)) => Err(Error::Config(format!(
            "nested more than {MAX_CONFIG_DEPTH} levels deep at line {line}, column {column}; \
             a coremltools config nests 4 levels (refused before parsing)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepest flow level libyaml's scanner reaches on `text` (until it stops on an error).
    fn libyaml_max_flow(text: &str) -> u32 {
        use std::mem::MaybeUninit;
        use unsafe_libyaml_norway as unsafe_yaml;
        // SAFETY: the parser is initialised before use and deleted after; `text` outlives it; each
        // token is deleted after its type is read.
        unsafe {
            let mut parser = MaybeUninit::<unsafe_yaml::yaml_parser_t>::uninit();
            assert!(unsafe_yaml::yaml_parser_initialize(parser.as_mut_ptr()).ok);
            let parser = parser.as_mut_ptr();
            unsafe_yaml::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as _);
            let (mut level, mut max) = (0u32, 0u32);
            loop {
                let mut token = MaybeUninit::<unsafe_yaml::yaml_token_t>::uninit();
                if !unsafe_yaml::yaml_parser_scan(parser, token.as_mut_ptr()).ok {
                    break;
                }
                let kind = (*token.as_ptr()).type_;
                unsafe_yaml::yaml_token_delete(token.as_mut_ptr());
                match kind {
                    unsafe_yaml::YAML_FLOW_SEQUENCE_START_TOKEN
                    | unsafe_yaml::YAML_FLOW_MAPPING_START_TOKEN => {
                        level += 1;
                        max = max.max(level);
                    }
                    unsafe_yaml::YAML_FLOW_SEQUENCE_END_TOKEN | unsafe_yaml::YAML_FLOW_MAPPING_END_TOKEN => {
                        level = level.saturating_sub(1)
                    }
                    unsafe_yaml::YAML_STREAM_END_TOKEN | unsafe_yaml::YAML_NO_TOKEN => break,
                    _ => {}
                }
            }
            unsafe_yaml::yaml_parser_delete(parser);
            max
        }
    }

    fn flow(text: &str) -> u32 {
        scan(text, u32::MAX).max_flow
    }

    #[test]
    fn exact_on_ordinary_configs() {
        let yaml = "config_type: OpThresholdPrunerConfig  # comment [[[\n\
                    global_config: {threshold: 0.01}\n\
                    op_type_configs:\n  conv:\n    config_type: OpMagnitudePrunerConfig\n    n_m_ratio: [3, 4]\n\
                    op_name_configs:\n  'w[0]': null\n  \"v{\": {target_sparsity: '0.5]'}\n";
        assert_eq!(flow(yaml), 1);
        assert_eq!(libyaml_max_flow(yaml), 1);
        let total = scan(yaml, MAX_CONFIG_DEPTH);
        assert!(total.max_total <= 12 && total.exceeded_at.is_none(), "{total:?}");

        let json = r#"{"config_type": "OpMagnitudePrunerConfig", "op_type_configs": {"linear": {"n_m_ratio": [2, 4]}},
                       "op_name_configs": {"a\"[[[": {"target_sparsity": 0.5}, "b]]]\\": null}}"#;
        assert_eq!(flow(json), 4);
        assert_eq!(libyaml_max_flow(json), 4);
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(json).unwrap()).unwrap();
        assert_eq!(flow(&pretty), 4);
        assert!(scan(&pretty, MAX_CONFIG_DEPTH).max_total <= 12);
    }

    #[test]
    fn hidden_brackets_are_not_hidden_from_the_estimate() {
        // Each text reaches flow level 3 in libyaml although a quote, `#` or `|` comes first.
        for text in [
            "a: b\"c\nd: [[[x]]]\ne: \"\n",    // a quote inside a plain scalar opens nothing
            "a: 'it''s' [[[x]]]\n",            // (libyaml refuses this, after the brackets)
            "a: |\n  \"\nb: [[[x]]]\nc: \"\n", // a quote in a block scalar
            "a: x\n  \"y\nb: [[[x]]]\n\"\n",   // a continued plain scalar
            "[a\n\"b, [[x]]]\n\"\n",           // continued plain scalar in flow
            "--- [[[x]]]\n",
            "\u{feff}[[[x]]]\n",
            "!t [[[x]]]\n",
            "&a [[[x]]]\n",
            "? [[[x]]]\n",
        ] {
            let want = libyaml_max_flow(text);
            assert!(
                flow(text) >= want,
                "{text:?}: estimate {} below libyaml {want}",
                flow(text)
            );
            assert!(want >= 2, "{text:?}: libyaml reached only {want}");
        }
    }

    /// xorshift64*, as in tests/hostile: reproducible without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn estimate_is_never_below_libyaml() {
        // Random texts over the characters that matter to libyaml's scanner.
        const PIECES: [&str; 34] = [
            "[", "]", "{", "}", "[", "{", "\"", "'", "#", ":", ",", "-", "?", "!", "&", "*", "|", ">", "%",
            "\\", " ", " ", "\t", "\n", "\n  ", "\r\n", "a", "b:", "- ", ": ", "---", "\u{85}", "\u{feff}",
            "''",
        ];
        let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
        let mut reached = 0;
        for case in 0..50_000 {
            let len = 1 + (rng.next() % 60) as usize;
            let text: String = (0..len)
                .map(|_| PIECES[(rng.next() % PIECES.len() as u64) as usize])
                .collect();
            let want = libyaml_max_flow(&text);
            let got = flow(&text);
            assert!(
                got >= want,
                "case {case}: {text:?}: estimate {got} below libyaml {want}"
            );
            reached = reached.max(want);
        }
        assert!(reached >= 4, "the random texts nest (libyaml reached {reached})");
    }

    #[test]
    fn deep_documents_are_refused_with_a_position() {
        let deep = format!(
            "config_type: x\nglobal_config: {}{}\n",
            "[".repeat(200),
            "]".repeat(200)
        );
        let s = scan(&deep, MAX_CONFIG_DEPTH);
        // The line's block bound (2) plus 127 open brackets: the 127th `[` is at column 15 + 127.
        assert_eq!(s.exceeded_at, Some((2, 15 + 127)));
        let m = check_depth(&deep).unwrap_err().to_string();
        assert_eq!(
            m,
            "config: nested more than 128 levels deep at line 2, column 142; a coremltools config \
             nests 4 levels (refused before parsing)"
        );
        // Block style: one `- ` per level on a line, or one more column of indentation per line.
        let dashes = format!("a: {}1\n", "- ".repeat(200));
        assert!(check_depth(&dashes).is_err());
        let indented: String = (0..100).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        assert!(check_depth(&indented).is_err());
        assert!(check_depth(&format!("{}{}", "[".repeat(60), "]".repeat(60))).is_ok());
    }
}
