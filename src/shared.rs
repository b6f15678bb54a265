//! Weights that several consts share: one `weight.bin` blob referenced by consts in several
//! functions of a multifunction model (`ct.utils.save_multifunction` gives equal consts of different
//! functions the same blob), or, more rarely, by several consts of one function.
//!
//! Such a blob is pruned once: the first const that reads it runs the kernel, every later one reuses
//! that result and points at the same output blobs ([`BlobReaders`]). That is only sound when all
//! of them are pruned with the same config, which [`check_shared_configs`] makes sure of before
//! anything is written.

use std::collections::HashMap;

use crate::config::{OpConfig, OptimizationConfig, Resolution, SkipReason};
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::entries::Entries;
use crate::mil::graph::GraphView;
use crate::mil::value::{OperationExt, ValueExt};
use crate::plan::{resolve_const_along, ChainEnds, Decision, Plan, PlannedTensor};
use crate::proto::mil::{Operation, Program, Value};

mod readers;
pub use readers::{BlobReaders, SharedBlob};

/// The identity of a source blob as a const reads it: its `weight.bin` offset, and the dtype and
/// shape the const declares (a blob read under two shapes is pruned as two tensors, since block and
/// n:m pruning depend on the shape; a dtype the blob does not hold fails when it is read). Only one
/// weight file exists (`check_blob_file`).
pub type BlobKey = (u64, ScalarType, Vec<u64>);

/// The blob key of the const at `index`, if it reads its value from `weight.bin`.
pub fn blob_key(program: &Program, graph: &GraphView, index: usize) -> Option<BlobKey> {
    blob_key_of(&graph.op(program, index)?.into_const_value()?)
}

/// The blob key of a const's `value`, if it is read from `weight.bin`.
pub fn blob_key_of(value: &Value) -> Option<BlobKey> {
    let offset = value.blob_offset()?;
    let meta = crate::weights::TensorMeta::of(value)?;
    Some((offset, meta.dtype, meta.shape))
}

/// `function/name`, how messages and reports tell apart ops of different functions.
pub fn qualified(graph: &GraphView, index: usize) -> String {
    let info = graph.info(index);
    format!("{}/{}", info.path.function, info.name)
}

/// Refuses a shared blob that some const prunes while the consts sharing it resolve to different
/// configs: it could not stay shared, and the user asked for two different results from one stored
/// weight. Configs are compared as coremltools resolves them (a level set to `None`, or no config
/// at all, counts as `None`); consts the resolution leaves alone for other reasons (only a block
/// output, feeding a constexpr op) are not compared. Nor are eligibility skips under an equal
/// config (rank, size, a structural config on a non-conv/linear consumer): each function is then
/// pruned as coremltools prunes its source on its own, and the blob is stored pruned and as is.
/// The first conflict in program order is the one reported.
///
/// Marks each pruned entry that reads a blob an earlier pruned entry reads
/// ([`PlannedTensor::reuses_shared`]), and returns the blob keys of the plan with what is known of
/// them, for the engine.
pub fn check_shared_configs(
    program: &Program,
    graph: &GraphView,
    config: &OptimizationConfig,
    plan: &mut Plan,
) -> Result<BlobReaders> {
    // First pass: how many consts read each blob, and whether one of them is pruned. Bounded in
    // memory (see `readers`): a multifunction package shares a blob per tensor.
    let mut readers = BlobReaders::new_in(graph.scratch_dir());
    let mut conflicts_possible = false;
    for i in 0..plan.len() {
        let p = plan.get(i)?;
        let Some(key) = blob_key(program, graph, p.op_index) else {
            continue;
        };
        let (number, mut state) = readers.number_or_insert(&key)?;
        if p.is_prune() {
            if state.pruned {
                plan.mark_reuses_shared(i)?;
            }
            state.pruned = true;
        }
        state.readers = (state.readers + 1).min(2);
        conflicts_possible |= state.readers > 1 && state.pruned;
        readers.set_state(number, state)?;
    }
    if conflicts_possible {
        compare_configs(program, graph, config, plan, &mut readers)?;
    }
    Ok(readers.keep_only_if_shared())
}

