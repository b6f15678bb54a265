//! The plan, held bounded in memory (issue 18): an entry per weight tensor of the model lives
//! through the whole walk, so entries are fixed-size records in a [`PagedVec`] (in memory up to
//! its limit, then in an unlinked scratch file), and each names its decision by number in a table
//! of the distinct decisions, of which a model of many tensors has a handful.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{Decision, PlannedTensor};
use crate::config::OpConfig;
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::spill_map::paged::{PagedVec, Record, Spill};

/// One plan entry as stored: 18 bytes, against 40 and an allocation per entry held as values.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    op_index: u32,
    dtype: ScalarType,
    count: u64,
    decision: u32,
    reuses_shared: bool,
}

impl Record for Entry {
    const SIZE: usize = 18;
    fn put(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.op_index.to_le_bytes());
        out[4] = self.dtype as u8;
        out[5..13].copy_from_slice(&self.count.to_le_bytes());
        out[13..17].copy_from_slice(&self.decision.to_le_bytes());
        out[17] = u8::from(self.reuses_shared);
    }
    fn take(bytes: &[u8]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Entry {
            op_index: u32_at(0),
            // Only this module writes records, from a `ScalarType`.
            dtype: ScalarType::ALL[usize::from(bytes[4])],
            count: u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes")),
            decision: u32_at(13),
            reuses_shared: bytes[17] != 0,
        }
    }
}

/// The distinct decisions of a plan, each once, numbered in the order first met.
#[derive(Default)]
struct Decisions {
    all: Vec<Decision>,
    // Configs keyed by their printed form: `OpConfig` holds floats, and two configs that print
    // alike are the same config (NaN is refused before planning).
    configs: HashMap<String, u32>,
    reasons: HashMap<Arc<str>, u32>,
}

impl Decisions {
    fn number(&mut self, decision: Decision) -> u32 {
        let next = self.all.len() as u32;
        let number = match &decision {
            Decision::Prune(c) => *self.configs.entry(printed(c)).or_insert(next),
            Decision::Skip(r) => *self.reasons.entry(r.clone()).or_insert(next),
        };
        if number == next {
            self.all.push(decision);
        }
        number
    }
}

fn printed(config: &OpConfig) -> String {
    format!("{config:?}")
}

/// The planned tensors of a model in program order.
pub struct Plan {
    entries: PagedVec<Entry>,
    decisions: Decisions,
    prunes: usize,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("len", &self.len())
            .field("prunes", &self.prunes)
            .finish()
    }
}

impl Plan {
    pub fn new(spill: Spill) -> Self {
        Plan {
            entries: PagedVec::new(spill),
            decisions: Decisions::default(),
            prunes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries are to be pruned.
    pub fn prunes(&self) -> usize {
        self.prunes
    }

    /// Whether the entries moved to a scratch file.
    #[cfg(test)]
    fn on_disk(&self) -> bool {
        self.entries.on_disk()
    }

    pub fn push(&mut self, planned: PlannedTensor) -> Result<()> {
        let op_index = u32::try_from(planned.op_index)
            .map_err(|_| Error::Graph(format!("op index {} past 2^32", planned.op_index)))?;
        self.prunes += usize::from(planned.is_prune());
        let entry = Entry {
            op_index,
            dtype: planned.dtype,
            count: planned.count,
            decision: self.decisions.number(planned.decision),
            reuses_shared: planned.reuses_shared,
        };
        self.entries.push(entry)
    }

    fn entry(&self, index: usize) -> Result<Entry> {
        self.entries
            .get(index)?
            .ok_or_else(|| Error::Graph(format!("plan entry {index} of {}", self.len())))
    }

    /// Entry `index` (in program order).
    pub fn get(&self, index: usize) -> Result<PlannedTensor> {
        let entry = self.entry(index)?;
        Ok(PlannedTensor {
            op_index: entry.op_index as usize,
            dtype: entry.dtype,
            count: entry.count,
            decision: self.decisions.all[entry.decision as usize].clone(),
            reuses_shared: entry.reuses_shared,
        })
    }

    /// A plan of `entries`, its scratch files in `scratch` (see [`Spill::in_dir`]).
    pub fn of(entries: impl IntoIterator<Item = PlannedTensor>, scratch: Option<&Path>) -> Result<Plan> {
        let mut plan = Plan::new(Spill::in_dir(scratch));
        for p in entries {
            plan.push(p)?;
        }
        Ok(plan)
    }

    /// A walk over the entries along the program's ops.
    pub fn cursor(&self) -> PlanCursor<'_> {
        PlanCursor {
            plan: self,
            next: 0,
            peeked: None,
        }
    }

    /// Every entry, in program order.
    pub fn iter(&self) -> impl Iterator<Item = Result<PlannedTensor>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Gives entry `index` another decision (`--exclude`).
    pub fn set_decision(&mut self, index: usize, decision: Decision) -> Result<()> {
        let mut entry = self.entry(index)?;
        let was_prune = matches!(self.decisions.all[entry.decision as usize], Decision::Prune(_));
        let is_prune = matches!(decision, Decision::Prune(_));
        entry.decision = self.decisions.number(decision);
        self.prunes = self.prunes - usize::from(was_prune) + usize::from(is_prune);
        self.entries.set(index, entry)
    }

    /// Marks entry `index` as reading a blob an earlier pruned entry reads too: it reuses that
    /// entry's result and is not read itself ([`crate::shared`]).
    pub fn mark_reuses_shared(&mut self, index: usize) -> Result<()> {
        let mut entry = self.entry(index)?;
        entry.reuses_shared = true;
        self.entries.set(index, entry)
    }
}

/// Walks a plan along the program's ops: the engine asks at every op whether it is the next
/// planned one.
pub struct PlanCursor<'p> {
    plan: &'p Plan,
    next: usize,
    peeked: Option<PlannedTensor>,
}

