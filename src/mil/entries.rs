//! Map-like access to an operation's `inputs` and `attributes`.
//!
//! Core ML declares both as protobuf maps. Our schema declares them as the repeated (key, value)
//! messages they are on the wire (see `proto/MIL.proto`), because prost decodes a map into a
//! `BTreeMap` whose first node alone costs over a kilobyte: on a model of 20,000 small tensors the
//! maps were half of the decoded program. A vector holds exactly its entries.
//!
//! The vectors keep the semantics the maps had: `normalize_op` sorts every op's entries by
//! key as soon as the op is decoded (so iteration and encoding order are the maps' order) and
//! refuses a key given twice (a map would have silently kept the last one); [`Entries::set`] inserts
//! at the sorted position. Lookups are linear scans, which is faster than a tree for the handful of
//! entries an op has.

use crate::proto::mil::operation::{AttributeEntry, InputEntry};
use crate::proto::mil::{Argument, Operation, Value};

/// One (key, value) entry of a map-typed field.
pub trait MapEntry: Sized {
    type Value: Default + 'static;
    fn key(&self) -> &str;
    fn value_slot(&mut self) -> &mut Option<Self::Value>;
    fn value_ref(&self) -> Option<&Self::Value>;
    fn from_pair(key: String, value: Self::Value) -> Self;
}

macro_rules! map_entry {
    ($entry:ty, $value:ty) => {
        impl MapEntry for $entry {
            type Value = $value;
            fn key(&self) -> &str {
                &self.key
            }
            fn value_slot(&mut self) -> &mut Option<$value> {
                &mut self.value
            }
            fn value_ref(&self) -> Option<&$value> {
                self.value.as_ref()
            }
            fn from_pair(key: String, value: $value) -> Self {
                Self {
                    key,
                    value: Some(value),
                }
            }
        }
    };
}

map_entry!(InputEntry, Argument);
map_entry!(AttributeEntry, Value);

/// Map operations on a key-sorted vector of entries.
pub trait Entries<E: MapEntry> {
    /// The value under `key`.
    fn lookup(&self, key: &str) -> Option<&E::Value>;
    fn lookup_mut(&mut self, key: &str) -> Option<&mut E::Value>;
    /// Sets `key` to `value`, keeping the entries sorted; returns the value it replaced.
    fn set(&mut self, key: String, value: E::Value) -> Option<E::Value>;
    /// Removes `key` and returns its value.
    fn take(&mut self, key: &str) -> Option<E::Value>;
    /// (key, value) in key order.
    fn pairs(&self) -> impl Iterator<Item = (&str, &E::Value)>;
    fn values_mut(&mut self) -> impl Iterator<Item = &mut E::Value>;
    fn keys(&self) -> impl Iterator<Item = &str>;
}

impl<E: MapEntry> Entries<E> for Vec<E> {
    fn lookup(&self, key: &str) -> Option<&E::Value> {
        self.iter().find(|e| e.key() == key)?.value_ref()
    }

    fn lookup_mut(&mut self, key: &str) -> Option<&mut E::Value> {
        self.iter_mut().find(|e| e.key() == key)?.value_slot().as_mut()
    }

    fn set(&mut self, key: String, value: E::Value) -> Option<E::Value> {
        match self.binary_search_by(|e| e.key().cmp(&key)) {
            Ok(at) => self[at].value_slot().replace(value),
            Err(at) => {
                self.insert(at, E::from_pair(key, value));
                None
            }
        }
    }

    fn take(&mut self, key: &str) -> Option<E::Value> {
        let at = self.iter().position(|e| e.key() == key)?;
        self.remove(at).value_slot().take()
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &E::Value)> {
        self.iter().filter_map(|e| Some((e.key(), e.value_ref()?)))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut E::Value> {
        self.iter_mut().filter_map(|e| e.value_slot().as_mut())
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|e| e.key())
    }
}

