//! Which weight tensors to prune and how: config resolution (spec §5.3) plus eligibility (§5.4),
//! decided per `const` before any data is read.
//!
//! The checks run in coremltools' order, so the same configs raise the same errors: config lookup
//! first (it can fail on conflicts even for a const that would be skipped later), then the
//! constexpr-consumer, `weight_threshold is None`, rank and size checks, then the structural-config
//! consumer check.

use crate::config::{resolve, resolve_op, weight_threshold_of, Consumer, OpConfig, OptimizationConfig, Resolution};
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::graph::{op_at, GraphView};
use crate::mil::value::{is_constexpr_type, OperationExt};
use crate::proto::mil::Program;
use crate::weights::TensorMeta;

/// What happens to one weight tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Prune(OpConfig),
    Skip(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// Index into [`GraphView::ops`].
    pub op_index: usize,
    pub name: String,
    /// `op (type.input)` of the first consumer, for reports.
    pub consumer: String,
    pub meta: TensorMeta,
    pub decision: Decision,
}

/// coremltools' `should_use_weight_file` at spec iOS15, which `prune_weights` uses to pick candidates.
fn storable(meta: &TensorMeta) -> bool {
    use ScalarType::*;
    meta.count >= 10 && matches!(meta.dtype, Float16 | Float32 | UInt8 | Int8)
}

/// Ops and inputs a structural (block or n:m) config may prune.
fn structural_target(op_type: &str, input: &str) -> bool {
    matches!((op_type, input), ("conv", "weight") | ("linear", "weight"))
}

/// Plans every const of the program that holds a weight tensor (numeric, rank ≥ 1).
pub fn plan(program: &Program, graph: &GraphView, config: &OptimizationConfig) -> Result<Vec<PlannedTensor>> {
    let mut planned = Vec::new();
    for (index, info) in graph.ops.iter().enumerate() {
        if info.op_type != "const" {
            continue;
        }
        let Some(value) = op_at(program, &info.path).and_then(|op| op.const_value()) else { continue };
        let Some(meta) = TensorMeta::of(value) else { continue };
        if meta.shape.is_empty() || !(meta.dtype.is_float() || matches!(meta.dtype, ScalarType::Int8 | ScalarType::UInt8)) {
            continue;
        }
        let consumers = graph.consumers(index);
        let consumer = consumers.first().map_or("-".to_owned(), |&(c, input)| {
            format!("{} ({}.{input})", graph.ops[c].name, graph.ops[c].op_type)
        });
        let decision = if storable(&meta) { decide(graph, config, index, &meta)? } else {
            Decision::Skip(format!("{} {} values are not stored in weight.bin (needs fp16/fp32/int8/uint8 and at least 10 elements)", meta.count, meta.dtype))
        };
        planned.push(PlannedTensor { op_index: index, name: info.name.clone(), consumer, meta, decision });
    }
    Ok(planned)
}

fn consumer_views(graph: &GraphView, index: usize) -> Vec<Consumer<'_>> {
    graph
        .consumers(index)
        .into_iter()
        .map(|(c, _)| Consumer { op_name: &graph.ops[c].name, op_type: &graph.ops[c].op_type })
        .collect()
}

/// coremltools' `_get_const_op_config`, following chains of constexpr consumers to the op whose
/// config decides (joint compression reads configs through such chains).
fn resolve_const<'c>(graph: &GraphView, config: &'c OptimizationConfig, index: usize) -> Result<Resolution<'c>> {
    let mut resolution = resolve(config, &graph.ops[index].name, &consumer_views(graph, index))?;
    let mut current = index;
    while let Resolution::FollowConstexpr { .. } = resolution {
        // Consumers always come later in program order, so this walk ends.
        let Some(&(next, _)) = graph.consumers(current).first() else { break };
        let op = &graph.ops[next];
        resolution = resolve_op(config, &op.name, &op.op_type, &consumer_views(graph, next))?;
        current = next;
    }
    Ok(resolution)
}

fn decide(graph: &GraphView, config: &OptimizationConfig, index: usize, meta: &TensorMeta) -> Result<Decision> {
    let info = &graph.ops[index];
    let consumers = graph.consumers(index);
    let op_config = match resolve_const(graph, config, index)? {
        Resolution::Config(c) => c.clone(),
        Resolution::Skip(reason) => return Ok(Decision::Skip(reason.to_string())),
        Resolution::FollowConstexpr { consumer, .. } => {
            return Ok(Decision::Skip(format!("feeds constexpr op '{consumer}'")));
        }
    };
    if consumers.iter().any(|&(c, _)| is_constexpr_type(&graph.ops[c].op_type)) {
        return Ok(Decision::Skip("feeds a constexpr op (already compressed; see --joint-compression)".into()));
    }
    let weight_threshold = weight_threshold_of(&op_config)?;
    if consumers.is_empty() {
        // Only reachable when the const is named in op_name_configs; coremltools then fails
        // looking up its first consumer, so refuse rather than guess.
        return Err(Error::Config(format!(
            "const '{}' is named in op_name_configs but has no consumer op (it is only a block output); coremltools cannot compress it",
            info.name
        )));
    }
    if meta.shape.len() <= 1 {
        return Ok(Decision::Skip(format!("rank {} tensor (coremltools never prunes rank ≤ 1 consts)", meta.shape.len())));
    }
    if meta.count <= weight_threshold {
        return Ok(Decision::Skip(format!("{} elements ≤ weight_threshold {weight_threshold}", meta.count)));
    }
    if op_config.is_structural() && !config.op_name.contains_key(&info.name) {
        let all_targets = consumers.iter().all(|&(c, input)| structural_target(&graph.ops[c].op_type, input));
        if !all_targets {
            return Ok(Decision::Skip(format!(
                "op named {} not applicable for {} configuration. Skipped.",
                info.name,
                op_config.describe()
            )));
        }
    }
    Ok(Decision::Prune(op_config))
}
