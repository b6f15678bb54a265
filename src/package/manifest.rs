//! `Manifest.json` (spec §1.2): parse and validate any valid JSON, keep unknown keys, and write it
//! back the way the C++ ModelPackage (nlohmann json) does.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::paths::relative_item_path;
use super::random::uuid_v4;
use crate::error::{Error, Result};
use crate::json_nodes::more_json_nodes_than;

/// Most JSON values a manifest may hold. Each takes tens of bytes decoded (a `0` in an array
/// takes 32), and the manifest is held, and copied, for the whole run.
const MAX_NODES: usize = 65_536;

/// The newest `fileFormatVersion` coremltools reads.
const MAX_FORMAT_VERSION: (u64, u64, u64) = (1, 0, 0);
/// Author, description, name and path of the standard weights item (spec §1.2).
const CORE_ML_AUTHOR: &str = "com.apple.CoreML";
const WEIGHTS_DESCRIPTION: &str = "CoreML Model Weights";
const WEIGHTS_NAME: &str = "weights";
/// Where the weights item lives when the manifest has none (relative to `Data/`).
pub(crate) const DEFAULT_WEIGHTS_PATH: &str = "com.apple.CoreML/weights";
const ITEM_KEYS: [&str; 4] = ["author", "description", "name", "path"];

/// A validated package manifest. The whole JSON document is kept so that keys mlprune does not
/// know survive a rewrite.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    document: Map<String, Value>,
    root_path: String,
    weights_path: Option<String>,
}

