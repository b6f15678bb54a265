//! Which weight tensors to prune and how: config resolution (spec §5.3) plus eligibility (§5.4),
//! decided per `const` before any data is read.
//!
//! The checks run in coremltools' order, so the same configs raise the same errors: config lookup
//! first (it can fail on conflicts even for a const that would be skipped later), then the
//! constexpr-consumer, `weight_threshold is None`, rank and size checks, then the structural-config
//! consumer check.
//!
//! coremltools also resolves configs for values it *materializes*: its loader turns every tensor a
//! `constexpr_*` op holds inline (iOS16 attributes, iOS18 input values) into a `const` op of its
//! own, and those that are storable go through the same lookup. They are never pruned (they feed a
//! constexpr op), but the lookup can raise, e.g. a conflict between the consumers of an already
//! palettized weight, so `plan` runs it too (`check_materialized_values`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{
    resolve, resolve_op, weight_threshold_of, Consumer, OpConfig, OptimizationConfig, Resolution,
};
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::entries::Entries;
use crate::mil::graph::GraphView;
use crate::mil::value::{is_constexpr_type, OperationExt, TensorTypeExt};
use crate::proto::mil::{argument::binding::Binding, value_type, Operation, Program};
use crate::spill_map::paged::Spill;
use crate::weights::TensorMeta;

mod store;
pub use store::{Plan, PlanCursor};

/// What happens to one weight tensor. The config and the reason are shared by every entry that
/// has an equal one ([`Plan`] keeps each once): a model of many tensors repeats a handful of
/// them, and the plan lives for the whole run (issue 18).
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Prune(Arc<OpConfig>),
    Skip(Arc<str>),
}

/// One planned tensor, as [`Plan`] hands it out. The plan keeps the dtype and element count but
/// not the shape, which only reports need and read from the op ([`crate::engine`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// The const's op index in the [`GraphView`].
    pub op_index: usize,
    /// The stored (for joint compression, the materialized) dtype and element count.
    pub dtype: ScalarType,
    pub count: u64,
    pub decision: Decision,
    /// It reads a blob an earlier pruned entry reads too, and reuses that entry's result
    /// ([`crate::shared::check_shared_configs`] marks it).
    pub reuses_shared: bool,
}

impl PlannedTensor {
    pub fn new(op_index: usize, meta: &TensorMeta, decision: Decision) -> Self {
        PlannedTensor {
            op_index,
            dtype: meta.dtype,
            count: meta.count,
            decision,
            reuses_shared: false,
        }
    }

    pub fn is_prune(&self) -> bool {
        matches!(self.decision, Decision::Prune(_))
    }

    /// Stored size in bytes (bit-packed for sub-byte types), `None` on overflow.
    pub fn storage_bytes(&self) -> Option<u64> {
        self.dtype.storage_bytes(self.count)
    }

    pub(crate) fn storable(&self) -> bool {
        stored_in_weight_file(self.dtype, self.count)
    }
}

/// coremltools' `should_use_weight_file` at spec iOS15, which `prune_weights` uses to pick candidates
/// (on the materialized value, for joint compression).
pub(crate) fn storable(meta: &TensorMeta) -> bool {
    stored_in_weight_file(meta.dtype, meta.count)
}

fn stored_in_weight_file(dtype: ScalarType, count: u64) -> bool {
    use ScalarType::*;
    count >= 10 && matches!(dtype, Float16 | Float32 | UInt8 | Int8)
}

/// The inline tensors of a constexpr op that coremltools' loader materializes as storable consts:
/// `(parameter, meta)` for every attribute but `name` and every input bound to a value, whose
/// numpy dtype would be fp16/fp32/uint8/int8 (sub-byte types load as uint8 or int8) with at least
/// 10 elements.
fn materialized_storable_values(op: &Operation) -> Vec<(&str, TensorMeta)> {
    use ScalarType::*;
    let attributes = op.attributes.pairs().filter(|(name, _)| *name != "name");
    let inputs = op.inputs.pairs().flat_map(|(name, arg)| {
        arg.arguments.iter().filter_map(move |b| match &b.binding {
            Some(Binding::Value(v)) => Some((name, v)),
            _ => None,
        })
    });
    attributes
        .chain(inputs)
        .filter_map(|(name, value)| Some((name, TensorMeta::of(value)?)))
        .filter(|(_, meta)| {
            meta.count >= 10
                && matches!(
                    meta.dtype,
                    Float16 | Float32 | UInt8 | Int8 | UInt1 | UInt2 | UInt3 | UInt4 | UInt6 | Int4
                )
        })
        .collect()
}

