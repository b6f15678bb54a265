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
    /// Op indices of the consts, found by (function, name), each with 32 bits of that hash: the
    /// table grows without reading the names again (the graph may hold them in a scratch file,
    /// where reading them all in table order costs a page read each).
    consts: HashTable<(u32, u32)>,
    hasher: RandomState,
}

/// A table hash from 32 bits of one: enough for a table of fewer than 2^32 entries.
fn spread(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl SparsifiedConsts {
    pub fn new() -> Self {
        Self::default()
    }

    fn hash(&self, function: &str, name: &str) -> u32 {
        self.hasher.hash_one((function, name)) as u32
    }

    /// Records that the const at `index` of `graph` defined its sparsified name.
    pub fn insert(&mut self, graph: &GraphView, index: usize) {
        let (function, name) = (graph.function(index), graph.name(index));
        if self.contains(graph, function, &name) {
            return;
        }
        let hash = self.hash(function, &name);
        let index = u32::try_from(index).expect("op indices of the graph are u32");
        self.consts
            .insert_unique(spread(hash), (index, hash), |&(_, h)| spread(h));
    }

    /// Whether a const of `function` named `name` defined its sparsified name already.
    pub fn contains(&self, graph: &GraphView, function: &str, name: &str) -> bool {
        let hash = self.hash(function, name);
        self.consts
            .find(spread(hash), |&(i, h)| {
                let i = i as usize;
                h == hash && &**graph.function(i) == function && graph.name(i) == name
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
