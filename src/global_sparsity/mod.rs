//! Whole-model sparsity (`--global-sparsity S`): one magnitude cut across every eligible tensor.
//!
//! The rule: let N be the total element count of the eligible tensors and `k = floor(S × N)`, with
//! S read as the exact decimal the user wrote (`0.3` is 3/10, not the binary64 nearest to it), so k
//! is computed in integers. v is the k-th smallest magnitude over all eligible elements (1-based),
//! compared exactly across fp16 and fp32 (every fp16 is exactly an fp32), NaN the largest, −0 equal
//! to +0. Every eligible element with `|w| <= v` becomes 0 (ties over-prune); `k = 0` zeroes nothing.
//!
//! Magnitudes are compared through one integer key, [`common_key`]: the bits of `|x|` as an f32
//! with every NaN mapped to the largest key. The cut found is such a key ([`GlobalCut`]); each
//! tensor is then pruned by the existing "key <= cut" work order in its own dtype's key space
//! ([`CutKey`]), on the CPU or the GPU.
//!
//! Selection never sorts and never holds more than one tensor: [`select`] streams the tensors
//! through fixed-size histograms (memory: 2^15 + 2 × 2^16 counters, 1.25 MiB):
//! * pass 1 (every tensor): fp16 keys go to an exact 2^15-bin histogram; fp32 keys to a 2^16-bin
//!   histogram of their high 16 bits. Together they give the count per high-16-bit bin, hence the bin
//!   that holds the k-th key.
//! * pass 2 (fp32 tensors only, and only when that bin holds fp32 values): a 2^16-bin histogram of
//!   the low 16 bits of the fp32 keys inside the bin; the fp16 contributions come from pass 1's exact
//!   histogram. fp16-only models, and cuts whose bin holds only fp16 values, skip it.
//!
//! So fp16 tensors are read twice per run (pass 1, then pruning) and fp32 tensors two or three times.
//!
//! Files: `decimal.rs` reads S; `select.rs` finds the cut; this module applies `--exclude`
//! to the plan, reads the eligible tensors for the selection, and reports the cut.

mod decimal;
mod select;

use std::collections::HashSet;

use serde::Serialize;

use crate::cancel::CancelFlag;
use crate::config::{from_shortcuts, OptimizationConfig, Shortcuts};
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::graph::GraphView;
use crate::mil::value::OperationExt;
use crate::plan::{Decision, Plan};
use crate::proto::mil::Program;
use crate::shared::{blob_key, qualified, BlobReaders};
use crate::tensor::{TensorData, TensorView};
use crate::weights::WeightSource;

pub use decimal::Sparsity;
pub use select::{common_key, select, CutKey, GlobalCut, Pass, NAN_KEY};

/// A `--global-sparsity` request: S and the `--exclude` names (const or consumer op names).
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalSparsity {
    pub sparsity: Sparsity,
    pub exclude: Vec<String>,
}

impl GlobalSparsity {
    /// The config whose plan decides which tensors are eligible: a global
    /// `OpMagnitudePrunerConfig(target_sparsity=S, weight_threshold=W)` (W: 2048 when `None`).
    pub fn eligibility_config(&self, weight_threshold: Option<u64>) -> Result<OptimizationConfig> {
        from_shortcuts(&Shortcuts {
            sparsity: Some(self.sparsity.to_f64()),
            weight_threshold,
            ..Shortcuts::default()
        })
    }
}

/// The cut as `--report` and the summary give it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CutReport {
    /// S as given.
    pub global_sparsity: String,
    /// N: elements of the eligible tensors.
    pub eligible_elements: u64,
    /// k = floor(S × N).
    pub k: u64,
    /// v, the k-th smallest magnitude, as Rust prints the f32 (`inf`, `NaN`); `null` for k = 0.
    pub cut_value: Option<String>,
    /// v's key: the bits of |v| as an f32, every NaN 0x7fffffff; `null` for k = 0.
    pub cut_key: Option<u32>,
    #[serde(skip)]
    pub cut: GlobalCut,
}

impl CutReport {
    /// `cut |w| <= v (key 0x…), k of N` for the one-line summary.
    pub fn summary(&self) -> String {
        match (&self.cut_value, self.cut_key) {
            (Some(v), Some(key)) => format!(
                "global cut |w| <= {v} (key {key:#010x}), k = {} of {} eligible elements",
                self.k, self.eligible_elements
            ),
            _ => format!(
                "global cut: none (k = 0 of {} eligible elements)",
                self.eligible_elements
            ),
        }
    }
}

