//! Reads the next tensor to prune while the current one is pruned.
//!
//! A reader thread walks the prunable consts in program order — the order the engine asks for
//! them — and reads each one ahead. With the background writer this makes a three-stage pipeline:
//! tensor k+1 is read while k is pruned and k−1 is written.
//!
//! Memory stays bounded: the hand-over channel has no capacity, so the reader holds at most one
//! tensor read ahead, and it reads ahead only into a buffer the writer has finished with (which the
//! engine passes back through [`Prefetcher::recycle`]) or, without one, a tensor of at most
//! [`FRESH_READ_LIMIT`] bytes. A larger tensor with no buffer to reuse is left for the engine to
//! read itself ([`Prefetched::NotRead`]), so read-ahead never adds a third large tensor.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::error::Result;
use crate::proto::mil::Value;
use crate::tensor::TensorData;
use crate::weights::{TensorMeta, WeightSource};

/// Largest tensor read ahead into fresh memory: it fits in the 128 MiB the memory bound allows
/// beyond two tensors, with the writer's pieces and the masks.
pub const FRESH_READ_LIMIT: u64 = 48 << 20;

/// One tensor the reader was asked for.
pub struct Job {
    /// The op's index in the graph, to check the engine and the reader agree.
    pub op_index: usize,
    pub name: String,
    pub value: Value,
}

/// What the reader produced for a job.
pub enum Prefetched {
    Read(Result<(TensorMeta, TensorData)>),
    /// Read ahead would have needed a large fresh buffer: the engine reads it itself.
    NotRead,
}

pub struct Prefetcher {
    results: Receiver<(usize, Prefetched)>,
    spares: SyncSender<TensorData>,
}

impl Prefetcher {
    /// Starts the reader thread on `scope`, reading `jobs` in order from `source`.
    pub fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        source: &'scope WeightSource,
        jobs: Vec<Job>,
    ) -> Prefetcher {
        let (to_engine, results) = sync_channel(0);
        let (spares, from_engine) = sync_channel::<TensorData>(1);
        scope.spawn(move || {
            for job in jobs {
                let spare = from_engine.try_recv().ok();
                let fresh_ok = TensorMeta::of(&job.value)
                    .and_then(|m| m.storage_bytes())
                    .is_some_and(|bytes| bytes <= FRESH_READ_LIMIT);
                let item = if spare.is_some() || fresh_ok {
                    Prefetched::Read(source.read_reusing(&job.name, &job.value, spare))
                } else {
                    Prefetched::NotRead
                };
                // The engine stopped (an error elsewhere): nothing more to read.
                if to_engine.send((job.op_index, item)).is_err() {
                    break;
                }
            }
        });
        Prefetcher { results, spares }
    }

    /// The tensor of the next job, which must be `op_index`'s. `None` when the reader has nothing
    /// for it (not read ahead, or the jobs ran out); the engine then reads it itself.
    pub fn next(&self, op_index: usize) -> Option<Result<(TensorMeta, TensorData)>> {
        // Jobs come in the engine's order; one the engine did not ask for is passed over.
        while let Ok((index, item)) = self.results.recv() {
            match (index.cmp(&op_index), item) {
                (std::cmp::Ordering::Less, _) => continue,
                (std::cmp::Ordering::Equal, Prefetched::Read(result)) => return Some(result),
                _ => return None,
            }
        }
        None
    }

    /// Offers a buffer the writer has finished with for the next read.
    pub fn recycle(&self, buffer: Option<TensorData>) {
        if let Some(buffer) = buffer {
            // Full: the reader has a spare already, so this one is freed.
            let _ = self.spares.try_send(buffer);
        }
    }
}
