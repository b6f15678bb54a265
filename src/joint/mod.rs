//! Joint compression (`--joint-compression`, spec §4.4, §5.9): pruning weights that are already
//! quantized (`constexpr_blockwise_shift_scale`) or palettized (`constexpr_lut_to_dense`), exactly
//! like coremltools 9.0 `prune_weights(..., joint_compression=True)`.
//!
//! - [`plan`]: which constexpr ops are pruned, with which config ([`plan_joint`]);
//! - `materialize`: their dense values, as the pruning kernels' input (`materialize()`);
//! - [`encode`]: the sparse op + `constexpr_sparse_to_dense` that replace them ([`joint_ops`]).
//!
//! The engine loop, per planned op in program order: materialize → `dispatch::run_kernel` on
//! `dense` → on `Pruned { mask, .. }` take names from a [`JointNamer`], build [`joint_ops`], record
//! `(path, ops)` and a rename (old output → `JointOps::output`); after the walk, splice all
//! replacements with `mil::rewrite::replace_ops` and rebind with `rename_in_block`, op by op in
//! `mil::assemble` (one op becomes two, so splicing during the walk would shift the paths of later
//! ops in the same block).

pub mod encode;
pub mod materialize;
pub mod plan;

#[cfg(test)]
mod golden_tests;

use crate::error::{Error, Result};
use crate::mil::graph::GraphView;

pub use encode::{joint_ops, JointNames, JointOps};
pub use materialize::{dense_dtype, materialize, Context, JointKind, Materialized};
pub use plan::{plan_joint, PlannedJoint, NEEDS_IOS18};

pub const SHIFT_SCALE: &str = "constexpr_blockwise_shift_scale";
pub const LUT_TO_DENSE: &str = "constexpr_lut_to_dense";
const SPARSE_SHIFT_SCALE: &str = "constexpr_sparse_blockwise_shift_scale";
const LUT_TO_SPARSE: &str = "constexpr_lut_to_sparse";

/// Auto names of the sparse ops, as coremltools' Builder gives them: `<op type>_<k>` with one
/// counter per op type, starting at 0 in each `prune_weights` call and counting only ops actually
/// created (a tensor the kernel skips takes no number).
///
/// Call [`JointNamer::names`] in the order coremltools transforms ops: program order within a
/// block, but all candidates inside nested blocks of a block before that block's own. For
/// programs whose constexpr weights all sit at function top level (every converted model) that is
/// program order. Functions are visited in name order (coremltools uses the proto map's order).
/// Where `<op type>_<k>` (or its outputs `_0`/`_1`) already names something in the function, k
/// is skipped, so the output never holds duplicate names (coremltools would write them).
#[derive(Debug, Default, Clone)]
pub struct JointNamer {
    shift_scale: u64,
    lut: u64,
}

