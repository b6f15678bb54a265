//! `GpuBackend`: the `Backend` that executes work orders on a `GpuContext`. coremltools' rules are
//! decided before it sees a tensor ([`crate::prune::order`]); it only says which orders fit the
//! device ([`Backend::covers`]) — not int8/uint8 weights, n:m with m > 16, empty tensors, block
//! flags beyond one chunk — and hands the rest to the CPU reference.

use std::collections::BTreeMap;

use half::f16;

use super::context::GpuContext;
use super::run::{
    BlockFlags, BlockGeometry, Compacted, Histogram, Params, Resident, TensorBytes, MODE_BLOCK,
    MODE_MULTIPLY_ALL, MODE_NM, MODE_WHERE_CUT,
};
use crate::dispatch::{execute_on_cpu, Backend, KernelResult, Pruned, TensorInput};
use crate::error::{Error, Result};
use crate::prune::axes::ChannelLayout;
use crate::prune::fast_block_decisions;
use crate::prune::order::{minimum_sparsity_skip, WorkOrder};
use crate::prune::percentile::{percentile_cut, virtual_index};
use crate::prune::Element;
use crate::tensor::{TensorData, TensorView, ViewWithSpare};

/// Largest m the GPU ranks: numpy's argsort is a (stable) insertion sort up to 16 elements.
const MAX_GPU_M: usize = 16;

/// Pruning kernels on a GPU, byte-identical to [`crate::dispatch::CpuBackend`].
#[derive(Debug)]
pub struct GpuBackend {
    ctx: GpuContext,
}

