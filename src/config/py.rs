//! The value tree a config file is read into: the Python objects `json.load` and `yaml.safe_load`
//! produce, with the names and text Python gives them in messages. The JSON and YAML readers make
//! it (`super::parse`, `super::yaml11`); `super::parse` walks it as coremltools walks the dict.

use super::pyfmt;
use super::pyint::PyInt;

/// Most bytes of a `repr` built for a message before it is cut: a whole repr under it is measured
/// exactly ("… (N bytes)"), a longer one is not built to the end.
const REPR_BUDGET: usize = 4096;

/// A parsed document, typed like the Python objects `json.load` / `yaml.safe_load` produce. The
/// Python bindings build it from the dict they are given (`crate::config::ConfigValue`), so that
/// what JSON cannot say (keys that are not strings, infinities) reaches the config as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(PyInt),
    Float(f64),
    Str(String),
    List(Vec<Py>),
    /// Keys are unique (by Python's equality), in first-seen order.
    Dict(Vec<(Py, Py)>),
    /// A value no config field takes (a YAML timestamp: `date` / `datetime`), with its text.
    Other(&'static str, String),
}

impl Py {
    /// A Python `int` given as `hex(n)` (`0x1f`, `-0x1f`): how the bindings pass an int of any
    /// size (Python caps decimal text at 4,300 digits; red team, session 21).
    pub fn int_from_hex(text: &str) -> Result<Py, String> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let digits = rest
            .strip_prefix("0x")
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| format!("not a hexadecimal int: {text:?}"))?;
        let magnitude = PyInt::from_power_of_two_radix(digits, 4)?;
        Ok(Py::Int(if negative { magnitude.negated() } else { magnitude }))
    }

    /// Python's `type(v).__name__`.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Py::None => "NoneType",
            Py::Bool(_) => "bool",
            Py::Int(_) => "int",
            Py::Float(_) => "float",
            Py::Str(_) => "str",
            Py::List(_) => "list",
            Py::Dict(_) => "dict",
            Py::Other(name, _) => name,
        }
    }

    /// Python's `repr(v)` as a message echoes it: cut by [`pyfmt::clip`], and never built past
    /// [`REPR_BUDGET`] bytes (a list of a million items, a 16 MB string).
    pub(crate) fn repr(&self) -> String {
        let mut out = String::new();
        if self.write_repr(&mut out) {
            pyfmt::clip(&out)
        } else {
            let (head, _) = pyfmt::escaped_head(&out, pyfmt::ECHO_CHARS);
            format!("{head}… (over {REPR_BUDGET} bytes)")
        }
    }

    /// Appends the full `repr`; `false` once `out` passed [`REPR_BUDGET`] (then it stops).
    fn write_repr(&self, out: &mut String) -> bool {
        match self {
            Py::Other(_, text) => out.push_str(text),
            Py::None => out.push_str("None"),
            Py::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            Py::Int(i) => out.push_str(&i.to_string()),
            Py::Float(f) => out.push_str(&pyfmt::float(*f)),
            Py::Str(s) => {
                // Only the head of a long string is escaped: the rest would be cut anyway.
                let cut = s.char_indices().nth(REPR_BUDGET).map_or(s.len(), |(i, _)| i);
                out.push_str(&pyfmt::string(&s[..cut]));
            }
            Py::List(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    if !item.write_repr(out) {
                        return false;
                    }
                }
                out.push(']');
            }
            Py::Dict(items) => {
                out.push('{');
                for (n, (k, v)) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    if !k.write_repr(out) {
                        return false;
                    }
                    out.push_str(": ");
                    if !v.write_repr(out) {
                        return false;
                    }
                }
                out.push('}');
            }
        }
        out.len() <= REPR_BUDGET
    }

    /// Python's `str(v)` (what an f-string prints).
    pub(crate) fn str(&self) -> String {
        match self {
            Py::Str(s) => s.clone(),
            other => other.repr(),
        }
    }
}
