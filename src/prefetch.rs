//! Reads (or maps) the next tensor to prune while the current one is pruned.
//!
//! A reader thread walks the prunable consts in program order — the order the engine asks for
//! them — and gets each one ahead: fp16 and fp32 tensors of `weight.bin` are mapped with their
//! pages populated ([`MappedTensor`]), anything else is read into a buffer. With the background
//! writer this makes a three-stage pipeline: tensor k+1 is read while k is pruned and k−1 is
//! written.
//!
//! Memory stays bounded: the hand-over channel has no capacity, so the reader holds at most one
//! tensor ahead, or one batch of small ones (at most `BATCH_BYTES` (1 MiB) and one more of them,
//! while the engine works through the batch before). It maps ahead only tensors of at most
//! [`FRESH_READ_LIMIT`] bytes, and reads ahead only into a buffer the writer has finished with
//! (which the engine passes back through [`Prefetcher::recycle`]) or, without one, such a small
//! tensor. A larger tensor is left for the engine to get itself ([`Prefetched::NotRead`]), so
//! getting ahead never adds a third large tensor. For tensors up to that size five tensor-sized
//! regions can be resident (the mapping pruned and the one mapped ahead, the kept values being
//! made, those being written, a spare), which the memory bound of two of the largest tensors plus
//! 128 MiB still holds: 8 tensors of exactly 40 MiB measured at most 189 MiB against a bound of
//! 208 MiB.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, PoisonError};

use prost::bytes::Bytes;

use crate::blob::ReadThreads;
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::decode_op;
use crate::mil::value::OperationExt;
use crate::proto::mil::Value;
use crate::tensor::TensorData;
use crate::weights::mapped::MappedTensor;
use crate::weights::{is_small_tensor, TensorMeta, WeightSource};

/// Largest tensor read ahead into fresh memory, and written while the next one is pruned: two
/// more such tensors fit in the 128 MiB the memory bound allows beyond two, with the writer's
/// pieces, the masks and the histograms.
pub const FRESH_READ_LIMIT: u64 = 40 << 20;

/// One tensor the reader was asked for.
pub struct Job {
    /// The op's index in the graph, to check the engine and the reader agree.
    pub op_index: usize,
    pub name: Arc<str>,
    /// The const op as stored (`crate::mil::GraphView::op_bytes`): the reader decodes it when it
    /// gets there, so a model of many tensors does not hold a decoded value per job.
    pub op: Bytes,
}

impl Job {
    /// The const's value.
    fn value(&self) -> Result<Value> {
        decode_op(&self.op)
            .ok()
            .and_then(|op| op.into_const_value())
            .ok_or_else(|| Error::tensor(&self.name, "const op without a value"))
    }
}

/// A tensor ready to prune.
pub enum Input {
    /// Read into a buffer.
    Read(TensorMeta, TensorData),
    /// Mapped from `weight.bin` (fp16 and fp32 tensors of a weight file).
    Mapped(TensorMeta, MappedTensor),
}

/// What the reader produced for a job.
pub enum Prefetched {
    Ready(Result<Input>),
    /// Read or mapped ahead, the tensor would have been a third large one in memory: the engine
    /// gets it itself.
    NotRead,
}

pub struct Prefetcher {
    results: Receiver<Vec<(usize, Prefetched)>>,
    /// The rest of the batch last received, in job order.
    received: RefCell<VecDeque<(usize, Prefetched)>>,
    spare: Arc<SpareSlot>,
}

/// Small tensors travel to the engine together, up to this many bytes of them (plus one): a
/// hand-over is a rendezvous, two context switches, which was a fifth of the time of a model of
/// many small tensors. Any other item travels alone, after the batch before it: in a batch, a large
/// tensor would wait in the engine's queue while the reader got the next one ahead, a third large
/// tensor in memory.
const BATCH_BYTES: u64 = 1 << 20;

