//! Which consts a rewrite has given their `<name>_sparsified` output so far.
//!
//! Two consts can share a `name` attribute (names are only unique per output): the second would
//! define `<name>_sparsified` again, which the engine refuses. This set answers "did an earlier
//! const of this function, with this name, define it?". It grows by one entry per pruned tensor,
//! so it is a [`SpillDict`] of (function, name) keys: a few MiB in memory, the rest in unlinked
//! scratch files (issue 18: a set of the names took about 100 bytes a pruned tensor, a table of op
//! indices 8–16 bytes, the largest table of the walk still growing past 320,000 tensors).

use std::path::Path;

use crate::error::Result;
use crate::mil::GraphView;
use crate::spill_map::SpillDict;

pub struct SparsifiedConsts {
    names: SpillDict,
}

/// The key of `name` in `function`: the function's length first, so no two pairs share a key.
fn key(function: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + function.len() + name.len());
    key.extend_from_slice(&(function.len() as u64).to_le_bytes());
    key.extend_from_slice(function.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

impl SparsifiedConsts {
    /// An empty set whose scratch files, if it needs them, go in `dir`.
    pub fn new_in(dir: Option<&Path>) -> Self {
        SparsifiedConsts {
            names: SpillDict::new_in(dir),
        }
    }

    /// Records that the const at `index` of `graph` defined its sparsified name.
    pub fn insert(&mut self, graph: &GraphView, index: usize) -> Result<()> {
        let key = key(graph.function(index), &graph.name(index));
        self.names.get_or_insert(&key, &[])?;
        Ok(())
    }

    /// Whether a const of `function` named `name` defined its sparsified name already.
    pub fn contains(&self, function: &str, name: &str) -> Result<bool> {
        Ok(self.names.get(&key(function, name))?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ScalarType;
    use crate::mil::build::const_op;
    use crate::mil::entries::Entries;
    use crate::mil::ops::encode_ops;
    use crate::mil::value::{blob_value, string_value};
    use crate::proto::mil::{Block, Function, Program};
    use std::collections::BTreeMap;

    /// Functions `a` and `b`, each with consts named `w`, `w` (the same name twice) and `v`.
    fn program() -> Program {
        let function = |outputs: [&str; 3]| {
            let consts = outputs.map(|out| {
                let mut op = const_op(out, blob_value(ScalarType::Float16, &[2, 8], 64));
                // Named `w` or `v` whatever the output: names are unique per output only.
                let name = if out.starts_with('w') { "w" } else { "v" };
                *op.attributes.lookup_mut("name").unwrap() = string_value(name);
                op
            });
            Function {
                opset: "CoreML7".into(),
                block_specializations: BTreeMap::from([(
                    "CoreML7".into(),
                    Block {
                        operations: encode_ops(consts),
                        ..Default::default()
                    },
                )]),
                ..Default::default()
            }
        };
        Program {
            version: 1,
            functions: BTreeMap::from([
                ("a".into(), function(["w1", "w2", "v1"])),
                ("b".into(), function(["w3", "w4", "v2"])),
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn a_name_counts_once_defined_in_its_own_function_only() {
        let graph = GraphView::build(&program()).unwrap();
        let names: Vec<_> = (0..graph.op_count())
            .map(|i| (&**graph.function(i), graph.name(i).into_owned()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", "w"),
                ("a", "w"),
                ("a", "v"),
                ("b", "w"),
                ("b", "w"),
                ("b", "v")
            ]
            .map(|(f, n)| (f, n.to_owned()))
        );
        for mut set in [
            SparsifiedConsts::new_in(None),
            SparsifiedConsts {
                names: SpillDict::with_tiny_memory(),
            },
        ] {
            let contains = |set: &SparsifiedConsts, f: &str, n: &str| set.contains(f, n).unwrap();
            assert!(!contains(&set, "a", "w"));
            set.insert(&graph, 0).unwrap();
            assert!(contains(&set, "a", "w"));
            assert!(!contains(&set, "b", "w"));
            assert!(!contains(&set, "a", "v"));
            assert!(!contains(&set, "a", "w1"));
            set.insert(&graph, 1).unwrap();
            set.insert(&graph, 5).unwrap();
            assert!(contains(&set, "b", "v"));
            // A function and a name that concatenate alike are still two pairs.
            assert!(!contains(&set, "aw", ""));
            assert!(!contains(&set, "", "aw"));
        }
    }
}
