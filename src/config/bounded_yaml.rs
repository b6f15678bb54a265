//! YAML read through serde_norway with a bound on what its aliases expand to.
//!
//! An alias repeats the node its anchor names, and aliases may name nodes full of aliases: a 1 MB
//! config of a thousand 1,000-byte strings behind an anchor, then levels of ten aliases of the
//! level before, took 1.2 GB at three levels and was killed past 20 GB at six (issue 18). The
//! parser's own limit counts repeated events, not their bytes. Here a visitor charges every node
//! as it comes, expansions included, and stops at [`MAX_EXPANDED_BYTES`], before `config::yaml11`
//! builds the values (it expands aliases the same way).
//!
//! The visitor builds nothing: the config's values come from `config::yaml11` (YAML 1.1, as PyYAML
//! reads them); this pass runs first for serde_norway's syntax errors (with their positions), its
//! one-document rule and the bound. It once built a `serde_norway::Value`, whose `Mapping` hashes
//! every float key alike: 80,000 keys `0.5:`, `1.5:`, … took 30 s to insert.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Visitor};

/// What a config may take once parsed, aliases expanded: four times the largest config file
/// (`super::source::MAX_CONFIG_BYTES`), strings by their length and every node as `NODE_COST`.
pub const MAX_EXPANDED_BYTES: u64 = 64 << 20;

/// Charged per node besides its text: roughly what a `Value` and its slot take.
const NODE_COST: u64 = 64;

/// Checks one YAML document of `text`: serde_norway's syntax errors and one-document rule, and
/// the bound on what it expands to. `aliases` says whether the text has any (`config::yaml11::scan`
/// knows), for the message.
pub fn check(text: &str, aliases: bool) -> Result<(), serde_norway::Error> {
    check_within(text, aliases, MAX_EXPANDED_BYTES)
}

fn check_within(text: &str, aliases: bool, limit: u64) -> Result<(), serde_norway::Error> {
    let budget = Budget {
        left: Cell::new(limit),
        aliases,
    };
    Bounded(&budget).deserialize(serde_norway::Deserializer::from_str(text))
}

struct Budget {
    left: Cell<u64>,
    aliases: bool,
}

impl Budget {
    fn spend<E: de::Error>(&self, text: usize) -> Result<(), E> {
        let cost = NODE_COST.saturating_add(text as u64);
        let left = self.left.get();
        if cost > left {
            let mib = MAX_EXPANDED_BYTES >> 20;
            // Without aliases only text given to the library directly (past the 16 MiB file cap)
            // gets here: the node bound (`config::limits`) refuses a file's many nodes first.
            return Err(E::custom(if self.aliases {
                format!("it expands past {mib} MiB once its aliases are repeated; refusing it")
            } else {
                format!("it takes more than {mib} MiB once parsed; refusing it")
            }));
        }
        self.left.set(left - cost);
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Bounded<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.spend(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.spend(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.spend(0)
    }

    // Integers past u64 are accepted (PyYAML reads any size), not refused as serde's default does.
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.0.spend(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.0.spend(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.spend(0)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.0.spend(s.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.spend(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.spend(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.spend(0)?;
        // Keys are not compared: a repeated key keeps its last value in `yaml11`, as PyYAML's dict
        // does (serde_norway's own `Value` refuses it).
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): refused, as configs are plain data.
        let (tag, _): (String, _) = data.variant()?;
        Err(de::Error::custom(format!(
            "unsupported tag {}",
            super::pyfmt::clip(&tag)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_what_serde_norway_checks() {
        let text = "a: 1\nb: [x, -2, 0.5, true, null, ~]\nc: {d: 'e', 7: f}\nanchor: &x [1, 2]\nalias: *x\n";
        assert!(check(text, true).is_ok());
        // serde_norway's `Value` refuses a repeated key; PyYAML keeps the last value, and this
        // pass lets it through to `yaml11`, which does the same.
        assert!(check("a: 1\na: 2\n", false).is_ok());
        assert!(check("a: 18446744073709551616\n", false).is_ok(), "past u64");
        assert!(check("a: !custom 1\n", false)
            .unwrap_err()
            .to_string()
            .contains("unsupported tag"));
        assert!(check("a: 1\n---\nb: 2\n", false).is_err(), "one document only");
        assert!(check("a: [1, 2\n", false).is_err(), "syntax");
    }

    #[test]
    fn float_keys_are_not_compared() {
        // serde_norway hashes every float alike: building its `Mapping` of these keys compared
        // each with every earlier one (80,000 took 30 s; 200,000 would take minutes). The check
        // builds no mapping now; the CLI test `yaml_float_keys_are_read_in_linear_time` guards the time
        // against a hang.
        let text: String = (0..200_000).map(|i| format!("{i}.5: null\n")).collect();
        assert!(check(&text, false).is_ok());
    }

    #[test]
    fn aliases_of_long_strings_are_refused_before_they_expand() {
        // One 1 MB string behind an anchor, named a hundred times: 100 MB expanded.
        let text = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(1 << 20),
            vec!["*a"; 100].join(",")
        );
        let err = check(&text, true).unwrap_err().to_string();
        assert!(
            err.contains("expands past 64 MiB once its aliases are repeated"),
            "{err}"
        );
        // A small one: read within a bound that holds it, refused within one that does not.
        let small = "a: &a [\"xyz\", \"xyz\"]\nb: [*a, *a, *a]\n";
        assert!(check_within(small, true, 20 * NODE_COST).is_ok());
        assert!(check_within(small, true, 10 * NODE_COST).is_err());
        // Without aliases the message does not blame them.
        let err = check_within("a: [1, 2, 3]\n", false, 3 * NODE_COST)
            .unwrap_err()
            .to_string();
        assert!(err.contains("takes more than 64 MiB once parsed"), "{err}");
        assert!(!err.contains("alias"), "{err}");
    }
}
