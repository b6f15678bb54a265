//! Which compressed weights joint compression prunes (spec §5.9), decided before any data is read,
//! in coremltools' check order (`prune_weights.is_valid_op`, then `transform_op`):
//!
//! 1. the program must be iOS18+ (checked before anything else);
//! 2. candidates are `constexpr_blockwise_shift_scale` / `constexpr_lut_to_dense` ops whose
//!    materialized value would go to the weight file (fp16/fp32/int8/uint8, ≥ 10 elements); plain
//!    `const` weights and every other op are left alone. coremltools materializes every such op
//!    to decide this, so one it cannot materialize fails the whole run, whatever the config
//!    ([`check_materializable`]);
//! 3. config resolution for the op (`_get_const_op_config`, following constexpr chains);
//! 4. a constexpr consumer → skip; `weight_threshold` None → error; rank ≤ 1 → skip;
//!    size ≤ weight_threshold → skip;
//! 5. block and n:m configs fail in coremltools (`_check_const_op_is_valid` asserts a `const`
//!    op), so they are an error here too.

use crate::config::{resolve_op, weight_threshold_of, OptimizationConfig, Resolution};
use crate::error::{Error, Result};
use crate::mil::graph::GraphView;
use crate::mil::value::{element_count, is_constexpr_type, TensorTypeExt};
use crate::plan::{consumer_views, storable, ChainEnds, Decision};
use crate::proto::mil::{value_type, Program};
use crate::weights::TensorMeta;

use super::materialize::{check_materializable, dense_dtype, Context};
use super::{LUT_TO_DENSE, SHIFT_SCALE};

/// coremltools' message for joint compression on a program below iOS18.
pub const NEEDS_IOS18: &str =
    "Joint compression is only supported since iOS18. Please re-convert your model with \
                               minimum_deployment_target set to at least ct.target.iOS18.";

/// What happens to one compressed weight.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJoint {
    /// The constexpr op's index in the [`GraphView`].
    pub op_index: usize,
    pub name: String,
    pub op_type: String,
    /// The materialized (dense) dtype and shape.
    pub meta: TensorMeta,
    pub decision: Decision,
}

/// Plans every `constexpr_blockwise_shift_scale` / `constexpr_lut_to_dense` op, in program order.
/// `spec_version` is the model's specification version (iOS18 = 9).
pub fn plan_joint(
    program: &Program,
    graph: &GraphView,
    config: &OptimizationConfig,
    spec_version: i32,
) -> Result<Vec<PlannedJoint>> {
    if spec_version < 9 {
        return Err(Error::Usage(NEEDS_IOS18.into()));
    }
    // Only declared types are read here; no weights are needed.
    let ctx = Context::types_only(program, graph);
    let mut planned = Vec::new();
    let mut ends = ChainEnds::default();
    for (index, info) in graph.infos() {
        if info.op_type != SHIFT_SCALE && info.op_type != LUT_TO_DENSE {
            continue;
        }
        check_materializable(&ctx, index)?;
        let shape = graph
            .op(program, index)
            .and_then(|op| op.outputs.into_iter().next())
            .and_then(|o| match o.r#type.as_ref()?.r#type.as_ref()? {
                value_type::Type::TensorType(t) => t.shape(),
                _ => None,
            })
            .ok_or_else(|| Error::tensor(&info.name, "output is not a tensor with a known shape"))?;
        let count =
            element_count(&shape).ok_or_else(|| Error::tensor(&info.name, "output shape overflows"))?;
        let dtype = dense_dtype(&ctx, index)?;
        let meta = TensorMeta { dtype, shape, count };
        let decision = if storable(&meta) {
            decide(graph, config, index, &meta, &mut ends)?
        } else {
            Decision::Skip(
                format!(
                    "materializes to {} {} values, which coremltools does not store in weight.bin \
                 (needs fp16/fp32/int8/uint8 and at least 10 elements)",
                    meta.count, meta.dtype
                )
                .into(),
            )
        };
        planned.push(PlannedJoint {
            op_index: index,
            name: info.name.to_string(),
            op_type: info.op_type.to_string(),
            meta,
            decision,
        });
    }
    Ok(planned)
}

fn decide<'c>(
    graph: &GraphView,
    config: &'c OptimizationConfig,
    index: usize,
    meta: &TensorMeta,
    ends: &mut ChainEnds<'c>,
) -> Result<Decision> {
    let info = graph.info(index);
    // `_get_const_op_config` on the constexpr op itself, following all-constexpr consumers.
    let resolution = resolve_op(config, &info.name, info.op_type, &consumer_views(graph, index))?;
    let resolution = ends.follow(graph, config, resolution, index)?;
    let op_config = match resolution {
        Resolution::Config(c) => c.clone(),
        Resolution::Skip(reason) => return Ok(Decision::Skip(reason.to_string().into())),
        Resolution::FollowConstexpr { consumer, .. } => {
            return Ok(Decision::Skip(format!("feeds constexpr op '{consumer}'").into()));
        }
    };
    let consumers = graph.consumer_ops(index);
    if consumers.iter().any(|&c| is_constexpr_type(graph.op_type(c))) {
        return Ok(Decision::Skip("feeds another constexpr op".into()));
    }
    let weight_threshold = weight_threshold_of(&op_config)?;
    if consumers.is_empty() {
        // coremltools fails reading the first consumer (IndexError) when a config names such an op.
        return Err(Error::Config(format!(
            "constexpr op '{}' is named in op_name_configs but has no consumer op (it is only a block \
             output); coremltools cannot compress it",
            info.name
        )));
    }
    if meta.shape.len() <= 1 {
        return Ok(Decision::Skip(
            format!(
                "rank {} tensor (coremltools never prunes rank ≤ 1 weights)",
                meta.shape.len()
            )
            .into(),
        ));
    }
    if meta.count <= weight_threshold {
        return Ok(Decision::Skip(
            format!("{} elements ≤ weight_threshold {weight_threshold}", meta.count).into(),
        ));
    }
    if op_config.is_structural() {
        return Err(Error::Config(format!(
            "{} cannot be used with joint compression: coremltools 9.0 fails on constexpr op '{}' with an \
             AssertionError (its structural-pruning check only accepts const ops)",
            op_config.describe(),
            info.name
        )));
    }
    Ok(Decision::Prune(std::sync::Arc::new(op_config)))
}
