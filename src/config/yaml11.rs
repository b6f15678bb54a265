//! YAML read as PyYAML's `yaml.safe_load` reads it (what coremltools' `from_yaml` calls): YAML 1.1
//! resolution of plain scalars, merge keys, and mappings where a repeated key keeps its last value.
//!
//! serde_norway resolves scalars by YAML 1.2 rules and keeps neither a scalar's text nor its style
//! once it has made a number of it, so `weight_threshold: 07777` (octal 4095 for PyYAML) became
//! 7777. Here the events of libyaml — the parser serde_norway itself runs — are read directly: each
//! scalar's text, style and tag, resolved with PyYAML's implicit resolvers (`yaml/resolver.py`) and
//! built by its constructors (`yaml/constructor.py`, `SafeConstructor`):
//!
//! | plain scalar | PyYAML | here |
//! |---|---|---|
//! | `yes no true false on off`, in lower, Title or UPPER case | bool | same |
//! | `~ null Null NULL`, empty | None | same |
//! | `0b1_0`, `017` (octal), `0x1F`, `1_000`, `1:20` (base 60 = 80), any size | int | same, [`PyInt`] |
//! | `1.5`, `1.`, `.5`, `1.5e+3` (signed exponent), `1:30.5`, `.inf`, `-.Inf`, `.nan` | float | same |
//! | `1e3`, `1.0e3`, `0o17`, `+.5`, `08`, `1:60` | str (no resolver matches) | same |
//! | `2001-12-14`, `2001-12-14 21:59:43.10 -5` | date / datetime | a value no field takes |
//! | `=` (value), `<<` outside a key | ConstructorError | refused |
//! | decimal int of more than 4300 digits | ValueError (Python's `int()` limit) | refused |
//!
//! Quoted and block scalars are strings. The explicit tags `!!str`, `!!int`, `!!float`, `!!bool`,
//! `!!null`, `!!seq` and `!!map` are honoured; other tags are refused (serde_norway's pass, which
//! runs first for syntax errors and the alias bound, refuses most of them already).
//!
//! `unsafe` here is the calls into libyaml's API (a Rust translation of the C library), confined to
//! [`events`]: the parser and each event are initialised and deleted as libyaml requires, and every
//! pointer read from an event is one libyaml documents as valid until that event is deleted.

use std::collections::HashMap;
use std::rc::Rc;

use unsafe_libyaml_norway as unsafe_libyaml;

use super::py::Py;
use super::pyfmt::clip;
use super::pyint::PyInt;

/// One parser event, copied out of libyaml's.
#[derive(Debug)]
enum Event {
    StreamEnd,
    Other,
    Alias(Vec<u8>),
    Scalar {
        anchor: Option<Vec<u8>>,
        tag: Option<Vec<u8>>,
        value: String,
        plain: bool,
    },
    SequenceStart {
        anchor: Option<Vec<u8>>,
        tag: Option<Vec<u8>>,
    },
    SequenceEnd,
    MappingStart {
        anchor: Option<Vec<u8>>,
        tag: Option<Vec<u8>>,
    },
    MappingEnd,
}

/// A NUL-terminated string libyaml owns, copied; `None` for a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid during the call.
unsafe fn c_bytes(p: *const u8) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { std::ffi::CStr::from_ptr(p.cast()) };
    Some(s.to_bytes().to_vec())
}

/// libyaml's parser over one text, yielding its events one at a time: nothing is held but the
/// event being read, so a file of millions of nodes can be counted (and refused) in constant
/// memory before anything is built from it.
struct Events<'t> {
    parser: Box<std::mem::MaybeUninit<unsafe_libyaml::yaml_parser_t>>,
    /// The text the parser reads from; it must outlive the parser.
    _text: std::marker::PhantomData<&'t str>,
    done: bool,
}

impl<'t> Events<'t> {
    fn new(text: &'t str) -> Result<Self, String> {
        let mut parser = Box::new(std::mem::MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit());
        let p = parser.as_mut_ptr();
        // SAFETY: `p` points to writable memory for a parser; initialize fills all of it.
        if !unsafe { unsafe_libyaml::yaml_parser_initialize(p) }.ok {
            return Err("libyaml could not allocate its parser".into());
        }
        // SAFETY: the parser is initialised; `text` outlives it (the lifetime `'t` on `Events`),
        // and the length is that of `text`.
        unsafe {
            unsafe_libyaml::yaml_parser_set_encoding(p, unsafe_libyaml::YAML_UTF8_ENCODING);
            unsafe_libyaml::yaml_parser_set_input_string(p, text.as_ptr(), text.len() as _);
        }
        Ok(Events {
            parser,
            _text: std::marker::PhantomData,
            done: false,
        })
    }

