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

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, PoisonError};

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
    spare: Arc<SpareSlot>,
}

/// The buffer the next read goes into, if the engine has passed one back.
#[derive(Default)]
struct SpareSlot(Mutex<Option<TensorData>>);

impl SpareSlot {
    /// Keeps the largest reusable buffer offered (a mask's bytes come back too, and must not
    /// displace a tensor's values); the other is freed.
    fn offer(&self, buffer: TensorData) {
        let mut spare = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let larger = spare.as_ref().is_none_or(|kept| reusable_capacity(&buffer) > reusable_capacity(kept));
        if larger && reusable_capacity(&buffer) > 0 {
            *spare = Some(buffer);
        }
    }

    fn take(&self) -> Option<TensorData> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Bytes a spare can take without reallocating; only float buffers are read into (weights that
/// reach the reader are fp16 or fp32 almost always).
fn reusable_capacity(buffer: &TensorData) -> usize {
    match buffer {
        TensorData::F16(v) => v.capacity() * 2,
        TensorData::F32(v) => v.capacity() * 4,
        _ => 0,
    }
}

impl Prefetcher {
    /// Starts the reader thread on `scope`, reading `jobs` in order from `source`.
    pub fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        source: &'scope WeightSource,
        jobs: Vec<Job>,
    ) -> Prefetcher {
        let (to_engine, results) = sync_channel(0);
        let spare = Arc::new(SpareSlot::default());
        let spare_for_reader = Arc::clone(&spare);
        scope.spawn(move || {
            for job in jobs {
                let spare = spare_for_reader.take();
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
        Prefetcher { results, spare }
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
    pub fn recycle(&self, buffer: TensorData) {
        self.spare.offer(buffer);
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    #[test]
    fn the_spare_is_the_largest_float_buffer_offered() {
        let slot = SpareSlot::default();
        let values = |n: usize| {
            let mut v = Vec::with_capacity(n);
            v.push(f16::ZERO);
            TensorData::F16(v)
        };
        slot.offer(TensorData::U8(vec![0; 1 << 20]));
        assert!(slot.take().is_none(), "a mask's bytes are never read into");
        slot.offer(values(1000));
        slot.offer(TensorData::U8(vec![0; 1 << 20]));
        slot.offer(values(10));
        assert!(matches!(slot.take(), Some(TensorData::F16(v)) if v.capacity() >= 1000));
        assert!(slot.take().is_none());
        slot.offer(TensorData::F32(Vec::with_capacity(600)));
        slot.offer(values(1000));
        assert!(matches!(slot.take(), Some(TensorData::F32(v)) if v.capacity() >= 600));
    }
}