/// Ops and inputs a structural (block or n:m) config may prune.
fn structural_target(op_type: &str, input: &str) -> bool {
    matches!((op_type, input), ("conv", "weight") | ("linear", "weight"))
}

/// Plans every const of the program that holds a weight tensor (numeric, rank ≥ 1).
pub fn plan(program: &Program, graph: &GraphView, config: &OptimizationConfig) -> Result<Plan> {
    plan_counted(program, graph, config).map(|(planned, _)| planned)
}

/// [`plan`], and how many constexpr ops it resolved following chains: at most one per op of a
/// chain, however many consts feed it (tests check this).
pub fn plan_counted(
    program: &Program,
    graph: &GraphView,
    config: &OptimizationConfig,
) -> Result<(Plan, u64)> {
    let mut planned = Plan::new(Spill::in_dir(graph.scratch_dir()));
    let mut ends = ChainEnds::default();
    for (index, info) in graph.infos() {
        if is_constexpr_type(info.op_type) {
            check_materialized_values(program, graph, config, index, &mut ends)?;
            continue;
        }
        if info.op_type != "const" {
            continue;
        }
        let Some(value) = graph.op(program, index).and_then(|op| op.into_const_value()) else {
            continue;
        };
        let Some(meta) = TensorMeta::of(&value) else {
            continue;
        };
        if meta.shape.is_empty()
            || !(meta.dtype.is_float() || matches!(meta.dtype, ScalarType::Int8 | ScalarType::UInt8))
        {
            continue;
        }
        let decision = if storable(&meta) {
            decide(graph, config, index, &meta, &mut ends)?
        } else {
            Decision::Skip(format!("{} {} values are not stored in weight.bin (needs fp16/fp32/int8/uint8 and at least 10 elements)", meta.count, meta.dtype).into())
        };
        planned.push(PlannedTensor::new(index, &meta, decision))?;
    }
    Ok((planned, ends.steps))
}

/// The shape of op `index`'s tensor as reports show it: a const's value's, a constexpr op's output's
/// (what it materializes). The plan keeps no shapes; reports read them from the op.
pub(crate) fn report_shape(program: &Program, graph: &GraphView, index: usize) -> Vec<u64> {
    let Some(op) = graph.op(program, index) else {
        return Vec::new();
    };
    if let Some(meta) = op.const_value().and_then(TensorMeta::of) {
        return meta.shape;
    }
    op.outputs
        .into_iter()
        .next()
        .and_then(|o| match o.r#type?.r#type? {
            value_type::Type::TensorType(t) => t.shape(),
            _ => None,
        })
        .unwrap_or_default()
}

/// `op (type.input)` of the first consumer of op `index`, as reports show it.
pub(crate) fn consumer_label(graph: &GraphView, index: usize) -> String {
    graph
        .consumer_uses(index)
        .next()
        .map_or("-".to_owned(), |(c, input)| {
            format!("{} ({}.{input})", graph.name(c), graph.op_type(c))
        })
}

/// The consumers of op `index` as config resolution sees them: each op once. Resolution reads
/// only an op's name and type, so an op reading the const through several inputs counts as one
/// (the first consumer, "all constexpr" and "all resolve alike" are the same either way).
pub(crate) fn consumer_views(graph: &GraphView, index: usize) -> Vec<Consumer<'_>> {
    graph
        .consumer_ops(index)
        .into_iter()
        .map(|c| Consumer {
            op_name: graph.name(c),
            op_type: graph.op_type(c),
        })
        .collect()
}

/// coremltools' `_get_const_op_config`, following chains of constexpr consumers to the op whose
/// config decides (joint compression reads configs through such chains), with the ends of the
/// chains already followed in `ends`.
pub(crate) fn resolve_const_along<'c>(
    graph: &GraphView,
    config: &'c OptimizationConfig,
    index: usize,
    ends: &mut ChainEnds<'c>,
) -> Result<Resolution<'c>> {
    let resolution = resolve(config, &graph.name(index), &consumer_views(graph, index))?;
    ends.follow(graph, config, resolution, index)
}

/// Where following a constexpr chain from each op already followed ends. Every const or
/// constexpr op along a chain of D ops follows it to its end; remembering where each op's chain
/// ends makes planning linear in D instead of quadratic (a chain of 40,000 ops took 111 s).
/// The end depends only on the op (its name, type and consumers), so a remembered end is the one
/// the walk would reach again; an error aborts the plan the first time it is met, as before.
#[derive(Default)]
pub(crate) struct ChainEnds<'c> {
    ends: HashMap<usize, Resolution<'c>>,
    /// Ops resolved while following chains (see [`plan_counted`]).
    steps: u64,
}