    /// The next event; `Err` where libyaml finds the text is not YAML (serde_norway's pass gives
    /// the message with its position).
    fn next(&mut self) -> Result<Event, String> {
        if self.done {
            return Err("unexpected end of the YAML events".into());
        }
        let p = self.parser.as_mut_ptr();
        let mut raw = std::mem::MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
        // SAFETY: an initialised parser and writable memory for one event.
        if !unsafe { unsafe_libyaml::yaml_parser_parse(p, raw.as_mut_ptr()) }.ok {
            self.done = true;
            return Err(NOT_YAML.into());
        }
        // SAFETY: parse succeeded, so the event is initialised; the union member read is the one
        // its type names, and its pointers are valid until `yaml_event_delete` below.
        let event = unsafe { copy_event(&*raw.as_ptr()) };
        // SAFETY: the event was produced by `yaml_parser_parse` and is deleted once.
        unsafe { unsafe_libyaml::yaml_event_delete(raw.as_mut_ptr()) };
        self.done = matches!(event, Event::StreamEnd);
        Ok(event)
    }
}

impl Drop for Events<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser `new` initialised, deleted once, here.
        unsafe { unsafe_libyaml::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

/// What `Events::next` says where libyaml refuses the text.
const NOT_YAML: &str = "libyaml could not parse it";

/// One libyaml event, copied out.
///
/// # Safety
/// `e` is an initialised event whose pointers are valid during the call.
unsafe fn copy_event(e: &unsafe_libyaml::yaml_event_t) -> Event {
    // SAFETY: the union member read is the one `type_` names; its pointers are valid by the
    // caller's contract.
    unsafe {
        match e.type_ {
            unsafe_libyaml::YAML_STREAM_END_EVENT => Event::StreamEnd,
            unsafe_libyaml::YAML_ALIAS_EVENT => {
                Event::Alias(c_bytes(e.data.alias.anchor).unwrap_or_default())
            }
            unsafe_libyaml::YAML_SCALAR_EVENT => {
                let s = e.data.scalar;
                let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                Event::Scalar {
                    anchor: c_bytes(s.anchor),
                    tag: c_bytes(s.tag),
                    value: String::from_utf8_lossy(bytes).into_owned(),
                    plain: s.style == unsafe_libyaml::YAML_PLAIN_SCALAR_STYLE,
                }
            }
            unsafe_libyaml::YAML_SEQUENCE_START_EVENT => Event::SequenceStart {
                anchor: c_bytes(e.data.sequence_start.anchor),
                tag: c_bytes(e.data.sequence_start.tag),
            },
            unsafe_libyaml::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
            unsafe_libyaml::YAML_MAPPING_START_EVENT => Event::MappingStart {
                anchor: c_bytes(e.data.mapping_start.anchor),
                tag: c_bytes(e.data.mapping_start.tag),
            },
            unsafe_libyaml::YAML_MAPPING_END_EVENT => Event::MappingEnd,
            _ => Event::Other,
        }
    }
}

/// What [`scan`] learnt of a text: whether it repeats nodes by alias.
pub(crate) struct Scan {
    pub(crate) aliases: bool,
}

/// Counts the nodes of `text` (scalars, sequences, mappings and aliases, an alias as one) as
/// libyaml reads them, holding one event at a time, and refuses past `max_nodes` before anything
/// is built: a 16 MiB file of `[0,0,…]` is eight million nodes, and building them (serde_norway's
/// event list, then ours) took 1.1 GB. Text libyaml refuses is left to serde_norway's pass, which
/// names the error; it then reads at most `max_nodes` nodes before reaching it.
pub(crate) fn scan(text: &str, max_nodes: usize) -> Result<Scan, String> {
    let mut events = Events::new(text)?;
    let (mut nodes, mut aliases) = (0usize, false);
    loop {
        match events.next() {
            Ok(Event::StreamEnd) | Err(_) => return Ok(Scan { aliases }),
            Ok(Event::Alias(_)) => aliases = true,
            Ok(Event::Scalar { .. } | Event::SequenceStart { .. } | Event::MappingStart { .. }) => {}
            Ok(_) => continue,
        }
        nodes += 1;
        if nodes > max_nodes {
            return Err(super::limits::too_many_nodes(max_nodes));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Composing nodes (PyYAML's composer + resolver)

/// A mapping's pairs of nodes, in order.
type Pairs = Vec<(Rc<Node>, Rc<Node>)>;

#[derive(Debug)]
enum Node {
    /// A constructed scalar, or the error PyYAML raises when constructing it. `merge` marks a plain
    /// `<<`, `value_key` a plain `=` (a string when it is a mapping key).
    Scalar {
        value: Result<Py, String>,
        merge: bool,
        value_key: bool,
        /// The text when CPython keeps one object for it (empty or one Latin-1 character): a
        /// merge tells keys apart by the identity of their text objects.
        shared_text: Option<String>,
    },
    Seq(Vec<Rc<Node>>),
    Map(Vec<(Rc<Node>, Rc<Node>)>),
}

const TAG: &str = "tag:yaml.org,2002:";

struct Composer<'t> {
    events: Events<'t>,
    anchors: HashMap<Vec<u8>, Rc<Node>>,
}

impl Composer<'_> {
    fn next(&mut self) -> Result<Event, String> {
        self.events.next()
    }

    /// The node whose first event is `first`.
    fn node(&mut self, first: Event) -> Result<Rc<Node>, String> {
        let (anchor, node) = match first {
            Event::Alias(name) => {
                return self.anchors.get(&name).cloned().ok_or_else(|| {
                    format!("found undefined alias {}", clip(&String::from_utf8_lossy(&name)))
                })
            }
            Event::Scalar {
                anchor,
                tag,
                value,
                plain,
            } => {
                let mut node = scalar(tag.as_deref(), &value, plain)?;
                if let Node::Scalar { shared_text, .. } = &mut node {
                    if value.chars().count() <= 1 && value.chars().all(|c| u32::from(c) < 256) {
                        *shared_text = Some(value);
                    }
                }
                (anchor, node)
            }
            Event::SequenceStart { anchor, tag } => {
                collection_tag(tag.as_deref(), "seq")?;
                let mut items = Vec::new();
                loop {
                    match self.next()? {
                        Event::SequenceEnd => break,
                        e => items.push(self.node(e)?),
                    }
                }
                (anchor, Node::Seq(items))
            }
            Event::MappingStart { anchor, tag } => {
                collection_tag(tag.as_deref(), "map")?;
                let mut pairs = Vec::new();
                loop {
                    match self.next()? {
                        Event::MappingEnd => break,
                        e => {
                            let key = self.node(e)?;
                            let first = self.next()?;
                            pairs.push((key, self.node(first)?));
                        }
                    }
                }
                (anchor, Node::Map(pairs))
            }
            other => return Err(clip(&format!("unexpected YAML event {other:?}"))),
        };
        let node = Rc::new(node);
        if let Some(name) = anchor {
            // PyYAML's composer refuses an anchor named twice in a document, even for the same
            // value; libyaml and serde_norway let the second replace the first.
            if self.anchors.insert(name.clone(), Rc::clone(&node)).is_some() {
                return Err(format!(
                    "found duplicate anchor {}",
                    clip(&super::pyfmt::string(&String::from_utf8_lossy(&name)))
                ));
            }
        }
        Ok(node)
    }
}

fn collection_tag(tag: Option<&[u8]>, kind: &str) -> Result<(), String> {
    match tag {
        None => Ok(()),
        Some(t) if t == format!("{TAG}{kind}").as_bytes() => Ok(()),
        Some(t) => Err(unsupported_tag(t)),
    }
}

fn unsupported_tag(tag: &[u8]) -> String {
    format!(
        "unsupported tag {} (mlprune reads !!str, !!int, !!float, !!bool, !!null, !!seq and !!map)",
        clip(&String::from_utf8_lossy(tag).replace(TAG, "!!"))
    )
}

fn scalar(tag: Option<&[u8]>, text: &str, plain: bool) -> Result<Node, String> {
    let value = |v| Node::Scalar {
        value: v,
        merge: false,
        value_key: false,
        shared_text: None,
    };
    let Some(tag) = tag else {
        if !plain {
            return Ok(value(Ok(Py::Str(text.to_string()))));
        }
        return Ok(match text {
            "<<" => Node::Scalar {
                value: Err(no_constructor("merge")),
                merge: true,
                value_key: false,
                shared_text: None,
            },
            "=" => Node::Scalar {
                value: Err(no_constructor("value")),
                merge: false,
                value_key: true,
                shared_text: None,
            },
            _ => value(resolve_plain(text)),
        });
    };
    let name = std::str::from_utf8(tag).ok().and_then(|t| t.strip_prefix(TAG));
    let v = match name {
        Some("str") => Ok(Py::Str(text.to_string())),
        Some("null") => Ok(Py::None),
        Some("bool") => match text.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" => Ok(Py::Bool(true)),
            "no" | "false" | "off" => Ok(Py::Bool(false)),
            _ => Err(format!(
                "{} is not a YAML 1.1 boolean",
                clip(&format!("{text:?}"))
            )),
        },
        Some("int") if is_int(text) => construct_int(text).map(Py::Int),
        Some("float") if is_float(text) || is_int(text) => construct_float(text).map(Py::Float),
        // PyYAML would try Python's int()/float() on other text; mlprune reads only the YAML forms.
        Some("int") | Some("float") => Err(format!(
            "{} tagged !!{} is not a YAML 1.1 number",
            clip(&format!("{text:?}")),
            name.unwrap_or_default()
        )),
        _ => Err(unsupported_tag(tag)),
    };
    Ok(value(v))
}

fn no_constructor(kind: &str) -> String {
    format!("could not determine a constructor for the tag '{TAG}{kind}'")
}

/// PyYAML's implicit resolvers for a plain scalar, tried in its order (bool, float, int, null,
/// timestamp), then constructed.
fn resolve_plain(text: &str) -> Result<Py, String> {
    if matches!(
        text,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON"
    ) {
        return Ok(Py::Bool(true));
    }
    if matches!(
        text,
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF"
    ) {
        return Ok(Py::Bool(false));
    }
    if is_float(text) {
        return construct_float(text).map(Py::Float);
    }
    if is_int(text) {
        return construct_int(text).map(Py::Int);
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Py::None);
    }
    if let Some(kind) = timestamp(text)? {
        return Ok(Py::Other(kind, text.to_string()));
    }
    Ok(Py::Str(text.to_string()))
}

/// A cursor over ASCII text for the resolver patterns.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str) -> Self {
        Cur {
            b: s.as_bytes(),
            i: 0,
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }
    fn sign(&mut self) {
        let _ = self.eat(b'-') || self.eat(b'+');
    }
    /// Bytes matching `f`, at least `min`; how many.
    fn many(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        self.i - start
    }
    fn digit(&mut self) -> bool {
        let hit = self.peek().is_some_and(|c| c.is_ascii_digit());
        self.i += usize::from(hit);
        hit
    }
    fn end(&self) -> bool {
        self.i == self.b.len()
    }
    /// `(?::[0-5]?[0-9])+`
    fn sexagesimal_parts(&mut self) -> bool {
        let mut n = 0;
        loop {
            let save = self.i;
            if !self.eat(b':') {
                break;
            }
            let (a, b) = (self.peek(), self.b.get(self.i + 1).copied());
            if matches!(a, Some(b'0'..=b'5')) && b.is_some_and(|c| c.is_ascii_digit()) {
                self.i += 2;
            } else if a.is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            } else {
                self.i = save;
                break;
            }
            n += 1;
        }
        n > 0
    }
}

