//! The walks from a constexpr row down the ops feeding it: the bytes it stores, its chain of op
//! types and the `weight.bin` offsets it reads.

use std::collections::HashMap;
use std::sync::Arc;

use crate::mil::entries::Entries;
use crate::mil::graph::GraphView;
use crate::mil::value::{is_constexpr_type, OperationExt, ValueExt};
use crate::proto::mil::{argument::binding::Binding, Program};
use crate::weights::TensorMeta;

/// What one op adds to every walk that reaches it: read once, however many rows' chains pass
/// through it (K rows reading the end of one chain of D ops walk it K times).
struct OpPart {
    /// Bytes of the tensors it holds inline (attributes but `name`, inputs bound to values).
    bytes: u64,
    /// The `weight.bin` offsets of those tensors, attributes first.
    blobs: Vec<u64>,
    /// The const and constexpr ops producing its named inputs, by input name, each once.
    children: Vec<usize>,
    /// Its op type when it is a constexpr op (one link of the chain).
    constexpr_type: Option<Arc<str>>,
}

/// The stored bytes, op types innermost first, and `weight.bin` offsets of a constexpr op and
/// everything feeding it.
#[derive(Default)]
pub(super) struct ChainTotals {
    pub bytes: u64,
    pub chain: Vec<Arc<str>>,
    pub blobs: Vec<u64>,
}

/// Walks the ops feeding constexpr rows without recursion (a chain of 20,000 ops overflowed the
/// stack) and in time linear in the ops each walk reaches: each op is decoded once for all walks,
/// and an op already counted in this walk is found by a stamp, not by scanning a list.
#[derive(Default)]
pub(super) struct ChainWalker {
    parts: HashMap<usize, OpPart>,
    /// Per op, the number of the last walk that counted it (a joint op feeds both inputs of the op
    /// after it, and counts once).
    stamps: Vec<u32>,
    walk: u32,
    /// See [`super::InspectReport::chain_steps`] and [`super::InspectReport::chain_reads`].
    pub steps: u64,
    pub reads: u64,
}

impl ChainWalker {
    /// Depth first from `root`, children in input-name order: an op's blobs are listed before
    /// those of the ops feeding it, its type after theirs (innermost first).
    pub fn walk(&mut self, program: &Program, graph: &GraphView, root: usize) -> ChainTotals {
        self.walk += 1;
        if self.stamps.is_empty() {
            self.stamps = vec![0; graph.op_count()];
        }
        let mut totals = ChainTotals::default();
        // (op, how many of its children were entered)
        let mut stack: Vec<(usize, usize)> = Vec::new();
        if self.enter(program, graph, root, &mut totals) {
            stack.push((root, 0));
        }
        while let Some((op, next)) = stack.last_mut() {
            let part = &self.parts[op];
            if let Some(&child) = part.children.get(*next) {
                *next += 1;
                if self.enter(program, graph, child, &mut totals) {
                    stack.push((child, 0));
                }
            } else {
                totals.chain.extend(part.constexpr_type.clone());
                stack.pop();
            }
        }
        totals
    }

    /// Counts op `index` into `totals` unless this walk counted it already; whether it did now.
    fn enter(
        &mut self,
        program: &Program,
        graph: &GraphView,
        index: usize,
        totals: &mut ChainTotals,
    ) -> bool {
        if self.stamps[index] == self.walk {
            return false;
        }
        self.stamps[index] = self.walk;
        self.steps += 1;
        let reads = &mut self.reads;
        let part = self.parts.entry(index).or_insert_with(|| {
            *reads += 1;
            op_part(program, graph, index)
        });
        totals.bytes = totals.bytes.saturating_add(part.bytes);
        totals.blobs.extend_from_slice(&part.blobs);
        true
    }
}

/// Reads what op `index` adds to a walk (nothing for an op that cannot be read).
fn op_part(program: &Program, graph: &GraphView, index: usize) -> OpPart {
    let mut part = OpPart {
        bytes: 0,
        blobs: Vec::new(),
        children: Vec::new(),
        constexpr_type: None,
    };
    let Some(op) = graph.op(program, index) else {
        return part;
    };
    let mut inline = |v: &crate::proto::mil::Value| {
        if let Some(b) = TensorMeta::of(v).and_then(|m| m.storage_bytes()) {
            part.bytes = part.bytes.saturating_add(b);
        }
        part.blobs.extend(v.blob_offset());
    };
    for (name, v) in op.attributes.pairs() {
        if name != "name" {
            inline(v);
        }
    }
    let mut named = Vec::new();
    for (_, arg) in op.inputs.pairs() {
        for b in &arg.arguments {
            match &b.binding {
                Some(Binding::Value(v)) => inline(v),
                Some(Binding::Name(n)) => named.push(n.as_str()),
                None => {}
            }
        }
    }
    named.sort_unstable();
    named.dedup();
    let function = &graph.info(index).path.function;
    part.children = named
        .into_iter()
        .filter_map(|n| graph.producer(function, n))
        .filter(|&p| {
            let t = graph.op_type(p);
            t == "const" || is_constexpr_type(t)
        })
        .collect();
    if op.is_constexpr() {
        part.constexpr_type = Some(op.r#type.as_str().into());
    }
    part
}