/// Second pass of [`check_shared_configs`]: each const reading a shared blob that some const
/// prunes against the first of them that resolved to a config.
fn compare_configs(
    program: &Program,
    graph: &GraphView,
    config: &OptimizationConfig,
    plan: &Plan,
    readers: &mut BlobReaders,
) -> Result<()> {
    // The distinct resolved configs, numbered by their printed form: a few per model. Configs
    // that print alike are equal (NaN is refused before planning); ones that print apart may still
    // be equal (a threshold of -0.0 and one of 0.0), so those are compared as values, as
    // coremltools compares configs.
    let mut configs: Vec<Option<OpConfig>> = Vec::new();
    let mut numbers: HashMap<String, u32> = HashMap::new();
    // One record of chain ends for all the consts: many of them feeding one long chain of
    // constexpr ops would each follow it to its end.
    let mut ends = ChainEnds::default();
    for i in 0..plan.len() {
        let p = plan.get(i)?;
        let Some(key) = blob_key(program, graph, p.op_index) else {
            continue;
        };
        let number = readers
            .number(&key)?
            .ok_or_else(|| Error::Graph(format!("blob at offset {} lost its number", key.0)))?;
        let mut state = readers.state(number)?;
        if state.readers < 2 || !state.pruned {
            continue;
        }
        let Some(resolved) = resolved_config(graph, config, &p, &mut ends)? else {
            continue;
        };
        let config_number = *numbers.entry(format!("{resolved:?}")).or_insert_with(|| {
            configs.push(resolved.clone());
            configs.len() as u32 - 1
        });
        if state.first_compared == 0 {
            state.first_compared = i as u32 + 1;
            state.config = config_number;
            readers.set_state(number, state)?;
            continue;
        }
        if state.config != config_number && configs[state.config as usize] != resolved {
            let first = plan.get(state.first_compared as usize - 1)?.op_index;
            let (a, b) = (qualified(graph, first), qualified(graph, p.op_index));
            let describe = |c: &Option<OpConfig>| c.as_ref().map_or("None".into(), OpConfig::describe);
            return Err(Error::Config(format!(
                "compression config conflict detected between ops {a} and {b}, which share the \
                 weight.bin blob at offset {}: {a} has config {} while {b} has {}.",
                key.0,
                describe(&configs[state.config as usize]),
                describe(&resolved)
            )));
        }
    }
    Ok(())
}

/// The config a planned const resolves to: `Some(Some(c))` pruned (or an eligibility skip) under
/// `c`, `Some(None)` no config (`None` set or nothing applies), `None` not compared.
fn resolved_config<'c>(
    graph: &GraphView,
    config: &'c OptimizationConfig,
    p: &PlannedTensor,
    ends: &mut ChainEnds<'c>,
) -> Result<Option<Option<OpConfig>>> {
    if let Decision::Prune(c) = &p.decision {
        return Ok(Some(Some((**c).clone())));
    }
    // The plan resolved exactly the storable consts; resolving them again raises nothing new.
    if !p.storable() {
        return Ok(None);
    }
    Ok(match resolve_const_along(graph, config, p.op_index, ends)? {
        Resolution::Config(c) => Some(Some(c.clone())),
        Resolution::Skip(SkipReason::ExplicitNone { .. } | SkipReason::NoConfig) => Some(None),
        Resolution::Skip(_) | Resolution::FollowConstexpr { .. } => None,
    })
}

/// What became of a shared blob the first time a const read it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The kernel skipped it (e.g. a threshold config below its minimum sparsity): the reason, the
    /// const it ran for (`function/name`) and where.
    Skipped {
        reason: String,
        first: String,
        device: &'static str,
    },
    /// Pruned: `kept` values of `bytes_after` stored bytes. `op` is the `constexpr_sparse_to_dense`
    /// that reads the output blobs (also when its own block merged it into an earlier equal op:
    /// the writer stored its blobs once, so they exist).
    Pruned {
        kept: u64,
        bytes_after: u64,
        op: Operation,
        /// `function/name` of the const that was pruned, for the report.
        first: String,
        /// Where its kernel ran.
        device: &'static str,
    },
}

/// `op`, a pruned op written for another const, renamed to be `const_name`'s replacement: same
/// blobs and values, its own name and output.
pub fn renamed_copy(op: &Operation, new_name: &str) -> Operation {
    let mut copy = op.clone();
    if let Some(name) = copy.attributes.lookup_mut("name") {
        *name = crate::mil::value::string_value(new_name);
    }
    if let Some(out) = copy.outputs.first_mut() {
        out.name = new_name.to_owned();
    }
    copy
}