/// The bytes `item` holds when it may travel in a batch: a small tensor read ahead
/// ([`is_small_tensor`]). `None` for anything else.
fn batched_bytes(item: &Prefetched) -> Option<u64> {
    let meta = match item {
        Prefetched::Ready(Ok(Input::Read(meta, _) | Input::Mapped(meta, _))) => meta,
        _ => return None,
    };
    meta.storage_bytes().filter(|&bytes| is_small_tensor(bytes))
}

/// The buffers the next reads go into, as the engine passes them back: the largest, and a second
/// one if it is small enough to be read into fresh anyway (two can come back at once when the
/// writer is behind; freeing one would only mean page-faulting a new one in later).
#[derive(Default)]
struct SpareSlot(Mutex<Vec<TensorData>>);

impl SpareSlot {
    fn offer(&self, buffer: TensorData) {
        if reusable_capacity(&buffer) == 0 {
            return;
        }
        let mut spares = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        spares.push(buffer);
        spares.sort_by_key(|b| std::cmp::Reverse(reusable_capacity(b)));
        let keep = if spares
            .get(1)
            .is_some_and(|b| reusable_capacity(b) as u64 <= FRESH_READ_LIMIT)
        {
            2
        } else {
            1
        };
        spares.truncate(keep);
    }

    /// The largest spare.
    fn take(&self) -> Option<TensorData> {
        let mut spares = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!spares.is_empty()).then(|| spares.remove(0))
    }
}