impl Manifest {
    /// Parses and validates `bytes`; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let invalid = |reason: String| Error::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        if more_json_nodes_than(bytes, MAX_NODES) {
            return Err(invalid(format!(
                "more than {MAX_NODES} JSON values; a manifest lists a package's few items"
            )));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let Value::Object(document) = value else {
            return Err(invalid("the top level is not a JSON object".into()));
        };
        check_format_version(&document).map_err(invalid)?;
        let entries = match document.get("itemInfoEntries") {
            Some(Value::Object(entries)) => entries,
            Some(_) => return Err(invalid("'itemInfoEntries' is not an object".into())),
            None => return Err(invalid("'itemInfoEntries' is missing".into())),
        };
        for (id, item) in entries {
            check_item(id, item).map_err(invalid)?;
        }
        let root_id = match document.get("rootModelIdentifier") {
            Some(Value::String(id)) => id,
            Some(_) => return Err(invalid("'rootModelIdentifier' is not a string".into())),
            None => return Err(invalid("'rootModelIdentifier' is missing".into())),
        };
        let root_path = match entries.get(root_id) {
            Some(item) => item_str(item, "path").to_owned(),
            None => {
                return Err(invalid(format!(
                    "rootModelIdentifier '{root_id}' is not in itemInfoEntries"
                )))
            }
        };
        let weights_path = find_weights_item(entries).map(str::to_owned);
        Ok(Manifest {
            document,
            root_path,
            weights_path,
        })
    }

    /// The root model's item path, relative to `Data/`.
    pub fn root_model_path(&self) -> &str {
        &self.root_path
    }

    /// The weights directory's item path relative to `Data/`: the item named `weights` by author
    /// `com.apple.CoreML` (coremltools' `_try_get_weights_dir_path`).
    pub fn weights_dir_path(&self) -> Option<&str> {
        self.weights_path.as_deref()
    }

    /// Adds the standard weights item under a fresh identifier if there is none, as coremltools
    /// does for every saved ML Program. Returns whether the manifest changed.
    /// The manifest of a new package: a root model item and a weights item, as coremltools writes.
    pub fn new_ml_program() -> Manifest {
        let id = uuid_v4();
        let doc = serde_json::json!({
            "fileFormatVersion": "1.0.0",
            "itemInfoEntries": {
                id.clone(): {
                    "author": CORE_ML_AUTHOR,
                    "description": "CoreML Model Specification",
                    "name": "model.mlmodel",
                    "path": "com.apple.CoreML/model.mlmodel",
                }
            },
            "rootModelIdentifier": id,
        });
        let text = serde_json::to_vec(&doc).unwrap_or_default();
        let mut manifest = match Manifest::parse(&text, Path::new("Manifest.json")) {
            Ok(m) => m,
            // The document above is fixed and valid; parse cannot fail on it.
            Err(e) => unreachable!("built-in manifest is invalid: {e}"),
        };
        manifest.ensure_weights_item();
        manifest
    }

    pub fn ensure_weights_item(&mut self) -> bool {
        if self.weights_path.is_some() {
            return false;
        }
        let Some(Value::Object(entries)) = self.document.get_mut("itemInfoEntries") else {
            // `parse` guarantees the object; a manifest without it cannot be built.
            return false;
        };
        let mut id = uuid_v4();
        while entries.contains_key(&id) {
            id = uuid_v4();
        }
        let item = [
            ("author", CORE_ML_AUTHOR),
            ("description", WEIGHTS_DESCRIPTION),
            ("name", WEIGHTS_NAME),
            ("path", DEFAULT_WEIGHTS_PATH),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
        entries.insert(id, Value::Object(item));
        self.weights_path = Some(DEFAULT_WEIGHTS_PATH.to_owned());
        true
    }

    /// Serializes like nlohmann's `dump(4)`: keys sorted bytewise (std::map order), 4-space
    /// indent, `": "` separator, and a trailing newline as ModelPackage writes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = String::new();
        write_object(&mut out, &self.document, 0);
        out.push('\n');
        out.into_bytes()
    }

    /// Item path of the root model, as confined components (validated by `parse`).
    pub(crate) fn root_model_relative(&self) -> PathBuf {
        relative_item_path(&self.root_path).unwrap_or_default()
    }

    /// Item path of the weights directory, or the standard one when the manifest has none.
    pub(crate) fn weights_relative(&self) -> PathBuf {
        let path = self.weights_path.as_deref().unwrap_or(DEFAULT_WEIGHTS_PATH);
        relative_item_path(path).unwrap_or_default()
    }

    /// Every item's path relative to `Data/`, with its identifier.
    pub(crate) fn item_paths(&self) -> Vec<(&str, PathBuf)> {
        let Some(Value::Object(entries)) = self.document.get("itemInfoEntries") else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|(id, item)| {
                (
                    id.as_str(),
                    relative_item_path(item_str(item, "path")).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// `fileFormatVersion` must be a `major.minor.patch` string no newer than 1.0.0.
fn check_format_version(document: &Map<String, Value>) -> std::result::Result<(), String> {
    let version = match document.get("fileFormatVersion") {
        Some(Value::String(v)) => v,
        Some(_) => return Err("'fileFormatVersion' is not a string".into()),
        None => return Err("'fileFormatVersion' is missing".into()),
    };
    let parts: Vec<&str> = version.split('.').collect();
    let numbers: Option<Vec<u64>> = parts
        .iter()
        .map(|p| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse().ok()
            } else {
                None
            }
        })
        .collect();
    match numbers.as_deref() {
        Some(&[major, minor, patch]) if (major, minor, patch) <= MAX_FORMAT_VERSION => Ok(()),
        Some(&[_, _, _]) => Err(format!(
            "fileFormatVersion '{version}' is newer than the supported {}.{}.{}",
            MAX_FORMAT_VERSION.0, MAX_FORMAT_VERSION.1, MAX_FORMAT_VERSION.2
        )),
        _ => Err(format!(
            "fileFormatVersion '{version}' is not of the form major.minor.patch"
        )),
    }
}

/// An item must be an object with string `author`, `description`, `name` and a confined `path`.
fn check_item(id: &str, item: &Value) -> std::result::Result<(), String> {
    let Value::Object(fields) = item else {
        return Err(format!("item '{id}' is not an object"));
    };
    for key in ITEM_KEYS {
        match fields.get(key) {
            Some(Value::String(_)) => {}
            Some(_) => return Err(format!("item '{id}': '{key}' is not a string")),
            None => return Err(format!("item '{id}': '{key}' is missing")),
        }
    }
    relative_item_path(item_str(item, "path"))
        .map(|_| ())
        .map_err(|why| format!("item '{id}': path '{}' {why}", item_str(item, "path")))
}

/// A string field of a validated item ("" if absent, which `check_item` rules out).
fn item_str<'a>(item: &'a Value, key: &str) -> &'a str {
    item.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The first weights item in identifier order, the order ModelPackage's std::map iterates in.