/// Applies `--exclude` to the plan of the global magnitude config, then selects the cut over the
/// tensors still to be pruned, reading each through `source` (mapped where it can be).
pub fn decide_cut(
    program: &Program,
    graph: &GraphView,
    source: &WeightSource,
    (plan, shared): (&mut Plan, &mut BlobReaders),
    global: &GlobalSparsity,
    cancel: &CancelFlag,
) -> Result<CutReport> {
    let excluded = exclude(graph, plan, &global.exclude)?;
    keep_shared_blobs_whole(program, graph, plan, shared, &excluded)?;
    // A weight.bin blob that several functions' consts share (a multifunction package) is one
    // tensor, pruned once: it counts once in N and in the histogram. Entries are read from the
    // plan at each pass rather than gathered: the plan may be on disk.
    let eligible = || {
        plan.iter()
            .filter(|p| p.as_ref().map_or(true, |p| p.is_prune() && !p.reuses_shared))
    };
    let mut total = 0u64;
    for p in eligible() {
        let p = p?;
        if !matches!(p.dtype, ScalarType::Float16 | ScalarType::Float32) {
            return Err(Error::Unsupported(format!(
                "--global-sparsity compares fp16 and fp32 weights only; tensor '{}' is {} (leave it out with --exclude)",
                graph.name(p.op_index),
                p.dtype
            )));
        }
        total = total
            .checked_add(p.count)
            .ok_or_else(|| Error::Unsupported("the eligible element count overflows".into()))?;
    }
    let k = global.sparsity.count_of(total);
    let (cut, _) = select(k, |pass, sink| {
        for p in eligible() {
            let p = p?;
            if pass == Pass::Fp32Only && p.dtype != ScalarType::Float32 {
                continue;
            }
            cancel.check()?;
            let name = graph.name(p.op_index);
            let value = graph
                .op(program, p.op_index)
                .and_then(|op| op.into_const_value())
                .ok_or_else(|| Error::tensor(&name, "const op without a value"))?;
            match source.map(&name, &value)? {
                Some((_, mapped)) => {
                    let view = mapped
                        .view()
                        .ok_or_else(|| Error::tensor(name, "mapped data does not match its type"))?;
                    sink(view);
                }
                None => match source.read(&name, &value)?.1 {
                    TensorData::F16(w) => sink(TensorView::F16(&w)),
                    TensorData::F32(w) => sink(TensorView::F32(&w)),
                    other => {
                        return Err(Error::tensor(name, format!("read as {}", other.dtype())));
                    }
                },
            }
        }
        Ok(())
    })?;
    Ok(CutReport {
        global_sparsity: global.sparsity.to_string(),
        eligible_elements: total,
        k,
        cut_value: cut.value().map(|v| v.to_string()),
        cut_key: cut.key,
        cut,
    })
}

/// Marks the planned tensors named by `names` (their const name or a consumer op's name) as
/// skipped, and returns their op indices. A name that is neither a weight const of the plan nor an
/// op reading one is a usage error: a typo, or the name of an op without weights, would otherwise
/// silently leave pruned what the user meant to keep.
fn exclude(graph: &GraphView, plan: &mut Plan, names: &[String]) -> Result<HashSet<usize>> {
    let mut excluded = HashSet::new();
    if names.is_empty() {
        return Ok(excluded);
    }
    let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
    // The names given that are the plan's consts or ops reading them (only those: a set of every
    // such name grew with the model).
    let mut found: HashSet<&str> = HashSet::new();
    for i in 0..plan.len() {
        let p = plan.get(i)?;
        let own = graph.name(p.op_index);
        let own_wanted = wanted.get(&*own).copied();
        found.extend(own_wanted);
        // Each consumer's name read once: the first one named excludes by consumer.
        let mut by_consumer = None;
        for c in graph.consumer_ops(p.op_index) {
            if let Some(&name) = wanted.get(&*graph.name(c)) {
                found.insert(name);
                by_consumer.get_or_insert(name);
            }
        }
        if !p.is_prune() {
            continue;
        }
        let reason = if own_wanted.is_some() {
            format!("excluded by --exclude '{own}'")
        } else if let Some(consumer) = by_consumer {
            format!("excluded by --exclude '{consumer}' (a consumer)")
        } else {
            continue;
        };
        plan.set_decision(i, Decision::Skip(reason.into()))?;
        excluded.insert(p.op_index);
    }
    // Checked once all names are known; the run stops here, so the marks above go unused.
    if let Some(unknown) = names.iter().find(|n| !found.contains(n.as_str())) {
        return Err(Error::Usage(format!(
            "--exclude '{}': the model has no weight const of that name, nor an op reading one",
            crate::config::pyfmt::clip(unknown)
        )));
    }
    Ok(excluded)
}

/// A blob several consts share (the functions of a multifunction package) is one tensor: excluding
/// it for some of them but pruning it for others would store it twice, pruned and as is, and the
/// functions would no longer compute with the same weight. Refused, naming both consts.
fn keep_shared_blobs_whole(
    program: &Program,
    graph: &GraphView,
    plan: &Plan,
    shared: &mut BlobReaders,
    excluded: &HashSet<usize>,
) -> Result<()> {
    if excluded.is_empty() || !shared.any_shared() {
        return Ok(());
    }
    for p in plan.iter() {
        let p = p?;
        let is_excluded = excluded.contains(&p.op_index);
        if !is_excluded && !p.is_prune() {
            continue;
        }
        let Some(key) = blob_key(program, graph, p.op_index) else {
            continue;
        };
        let Some(blob) = shared.shared(&key)? else {
            continue;
        };
        if let Some((skipped, pruned)) = shared.note_exclusion(blob, p.op_index, is_excluded)? {
            return Err(Error::Usage(format!(
                "--exclude keeps {} but not {}, which shares its weight.bin blob at offset {}: \
                 exclude both or neither",
                qualified(graph, skipped),
                qualified(graph, pruned),
                key.0
            )));
        }
    }
    Ok(())
}
