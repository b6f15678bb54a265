//! Reading coremltools' `OptimizationConfig.from_dict` layout from JSON or YAML.
//!
//! The text is first turned into a Python-like value tree (`Py`), then walked the way
//! `from_dict` + cattrs + attrs + the `prune_weights` pass constructor walk the Python dict, so the
//! same inputs are accepted and the first error is the one coremltools reports. What coremltools
//! does with each kind of input is tabled in [`super::validate`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::bounded_yaml;
use super::depth::check_depth;
use super::limits::{check_json_nodes, MAX_CONFIG_NODES};
use super::py::Py;
use super::pyint::PyInt;
use super::source::read_config_text;
use super::validate::{RawMagnitude, RawThreshold};
use super::yaml11;
use super::{pyfmt, OpConfig, OptimizationConfig, MAGNITUDE_CLASS, THRESHOLD_CLASS};
use crate::{Error, Result};

/// The top-level keys `from_dict` accepts, in the order its message lists them.
const VALID_KEYS: [&str; 4] = [
    "config_type",
    "global_config",
    "op_name_configs",
    "op_type_configs",
];
/// Other config classes of `coremltools.optimize.coreml._config`: `from_dict` builds them, the
/// `prune_weights` pass then refuses them.
const FOREIGN_CLASSES: [&str; 2] = ["OpLinearQuantizerConfig", "OpPalettizerConfig"];

fn err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Text → Py

fn from_json_value(v: serde_json::Value) -> Py {
    use serde_json::Value as J;
    match v {
        J::Null => Py::None,
        J::Bool(b) => Py::Bool(b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Py::Int(PyInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Py::Int(PyInt::from(u))
            } else {
                Py::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Py::Str(s),
        J::Array(items) => Py::List(items.into_iter().map(from_json_value).collect()),
        J::Object(map) => Py::Dict(
            map.into_iter()
                .map(|(k, v)| (Py::Str(k), from_json_value(v)))
                .collect(),
        ),
    }
}

fn parse_json(s: &str) -> Result<Py> {
    // Counted before serde_json builds its tree: 16 MiB of `0,` took 874 MB to build.
    check_json_nodes(s, MAX_CONFIG_NODES).map_err(err)?;
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| err(format!("invalid JSON: {e}")))?;
    Ok(from_json_value(v))
}

fn parse_yaml(s: &str) -> Result<Py> {
    // PyYAML reads a leading byte-order mark as such; libyaml's scanner saw a second document.
    let s = s.strip_prefix('\u{feff}').unwrap_or(s);
    check_no_inner_bom(s)?;
    // Nodes counted as libyaml streams them, before serde_norway (which holds every event) or
    // `yaml11` builds anything.
    let scan = yaml11::scan(s, MAX_CONFIG_NODES).map_err(err)?;
    // serde_norway's pass: syntax errors (with their positions), one document only, and the bound
    // on what aliases expand to. It builds no value: ours come from `yaml11`.
    bounded_yaml::check(s, scan.aliases).map_err(|e| err(format!("invalid YAML: {e}")))?;
    // The values as PyYAML builds them (YAML 1.1 scalars, merge keys, last of a repeated key).
    yaml11::load(s).map_err(|e| err(format!("invalid YAML: {e}")))
}

/// PyYAML skips a byte-order mark only at the very start of the text; libyaml skips one at the start
/// of any line, where PyYAML reads it as text (a second leading mark makes the key
/// `'\ufeffconfig_type'`; one at the end of the file is a ScannerError). Both such files are
/// refused here rather than read as libyaml reads them (also, unlike PyYAML, one at the start of a
/// line inside a quoted string).
fn check_no_inner_bom(s: &str) -> Result<()> {
    let at_line_start = |i: usize| {
        i == 0 || {
            let before = &s[..i];
            before.ends_with(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
        }
    };
    match s.match_indices('\u{feff}').find(|&(i, _)| at_line_start(i)) {
        None => Ok(()),
        Some((i, _)) => Err(err(format!(
            "invalid YAML: a byte-order mark (U+FEFF) at the start of line {}; PyYAML reads one only \
             at the start of the file",
            // The leading mark, if any, was stripped: lines are counted in the rest.
            1 + s[..i].matches('\n').count()
        ))),
    }
}

/// Parse the `from_dict` layout from JSON text. Text nested deeper than
/// [`super::depth::MAX_CONFIG_DEPTH`] is refused before it is parsed.
pub fn from_json_str(s: &str) -> Result<OptimizationConfig> {
    check_depth(s)?;
    from_dict(&parse_json(s)?)
}

/// Parse the `from_dict` layout from YAML text. Text nested deeper than
/// [`super::depth::MAX_CONFIG_DEPTH`] is refused before it is parsed.
pub fn from_yaml_str(s: &str) -> Result<OptimizationConfig> {
    check_depth(s)?;
    from_dict(&parse_yaml(s)?)
}

/// Read a config file: `.json` as JSON, `.yaml`/`.yml` as YAML, anything else JSON first, then YAML
/// if it is not JSON at all. Errors are prefixed with the file name. The file must be a regular
/// UTF-8 file of at most [`super::source::MAX_CONFIG_BYTES`] ([`super::source`]), nested at most
/// [`super::depth::MAX_CONFIG_DEPTH`] deep ([`super::depth`]); both are checked before any parser
/// runs.
pub fn from_file(path: &Path) -> Result<OptimizationConfig> {
    let text = read_config_text(path)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let tree = check_depth(&text).and_then(|()| match ext.as_deref() {
        Some("json") => parse_json(&text),
        Some("yaml") | Some("yml") => parse_yaml(&text),
        _ => parse_json(&text).or_else(|_| parse_yaml(&text)),
    });
    tree.and_then(|t| from_dict(&t)).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        other => other,
    })
}

