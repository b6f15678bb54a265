//! Which consts a rewrite has given their `<name>_sparsified` output so far.
//!
//! Two consts can share a `name` attribute (names are only unique per output): the second would
//! define `<name>_sparsified` again, which the engine refuses. This set answers "did an earlier
//! const of this function, with this name, define it?" with one op index per pruned const; a set of
//! the names themselves took about 100 bytes per pruned tensor (issue 18).

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::mil::GraphView;

#[derive(Default)]
pub struct SparsifiedConsts {
    /// Op indices of the consts, found by (function, name).
    consts: HashTable<usize>,
    hasher: RandomState,
}

impl SparsifiedConsts {
    pub fn new() -> Self {
        Self::default()
    }

    fn hash(&self, function: &str, name: &str) -> u64 {
        self.hasher.hash_one((function, name))
    }

    /// Records that the const at `index` of `graph` defined its sparsified name.
    pub fn insert(&mut self, graph: &GraphView, index: usize) {
        let (function, name) = (graph.function(index), graph.name(index));
        if self.contains(graph, function, name) {
            return;
        }
        let hash = self.hash(function, name);
        let hasher = &self.hasher;
        self.consts.insert_unique(hash, index, |&i| {
            hasher.hash_one((&**graph.function(i), graph.name(i)))
        });
    }

    /// Whether a const of `function` named `name` defined its sparsified name already.
    pub fn contains(&self, graph: &GraphView, function: &str, name: &str) -> bool {
        self.consts
            .find(self.hash(function, name), |&i| {
                &**graph.function(i) == function && graph.name(i) == name
            })
            .is_some()
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
            .map(|i| (&**graph.function(i), graph.name(i)))
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
        );
        let mut set = SparsifiedConsts::new();
        assert!(!set.contains(&graph, "a", "w"));
        set.insert(&graph, 0);
        assert!(set.contains(&graph, "a", "w"));
        assert!(!set.contains(&graph, "b", "w"));
        assert!(!set.contains(&graph, "a", "v"));
        assert!(!set.contains(&graph, "a", "w1"));
        set.insert(&graph, 1);
        set.insert(&graph, 5);
        assert_eq!(set.consts.len(), 2);
        assert!(set.contains(&graph, "b", "v"));
    }
}