impl<'c> ChainEnds<'c> {
    /// Resolves along the chain of constexpr ops that `resolution` (of the op at `current`) points
    /// to, stopping at the first op whose end is known.
    pub(crate) fn follow(
        &mut self,
        graph: &GraphView,
        config: &'c OptimizationConfig,
        mut resolution: Resolution<'c>,
        mut current: usize,
    ) -> Result<Resolution<'c>> {
        // The ops stepped through, which all end where this walk ends.
        let mut stepped = Vec::new();
        while let Resolution::FollowConstexpr { .. } = resolution {
            // Consumers always come later in program order, so this walk ends.
            let Some(&(next, _)) = graph.consumers(current).first() else {
                break;
            };
            if let Some(end) = self.ends.get(&next) {
                resolution = end.clone();
                break;
            }
            let op = graph.info(next);
            resolution = resolve_op(config, &op.name, op.op_type, &consumer_views(graph, next))?;
            self.steps += 1;
            stepped.push(next);
            current = next;
        }
        for op in stepped {
            self.ends.insert(op, resolution.clone());
        }
        Ok(resolution)
    }
}

/// coremltools' config lookup for the consts its loader makes of the constexpr op at `index`
/// (see the module doc): only its errors matter, since such consts are skipped afterwards.
///
/// The loader names them `<op name>_<param>_<k>` with a process-wide counter (`k = 0` in a fresh
/// process, which is what `op_name_configs` would have to name); their only consumer is the
/// constexpr op, so the lookup continues with that op and the chain after it.
fn check_materialized_values<'c>(
    program: &Program,
    graph: &GraphView,
    config: &'c OptimizationConfig,
    index: usize,
    ends: &mut ChainEnds<'c>,
) -> Result<()> {
    let info = graph.info(index);
    let Some(op) = graph.op(program, index) else {
        return Ok(());
    };
    let consumer = [Consumer {
        op_name: info.name.clone(),
        op_type: info.op_type,
    }];
    for (param, _) in materialized_storable_values(&op) {
        // Step 4 of the lookup: the const's only consumer is the constexpr op, so resolve that op.
        if let Resolution::FollowConstexpr { .. } =
            resolve(config, &format!("{}_{param}_0", info.name), &consumer)?
        {
            let resolution = resolve_op(config, &info.name, info.op_type, &consumer_views(graph, index))?;
            ends.follow(graph, config, resolution, index)?;
        }
    }
    Ok(())
}