impl GpuBackend {
    pub fn new(ctx: GpuContext) -> Self {
        GpuBackend { ctx }
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    pub fn context_mut(&mut self) -> &mut GpuContext {
        &mut self.ctx
    }

    /// Elements per chunk for tensors whose chunks must hold whole bands of `band` elements.
    fn chunk_elems(&self, elem_bytes: u64, band: u64) -> Option<u64> {
        let cap = self.ctx.chunk_bytes() / elem_bytes;
        let unit = lcm(32, band)?;
        let chunk = cap / unit * unit;
        (chunk > 0).then_some(chunk)
    }

    /// Elements per chunk when the GPU executes `work` on `len` elements of `elem_bytes` each, or
    /// `None` where the CPU reference runs instead. Only the device's limits are looked at here:
    /// coremltools' rules were decided in the work order.
    fn chunk_for(&self, work: &WorkOrder, len: usize, elem_bytes: u64) -> Option<u64> {
        // u32 indices on the device, with headroom for block indices past the last element. An
        // empty tensor goes to the CPU, which gives numpy's errors for it.
        if len == 0 || len as u64 > u64::from(u32::MAX / 2) {
            return None;
        }
        match *work {
            WorkOrder::Skip(_) => None,
            WorkOrder::NM { layout, m, .. } => {
                if m > MAX_GPU_M {
                    return None;
                }
                // Chunks hold whole groups (a padded group ends each run when m does not divide
                // the channel count).
                self.chunk_elems(elem_bytes, layout.group_band(m) as u64)
            }
            WorkOrder::Block {
                layout, block_size, ..
            } => {
                let geometry = BlockGeometry { layout, block_size };
                if geometry.norms().div_ceil(32) * 4 > self.ctx.chunk_bytes() {
                    return None;
                }
                // Norms are computed on the device when its chunks can hold whole bands of
                // blocks; otherwise the CPU computes the flags and any chunking will do.
                let on_device = device_norms(layout, block_size)
                    .then(|| self.chunk_elems(elem_bytes, geometry.band()))
                    .flatten();
                on_device.or_else(|| self.chunk_elems(elem_bytes, 1))
            }
            WorkOrder::ZeroAll | WorkOrder::Cut { .. } | WorkOrder::Percentile { .. } => {
                self.chunk_elems(elem_bytes, 1)
            }
        }
    }

    /// Executes `work` on borrowed values, collecting the kept values into `out`'s allocation
    /// when it holds the view's dtype (a buffer the writer has finished with).
    fn execute_view(
        &self,
        work: &WorkOrder,
        view: TensorView<'_>,
        out: Option<TensorData>,
        tensor: &str,
    ) -> Result<KernelResult> {
        match view.with_spare(out) {
            ViewWithSpare::F16(w, spare) => self.execute_typed(work, w, spare, tensor, TensorData::F16),
            ViewWithSpare::F32(w, spare) => self.execute_typed(work, w, spare, tensor, TensorData::F32),
        }
    }

    fn execute_typed<T: GpuElement>(
        &self,
        work: &WorkOrder,
        w: &[T],
        spare: Vec<T>,
        tensor: &str,
        wrap: fn(Vec<T>) -> TensorData,
    ) -> Result<KernelResult> {
        let Some(chunk_elems) = self.chunk_for(work, w.len(), T::BYTES) else {
            return execute_on_cpu(work, TensorInput::Owned(wrap(w.to_vec())), tensor);
        };
        let t = TensorBytes {
            bytes: bytemuck::cast_slice(w),
            n: w.len() as u64,
            is_f16: T::IS_F16,
            chunk_elems,
        };
        // One lock per tensor: its passes share the uploaded data (see `Resident`).
        let mut pool = self.ctx.lock_pool()?;
        let pool = &mut *pool;
        let mut resident = Resident::default();
        let n = w.len() as u64;
        let where_cut = |cut: Option<u32>| Params {
            mode: MODE_WHERE_CUT,
            cut: cut.unwrap_or(0),
            has_cut: u32::from(cut.is_some()),
            ..Params::default()
        };
        let host_flags;
        let (params, flags) = match *work {
            WorkOrder::Skip(ref reason) => return Ok(KernelResult::Skipped(reason.clone())),
            WorkOrder::ZeroAll => (
                Params {
                    mode: MODE_MULTIPLY_ALL,
                    ..Params::default()
                },
                BlockFlags::None,
            ),
            WorkOrder::Cut {
                cut,
                minimum_sparsity,
            } => {
                // Keys of fp16 and fp32 magnitudes fit in 32 bits.
                let cut = cut.map(|k| k as u32);
                let sparse = self.ctx.mask_and_compact(
                    pool,
                    &t,
                    where_cut(cut),
                    BlockFlags::None,
                    &mut resident,
                    spare,
                )?;
                if let Some(reason) = minimum_sparsity.and_then(|m| minimum_sparsity_skip(sparse.kept, n, m))
                {
                    return Ok(KernelResult::Skipped(reason));
                }
                return Ok(pruned(sparse, wrap));
            }
            WorkOrder::Percentile { sparsity } => (
                where_cut({
                    let mut histogram =
                        |params: Params, bins: u64| self.ctx.histogram(pool, &t, params, bins, &mut resident);
                    T::select_cut(&mut histogram, n, sparsity, tensor)?
                }),
                BlockFlags::None,
            ),
            WorkOrder::Block {
                layout,
                block_size,
                sparsity,
            } => {
                let geometry = BlockGeometry { layout, block_size };
                let params = geometry.params(Params {
                    mode: MODE_BLOCK,
                    ..Params::default()
                });
                if device_norms(layout, block_size) && chunk_elems.is_multiple_of(geometry.band()) {
                    // The norms, their histograms and the flags on the device; the percentile of
                    // the histograms on the host, by the reference selection.
                    let bytes =
                        self.ctx
                            .device_block_flags(pool, &t, geometry, &mut resident, |histogram| {
                                T::select_cut(histogram, n, sparsity, tensor)
                            })?;
                    (params, BlockFlags::OnDevice(bytes))
                } else {
                    // Bands too large for a chunk, and pairwise sums over 128 addends, stay on
                    // the CPU, computed by the CPU path's own parallel kernel: one rule, never a
                    // serial pass over the tensor. `None` is only for empty or non-float tensors,
                    // which `chunk_for` already sent to the CPU.
                    let Some(decisions) = fast_block_decisions(w, layout, block_size, sparsity) else {
                        return execute_on_cpu(work, TensorInput::Owned(wrap(w.to_vec())), tensor);
                    };
                    host_flags = decisions.map_err(|e| e.for_tensor(tensor))?.pruned_words();
                    (params, BlockFlags::FromHost(&host_flags))
                }
            }
            WorkOrder::NM { layout, n, m } => (
                Params {
                    mode: MODE_NM,
                    channel: layout.channel as u32,
                    inner: layout.inner as u32,
                    group: m as u32,
                    n_prune: n as u32,
                    ..Params::default()
                },
                BlockFlags::None,
            ),
        };
        Ok(pruned(
            self.ctx
                .mask_and_compact(pool, &t, params, flags, &mut resident, spare)?,
            wrap,
        ))
    }
}

impl GpuBackend {
    /// The device's block norms of weights `view` of `shape` (blocks of `block_size` along `dim`)
    /// as key -> elements covered, from its norm histograms (fp32: the high 15 bits, then the low
    /// 16 of every high digit present), or `None` where the device passes do not take the layout.
    /// Test support: `prune::kernel_paths::block_norm_key_counts` is the reference.
    #[doc(hidden)]
    pub fn block_norm_key_counts(
        &self,
        view: TensorView<'_>,
        shape: &[usize],
        block_size: usize,
        dim: usize,
    ) -> Result<Option<BTreeMap<u64, u64>>> {
        let (bytes, is_f16): (&[u8], bool) = match view {
            TensorView::F16(w) => (bytemuck::cast_slice(w), true),
            TensorView::F32(w) => (bytemuck::cast_slice(w), false),
        };
        let layout = ChannelLayout::new(shape, view.len(), dim).map_err(|e| e.for_tensor("w"))?;
        let geometry = BlockGeometry { layout, block_size };
        let chunk = self.chunk_elems(if is_f16 { 2 } else { 4 }, geometry.band());
        let (true, Some(chunk_elems)) = (device_norms(layout, block_size) && !view.is_empty(), chunk) else {
            return Ok(None);
        };
        let t = TensorBytes {
            bytes,
            n: view.len() as u64,
            is_f16,
            chunk_elems,
        };
        let mut pool = self.ctx.lock_pool()?;
        let mut counts = BTreeMap::new();
        let bins = |shift, mask| Params {
            hist_shift: shift,
            hist_mask: mask,
            ..Params::default()
        };
        let mut add = |high: u64, hist: &[u32]| {
            for (key, &c) in hist.iter().enumerate().filter(|(_, &c)| c > 0) {
                counts.insert(high << 16 | key as u64, u64::from(c));
            }
        };
        self.ctx
            .device_block_flags(&mut pool, &t, geometry, &mut Resident::default(), |histogram| {
                if is_f16 {
                    add(0, &histogram(bins(0, 0x7fff), 0x8000)?);
                    return Ok(None);
                }
                let high = histogram(bins(16, 0x7fff), 0x8000)?;
                let digits: Vec<u32> = (0..0x8000u32).filter(|&d| high[d as usize] > 0).collect();
                for pair in digits.chunks(2) {
                    let (a, b) = (pair[0], *pair.get(1).unwrap_or(&u32::MAX));
                    let low = Params {
                        use_prefix: 1,
                        prefix_shift: 16,
                        prefix_a: a,
                        prefix_b: b,
                        ..bins(0, 0xffff)
                    };
                    let lo = histogram(low, 0x20000)?;
                    add(u64::from(a), &lo[..0x10000]);
                    if b != u32::MAX {
                        add(u64::from(b), &lo[0x10000..]);
                    }
                }
                Ok(None)
            })?;
        Ok(Some(counts))
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn covers(&self, work: &WorkOrder, input: &TensorInput<'_>) -> bool {
        input.view().is_some_and(|view| {
            let elem_bytes = match view {
                TensorView::F16(_) => 2,
                TensorView::F32(_) => 4,
            };
            self.chunk_for(work, view.len(), elem_bytes).is_some()
        })
    }

    fn execute(&self, work: &WorkOrder, input: TensorInput<'_>, tensor: &str) -> Result<KernelResult> {
        if !self.covers(work, &input) {
            return execute_on_cpu(work, input, tensor);
        }
        match input {
            TensorInput::View { view, out } => self.execute_view(work, view, out, tensor),
            TensorInput::Owned(data) => {
                let Some(view) = data.as_view() else {
                    // Not reached: `covers` needs a view.
                    return execute_on_cpu(work, TensorInput::Owned(data), tensor);
                };
                self.execute_view(work, view, None, tensor)
            }
        }
    }
}

fn pruned<T: GpuElement>(c: Compacted<T>, wrap: fn(Vec<T>) -> TensorData) -> KernelResult {
    KernelResult::Pruned(Pruned {
        nonzero: wrap(c.values),
        mask: c.mask,
        kept: c.kept,
    })
}

fn lcm(a: u64, b: u64) -> Option<u64> {
    let gcd = |mut x: u64, mut y: u64| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    (a / gcd(a, b).max(1)).checked_mul(b.max(1))
}

/// Whether the device's block-norm passes take this layout: numpy sums along the innermost axis
/// pairwise, which the device follows up to 128 addends (no recursion).
fn device_norms(layout: ChannelLayout, block_size: usize) -> bool {
    layout.inner > 1 || block_size <= 128
}

/// The float weight types the GPU kernels handle, and how each selects its percentile.
trait GpuElement: Element {
    const IS_F16: bool;
    const BYTES: u64;
    /// The cut of `np.percentile` at `sparsity` over the `n` keys that `histogram` counts (the
    /// magnitudes of the elements, or the block norms once per element they cover): order
    /// statistics from device histograms, interpolation on the CPU by the reference
    /// `percentile_cut`.
    fn select_cut(histogram: &mut Histogram<'_>, n: u64, sparsity: f64, tensor: &str) -> Result<Option<u32>>;
}

impl GpuElement for f16 {
    const IS_F16: bool = true;
    const BYTES: u64 = 2;