fn digit_or_underscore(c: u8) -> bool {
    c.is_ascii_digit() || c == b'_'
}

/// `[eE][-+][0-9]+`, optional.
fn exponent(c: &mut Cur) -> bool {
    let save = c.i;
    if (c.eat(b'e') || c.eat(b'E')) && (c.eat(b'-') || c.eat(b'+')) && c.many(|b| b.is_ascii_digit()) > 0 {
        return true;
    }
    c.i = save;
    false
}

/// PyYAML's float resolver.
fn is_float(s: &str) -> bool {
    // [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    let mut c = Cur::new(s);
    c.sign();
    if c.digit() {
        c.many(digit_or_underscore);
        if c.eat(b'.') {
            c.many(digit_or_underscore);
            exponent(&mut c);
            if c.end() {
                return true;
            }
        }
    }
    // \.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    let mut c = Cur::new(s);
    if c.eat(b'.') && c.digit() {
        c.many(digit_or_underscore);
        exponent(&mut c);
        if c.end() {
            return true;
        }
    }
    // [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    let mut c = Cur::new(s);
    c.sign();
    if c.digit() {
        c.many(digit_or_underscore);
        if c.sexagesimal_parts() && c.eat(b'.') {
            c.many(digit_or_underscore);
            if c.end() {
                return true;
            }
        }
    }
    // [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(s, ".nan" | ".NaN" | ".NAN")
}