/// Builds a key-sorted entry vector from (key, value) pairs; a later duplicate key replaces an
/// earlier one, as inserting into a map would.
pub fn entries_from<E: MapEntry>(pairs: impl IntoIterator<Item = (String, E::Value)>) -> Vec<E> {
    let pairs = pairs.into_iter();
    let mut entries = Vec::with_capacity(pairs.size_hint().0);
    for (key, value) in pairs {
        entries.set(key, value);
    }
    entries
}

/// A key given twice in one op, found by `normalize_op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The op's `name` attribute (or its type when it has none).
    pub op: String,
    /// `"input"` or `"attribute"`.
    pub field: &'static str,
    pub key: String,
}

/// Gives an op the form the maps had: entries sorted by key, a missing value as the default (what
/// prost decodes a map entry without value to). A key given twice is refused: a map keeps one of
/// them silently, and which one a reader keeps is not something to guess. Run on every op as it is
/// decoded (`crate::mil::ops::decode_op`).
pub(crate) fn normalize_op(op: &mut Operation) -> Result<(), DuplicateKey> {
    let duplicate_attribute = normalize_entries(&mut op.attributes);
    let duplicate_input = normalize_entries(&mut op.inputs);
    let (field, key) = match (duplicate_attribute, duplicate_input) {
        (Some(key), _) => ("attribute", key),
        (None, Some(key)) => ("input", key),
        (None, None) => return Ok(()),
    };
    let name = op.attributes.lookup("name").and_then(|v| {
        use super::value::ValueExt;
        v.as_str().map(str::to_owned)
    });
    Err(DuplicateKey {
        op: name.unwrap_or_else(|| op.r#type.clone()),
        field,
        key,
    })
}

/// Sorts by key and fills missing values; returns a key that occurs twice, if any.
fn normalize_entries<E: MapEntry>(entries: &mut [E]) -> Option<String> {
    if !entries.is_sorted_by(|a, b| a.key() < b.key()) {
        entries.sort_by(|a, b| a.key().cmp(b.key()));
    }
    for entry in entries.iter_mut() {
        entry.value_slot().get_or_insert_with(Default::default);
    }
    entries
        .windows(2)
        .find(|w| w[0].key() == w[1].key())
        .map(|w| w[0].key().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::build::{bind_name, op};
    use crate::mil::value::string_value;

    fn attr(key: &str, name: &str) -> AttributeEntry {
        AttributeEntry::from_pair(key.to_owned(), string_value(name))
    }

    #[test]
    fn set_keeps_key_order_and_replaces() {
        let mut entries: Vec<InputEntry> = Vec::new();
        assert!(entries.set("y".into(), bind_name("b")).is_none());
        assert!(entries.set("x".into(), bind_name("a")).is_none());
        assert!(entries.set("z".into(), bind_name("c")).is_none());
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["x", "y", "z"]);
        assert_eq!(entries.set("y".into(), bind_name("d")), Some(bind_name("b")));
        assert_eq!(entries.lookup("y"), Some(&bind_name("d")));
        assert_eq!(entries.take("x"), Some(bind_name("a")));
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["y", "z"]);
        assert_eq!(entries.lookup("x"), None);
    }

    #[test]
    fn normalize_sorts_fills_and_refuses_duplicates() {
        let mut unsorted = op("relu", "r", Default::default(), Default::default(), vec![]);
        unsorted.attributes = vec![
            attr("name", "r"),
            AttributeEntry {
                key: "b".into(),
                value: None,
            },
            attr("a", "x"),
        ];
        normalize_op(&mut unsorted).unwrap();
        assert_eq!(unsorted.attributes.keys().collect::<Vec<_>>(), ["a", "b", "name"]);
        assert_eq!(unsorted.attributes.lookup("b"), Some(&Value::default()));

        let mut twice = op("relu", "r", Default::default(), Default::default(), vec![]);
        twice.inputs = vec![
            InputEntry::from_pair("x".into(), bind_name("a")),
            InputEntry::from_pair("x".into(), bind_name("b")),
        ];
        assert_eq!(
            normalize_op(&mut twice),
            Err(DuplicateKey {
                op: "r".into(),
                field: "input",
                key: "x".into()
            })
        );
    }
}