    /// fp16 keys have 15 bits: one histogram holds every key with its exact multiplicity.
    fn select_cut(histogram: &mut Histogram<'_>, n: u64, sparsity: f64, tensor: &str) -> Result<Option<u32>> {
        let params = Params {
            hist_shift: 0,
            hist_mask: 0x7fff,
            ..Params::default()
        };
        let hist = histogram(params, 0x8000)?;
        let items = || {
            hist.iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(k, &c)| (k as u16, u64::from(c)))
        };
        let cut = percentile_cut::<f16, _, _>(items, n, sparsity).map_err(|e| e.for_tensor(tensor))?;
        Ok(cut.map(u32::from))
    }
}

impl GpuElement for f32 {
    const IS_F16: bool = false;
    const BYTES: u64 = 4;

    /// fp32 keys have 31 bits: a histogram of the high 15 bits finds the bins holding ranks prev
    /// and next, a second pass resolves those bins' low 16 bits. The reference `percentile_cut`
    /// then runs over a multiset that is exact in those bins and keeps every other bin's count at
    /// a representative key from the same bin — same order statistics at prev and next, and the
    /// same NaN-ness of the maximum (bin 0x7fff holds only NaN keys, bin 0x7f80 only +inf).
    fn select_cut(histogram: &mut Histogram<'_>, n: u64, sparsity: f64, tensor: &str) -> Result<Option<u32>> {
        let quantile = sparsity * 100.0 / 100.0;
        if !(0.0..=1.0).contains(&quantile) {
            // The reference reports the bad quantile before looking at any data.
            let cut = percentile_cut::<f32, _, _>(std::iter::empty, n, sparsity);
            return cut.map_err(|e| e.for_tensor(tensor));
        }
        let high = Params {
            hist_shift: 16,
            hist_mask: 0x7fff,
            ..Params::default()
        };
        let hi = histogram(high, 0x8000)?;
        let vi = virtual_index(n, quantile);
        let digit_at = |rank: u64| {
            let mut below = 0u64;
            for (d, &c) in hi.iter().enumerate() {
                below += u64::from(c);
                if rank < below {
                    return Ok(d as u32);
                }
            }
            Err(Error::Gpu(format!(
                "histogram of '{tensor}' counts fewer than {} elements",
                rank + 1
            )))
        };
        let (a, b) = (digit_at(vi.prev)?, digit_at(vi.next)?);
        let low = Params {
            hist_mask: 0xffff,
            use_prefix: 1,
            prefix_shift: 16,
            prefix_a: a,
            prefix_b: b,
            ..Params::default()
        };
        let lo = histogram(low, 0x20000)?;
        let mut items: Vec<(u32, u64)> = Vec::new();
        for (h, &count) in hi.iter().enumerate() {
            let h = h as u32;
            let exact = if h == a {
                Some(&lo[..0x10000])
            } else if h == b {
                Some(&lo[0x10000..])
            } else {
                None
            };
            match exact {
                Some(bins) => items.extend(
                    bins.iter()
                        .enumerate()
                        .filter(|(_, &c)| c > 0)
                        .map(|(l, &c)| (h << 16 | l as u32, u64::from(c))),
                ),
                None if count > 0 => items.push((h << 16, u64::from(count))),
                None => {}
            }
        }
        percentile_cut::<f32, _, _>(|| items.iter().copied(), n, sparsity).map_err(|e| e.for_tensor(tensor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcm_of_word_and_band() {
        assert_eq!(lcm(32, 1), Some(32));
        assert_eq!(lcm(32, 12), Some(96));
        assert_eq!(lcm(32, 64), Some(64));
        assert_eq!(lcm(32, u64::MAX), None);
    }
}
