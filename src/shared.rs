//! Weights that several consts share: one `weight.bin` blob referenced by consts in several
//! functions of a multifunction model (`ct.utils.save_multifunction` gives equal consts of different
//! functions the same blob), or, more rarely, by several consts of one function.
//!
//! Such a blob is pruned once: the first const that reads it runs the kernel, every later one reuses
//! that result and points at the same output blobs ([`SharedOutcomes`]). That is only sound when all
//! of them are pruned with the same config, which [`check_shared_configs`] makes sure of before
//! anything is written.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::{OpConfig, OptimizationConfig, Resolution, SkipReason};
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::entries::Entries;
use crate::mil::graph::GraphView;
use crate::mil::value::{OperationExt, ValueExt};
use crate::plan::{resolve_const_along, ChainEnds, Decision, PlannedTensor};
use crate::proto::mil::{Operation, Program, Value};

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

/// The `weight.bin` offset of the const at `index`, if it reads its value from there.
fn blob_offset(program: &Program, graph: &GraphView, index: usize) -> Option<u64> {
    graph.op(program, index)?.const_value()?.blob_offset()
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
///
/// Returns the keys of the blobs that several planned consts read, for [`SharedOutcomes::new`].
pub fn check_shared_configs(
    program: &Program,
    graph: &GraphView,
    config: &OptimizationConfig,
    planned: &[PlannedTensor],
) -> Result<HashSet<BlobKey>> {
    // Offsets first, 16 bytes a const: a whole key (a shape) and a group for every const of a
    // model of many tensors took more memory than the rest of the plan (issue 18). Only an offset
    // several consts read can be a shared blob. Sorted with its plan index, each run keeps the
    // plan's order.
    let mut offsets: Vec<(u64, usize)> = planned
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((blob_offset(program, graph, p.op_index)?, i)))
        .collect();
    offsets.sort_unstable();
    let mut groups: BTreeMap<BlobKey, Vec<&PlannedTensor>> = BTreeMap::new();
    for run in offsets.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
        for &(_, i) in run {
            let p = &planned[i];
            if let Some(key) = blob_key(program, graph, p.op_index) {
                groups.entry(key).or_default().push(p);
            }
        }
    }
    drop(offsets);
    // Only a blob that is pruned for some const can come out unshared; one every const leaves
    // alone (a rank-1 bias, say) is copied once whatever the configs say.
    groups.retain(|_, m| m.len() > 1);
    let pruned_somewhere =
        |m: &Vec<&PlannedTensor>| m.iter().any(|p| matches!(p.decision, Decision::Prune(_)));
    // One record of chain ends for all the consts: many of them feeding one long chain of
    // constexpr ops would each follow it to its end.
    let mut ends = ChainEnds::default();
    for ((offset, ..), members) in groups.iter().filter(|(_, m)| pruned_somewhere(m)) {
        let mut first: Option<(usize, Option<OpConfig>)> = None;
        for &p in members {
            let Some(resolved) = resolved_config(graph, config, p, &mut ends)? else {
                continue;
            };
            let Some((first_index, first_config)) = &first else {
                first = Some((p.op_index, resolved));
                continue;
            };
            if *first_config != resolved {
                let (a, b) = (qualified(graph, *first_index), qualified(graph, p.op_index));
                let describe = |c: &Option<OpConfig>| c.as_ref().map_or("None".into(), OpConfig::describe);
                return Err(Error::Config(format!(
                    "compression config conflict detected between ops {a} and {b}, which share the \
                     weight.bin blob at offset {offset}: {a} has config {} while {b} has {}.",
                    describe(first_config),
                    describe(&resolved)
                )));
            }
        }
    }
    Ok(groups.into_keys().collect())
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

/// The outcomes of shared blobs pruned so far, by [`BlobKey`]. Only blobs that several consts
/// read are kept: a model without shared weights keeps nothing here.
#[derive(Debug, Default)]
pub struct SharedOutcomes {
    shared: HashSet<BlobKey>,
    outcomes: HashMap<BlobKey, Outcome>,
}

impl SharedOutcomes {
    pub fn new(shared: HashSet<BlobKey>) -> Self {
        SharedOutcomes {
            shared,
            outcomes: HashMap::new(),
        }
    }

    /// Whether several planned consts read `key`'s blob.
    pub fn is_shared(&self, key: &BlobKey) -> bool {
        self.shared.contains(key)
    }

    /// Whether any blob is read by several planned consts (most models have none).
    pub fn any_shared(&self) -> bool {
        !self.shared.is_empty()
    }

    /// The key of a const `value`'s blob if several planned consts read it; nothing is computed
    /// when no blob is shared.
    pub fn shared_key(&self, value: &Value) -> Option<BlobKey> {
        if !self.any_shared() {
            return None;
        }
        blob_key_of(value).filter(|key| self.is_shared(key))
    }

    pub fn get(&self, key: &BlobKey) -> Option<&Outcome> {
        self.outcomes.get(key)
    }

    /// Records what became of `key`'s blob, if other consts read it too. `outcome` is called only
    /// then, so nothing is cloned for a blob no other const reads.
    pub fn record(&mut self, key: Option<BlobKey>, outcome: impl FnOnce() -> Outcome) {
        if let Some(key) = key.filter(|k| self.shared.contains(k)) {
            self.outcomes.insert(key, outcome());
        }
    }
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
