//! The GPU path: WGSL compute kernels (`shaders/*.wgsl`) run through wgpu, byte-identical to the
//! CPU reference kernels of [`crate::prune`].
//!
//! Structure: [`GpuContext::new`] acquires a device (kept apart from the work; one per run);
//! [`GpuBackend`] implements [`crate::dispatch::Backend`] on it. The context compiles the pipelines
//! once, keeps one pool of buffers that tensors reuse (grown, never allocated per tensor), cuts
//! tensors into chunks of at most `MAX_CHUNK_BYTES` (and of a storage binding), keeps a tensor that
//! several passes read on the device so it is uploaded once, dispatches 2-D
//! grids past 65535 workgroups, and turns device errors (validation, out of memory, device lost,
//! map failures) into [`crate::Error::Gpu`].
//!
//! What runs where, and why the result is exact (same bytes as the CPU, every device):
//!
//! | kernel | GPU | CPU |
//! |---|---|---|
//! | threshold | keys, `key <= cut` mask, packing, compaction | `cut` = threshold rounded to the dtype, the minimum-sparsity check |
//! | magnitude | key histograms for radix select (fp16: one pass of 2^15 bins; fp32: 2^15 high bins, then 2 × 2^16 low bins), mask, packing, compaction | order statistics from the histograms, numpy's lerp in the weight dtype (the reference `percentile_cut`) |
//! | block | block norms in integer emulation of numpy's fp16/f32 rounding, their weighted key histograms (fp32: high 15 bits, then the low 16 of two bins), a flag per block, flag lookup per element, mask, packing, compaction | the percentile from the norm histograms (the reference `percentile_cut`) |
//! | block, bands wider than a chunk or pairwise sums over 128 addends | flag lookup per element, mask, packing, compaction | block norms and their percentile, by the CPU path's parallel kernel |
//! | n:m (m ≤ 16) | stable rank of every element in its padded group, `w * mask` NaN rules, packing, compaction | — |
//! | n:m (m > 16), int8/uint8, empty tensors, invalid shapes/configs | — | the whole reference kernel (errors and skip messages come from there) |
//!
//! * Every GPU comparison is on integer magnitude keys (`bits & 0x7fff…`, NaN → largest key), with
//!   `<=` against a cut the CPU computed exactly; histograms use atomic adds, whose result does
//!   not depend on order. So no GPU float arithmetic is involved at all.
//! * WGSL's `sqrt` and f32 → f16 conversion are not correctly rounded, subnormals may be flushed,
//!   and Metal compiles with fast math, so numpy's float steps never use the device's floats: the
//!   percentile interpolation stays on the CPU, and block norms are computed in integers
//!   (`shaders/block_norms.wgsl`: exact products in 64 bits, sums with a sticky bit, round to
//!   nearest even at fp16 or f32 precision with fp32 subnormals kept, a 64-bit integer square
//!   root), checked against the reference norms for every fp16 bit pattern and for fp32 values of
//!   every exponent (`tests/gpu.rs`, `device_block_norms_match_the_reference`).
//! * n:m: numpy's argsort is an insertion sort (stable) for m ≤ 16, so a position is pruned iff its
//!   rank `#{smaller keys} + #{equal keys at lower positions}` is < n; padding positions carry key
//!   0 and are ranked too. Above 16, numpy's partitioning decides ties: that stays on the CPU.
//! * fp16 weights are read as packed u32 words (no `shader-f16` needed); values are copied as bits,
//!   and `w * 0` / `w * 1` follow the reference's NaN rules with bit operations.
//! * The mask is packed LSB-first per u32 word; chunks start at multiples of 32 elements (and of
//!   the n:m group band), so chunk masks concatenate into `np.packbits(bitorder="little")` bytes.

mod backend;
mod context;
mod pool;
mod profile;
mod run;
pub mod shaders;

pub use backend::GpuBackend;
pub use context::{GpuContext, AUTO_SOFTWARE_ENV, MAX_CHUNK_BYTES};
pub use profile::KernelTime;