/// PyYAML's int resolver.
fn is_int(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let all = |t: &str, f: fn(u8) -> bool| !t.is_empty() && t.bytes().all(f);
    // 0b[0-1_]+ | 0x[0-9a-fA-F_]+ | 0[0-7_]+ | 0
    if let Some(t) = body.strip_prefix("0b") {
        return all(t, |c| matches!(c, b'0' | b'1' | b'_'));
    }
    if let Some(t) = body.strip_prefix("0x") {
        return all(t, |c| c.is_ascii_hexdigit() || c == b'_');
    }
    if let Some(t) = body.strip_prefix('0') {
        return t.is_empty() || all(t, |c| matches!(c, b'0'..=b'7' | b'_'));
    }
    // [1-9][0-9_]* | [1-9][0-9_]*(?::[0-5]?[0-9])+
    let mut c = Cur::new(body);
    if !matches!(c.peek(), Some(b'1'..=b'9')) {
        return false;
    }
    c.many(digit_or_underscore);
    if c.end() {
        return true;
    }
    c.sexagesimal_parts() && c.end()
}

/// `SafeConstructor.construct_yaml_int`.
fn construct_int(text: &str) -> Result<PyInt, String> {
    let v = text.replace('_', "");
    let negative = v.starts_with('-');
    let v = v.strip_prefix(['-', '+']).unwrap_or(&v);
    let magnitude = if v == "0" {
        PyInt::default()
    } else if let Some(d) = v.strip_prefix("0b") {
        radix(d, 1, 2)?
    } else if let Some(d) = v.strip_prefix("0x") {
        radix(d, 4, 16)?
    } else if v.starts_with('0') {
        radix(v, 3, 8)?
    } else if v.contains(':') {
        PyInt::from_base60(v.split(':'))?
    } else {
        PyInt::from_decimal(v)?
    };
    Ok(if negative { magnitude.negated() } else { magnitude })
}