fn find_weights_item(entries: &Map<String, Value>) -> Option<&str> {
    let mut ids: Vec<&String> = entries.keys().collect();
    ids.sort();
    ids.into_iter().map(|id| &entries[id]).find_map(|item| {
        let is_weights = item_str(item, "name") == WEIGHTS_NAME && item_str(item, "author") == CORE_ML_AUTHOR;
        is_weights.then(|| item_str(item, "path"))
    })
}

fn indent(out: &mut String, depth: usize) {
    out.extend(std::iter::repeat_n(' ', depth * 4));
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Object(map) => write_object(out, map, depth),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                indent(out, depth + 1);
                write_value(out, item, depth + 1);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            indent(out, depth);
            out.push(']');
        }
        // Strings, numbers, booleans and null: serde_json's compact form escapes exactly the
        // characters nlohmann escapes (quote, backslash, control characters; UTF-8 kept as is).
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, depth: usize) {
    if map.is_empty() {
        out.push_str("{}");
        return;
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push_str("{\n");
    for (i, key) in keys.iter().enumerate() {
        indent(out, depth + 1);
        out.push_str(&Value::String((*key).clone()).to_string());
        out.push_str(": ");
        write_value(out, &map[*key], depth + 1);
        out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
    }
    indent(out, depth);
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::testutil::COREMLTOOLS_MANIFEST;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text.as_bytes(), Path::new("pkg/Manifest.json"))
    }

    fn reason(text: &str) -> String {
        match parse(text) {
            Err(Error::Manifest { path, reason }) => {
                assert_eq!(path, Path::new("pkg/Manifest.json"));
                reason
            }
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    /// The coremltools manifest with one substring replaced.
    fn variant(from: &str, to: &str) -> String {
        assert!(COREMLTOOLS_MANIFEST.contains(from), "{from}");
        COREMLTOOLS_MANIFEST.replacen(from, to, 1)
    }

    /// 16 MiB of `[0,0,…]` under an unknown key decoded to 1.8 GB while pruning (issue 18): the
    /// values are counted before anything is decoded.
    #[test]
    fn a_manifest_of_too_many_values_is_refused_before_decoding() {
        let zeros = vec!["0"; MAX_NODES].join(",");
        let bloated = variant(
            "\"fileFormatVersion\"",
            &format!("\"junk\": [{zeros}], \"fileFormatVersion\""),
        );
        assert!(reason(&bloated).contains("more than 65536 JSON values"));
        // A real manifest is far below the limit.
        assert!(!more_json_nodes_than(COREMLTOOLS_MANIFEST.as_bytes(), 100));
        parse(&variant(
            "\"fileFormatVersion\"",
            &format!("\"junk\": \"{}\", \"fileFormatVersion\"", ",".repeat(MAX_NODES)),
        ))
        .unwrap();
    }

    #[test]
    fn coremltools_manifest_round_trips_byte_for_byte() {
        let m = parse(COREMLTOOLS_MANIFEST).unwrap();
        assert_eq!(m.root_model_path(), "com.apple.CoreML/model.mlmodel");
        assert_eq!(m.weights_dir_path(), Some("com.apple.CoreML/weights"));
        assert_eq!(String::from_utf8(m.to_json()).unwrap(), COREMLTOOLS_MANIFEST);
    }

    #[test]
    fn any_json_layout_is_accepted_and_rewritten_sorted() {
        let compact = r#"{"rootModelIdentifier":"b","itemInfoEntries":{"b":{"path":"m/x.mlmodel",
            "name":"x.mlmodel","description":"d","author":"a","extra":[1,{"z":null,"y":true}],
            "empty":{},"none":[]}},"fileFormatVersion":"0.9.3","note":"caf\u00e9 \"q\" \t"}"#;
        let m = parse(compact).unwrap();
        assert_eq!(m.weights_dir_path(), None);
        let expected = r#"{
    "fileFormatVersion": "0.9.3",
    "itemInfoEntries": {
        "b": {
            "author": "a",
            "description": "d",
            "empty": {},
            "extra": [
                1,
                {
                    "y": true,
                    "z": null
                }
            ],
            "name": "x.mlmodel",
            "none": [],
            "path": "m/x.mlmodel"
        }
    },
    "note": "café \"q\" \t",
    "rootModelIdentifier": "b"
}
"#;
        assert_eq!(String::from_utf8(m.to_json()).unwrap(), expected);
        // The rewritten form parses to the same manifest.
        assert_eq!(Manifest::parse(&m.to_json(), Path::new("x")).unwrap(), m);
    }

    #[test]
    fn ensure_weights_item_adds_the_standard_item_once() {
        let mut m = parse(&variant("\"name\": \"weights\"", "\"name\": \"other\"")).unwrap();
        assert_eq!(m.weights_dir_path(), None);
        assert!(m.ensure_weights_item());
        assert_eq!(m.weights_dir_path(), Some("com.apple.CoreML/weights"));
        assert!(!m.ensure_weights_item());
        let reparsed = Manifest::parse(&m.to_json(), Path::new("x")).unwrap();
        assert_eq!(reparsed.weights_dir_path(), Some("com.apple.CoreML/weights"));
        let doc: Value = serde_json::from_slice(&m.to_json()).unwrap();
        let entries = doc["itemInfoEntries"].as_object().unwrap();
        assert_eq!(entries.len(), 3);
        let (id, item) = entries.iter().find(|(_, v)| v["name"] == "weights").unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(item["author"], "com.apple.CoreML");
        assert_eq!(item["description"], "CoreML Model Weights");
        assert_eq!(item["path"], "com.apple.CoreML/weights");
    }

    #[test]
    fn weights_item_needs_core_ml_author() {
        let m = parse(&variant("\"author\": \"com.apple.CoreML\"", "\"author\": \"me\"")).unwrap();
        assert_eq!(m.weights_dir_path(), None);
    }

    #[test]
    fn every_manifest_error_is_reported() {
        assert!(reason("{").contains("not valid JSON"));
        assert!(reason("[]").contains("not a JSON object"));
        assert!(reason(&variant("\"fileFormatVersion\": \"1.0.0\",", ""))
            .contains("'fileFormatVersion' is missing"));
        assert!(reason(&variant("\"1.0.0\"", "100")).contains("not a string"));
        for bad in [
            "1.0",
            "1.0.0.0",
            "1.a.0",
            "1..0",
            "+1.0.0",
            "99999999999999999999.0.0",
        ] {
            assert!(
                reason(&variant("1.0.0", bad)).contains("major.minor.patch"),
                "{bad}"
            );
        }
        for newer in ["1.0.1", "1.1.0", "2.0.0"] {
            assert!(reason(&variant("1.0.0", newer)).contains("newer"), "{newer}");
        }
        assert!(
            reason(r#"{"fileFormatVersion": "1.0.0", "rootModelIdentifier": "x"}"#)
                .contains("'itemInfoEntries' is missing")
        );
        assert!(reason(
            r#"{"fileFormatVersion": "1.0.0", "itemInfoEntries": [], "rootModelIdentifier": "x"}"#
        )
        .contains("'itemInfoEntries' is not an object"));
        assert!(reason(&variant(
            r#"{
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights"
        }"#,
            "7"
        ))
        .contains("is not an object"));
        for key in ITEM_KEYS {
            let missing = variant(&format!("\"{key}\": "), &format!("\"x{key}\": "));
            assert!(reason(&missing).contains(&format!("'{key}' is missing")), "{key}");
        }
        assert!(
            reason(&variant("\"CoreML Model Weights\"", "false")).contains("'description' is not a string")
        );
        assert!(reason(&variant("\"com.apple.CoreML/weights\"", "\"/abs/weights\"")).contains("absolute"));
        assert!(reason(&variant("\"com.apple.CoreML/weights\"", "\"../weights\"")).contains("'..'"));
        assert!(reason(&variant(
            "\"rootModelIdentifier\": \"dba3c96a-dc83-4e7d-850f-773703c01120\"",
            "\"r\": 1"
        ))
        .contains("'rootModelIdentifier' is missing"));
        assert!(reason(&variant(
            "\"rootModelIdentifier\": \"dba3c96a-dc83-4e7d-850f-773703c01120\"",
            "\"rootModelIdentifier\": 1"
        ))
        .contains("'rootModelIdentifier' is not a string"));
        assert!(reason(&variant(
            "\"rootModelIdentifier\": \"dba3c96a",
            "\"rootModelIdentifier\": \"0000"
        ))
        .contains("is not in itemInfoEntries"));
    }

    #[test]
    fn older_format_versions_are_accepted() {
        assert!(parse(&variant("1.0.0", "0.0.1")).is_ok());
        assert!(parse(&variant("1.0.0", "01.00.000")).is_ok());
    }
}