// ---------------------------------------------------------------------------------------------
// cattrs coercion: `float(v)` and `int(v)`

/// `float(s)` for a string: surrounding whitespace, `_` between digits, `inf`/`nan` words.
fn python_float_from_str(s: &str) -> Option<f64> {
    let t = strip_digit_underscores(s.trim())?;
    let (sign, body) = match t.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, t.strip_prefix('+').unwrap_or(&t)),
    };
    match body.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => return Some(sign * f64::INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    // Rust's grammar for the remaining forms (`1`, `1.`, `.5`, `1e-3`) matches Python's; reject
    // a second sign and the words Rust would also take.
    if body.starts_with(['+', '-'])
        || body
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        return None;
    }
    body.parse::<f64>().ok().map(|v| sign * v)
}

/// `int(s)` for a string in base 10: `None` where Python's message is "invalid literal", `Some(Err)`
/// past its limit of 4300 digits.
fn python_int_from_str(s: &str) -> Option<std::result::Result<PyInt, String>> {
    let t = strip_digit_underscores(s.trim())?;
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(PyInt::from_decimal(digits).map(|m| if negative { m.negated() } else { m }))
}

/// Python allows single underscores between digits in numeric strings; anything else is invalid.
fn strip_digit_underscores(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            let before = i
                .checked_sub(1)
                .and_then(|j| chars.get(j))
                .is_some_and(|c| c.is_ascii_digit());
            let after = chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
            if !(before && after) {
                return None;
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn to_float(v: &Py) -> std::result::Result<f64, String> {
    match v {
        Py::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Py::Int(i) => i
            .to_f64()
            .ok_or_else(|| "int too large to convert to float".to_string()),
        Py::Float(f) => Ok(*f),
        Py::Str(s) => {
            python_float_from_str(s).ok_or_else(|| format!("could not convert string to float: {}", v.repr()))
        }
        other => Err(format!(
            "float() argument must be a string or a real number, not '{}'",
            other.type_name()
        )),
    }
}

fn to_int(v: &Py) -> std::result::Result<PyInt, String> {
    match v {
        Py::Bool(b) => Ok(PyInt::from(*b)),
        Py::Int(i) => Ok(i.clone()),
        Py::Float(f) if f.is_nan() => Err("cannot convert float NaN to integer".into()),
        Py::Float(f) if f.is_infinite() => Err("cannot convert float infinity to integer".into()),
        // `int(2.7) == 2`, `int(-0.5) == 0`, `int(1e30)` exactly.
        Py::Float(f) => Ok(PyInt::from_f64_trunc(*f)),
        Py::Str(s) => python_int_from_str(s)
            .unwrap_or_else(|| Err(format!("invalid literal for int() with base 10: {}", v.repr()))),
        other => Err(format!(
            "int() argument must be a string, a bytes-like object or a real number, not '{}'",
            other.type_name()
        )),
    }
}

/// cattrs' `Tuple[int, int]` hook: iterate, convert the first two, then check the length.
fn to_int_pair(v: &Py) -> std::result::Result<(PyInt, PyInt), String> {
    let items: Vec<Py> = match v {
        Py::List(items) => items.clone(),
        Py::Str(s) => s.chars().map(|c| Py::Str(c.to_string())).collect(),
        Py::Dict(_) => {
            return Err(format!(
                "n_m_ratio must be a list of two integers, got {}",
                v.repr()
            ))
        }
        other => return Err(format!("object of type '{}' has no len()", other.type_name())),
    };
    let converted: Vec<PyInt> = items
        .iter()
        .take(2)
        .map(to_int)
        .collect::<std::result::Result<_, _>>()?;
    match (converted.as_slice(), items.len()) {
        ([n, m], 2) => Ok((n.clone(), m.clone())),
        (_, len) => Err(format!(
            "{} values in {} to structure as typing.Tuple[int, int]",
            if len > 2 { "Too many" } else { "Not enough" },
            v.repr()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// from_dict

/// An entry before the pass checks its class.
enum Entry {
    Pruner(OpConfig),
    /// Another coremltools config class: valid for `from_dict`, refused by `prune_weights`.
    Foreign(String),
}

/// Most characters of the list of extra field names a message shows.
const EXTRA_LIST_CHARS: usize = 1024;

/// Looks up one field of an entry's mapping by name.
fn field<'a>(fields: &'a [(Py, Py)], name: &str) -> Option<&'a Py> {
    fields
        .iter()
        .rev()
        .find(|(k, _)| matches!(k, Py::Str(s) if s == name))
        .map(|(_, v)| v)
}

/// cattrs `structure(config_dict, cls)` with `forbid_extra_keys=True`, then the attrs validators.
fn structure(class: &str, fields: &[(Py, Py)], known: &[&str]) -> Result<OpConfig> {
    // cattrs converts every field (reporting the first failure in field order) before it checks
    // for extra keys; attrs validators run only once both passed.
    let conv = |name: &str, r: std::result::Result<(), String>| {
        r.map_err(|m| err(format!("{class} @ attribute {name}: {m}")))
    };
    let mut extra: Vec<String> = fields
        .iter()
        .map(|(k, _)| k.str())
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    extra.sort();
    extra.dedup();
    let check_extra = || {
        if extra.is_empty() {
            Ok(())
        } else {
            Err(err(format!(
                "Extra fields in constructor for {class}: {}",
                // Each name cut, and the list too: one line of bounded length.
                pyfmt::clip_at(
                    &extra
                        .iter()
                        .map(|k| pyfmt::clip(k))
                        .collect::<Vec<_>>()
                        .join(", "),
                    EXTRA_LIST_CHARS
                )
            )))
        }
    };
    let opt_float = |name: &str, raw: &mut Option<f64>| -> Result<()> {
        match field(fields, name) {
            None => Ok(()),
            Some(Py::None) => {
                *raw = None;
                Ok(())
            }
            Some(v) => conv(name, to_float(v).map(|f| *raw = Some(f))),
        }
    };
    let opt_int = |name: &str, raw: &mut Option<PyInt>| -> Result<()> {
        match field(fields, name) {
            None => Ok(()),
            Some(Py::None) => {
                *raw = None;
                Ok(())
            }
            Some(v) => conv(name, to_int(v).map(|i| *raw = Some(i))),
        }
    };

    if class == THRESHOLD_CLASS {
        let mut raw = RawThreshold::default();
        // `threshold` and `minimum_sparsity_percentile` are plain `float`: None is not allowed.
        if let Some(v) = field(fields, "threshold") {
            conv("threshold", to_float(v).map(|f| raw.threshold = f))?;
        }
        if let Some(v) = field(fields, "minimum_sparsity_percentile") {
            conv(
                "minimum_sparsity_percentile",
                to_float(v).map(|f| raw.minimum_sparsity_percentile = f),
            )?;
        }
        opt_int("weight_threshold", &mut raw.weight_threshold)?;
        check_extra()?;
        raw.into_config()
    } else {
        let mut raw = RawMagnitude::default();
        opt_float("target_sparsity", &mut raw.target_sparsity)?;
        opt_int("block_size", &mut raw.block_size)?;
        match field(fields, "n_m_ratio") {
            None | Some(Py::None) => {}
            Some(v) => conv("n_m_ratio", to_int_pair(v).map(|p| raw.n_m_ratio = Some(p)))?,
        }
        opt_int("dim", &mut raw.dim)?;
        opt_int("weight_threshold", &mut raw.weight_threshold)?;
        check_extra()?;
        raw.into_config()
    }
}

/// `_get_cls_instance(config_type, attrs)`: `None` is an explicit skip.
fn entry(default_class: &str, value: &Py, at: &str) -> Result<Option<Entry>> {
    let fields = match value {
        Py::None => return Ok(None),
        Py::Dict(fields) => fields,
        other => {
            return Err(err(format!(
                "{at}: must be a mapping of config fields or null, got {} {}",
                other.type_name(),
                other.repr()
            )))
        }
    };
    let class = match field(fields, "config_type") {
        None => default_class.to_string(),
        Some(Py::Str(s)) => s.clone(),
        Some(other) => {
            return Err(err(format!(
                "{at}: config_type must be a string, got {}",
                other.repr()
            )));
        }
    };
    let rest: Vec<(Py, Py)> = fields
        .iter()
        .filter(|(k, _)| !matches!(k, Py::Str(s) if s == "config_type"))
        .cloned()
        .collect();
    let known: &[&str] = match class.as_str() {
        THRESHOLD_CLASS => &["threshold", "minimum_sparsity_percentile", "weight_threshold"],
        MAGNITUDE_CLASS => &[
            "target_sparsity",
            "block_size",
            "n_m_ratio",
            "dim",
            "weight_threshold",
        ],
        c if FOREIGN_CLASSES.contains(&c) => return Ok(Some(Entry::Foreign(class))),
        "OpCompressorConfig" => {
            return Err(err(format!(
                "{at}: _from_dict must be implemented in the subclasses of OpCompressorConfig."
            )))
        }
        _ => {
            return Err(err(format!(
                "{at}: config_type {} is not a coremltools config class; {}",
                pyfmt::clip(&pyfmt::string(&class)),
                only_accept_message(&class)
            )))
        }
    };
    structure(&class, &rest, known)
        .map(|c| Some(Entry::Pruner(c)))
        .map_err(|e| match e {
            Error::Config(m) => err(format!("{at}: {m}")),
            other => other,
        })
}

fn only_accept_message(got: &str) -> String {
    format!(
        "prune_weights only accept {MAGNITUDE_CLASS}, {THRESHOLD_CLASS} type config. Got {}.",
        pyfmt::clip(got)
    )
}

/// Python's `<class 'list'>` for a value's type.
fn class_repr(v: &Py) -> String {
    format!("<class '{}'>", v.type_name())
}

fn is_valid_key(k: &Py) -> bool {
    matches!(k, Py::Str(s) if VALID_KEYS.contains(&s.as_str()))
}

fn invalid_key(k: &Py) -> Error {
    err(format!(
        "Invalid key {} to construct an OptimizationConfig object. Supported keys are ('{}').",
        pyfmt::clip(&k.str()),
        VALID_KEYS.join("', '")
    ))
}

/// `OptimizationConfig.from_dict(d)` followed by `prune_weights(config=...)`'s type check.
pub(crate) fn from_dict(doc: &Py) -> Result<OptimizationConfig> {
    let top = match doc {
        Py::Dict(top) => top,
        // `for k in config_dict` iterates a list's items, so the key check reports them first.
        Py::List(items) if items.iter().any(|k| !is_valid_key(k)) => {
            let k = items.iter().find(|k| !is_valid_key(k)).unwrap_or(&Py::None);
            return Err(invalid_key(k));
        }
        other => {
            return Err(err(format!(
                "the config must be a mapping with the keys config_type, global_config, op_type_configs, \
                 op_name_configs; got {}",
                other.type_name()
            )))
        }
    };
    if let Some((k, _)) = top.iter().find(|(k, _)| !is_valid_key(k)) {
        return Err(invalid_key(k));
    }
    let config_type = match field(top, "config_type") {
        Some(Py::Str(s)) => s.as_str(),
        _ => return Err(err("config_type must be provided with type of string.")),
    };

    let global = match field(top, "global_config") {
        None => None,
        Some(v) => entry(config_type, v, "global_config")?,
    };
    let mut levels: Vec<Vec<(String, Option<Entry>)>> = Vec::with_capacity(2);
    for key in ["op_type_configs", "op_name_configs"] {
        let mut level: Vec<(String, Option<Entry>)> = Vec::new();
        // Where each name is in `level`: a repeated key is found in O(1), not by a scan of every
        // entry before it (that scan made 60 000 entries take minutes).
        let mut index: HashMap<&str, usize> = HashMap::new();
        match field(top, key) {
            None | Some(Py::None) => {}
            Some(Py::Dict(items)) => {
                for (k, v) in items {
                    let Py::Str(name) = k else {
                        // coremltools keeps such a key (YAML `5:`, `true:`, `~:`); it can never
                        // match an op. Its entry is still checked, as coremltools checks it.
                        let e = entry(config_type, v, &format!("{key}[{}]", k.repr()))?;
                        if key == "op_type_configs" {
                            if let Some(Entry::Pruner(c)) = &e {
                                c.validate_op_type(&k.str())?;
                            }
                        }
                        continue;
                    };
                    let e = entry(
                        config_type,
                        v,
                        &format!("{key}[{}]", pyfmt::clip(&pyfmt::string(name))),
                    )?;
                    // A repeated key keeps the last value at the first key's place, as a Python
                    // dict does.
                    match index.entry(name.as_str()) {
                        std::collections::hash_map::Entry::Occupied(at) => level[*at.get()].1 = e,
                        std::collections::hash_map::Entry::Vacant(at) => {
                            at.insert(level.len());
                            level.push((name.clone(), e));
                        }
                    }
                }
            }
            Some(other) => {
                return Err(err(format!(
                    "{key} must be type of dict. Got {}",
                    class_repr(other)
                )))
            }
        }
        levels.push(level);
    }
    let op_name = levels.pop().unwrap_or_default();
    let op_type = levels.pop().unwrap_or_default();

    // OptimizationConfig.__init__: structural configs only for conv / linear op types.
    for (op_type_name, e) in &op_type {
        if let Some(Entry::Pruner(c)) = e {
            c.validate_op_type(op_type_name)?;
        }
    }
    // prune_weights(config=...): every config must be a pruner config.
    let all = global
        .iter()
        .chain(op_type.iter().filter_map(|(_, e)| e.as_ref()));
    for e in all.chain(op_name.iter().filter_map(|(_, e)| e.as_ref())) {
        if let Entry::Foreign(class) = e {
            return Err(err(only_accept_message(class)));
        }
    }

    let unwrap = |e: Option<Entry>| match e {
        Some(Entry::Pruner(c)) => Some(c),
        _ => None,
    };
    Ok(OptimizationConfig {
        global: unwrap(global),
        op_type: op_type
            .into_iter()
            .map(|(k, e)| (k, unwrap(e)))
            .collect::<BTreeMap<_, _>>(),
        op_name: op_name
            .into_iter()
            .map(|(k, e)| (k, unwrap(e)))
            .collect::<BTreeMap<_, _>>(),
    })
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yaml_byte_order_mark_is_read_as_one() {
        let text = "\u{feff}config_type: OpMagnitudePrunerConfig\nglobal_config:\n  target_sparsity: 0.5\n";
        assert!(from_yaml_str(text).is_ok());
    }

    #[test]
    fn a_byte_order_mark_past_the_start_is_refused() {
        let body = "config_type: OpMagnitudePrunerConfig\nglobal_config: {target_sparsity: 0.5}\n";
        for (text, line) in [
            (format!("\u{feff}\u{feff}{body}"), 1),
            (format!("{body}\u{feff}"), 3),
            (format!("\u{feff}{body}\u{feff}"), 3),
        ] {
            let m = from_yaml_str(&text).unwrap_err().to_string();
            assert!(
                m.contains(&format!("byte-order mark (U+FEFF) at the start of line {line}")),
                "{m}"
            );
        }
        // Inside a line it is text, to PyYAML and libyaml alike.
        let inner = format!("{body}op_name_configs: {{'a\u{feff}': null}}\n");
        assert!(from_yaml_str(&inner).is_ok());
    }

    /// A config of `entries` op-name entries, `null` each: 2 nodes an entry, 7 around them.
    fn null_entries(entries: usize, json: bool) -> String {
        if json {
            let body: Vec<String> = (0..entries).map(|i| format!("\"k{i}\": null")).collect();
            format!(
                "{{\"config_type\": \"OpMagnitudePrunerConfig\", \"global_config\": null, \"op_name_configs\": {{{}}}}}",
                body.join(", ")
            )
        } else {
            let body: String = (0..entries).map(|i| format!("  k{i}: null\n")).collect();
            format!("config_type: OpMagnitudePrunerConfig\nglobal_config: null\nop_name_configs:\n{body}")
        }
    }

    #[test]
    fn json_and_yaml_share_one_node_bound() {
        use crate::config::limits::MAX_CONFIG_NODES;
        let fits = (MAX_CONFIG_NODES - 7) / 2;
        for json in [false, true] {
            let parse = |t: &str| if json { from_json_str(t) } else { from_yaml_str(t) };
            let cfg = parse(&null_entries(fits, json)).unwrap();
            assert_eq!(cfg.op_name.len(), fits);
            let m = parse(&null_entries(fits + 1, json)).unwrap_err().to_string();
            assert!(m.contains(&format!("more than {MAX_CONFIG_NODES} nodes")), "{m}");
            assert!(!m.contains("alias"), "{m}");
        }
    }

    #[test]
    fn echoed_keys_are_cut_to_one_short_line() {
        let key = format!("{}\n{}", "k".repeat(100), "x".repeat(1 << 20));
        let json = format!("{{{}: 1}}", serde_json::to_string(&key).unwrap());
        let m = from_json_str(&json).unwrap_err().to_string();
        assert!(m.len() < 300, "{} bytes", m.len());
        assert!(!m.contains('\n'), "{m}");
        assert!(
            m.contains(&format!("{}… ({} bytes)", "k".repeat(64), key.len())),
            "{m}"
        );
        let yaml = format!(
            // An explicit key: a plain one may not pass 1024 characters.
            "config_type: OpThresholdPrunerConfig\nop_name_configs:\n  ? {}\n  : {{threshold: -1}}\n",
            "w".repeat(1 << 20)
        );
        let m = from_yaml_str(&yaml).unwrap_err().to_string();
        assert!(m.len() < 300, "{m}");
        assert!(
            m.starts_with(&format!(
                "config: op_name_configs['{}… (1048578 bytes)]",
                "w".repeat(63)
            )),
            "{m}"
        );
        let extra = format!(
            "{{\"config_type\": \"OpThresholdPrunerConfig\", \"global_config\": {{{}}}}}",
            (0..10_000)
                .map(|i| format!("\"x{i}\": 1"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let m = from_json_str(&extra).unwrap_err().to_string();
        assert!(m.len() < 1200 && m.contains("Extra fields in constructor"), "{m}");
        let list = format!(
            "{{\"config_type\": \"OpThresholdPrunerConfig\", \"global_config\": [{}]}}",
            vec!["\"config_type\""; 100_000].join(",")
        );
        let m = from_json_str(&list).unwrap_err().to_string();
        assert!(m.len() < 300 && m.contains("(over 4096 bytes)"), "{m}");
    }

    #[test]
    fn python_numeric_strings() {
        assert_eq!(python_float_from_str(" 1_0.5 "), Some(10.5));
        assert_eq!(python_float_from_str("5e-1"), Some(0.5));
        assert_eq!(python_float_from_str("-Infinity"), Some(f64::NEG_INFINITY));
        assert!(python_float_from_str("nan").is_some_and(f64::is_nan));
        assert_eq!(python_float_from_str("1__0"), None);
        assert_eq!(python_float_from_str("abc"), None);
        assert_eq!(python_float_from_str("+-1"), None);
        assert_eq!(python_int_from_str(" 12 "), Some(Ok(PyInt::from(12i64))));
        assert_eq!(python_int_from_str("1_000"), Some(Ok(PyInt::from(1000i64))));
        assert_eq!(python_int_from_str("-3"), Some(Ok(PyInt::from(-3i64))));
        assert!(python_int_from_str(&"9".repeat(4301)).is_some_and(|r| r.is_err()));
        assert_eq!(python_int_from_str("1e3"), None);
        assert_eq!(python_int_from_str("2.5"), None);
        assert_eq!(python_int_from_str(""), None);
    }

    #[test]
    fn yaml_example_from_coremltools_docs() {
        let cfg = from_yaml_str(
            "config_type: OpThresholdPrunerConfig\nglobal_config:\n    threshold: 0.01\n\
             op_type_configs:\n    conv:\n        config_type: OpMagnitudePrunerConfig\n        n_m_ratio: [3, 4]\n",
        )
        .unwrap();
        assert_eq!(
            cfg.global,
            Some(OpConfig::Threshold {
                threshold: 0.01,
                minimum_sparsity_percentile: 0.5,
                weight_threshold: Some(2048)
            })
        );
        assert_eq!(
            cfg.op_type.get("conv"),
            Some(&Some(OpConfig::Magnitude {
                target_sparsity: None,
                block_size: None,
                n_m_ratio: Some((3, 4)),
                dim: Some(1),
                weight_threshold: Some(2048)
            }))
        );
        assert!(cfg.op_name.is_empty());
    }

    #[test]
    fn null_entries_are_explicit_skips() {
        let cfg = from_json_str(
            r#"{"config_type": "OpMagnitudePrunerConfig", "global_config": null,
                "op_type_configs": {"linear": null}, "op_name_configs": {"w": null}}"#,
        )
        .unwrap();
        assert_eq!(cfg.global, None);
        assert_eq!(cfg.op_type.get("linear"), Some(&None));
        assert_eq!(cfg.op_name.get("w"), Some(&None));
    }

    #[test]
    fn entry_errors_say_where() {
        let e = from_json_str(
            r#"{"config_type": "OpThresholdPrunerConfig", "op_name_configs": {"w": {"threshold": -1}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config: op_name_configs['w']: Invalid value of \"threshold\": -1.0. Needs to be in [0, inf)"
        );
    }

    #[test]
    fn from_file_detects_format_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("c.yml");
        std::fs::write(
            &yaml,
            "config_type: OpMagnitudePrunerConfig\nglobal_config: {target_sparsity: 0.25}\n",
        )
        .unwrap();
        let cfg = OptimizationConfig::from_file(&yaml).unwrap();
        assert!(
            matches!(cfg.global, Some(OpConfig::Magnitude { target_sparsity: Some(t), .. }) if t == 0.25)
        );

        // No known extension: JSON is tried first, then YAML.
        let other = dir.path().join("c.cfg");
        std::fs::write(
            &other,
            "config_type: OpThresholdPrunerConfig\nglobal_config: {}\n",
        )
        .unwrap();
        assert!(OptimizationConfig::from_file(&other).unwrap().global.is_some());

        let bad = dir.path().join("bad.json");
        std::fs::write(
            &bad,
            r#"{"config_type": "OpThresholdPrunerConfig", "global_config": {"x": 1}}"#,
        )
        .unwrap();
        let msg = OptimizationConfig::from_file(&bad).unwrap_err().to_string();
        assert!(
            msg.contains(
                "bad.json: global_config: Extra fields in constructor for OpThresholdPrunerConfig: x"
            ),
            "{msg}"
        );

        let missing = dir.path().join("missing.json");
        assert!(matches!(
            OptimizationConfig::from_file(&missing),
            Err(Error::Io { .. })
        ));
    }
}