fn radix(digits: &str, shift: u32, base: u32) -> Result<PyInt, String> {
    if digits.is_empty() {
        return Err(format!("invalid literal for int() with base {base}: ''"));
    }
    PyInt::from_power_of_two_radix(digits, shift)
}

/// `SafeConstructor.construct_yaml_float`.
fn construct_float(text: &str) -> Result<f64, String> {
    let v = text.replace('_', "").to_ascii_lowercase();
    let sign = if v.starts_with('-') { -1.0 } else { 1.0 };
    let v = v.strip_prefix(['-', '+']).unwrap_or(&v);
    if v == ".inf" {
        return Ok(sign * f64::INFINITY);
    }
    if v == ".nan" {
        return Ok(f64::NAN);
    }
    if v.contains(':') {
        // value += float(part) * base, with base an int (60 ** i) converted to float each time.
        let mut value = 0.0f64;
        let mut base = PyInt::from(1u64);
        for part in v.split(':').rev() {
            let digit = python_float(part)?;
            let b = base.to_f64().ok_or("int too large to convert to float")?;
            value += digit * b;
            base = base.times_small(60);
        }
        return Ok(sign * value);
    }
    Ok(sign * python_float(v)?)
}

/// `float(s)` for the forms the float resolver lets through (`1.`, `.5`, `1.5e+3`, digits).
fn python_float(s: &str) -> Result<f64, String> {
    let fixed = if s.ends_with('.') || s.contains(".e") {
        s.replacen('.', ".0", 1)
    } else {
        s.to_string()
    };
    fixed
        .parse::<f64>()
        .map_err(|_| format!("could not convert string to float: '{}'", clip(s)))
}