impl JointNamer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names for the replacement of graph op `op_index`. Fails when `<name>_sparsified` is already
    /// a value of the function (the engine refuses the same clash for plain consts).
    pub fn names(&mut self, graph: &GraphView, op_index: usize) -> Result<JointNames> {
        let info = graph
            .get(op_index)
            .ok_or_else(|| Error::Graph(format!("no op with index {op_index}")))?;
        let function = &info.path.function;
        let dense = crate::encode::sparsified_name(&info.name);
        if graph.producer(function, &dense).is_some() {
            return Err(Error::Graph(format!(
                "cannot prune '{}': the model already has a value named '{dense}'",
                info.name
            )));
        }
        let (base, counter) = match info.op_type {
            SHIFT_SCALE => (SPARSE_SHIFT_SCALE, &mut self.shift_scale),
            LUT_TO_DENSE => (LUT_TO_SPARSE, &mut self.lut),
            other => {
                return Err(Error::Unsupported(format!(
                    "op '{}': {other} is not a joint-compression op",
                    info.name
                )))
            }
        };
        let taken = |name: &str| {
            graph.producer(function, name).is_some() || (0..graph.op_count()).any(|i| graph.name(i) == name)
        };
        loop {
            let sparse = format!("{base}_{counter}");
            *counter += 1;
            if !taken(&sparse) && !taken(&format!("{sparse}_0")) && !taken(&format!("{sparse}_1")) {
                return Ok(JointNames { sparse, dense });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dtype::ScalarType;
    use crate::mil::build::{bind_name, op};
    use crate::mil::rewrite::replace_ops;
    use crate::mil::value::{tensor_value_type, OperationExt};
    use crate::proto::mil::{Block, Operation, Program};

    fn program(ops: Vec<Operation>) -> Program {
        let block = Block {
            operations: crate::mil::ops::encode_ops(ops),
            ..Default::default()
        };
        crate::mil::build::main_program(Vec::new(), "CoreML8", block)
    }

    fn constexpr(op_type: &str, name: &str) -> Operation {
        op(
            op_type,
            name,
            BTreeMap::new(),
            BTreeMap::new(),
            vec![(name.into(), tensor_value_type(ScalarType::Float16, &[4, 4]))],
        )
    }

    #[test]
    fn namer_counts_per_type_and_skips_taken_names() {
        let taken = op(
            "relu",
            "relu",
            BTreeMap::from([("x".into(), bind_name("a"))]),
            BTreeMap::new(),
            vec![(
                "constexpr_sparse_blockwise_shift_scale_1_0".into(),
                tensor_value_type(ScalarType::Float16, &[4, 4]),
            )],
        );
        let p = program(vec![
            constexpr(SHIFT_SCALE, "a"),
            constexpr(LUT_TO_DENSE, "b"),
            constexpr(SHIFT_SCALE, "c"),
            taken,
            constexpr(SHIFT_SCALE, "d"),
        ]);
        let g = GraphView::build(&p).unwrap();
        let mut namer = JointNamer::new();
        let n: Vec<String> = [0, 1, 2, 4]
            .iter()
            .map(|&i| namer.names(&g, i).unwrap().sparse)
            .collect();
        assert_eq!(
            n,
            [
                "constexpr_sparse_blockwise_shift_scale_0",
                "constexpr_lut_to_sparse_0",
                "constexpr_sparse_blockwise_shift_scale_2",
                "constexpr_sparse_blockwise_shift_scale_3"
            ]
        );
        assert_eq!(namer.names(&g, 1).unwrap().dense, "b_sparsified");
        assert!(namer.names(&g, 3).is_err(), "relu is not a joint op");
    }

    #[test]
    fn namer_refuses_an_existing_sparsified_value() {
        let p = program(vec![
            constexpr(SHIFT_SCALE, "a"),
            constexpr("constexpr_cast", "a_sparsified"),
        ]);
        let g = GraphView::build(&p).unwrap();
        let e = JointNamer::new().names(&g, 0).unwrap_err().to_string();
        assert!(e.contains("already has a value named 'a_sparsified'"), "{e}");
    }

    #[test]
    fn replacements_apply_back_to_front() {
        let mut p = program(vec![
            constexpr(SHIFT_SCALE, "a"),
            constexpr(LUT_TO_DENSE, "b"),
            constexpr(SHIFT_SCALE, "c"),
        ]);
        let g = GraphView::build(&p).unwrap();
        let two = |x: &str| vec![constexpr("x", &format!("{x}1")), constexpr("x", &format!("{x}2"))];
        let edits = vec![(g.path(0), two("a")), (g.path(2), two("c"))];
        replace_ops(&mut p, edits).unwrap();
        let names: Vec<_> = p.functions["main"].block_specializations["CoreML8"]
            .operations
            .iter()
            .map(|o| crate::mil::decode_op(o).unwrap().name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a1", "a2", "b", "c1", "c2"]);
        let twice = vec![(g.path(1), vec![]), (g.path(1), vec![])];
        assert!(replace_ops(&mut p, twice).is_err());
    }
}
