//! The value tree a config file is read into: the Python objects `json.load` and `yaml.safe_load`
//! produce, with the names and text Python gives them in messages. The JSON and YAML readers make
//! it (`super::parse`, `super::yaml11`); `super::parse` walks it as coremltools walks the dict.

use super::pyfmt;
use super::pyint::PyInt;

/// A parsed document, typed like the Python objects `json.load` / `yaml.safe_load` produce.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Py {
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

    /// Python's `repr(v)`.
    pub(crate) fn repr(&self) -> String {
        match self {
            Py::Other(_, text) => text.clone(),
            Py::None => "None".into(),
            Py::Bool(b) => if *b { "True" } else { "False" }.into(),
            Py::Int(i) => i.to_string(),
            Py::Float(f) => pyfmt::float(*f),
            Py::Str(s) => pyfmt::string(s),
            Py::List(items) => format!("[{}]", items.iter().map(Py::repr).collect::<Vec<_>>().join(", ")),
            Py::Dict(items) => format!(
                "{{{}}}",
                items
                    .iter()
                    .map(|(k, v)| format!("{}: {}", k.repr(), v.repr()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Python's `str(v)` (what an f-string prints).
    pub(crate) fn str(&self) -> String {
        match self {
            Py::Str(s) => s.clone(),
            other => other.repr(),
        }
    }
}