/// PyYAML's timestamp resolver, and the checks its constructor's `datetime(...)` makes. `Some`
/// holds Python's type name.
fn timestamp(s: &str) -> Result<Option<&'static str>, String> {
    let mut c = Cur::new(s);
    let num = |c: &mut Cur, min: usize, max: usize| -> Option<u32> {
        let start = c.i;
        while c.i - start < max && c.digit() {}
        (c.i - start >= min).then(|| s[start..c.i].parse().unwrap_or(0))
    };
    let Some(year) = num(&mut c, 4, 4) else {
        return Ok(None);
    };
    if !c.eat(b'-') {
        return Ok(None);
    }
    let date_only = s.len() == 10;
    let Some(month) = num(&mut c, if date_only { 2 } else { 1 }, 2) else {
        return Ok(None);
    };
    if !c.eat(b'-') {
        return Ok(None);
    }
    let Some(day) = num(&mut c, if date_only { 2 } else { 1 }, 2) else {
        return Ok(None);
    };
    let mut time = None;
    if !c.end() {
        if !(c.eat(b'T') || c.eat(b't') || c.many(|b| b == b' ' || b == b'\t') > 0) {
            return Ok(None);
        }
        let Some(h) = num(&mut c, 1, 2) else {
            return Ok(None);
        };
        if !c.eat(b':') {
            return Ok(None);
        }
        let Some(m) = num(&mut c, 2, 2) else {
            return Ok(None);
        };
        if !c.eat(b':') {
            return Ok(None);
        }
        let Some(sec) = num(&mut c, 2, 2) else {
            return Ok(None);
        };
        if c.eat(b'.') {
            c.many(|b| b.is_ascii_digit());
        }
        let save = c.i;
        c.many(|b| b == b' ' || b == b'\t');
        let mut tz_minutes = 0;
        if c.eat(b'Z') {
        } else if c.eat(b'-') || c.eat(b'+') {
            let Some(th) = num(&mut c, 1, 2) else {
                return Ok(None);
            };
            let mut tm = 0;
            if c.eat(b':') {
                let Some(v) = num(&mut c, 2, 2) else {
                    return Ok(None);
                };
                tm = v;
            }
            tz_minutes = th * 60 + tm;
        } else {
            c.i = save;
        }
        if !c.end() {
            return Ok(None);
        }
        time = Some((h, m, sec, tz_minutes));
    } else if !date_only {
        return Ok(None);
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if year < 1 {
        return Err(format!("year {year} is out of range"));
    }
    if !(1..=12).contains(&month) {
        return Err("month must be in 1..12".into());
    }
    if day < 1 || day > days[month as usize - 1] {
        return Err("day is out of range for month".into());
    }
    Ok(Some(match time {
        None => "date",
        Some((h, m, sec, tz)) => {
            if h > 23 || m > 59 || sec > 59 {
                return Err("time field out of range".into());
            }
            if tz >= 24 * 60 {
                return Err("offset must be a timedelta strictly between -timedelta(hours=24) and timedelta(hours=24)".into());
            }
            "datetime"
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Constructing values (PyYAML's SafeConstructor)

/// A dict key as Python hashes and compares it: `True == 1 == 1.0`, one NaN (PyYAML's `.nan` is
/// one object). It borrows the key's text: a copy of every key doubled what a config of long names
/// took.
#[derive(Hash, PartialEq, Eq)]
enum Key<'a> {
    None,
    Int(std::borrow::Cow<'a, PyInt>),
    Float(u64),
    Str(&'a str),
    Other(&'a str),
}

fn key_of(v: &Py) -> Result<Key<'_>, String> {
    use std::borrow::Cow;
    Ok(match v {
        Py::None => Key::None,
        Py::Bool(b) => Key::Int(Cow::Owned(PyInt::from(*b))),
        Py::Int(i) => Key::Int(Cow::Borrowed(i)),
        Py::Float(f) if f.is_finite() && f.trunc() == *f => Key::Int(Cow::Owned(PyInt::from_f64_trunc(*f))),
        Py::Float(f) if f.is_nan() => Key::Float(f64::NAN.to_bits()),
        Py::Float(f) => Key::Float(f.to_bits()),
        Py::Str(s) => Key::Str(s),
        Py::Other(_, s) => Key::Other(s),
        Py::List(_) | Py::Dict(_) => return Err("found unhashable key".into()),
    })
}

/// `flatten_mapping` (PyYAML 6.0.3): the pairs of every merged mapping (`<<: {…}`, or each of
/// `<<: [{…}, {…}]` in order), a key skipped when the same key object was merged already, then the
/// mapping's own pairs; building the dict then keeps the last value of a key. Key objects are the
/// key nodes' texts: one per node, except the texts CPython keeps one object for (`shared_text`),
/// so `<<: [{x: 1}, {x: 2}]` gives x = 1 but `<<: [{xx: 1}, {xx: 2}]` gives xx = 2.
fn flatten(pairs: &[(Rc<Node>, Rc<Node>)]) -> Result<Pairs, String> {
    #[derive(Hash, PartialEq, Eq)]
    enum KeyId {
        Node(*const Node),
        Text(String),
    }
    let mut merged = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut take = |merged: &mut Vec<_>, pairs: Pairs| {
        for (k, v) in pairs {
            let id = match &*k {
                Node::Scalar {
                    shared_text: Some(t), ..
                } => KeyId::Text(t.clone()),
                _ => KeyId::Node(Rc::as_ptr(&k)),
            };
            if seen.insert(id) {
                merged.push((k, v));
            }
        }
    };
    let mut own = Vec::new();
    for (k, v) in pairs {
        if !matches!(**k, Node::Scalar { merge: true, .. }) {
            own.push((Rc::clone(k), Rc::clone(v)));
            continue;
        }
        match &**v {
            Node::Map(p) => take(&mut merged, flatten(p)?),
            Node::Seq(items) => {
                for item in items {
                    match &**item {
                        Node::Map(p) => take(&mut merged, flatten(p)?),
                        _ => {
                            return Err("while constructing a mapping: expected a mapping for merging".into())
                        }
                    }
                }
            }
            Node::Scalar { .. } => {
                return Err(
                    "while constructing a mapping: expected a mapping or list of mappings for merging".into(),
                )
            }
        }
    }
    merged.extend(own);
    Ok(merged)
}

/// Builds the value of `node`, moving its parts out where nothing else holds them (a node no
/// alias names): the strings are then not copied, and the node tree is freed as the value grows,
/// so the two never both hold a large config in full.
fn construct(node: Rc<Node>) -> Result<Py, String> {
    let is_merge = |(k, _): &(Rc<Node>, Rc<Node>)| matches!(**k, Node::Scalar { merge: true, .. });
    match Rc::try_unwrap(node) {
        Ok(Node::Scalar { value, .. }) => value,
        Ok(Node::Seq(items)) => Ok(Py::List(
            items.into_iter().map(construct).collect::<Result<_, _>>()?,
        )),
        Ok(Node::Map(pairs)) if !pairs.iter().any(is_merge) => dict(pairs),
        Ok(Node::Map(pairs)) => dict(flatten(&pairs)?),
        Err(shared) => match &*shared {
            Node::Scalar { value, .. } => value.clone(),
            Node::Seq(items) => Ok(Py::List(
                items.iter().cloned().map(construct).collect::<Result<_, _>>()?,
            )),
            Node::Map(pairs) => dict(flatten(pairs)?),
        },
    }
}

/// A mapping's (flattened) pairs made a dict: a repeated key keeps its first place and its last
/// value, as a dict does. Every pair is built first (a key's hashability checked before its value
/// is built, PyYAML's order of errors), then the keys are matched by hash, borrowing their text.
fn dict(pairs: Pairs) -> Result<Py, String> {
    let mut all: Vec<(Py, Py)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let key = match &*k {
            Node::Scalar { value_key: true, .. } => Py::Str("=".into()),
            _ => construct(k)?,
        };
        key_of(&key)?;
        all.push((key, construct(v)?));
    }
    // For each first place of a key, where its last value is (`usize::MAX`: not a first place).
    let mut last = vec![usize::MAX; all.len()];
    let mut first: HashMap<Key, usize> = HashMap::with_capacity(all.len());
    for (i, (k, _)) in all.iter().enumerate() {
        let at = *first.entry(key_of(k)?).or_insert(i);
        last[at] = i;
    }
    drop(first);
    let mut out = Vec::with_capacity(all.len());
    for (i, &from) in last.iter().enumerate() {
        if from != usize::MAX {
            let value = std::mem::replace(&mut all[from].1, Py::None);
            out.push((std::mem::replace(&mut all[i].0, Py::None), value));
        }
    }
    Ok(Py::Dict(out))
}

/// `yaml.safe_load(text)` for one document (none gives `None`). The text has already been through
/// serde_norway (syntax errors, one document, the bound on alias expansion).
pub(crate) fn load(text: &str) -> Result<Py, String> {
    let mut composer = Composer {
        events: Events::new(text)?,
        anchors: HashMap::new(),
    };
    loop {
        match composer.next()? {
            Event::StreamEnd => return Ok(Py::None),
            Event::Other => continue,
            first => {
                let root = composer.node(first)?;
                // The anchors' hold on their nodes goes first, so `construct` can move out of them.
                drop(composer);
                return construct(root);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Py, String> {
        match load(&format!("a: {text}\n"))? {
            Py::Dict(mut pairs) => Ok(pairs.remove(0).1),
            other => panic!("{other:?}"),
        }
    }

    fn int(v: i64) -> Py {
        Py::Int(PyInt::from(v))
    }

    #[test]
    fn resolves_plain_scalars_as_pyyaml() {
        for (text, want) in [
            ("07777", int(4095)),
            ("0b1_01", int(5)),
            ("-0x1F", int(-31)),
            ("1_000", int(1000)),
            ("1:20", int(80)),
            ("-1:00:01", int(-3601)),
            ("0", int(0)),
            ("0_", int(0)),
            ("00", int(0)),
            ("+12", int(12)),
            ("yes", Py::Bool(true)),
            ("Off", Py::Bool(false)),
            ("~", Py::None),
            ("", Py::None),
            ("1.5", Py::Float(1.5)),
            ("1.", Py::Float(1.0)),
            (".5", Py::Float(0.5)),
            ("1.e+3", Py::Float(1000.0)),
            ("1_0.5E-1", Py::Float(1.05)),
            ("1:30.5", Py::Float(90.5)),
            ("-.INF", Py::Float(f64::NEG_INFINITY)),
            ("1e3", Py::Str("1e3".into())),
            ("1.0e3", Py::Str("1.0e3".into())),
            ("0o17", Py::Str("0o17".into())),
            ("08", Py::Str("08".into())),
            ("+.5", Py::Str("+.5".into())),
            ("1:60", Py::Str("1:60".into())),
            ("yEs", Py::Str("yEs".into())),
            ("'07777'", Py::Str("07777".into())),
            ("\"yes\"", Py::Str("yes".into())),
            ("!!str 12", Py::Str("12".into())),
            ("!!int 017", int(15)),
            ("!!float '2'", Py::Float(2.0)),
            ("!!bool 'on'", Py::Bool(true)),
            ("2001-12-14", Py::Other("date", "2001-12-14".into())),
        ] {
            assert_eq!(one(text), Ok(want), "{text}");
        }
        assert!(matches!(one(".nan"), Ok(Py::Float(f)) if f.is_nan()));
        let big = one("0x10000000000000000").unwrap();
        assert!(matches!(&big, Py::Int(i) if i.to_string() == "18446744073709551616"));
        for refused in ["0b_", "=", "<<", "2001-02-30", &"1".repeat(4301), "!!binary aGk="] {
            assert!(one(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn mappings_merge_and_keep_the_last_value() {
        let doc = load("b: &b {x: 1, y: 2}\nc:\n  <<: [*b, {x: 3, z: 4}]\n  y: 5\n  =: 6\nd: {1: a, 1.0: b, true: c}\nb: 0\n").unwrap();
        let Py::Dict(top) = doc else { panic!() };
        assert_eq!(top[0], (Py::Str("b".into()), int(0)));
        let Py::Dict(c) = &top[1].1 else { panic!() };
        let keys: Vec<String> = c
            .iter()
            .map(|(k, v)| format!("{}={}", k.repr(), v.repr()))
            .collect();
        assert_eq!(keys, ["'x'=1", "'y'=5", "'z'=4", "'='=6"]);
        let doc = load("a: {<<: [{x: 1}, {x: 2}]}\nb: {<<: [{xx: 1}, {xx: 2}]}\n").unwrap();
        assert_eq!(doc.repr(), "{'a': {'x': 1}, 'b': {'xx': 2}}");
        assert_eq!(top[2].1, Py::Dict(vec![(int(1), Py::Str("c".into()))]));
        assert_eq!(load("").unwrap(), Py::None);
        assert!(load("[a]: 1\n").is_err(), "unhashable key");
    }

    #[test]
    fn a_duplicate_anchor_is_refused_as_pyyaml_refuses_it() {
        let err = load("a: &t x\nb: {c: &t 0.5}\n").unwrap_err();
        assert_eq!(err, "found duplicate anchor 't'");
        // Also where the second sits inside the first's node.
        assert!(load("a: &t [&t 1]\n").is_err());
        // One anchor named by many aliases is fine.
        assert!(load("a: &t 1\nb: [*t, *t]\n").is_ok());
    }

    #[test]
    fn scan_counts_nodes_and_aliases_without_building_them() {
        // Nodes: the root mapping, a, the list, 1, 2, b, the alias: 7.
        let text = "a: &l [1, 2]\nb: *l\n";
        assert!(scan(text, 7).unwrap().aliases);
        let err = scan(text, 6).err().unwrap();
        assert!(err.contains("more than 6 nodes"), "{err}");
        assert!(!scan("a: [1, 2]\n", 5).unwrap().aliases);
        // Text libyaml refuses is left to serde_norway's pass for its message.
        assert!(scan("a: [1, 2\n", 100).is_ok());
    }

    #[test]
    fn float_keys_and_repeated_keys_keep_pythons_dict_semantics() {
        let doc = load("{0.5: a, 1.5: b, 0.5: c, 1: d, 1.0: e, true: f, .nan: g, x: h, x: i}").unwrap();
        assert_eq!(doc.repr(), "{0.5: 'c', 1.5: 'b', 1: 'f', nan: 'g', 'x': 'i'}");
        // Many float keys, each distinct: all kept, in order.
        let text: String = (0..50_000).map(|i| format!("{i}.5: {i}\n")).collect();
        let Py::Dict(pairs) = load(&text).unwrap() else {
            panic!()
        };
        assert_eq!(pairs.len(), 50_000);
        assert_eq!(pairs[49_999], (Py::Float(49_999.5), int(49_999)));
    }
}
