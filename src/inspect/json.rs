//! `inspect --json`: the report as pretty JSON, its rows written as they are made.

use std::io::Write;

use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};

use super::{Consumers, InspectReport, Inspection};
use crate::error::Result;

/// The report as pretty JSON, ending in a newline ([`write_json`] into a string).
pub fn render_json(inspection: &Inspection) -> Result<String> {
    inspection.render(write_json)
}

/// The report as pretty JSON, ending in a newline, written to `out` as it is made: neither the
/// rows nor the text are held whole (the text was, twice: 364 MB for a report of 4 M chain
/// entries). A row that cannot be made stops it; [`Inspection::failure`] says why.
pub fn write_json(inspection: &Inspection, out: &mut impl Write) -> std::io::Result<()> {
    write_terminal_safe(inspection, out)
}

/// `value` as pretty JSON and a newline. serde_json escapes C0 control characters in strings;
/// DEL, the C1 controls (U+0080–U+009F, e.g. CSI) and the bidirectional formatting characters it
/// leaves raw, so [`TerminalSafe`] escapes them as well (`\u007f`, `\u202e`): same JSON value, and
/// nothing in it can drive a terminal or reorder what it shows.
fn write_terminal_safe(value: &impl Serialize, out: &mut impl Write) -> std::io::Result<()> {
    let formatter = TerminalSafe(serde_json::ser::PrettyFormatter::new());
    let mut serializer = serde_json::Serializer::with_formatter(&mut *out, formatter);
    value.serialize(&mut serializer)?;
    out.write_all(b"\n")
}

/// The report's JSON, written out once for both of its forms: [`InspectReport`] (rows held) and
/// [`Inspection`] (rows made as they are written).
#[derive(Serialize)]
struct Layout<'a, W> {
    input: &'a str,
    spec_version: i32,
    opsets: &'a [String],
    functions: &'a [String],
    default_function: Option<&'a str>,
    weight_file_bytes: u64,
    weights: W,
    #[serde(skip_serializing_if = "no_notices")]
    notices: &'a [String],
}

fn no_notices(notices: &&[String]) -> bool {
    notices.is_empty()
}

impl InspectReport {
    /// This report's fields in the JSON layout, with `weights` for its rows.
    fn layout<W>(&self, weights: W) -> Layout<'_, W> {
        Layout {
            input: &self.input,
            spec_version: self.spec_version,
            opsets: &self.opsets,
            functions: &self.functions,
            default_function: self.default_function.as_deref(),
            weight_file_bytes: self.weight_file_bytes,
            weights,
            notices: &self.notices,
        }
    }
}

impl Serialize for InspectReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.layout(&self.weights).serialize(serializer)
    }
}

impl Serialize for Inspection {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.head.layout(Rows(self)).serialize(serializer)
    }
}

struct Rows<'a>(&'a Inspection);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut rows = serializer.serialize_seq(Some(self.0.row_count()))?;
        for row in self.0.rows_for_writing(Consumers::All) {
            rows.serialize_element(&row.map_err(S::Error::custom)?)?;
        }
        rows.end()
    }
}

/// serde_json's pretty layout, with the characters of strings that can drive a terminal written
/// as `\uXXXX` escapes (all of them lie in the Basic Multilingual Plane).
struct TerminalSafe<'a>(serde_json::ser::PrettyFormatter<'a>);

impl TerminalSafe<'_> {
    fn escapes(c: char) -> bool {
        ('\u{7f}'..='\u{9f}').contains(&c)
            || crate::error::is_bidi_format(c)
            || crate::error::is_break_or_invisible(c)
    }
}

impl serde_json::ser::Formatter for TerminalSafe<'_> {
    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices().filter(|&(_, c)| Self::escapes(c)) {
            w.write_all(&fragment.as_bytes()[start..i])?;
            write!(w, "\\u{:04x}", c as u32)?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::WeightRow;
    use super::*;

    fn row(function: &str, name: &str) -> WeightRow {
        WeightRow {
            function: function.into(),
            name: name.into(),
            consumers: vec![],
            other_consumers: 0,
            dtype: "fp16".into(),
            shape: vec![4],
            elements: 4,
            bytes: 8,
            sparsity: None,
            storage: "const".into(),
            chain: vec![],
            shared_offsets: vec![],
            shared_with: vec![],
            shared_with_count: 0,
        }
    }

    /// The streamed JSON is the text serde_json makes of the whole report, with each character
    /// that can drive a terminal written as its `\\uXXXX` escape, in keys and values alike.
    #[test]
    fn streamed_json_is_the_pretty_text_with_terminal_characters_escaped() {
        let evil = "w\u{7f}\u{9b}2J\u{1b}\u{202e}\u{2066}\u{2028}\u{feff}é😀\"\\";
        let mut weird = row("f\u{85}", evil);
        weird.chain = vec![Arc::from(evil), Arc::from("plain")];
        weird.sparsity = Some(0.1 + 0.2);
        let report = InspectReport {
            input: evil.into(),
            spec_version: 9,
            opsets: vec!["CoreML8\u{200f}".into()],
            functions: vec!["main".into(), "f\u{85}".into()],
            default_function: None,
            weight_file_bytes: 64,
            weights: vec![weird, row("main", "v")],
            notices: vec![],
            chain_steps: 0,
            chain_reads: 0,
        };
        let whole = serde_json::to_string_pretty(&report).unwrap();
        let mut expected: String = whole
            .chars()
            .map(|c| {
                if TerminalSafe::escapes(c) {
                    format!("\\u{:04x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect();
        expected.push('\n');
        let mut streamed = Vec::new();
        write_terminal_safe(&report, &mut streamed).unwrap();
        let streamed = String::from_utf8(streamed).unwrap();
        assert_eq!(streamed, expected);
        assert!(streamed.contains("\\u007f\\u009b2J\\u001b\\u202e\\u2066\\u2028\\ufeffé😀"));
        let parsed: serde_json::Value = serde_json::from_str(&streamed).unwrap();
        assert_eq!(parsed["weights"][0]["name"], evil);
        assert_eq!(parsed["weights"][0]["chain"][0], evil);
    }
}
