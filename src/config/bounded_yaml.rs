//! YAML read into a value with a bound on what its aliases expand to.
//!
//! An alias repeats the node its anchor names, and aliases may name nodes full of aliases: a 1 MB
//! config of a thousand 1,000-byte strings behind an anchor, then levels of ten aliases of the
//! level before, took 1.2 GB at three levels and was killed past 20 GB at six (issue 18). The
//! parser's own limit counts repeated events, not their bytes. Here the value is built by a
//! visitor that charges every node as it comes, expansions included, and stops at
//! [`MAX_EXPANDED_BYTES`], before the memory is spent. Otherwise it builds what
//! `serde_norway::Value`'s own `Deserialize` builds, except that a repeated key keeps its last value
//! (PyYAML's dict) and integers past u64 are kept as floats, not refused.
//!
//! The config's values come from `config::yaml11` (YAML 1.1, as PyYAML reads them); this pass
//! runs first for its syntax errors, its one-document rule and the bound.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_norway::{Mapping, Value};

/// What a config may take once parsed, aliases expanded: four times the largest config file
/// (`super::source::MAX_CONFIG_BYTES`), strings by their length and every node as `NODE_COST`.
pub const MAX_EXPANDED_BYTES: u64 = 64 << 20;

/// Charged per node besides its text: roughly what a `Value` and its slot take.
const NODE_COST: u64 = 64;

/// Parses one YAML document of `text` into a `Value`, refusing one that expands past the bound.
pub fn from_str(text: &str) -> Result<Value, serde_norway::Error> {
    from_str_within(text, MAX_EXPANDED_BYTES)
}

fn from_str_within(text: &str, limit: u64) -> Result<Value, serde_norway::Error> {
    let budget = Budget(Cell::new(limit));
    Bounded(&budget).deserialize(serde_norway::Deserializer::from_str(text))
}

struct Budget(Cell<u64>);

impl Budget {
    fn spend<E: de::Error>(&self, text: usize) -> Result<(), E> {
        let cost = NODE_COST.saturating_add(text as u64);
        let left = self.0.get();
        if cost > left {
            return Err(E::custom(format!(
                "it expands past {} MiB once its aliases are repeated; refusing it",
                MAX_EXPANDED_BYTES >> 20
            )));
        }
        self.0.set(left - cost);
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Bounded<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Number(u.into()))
    }

    fn visit_i128<E: de::Error>(self, i: i128) -> Result<Value, E> {
        self.visit_f64(i as f64)
    }

    fn visit_u128<E: de::Error>(self, u: u128) -> Result<Value, E> {
        self.visit_f64(u as f64)
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.spend(s.len())?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.spend(s.len())?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.spend(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.spend(0)?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            // A repeated key keeps its last value, as PyYAML's dict does.
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // A tagged node (`!tag value`): refused, as configs are plain data.
        let (tag, _): (String, _) = data.variant()?;
        Err(de::Error::custom(format!("unsupported tag {tag}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_serde_norway_builds() {
        let text = "a: 1\nb: [x, -2, 0.5, true, null, ~]\nc: {d: 'e', 7: f}\nanchor: &x [1, 2]\nalias: *x\n";
        let ours = from_str(text).unwrap();
        let theirs: Value = serde_norway::from_str(text).unwrap();
        assert_eq!(ours, theirs);
        // serde_norway refuses a repeated key; PyYAML keeps the last value, and so does this pass.
        assert_eq!(
            from_str("a: 1\na: 2\n").unwrap(),
            serde_norway::from_str::<Value>("a: 2\n").unwrap()
        );
        assert!(from_str("a: 18446744073709551616\n").is_ok(), "past u64");
        assert!(from_str("a: !custom 1\n")
            .unwrap_err()
            .to_string()
            .contains("unsupported tag"));
        assert!(from_str("a: 1\n---\nb: 2\n").is_err(), "one document only");
    }

    #[test]
    fn aliases_of_long_strings_are_refused_before_they_expand() {
        // One 1 MB string behind an anchor, named a hundred times: 100 MB expanded.
        let text = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(1 << 20),
            vec!["*a"; 100].join(",")
        );
        let err = from_str(&text).unwrap_err().to_string();
        assert!(err.contains("expands past 64 MiB"), "{err}");
        // A small one: read within a bound that holds it, refused within one that does not.
        let small = "a: &a [\"xyz\", \"xyz\"]\nb: [*a, *a, *a]\n";
        assert!(from_str_within(small, 20 * NODE_COST).is_ok());
        assert!(from_str_within(small, 10 * NODE_COST).is_err());
    }
}