/// Whether `buffer` can be read into for a tensor of `meta` without reallocating (see
/// `BlobReader::read_tensor_reusing`).
fn holds(buffer: &TensorData, meta: &TensorMeta) -> bool {
    let fits = |capacity: usize| u64::try_from(capacity).is_ok_and(|c| c >= meta.count);
    match (buffer, meta.dtype) {
        (TensorData::F16(v), ScalarType::Float16) => fits(v.capacity()),
        (TensorData::F32(v), ScalarType::Float32) => fits(v.capacity()),
        _ => false,
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
    /// Starts the reader thread on `scope`, reading `jobs` in order from `source`. The jobs are
    /// taken one at a time as the reader gets to them: an iterator that makes each one keeps a
    /// model of many tensors from holding them all.
    pub fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        source: &'scope WeightSource,
        jobs: impl IntoIterator<Item = Job> + Send + 'scope,
    ) -> Prefetcher {
        let (to_engine, results) = sync_channel(0);
        let spare = Arc::new(SpareSlot::default());
        let spare_for_reader = Arc::clone(&spare);
        scope.spawn(move || {
            let mut batch = Vec::new();
            let mut batch_bytes = 0u64;
            for (n, job) in jobs.into_iter().enumerate() {
                let value = match job.value() {
                    Ok(value) => value,
                    Err(e) => {
                        batch.push((job.op_index, Prefetched::Ready(Err(e))));
                        break;
                    }
                };
                let meta = TensorMeta::of(&value);
                let fresh_ok = meta
                    .as_ref()
                    .and_then(|m| m.storage_bytes())
                    .is_some_and(|bytes| bytes <= FRESH_READ_LIMIT);
                // Mapping ahead holds the tensor's pages as a fresh read would: small ones only.
                let mapped = if fresh_ok {
                    source.map(&job.name, &value).transpose()
                } else {
                    None
                };
                let item = match mapped {
                    Some(mapped) => Prefetched::Ready(mapped.map(|(meta, m)| Input::Mapped(meta, m))),
                    None => {
                        let spare = spare_for_reader.take();
                        // A spare too small (or of another type) would be freed and a fresh buffer
                        // read into.
                        let spare_fits = spare
                            .as_ref()
                            .zip(meta.as_ref())
                            .is_some_and(|(s, m)| holds(s, m));
                        if spare_fits || fresh_ok {
                            // The engine waits for the first tensor with nothing to do: the pool
                            // reads it.
                            let threads = if n == 0 {
                                ReadThreads::Pool
                            } else {
                                ReadThreads::Caller
                            };
                            let read = source.read_reusing(&job.name, &value, spare, threads);
                            Prefetched::Ready(read.map(|(meta, data)| Input::Read(meta, data)))
                        } else {
                            if let Some(spare) = spare {
                                spare_for_reader.offer(spare);
                            }
                            Prefetched::NotRead
                        }
                    }
                };
                // A failed send means the engine stopped (an error elsewhere): nothing more to read.
                match batched_bytes(&item) {
                    Some(bytes) => {
                        batch.push((job.op_index, item));
                        batch_bytes += bytes;
                        if batch_bytes >= BATCH_BYTES {
                            if to_engine.send(std::mem::take(&mut batch)).is_err() {
                                return;
                            }
                            batch_bytes = 0;
                        }
                    }
                    None => {
                        if !batch.is_empty() && to_engine.send(std::mem::take(&mut batch)).is_err() {
                            return;
                        }
                        batch_bytes = 0;
                        if to_engine.send(vec![(job.op_index, item)]).is_err() {
                            return;
                        }
                    }
                }
            }
            if !batch.is_empty() {
                let _ = to_engine.send(batch);
            }
        });
        Prefetcher {
            results,
            received: RefCell::new(VecDeque::new()),
            spare,
        }
    }

    /// The next item from the reader, in job order; `None` once it has sent everything.
    fn next_item(&self) -> Option<(usize, Prefetched)> {
        let mut received = self.received.borrow_mut();
        if received.is_empty() {
            *received = self.results.recv().ok()?.into();
        }
        received.pop_front()
    }

    /// The tensor of the next job, which must be `op_index`'s. `None` when the reader has nothing
    /// for it (not read ahead, or the jobs ran out); the engine then gets it itself.
    pub fn next(&self, op_index: usize) -> Option<Result<Input>> {
        // Jobs come in the engine's order; one the engine did not ask for is passed over.
        while let Some((index, item)) = self.next_item() {
            match (index.cmp(&op_index), item) {
                (std::cmp::Ordering::Less, _) => continue,
                (std::cmp::Ordering::Equal, Prefetched::Ready(result)) => return Some(result),
                _ => return None,
            }
        }
        None
    }

    /// Offers a buffer the writer has finished with for the next read.
    pub fn recycle(&self, buffer: TensorData) {
        self.spare.offer(buffer);
    }

    /// A spare buffer, for a tensor the engine reads itself ([`Prefetched::NotRead`]).
    pub fn take_spare(&self) -> Option<TensorData> {
        self.spare.take()
    }

    /// A spare buffer of `dtype`'s elements, for the kept values of a mapped tensor; a spare of
    /// another type stays for the reads.
    pub fn take_spare_of(&self, dtype: ScalarType) -> Option<TensorData> {
        let spare = self.spare.take()?;
        if spare.dtype() == dtype {
            return Some(spare);
        }
        self.spare.offer(spare);
        None
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// Every blob const of a generated package (`layers` alternating `rows × cols` and
    /// `cols × rows` fp16 weights with their biases) as a job, with the source to read them.
    fn package_jobs(dir: &std::path::Path, layers: u32, rows: u64, cols: u64) -> (WeightSource, Vec<Job>) {
        use crate::mil::{GraphView, LoadedModel, ValueExt};
        let path = dir.join(format!("{layers}x{rows}x{cols}.mlpackage"));
        let spec = crate::synth::SynthSpec {
            layers,
            rows,
            cols,
            dtype: ScalarType::Float16,
            spec_version: 7,
            seed: 3,
        };
        crate::synth::generate(&spec, &path, false).unwrap();
        let package = crate::package::Package::open(&path).unwrap();
        let model = LoadedModel::read_held(&package.model_path(), &path).unwrap();
        let graph = GraphView::build(&model.program).unwrap();
        let jobs = (0..graph.op_count())
            .filter(|&i| graph.op_type(i) == "const")
            .map(|i| Job {
                op_index: i,
                name: graph.name(i).into(),
                op: graph.op_bytes(&model.program, i).unwrap(),
            })
            .filter(|job| job.value().is_ok_and(|v| v.blob_offset().is_some()))
            .collect();
        (WeightSource::open(&package, None).unwrap(), jobs)
    }

    /// The bytes of the tensor the reader got ahead.
    fn bytes_of(input: Input) -> Vec<u8> {
        match input {
            Input::Read(_, data) => data.as_le_bytes().into_owned(),
            Input::Mapped(_, mapped) => mapped.view().unwrap().to_owned().as_le_bytes().into_owned(),
        }
    }

    #[test]
    fn the_engine_gets_each_tensor_it_asks_for_through_batches_and_single_items() {
        let dir = tempfile::tempdir().unwrap();
        // 2 KiB weights, over 1 MiB of them: several batches. Then 128 KiB weights (each alone)
        // between small biases (batched in between).
        for (layers, rows, cols) in [(700, 32, 32), (24, 512, 128)] {
            let (source, jobs) = package_jobs(dir.path(), layers, rows, cols);
            let expected: Vec<(usize, Vec<u8>)> = jobs
                .iter()
                .map(|job| {
                    let (_, data) = source.read(&job.name, &job.value().unwrap()).unwrap();
                    (job.op_index, data.as_le_bytes().into_owned())
                })
                .collect();
            for skip_every in [0, 3] {
                // Made as the reader gets to them, as the engine's are.
                let jobs = jobs.iter().map(|j| Job {
                    op_index: j.op_index,
                    name: j.name.clone(),
                    op: j.op.clone(),
                });
                std::thread::scope(|scope| {
                    let prefetcher = Prefetcher::start(scope, &source, jobs);
                    for (n, (op_index, bytes)) in expected.iter().enumerate() {
                        // The engine passes over some (a tensor shared with an earlier one).
                        if skip_every > 0 && n % skip_every == 1 {
                            continue;
                        }
                        let input = prefetcher.next(*op_index).expect("read ahead").unwrap();
                        assert!(bytes_of(input) == *bytes, "tensor of op {op_index}");
                    }
                    assert!(
                        prefetcher.next(usize::MAX).is_none(),
                        "nothing after the last job"
                    );
                });
            }
        }
    }

    #[test]
    fn a_spare_holds_a_tensor_of_its_type_and_no_larger() {
        let meta = |dtype, count| TensorMeta {
            dtype,
            shape: vec![count],
            count,
        };
        let f16s = TensorData::F16(Vec::with_capacity(100));
        assert!(holds(&f16s, &meta(ScalarType::Float16, 100)));
        assert!(!holds(&f16s, &meta(ScalarType::Float16, 101)));
        assert!(
            !holds(&f16s, &meta(ScalarType::Float32, 10)),
            "another element type is reallocated"
        );
        assert!(holds(
            &TensorData::F32(Vec::with_capacity(8)),
            &meta(ScalarType::Float32, 8)
        ));
        assert!(!holds(&TensorData::U8(vec![0; 64]), &meta(ScalarType::UInt8, 8)));
    }

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
        // The two largest small buffers are kept, largest first.
        slot.offer(values(10));
        slot.offer(values(1000));
        slot.offer(TensorData::U8(vec![0; 1 << 20]));
        slot.offer(values(100));
        assert!(matches!(slot.take(), Some(TensorData::F16(v)) if v.capacity() >= 1000));
        assert!(matches!(slot.take(), Some(TensorData::F16(v)) if (100..1000).contains(&v.capacity())));
        assert!(slot.take().is_none());
        slot.offer(TensorData::F32(Vec::with_capacity(600)));
        slot.offer(values(1000));
        assert!(matches!(slot.take(), Some(TensorData::F32(v)) if v.capacity() >= 600));
        assert!(matches!(slot.take(), Some(TensorData::F16(_))));
        assert!(slot.take().is_none());
        // A second buffer larger than a fresh read may be is freed (capacity only: nothing is
        // touched, so this costs no memory).
        let large = FRESH_READ_LIMIT as usize / 2 + 1;
        slot.offer(values(large));
        slot.offer(values(large + 1));
        assert!(matches!(slot.take(), Some(TensorData::F16(v)) if v.capacity() > large));
        assert!(slot.take().is_none());
    }
}