fn decide<'c>(
    graph: &GraphView,
    config: &'c OptimizationConfig,
    index: usize,
    meta: &TensorMeta,
    ends: &mut ChainEnds<'c>,
) -> Result<Decision> {
    let info = graph.info(index);
    let consumers = graph.consumer_ops(index);
    let op_config = match resolve_const_along(graph, config, index, ends)? {
        Resolution::Config(c) => c.clone(),
        Resolution::Skip(reason) => return Ok(Decision::Skip(reason.to_string().into())),
        Resolution::FollowConstexpr { consumer, .. } => {
            return Ok(Decision::Skip(format!("feeds constexpr op '{consumer}'").into()));
        }
    };
    if consumers.iter().any(|&c| is_constexpr_type(graph.op_type(c))) {
        return Ok(Decision::Skip(
            "feeds a constexpr op (already compressed; see --joint-compression)".into(),
        ));
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
        return Ok(Decision::Skip(
            format!(
                "rank {} tensor (coremltools never prunes rank ≤ 1 consts)",
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
    if op_config.is_structural() && !config.op_name.contains_key(&*info.name) {
        let all_targets = graph
            .consumer_uses(index)
            .all(|(c, input)| structural_target(graph.op_type(c), input));
        if !all_targets {
            return Ok(Decision::Skip(
                format!(
                    "op named {} not applicable for {} configuration. Skipped.",
                    info.name,
                    op_config.describe()
                )
                .into(),
            ));
        }
    }
    Ok(Decision::Prune(Arc::new(op_config)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mil::build::{bind_name, bind_value, const_op, op};
    use crate::mil::value::{blob_value, immediate_value, tensor_value_type};
    use crate::proto::mil::{Block, NamedValueType};
    use crate::tensor::TensorData;

    /// main(x): `w` palettized (iOS18 form: indices and a 16-entry lut held inline) read by two
    /// linears, plus a plain 8x8 weight `v` read by a third linear.
    fn palettized_program() -> Program {
        let t = tensor_value_type(ScalarType::Float32, &[8, 8]);
        let lut = immediate_value(
            &TensorData::F32((0..16).map(|i| i as f32).collect()),
            &[1, 1, 16, 1],
        );
        let indices = blob_value(ScalarType::UInt4, &[8, 8], 64);
        let pal = op(
            "constexpr_lut_to_dense",
            "w_palettized",
            BTreeMap::from([
                ("indices".into(), bind_value(indices)),
                ("lut".into(), bind_value(lut)),
            ]),
            BTreeMap::new(),
            vec![("w_palettized".into(), t.clone())],
        );
        let linear = |name: &str, weight: &str| {
            op(
                "linear",
                name,
                BTreeMap::from([("x".into(), bind_name("x")), ("weight".into(), bind_name(weight))]),
                BTreeMap::new(),
                vec![(format!("{name}_out"), t.clone())],
            )
        };
        let v = const_op("v", blob_value(ScalarType::Float32, &[8, 8], 128));
        let ops = vec![
            pal,
            linear("lin_a", "w_palettized"),
            linear("lin_b", "w_palettized"),
            v,
            linear("lin_c", "v"),
        ];
        let block = Block {
            outputs: vec!["lin_c_out".into()],
            operations: crate::mil::ops::encode_ops(ops),
            ..Default::default()
        };
        let x = NamedValueType {
            name: "x".into(),
            r#type: Some(t),
        };
        crate::mil::build::main_program(vec![x], "CoreML8", block)
    }

    fn plan_with(json: &str) -> Result<Vec<(String, Decision)>> {
        let program = palettized_program();
        let graph = GraphView::build(&program)?;
        let planned = plan(&program, &graph, &OptimizationConfig::from_json_str(json)?)?;
        planned
            .iter()
            .map(|p| p.map(|p| (graph.name(p.op_index).into_owned(), p.decision)))
            .collect()
    }

    const MAG: &str = r#""config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5, "weight_threshold": 0}"#;

    #[test]
    fn materialized_constexpr_values_resolve_like_coremltools() {
        // Equal configs for both readers of the palettized weight: only `v` is planned, pruned.
        let planned = plan_with(&format!("{{{MAG}}}")).unwrap();
        let names: Vec<_> = planned
            .iter()
            .map(|(name, decision)| (name.as_str(), matches!(decision, Decision::Prune(_))))
            .collect();
        assert_eq!(names, [("v", true)]);

        // Different configs for lin_a and lin_b: coremltools raises through the lut it materializes.
        let conflict = format!(
            r#"{{{MAG}, "op_name_configs": {{"lin_a": {{"config_type": "OpMagnitudePrunerConfig", "target_sparsity": 0.7}}}}}}"#
        );
        let e = plan_with(&conflict).unwrap_err().to_string();
        assert!(e.contains("conflict detected between ops lin_a and lin_b"), "{e}");

        // Naming the constexpr op settles it (the lookup stops there), as in coremltools.
        let settled = format!(
            r#"{{{MAG}, "op_name_configs": {{"lin_a": {{"config_type": "OpMagnitudePrunerConfig", "target_sparsity": 0.7}}, "w_palettized": null}}}}"#
        );
        assert_eq!(plan_with(&settled).unwrap().len(), 1);

        // The constexpr op's own type as an op-type key, and "const", raise.
        for key in ["constexpr_lut_to_dense", "const"] {
            let typed = format!(r#"{{{MAG}, "op_type_configs": {{"{key}": null}}}}"#);
            let e = plan_with(&typed).unwrap_err().to_string();
            assert!(
                e.contains("const ops cannot be set by the `set_op_type` function"),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn short_or_non_storable_inline_values_are_not_materialized_consts() {
        let shape = immediate_value(&TensorData::U32(vec![8, 8]), &[2]);
        let short_lut = immediate_value(&TensorData::F32(vec![0.0; 9]), &[9]);
        let int32 = immediate_value(&TensorData::I32(vec![0; 16]), &[16]);
        let mut attributes = BTreeMap::from([
            ("shape".into(), shape),
            ("lut".into(), short_lut),
            ("axis".into(), int32),
        ]);
        let o = op(
            "constexpr_lut_to_dense",
            "p",
            BTreeMap::new(),
            std::mem::take(&mut attributes),
            vec![],
        );
        assert!(materialized_storable_values(&o).is_empty());
        let lut = immediate_value(&TensorData::F16(vec![half::f16::ZERO; 10]), &[10]);
        let o = op(
            "constexpr_lut_to_dense",
            "p",
            BTreeMap::new(),
            BTreeMap::from([("lut".into(), lut)]),
            vec![],
        );
        assert_eq!(
            materialized_storable_values(&o)
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>(),
            ["lut"]
        );
    }
}