impl PlanCursor<'_> {
    /// The next entry if it is the const at `op_index` (entries are in program order).
    pub fn take_if_at(&mut self, op_index: usize) -> Result<Option<PlannedTensor>> {
        if self.peeked.is_none() && self.next < self.plan.len() {
            self.peeked = Some(self.plan.get(self.next)?);
            self.next += 1;
        }
        Ok(self.peeked.take_if(|p| p.op_index == op_index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn magnitude(target_sparsity: f64) -> OpConfig {
        OpConfig::Magnitude {
            target_sparsity: Some(target_sparsity),
            block_size: None,
            n_m_ratio: None,
            dim: None,
            weight_threshold: Some(0),
        }
    }

    fn entry(i: usize, decision: Decision) -> PlannedTensor {
        PlannedTensor {
            op_index: i * 3,
            dtype: ScalarType::ALL[i % ScalarType::ALL.len()],
            count: (i as u64) << 33 | 7,
            decision,
            reuses_shared: i.is_multiple_of(5),
        }
    }

    fn decision(i: usize, configs: &[Arc<OpConfig>]) -> Decision {
        match i % 4 {
            0 | 1 => Decision::Prune(configs[i % 2].clone()),
            2 => Decision::Skip(format!("reason {}", i % 3).into()),
            _ => Decision::Skip("another".into()),
        }
    }

    #[test]
    fn entries_read_back_as_pushed_in_memory_and_on_disk() {
        let configs = [Arc::new(magnitude(0.5)), Arc::new(magnitude(0.75))];
        let mut plan = Plan::new(Spill {
            memory_limit: 1000,
            cache_pages: 2,
            ..Spill::default()
        });
        let count = 20_000;
        for i in 0..count {
            plan.push(entry(i, decision(i, &configs))).unwrap();
        }
        assert!(plan.on_disk());
        assert_eq!(plan.len(), count);
        assert_eq!(plan.prunes(), count / 2);
        // Four decisions, whatever the number of entries.
        assert_eq!(plan.decisions.all.len(), 2 + 3 + 1);
        for (i, p) in plan.iter().enumerate() {
            assert_eq!(p.unwrap(), entry(i, decision(i, &configs)));
        }
        plan.set_decision(1, Decision::Skip("excluded".into())).unwrap();
        plan.set_decision(2, Decision::Prune(configs[0].clone())).unwrap();
        plan.mark_reuses_shared(3).unwrap();
        assert_eq!(plan.prunes(), count / 2);
        assert_eq!(plan.get(1).unwrap().decision, Decision::Skip("excluded".into()));
        assert_eq!(plan.get(2).unwrap().decision, Decision::Prune(configs[0].clone()));
        assert!(plan.get(3).unwrap().reuses_shared);
        assert!(plan.get(count).is_err());
    }

    #[test]
    fn equal_decisions_share_one_allocation() {
        let plan = Plan::of(
            (0..10).map(|i| entry(i, Decision::Prune(Arc::new(magnitude(0.5))))),
            None,
        )
        .unwrap();
        let mut cursor = plan.cursor();
        assert_eq!(cursor.take_if_at(1).unwrap(), None);
        assert_eq!(cursor.take_if_at(0).unwrap().map(|p| p.op_index), Some(0));
        assert_eq!(cursor.take_if_at(2).unwrap(), None);
        assert_eq!(cursor.take_if_at(3).unwrap().map(|p| p.op_index), Some(3));
        let (a, b) = (plan.get(0).unwrap(), plan.get(9).unwrap());
        match (a.decision, b.decision) {
            (Decision::Prune(a), Decision::Prune(b)) => assert!(Arc::ptr_eq(&a, &b)),
            other => panic!("{other:?}"),
        }

        // Equal configs and equal reasons, made apart, come back as one allocation each; the
        // decisions themselves are unchanged.
        let decisions = [
            Decision::Prune(Arc::new(magnitude(0.5))),
            Decision::Skip("rank 1".into()),
            Decision::Prune(Arc::new(magnitude(0.5))),
            Decision::Prune(Arc::new(magnitude(0.25))),
            Decision::Skip("rank 1".into()),
        ];
        let plan = Plan::of((0..5).map(|i| entry(i, decisions[i].clone())), None).unwrap();
        let back: Vec<Decision> = plan.iter().map(|p| p.unwrap().decision).collect();
        assert_eq!(back, decisions, "sharing changes no decision");
        let (Decision::Prune(a), Decision::Prune(b), Decision::Prune(c)) = (&back[0], &back[2], &back[3])
        else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(a, b) && !Arc::ptr_eq(a, c));
        let (Decision::Skip(x), Decision::Skip(y)) = (&back[1], &back[4]) else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(x, y));
    }
}
