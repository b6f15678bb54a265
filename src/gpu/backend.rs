//! `GpuBackend`: the `Backend` that runs the kernels on a `GpuContext`. It decides per tensor what
//! the GPU can do exactly ([`GpuBackend::handles`]); everything else — int8/uint8 weights, n:m with
//! m > 16, shapes the kernels reject, empty tensors — runs the CPU reference kernel, which is also
//! where every error and skip message comes from.

use half::f16;

use super::context::GpuContext;
use super::pool::BufferPool;
use super::run::{
    Compacted, Params, Resident, TensorBytes, MODE_BLOCK, MODE_MULTIPLY_ALL, MODE_NM, MODE_WHERE_CUT,
};
use crate::config::OpConfig;
use crate::dispatch::{run_cut_in_place, run_kernel, Backend, KernelResult, Order, Pruned};
use crate::error::{Error, Result};
use crate::global_sparsity::{CutKey, GlobalCut};
use crate::prune::axes::{check_structural_rank, ChannelLayout};
use crate::prune::fast_block_decisions;
use crate::prune::keys::Key;
use crate::prune::percentile::{percentile_cut, virtual_index};
use crate::prune::{python_float_repr, Element, MapValue};
use crate::tensor::{TensorData, TensorView, ViewWithSpare};

/// Largest m the GPU ranks: numpy's argsort is a (stable) insertion sort up to 16 elements.
const MAX_GPU_M: usize = 16;

/// The exact GPU plan for one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Work {
    Threshold {
        threshold: f64,
        minimum_sparsity: f64,
    },
    Magnitude {
        sparsity: f64,
    },
    Block {
        layout: ChannelLayout,
        block_size: usize,
        sparsity: f64,
    },
    NM {
        layout: ChannelLayout,
        n: usize,
        m: usize,
    },
}

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

    /// Whether [`Backend::run`] would run this tensor on the GPU (otherwise it runs the CPU kernel).
    pub fn handles(&self, config: &OpConfig, data: &TensorData, shape: &[u64]) -> bool {
        match data {
            TensorData::F16(w) => self.plan(config, w.len(), 2, shape).is_some(),
            TensorData::F32(w) => self.plan(config, w.len(), 4, shape).is_some(),
            _ => false,
        }
    }

    /// [`GpuBackend::handles`] for borrowed values.
    pub fn handles_view(&self, config: &OpConfig, view: TensorView<'_>, shape: &[u64]) -> bool {
        match view {
            TensorView::F16(w) => self.plan(config, w.len(), 2, shape).is_some(),
            TensorView::F32(w) => self.plan(config, w.len(), 4, shape).is_some(),
        }
    }

    /// Runs on borrowed values (a tensor mapped from `weight.bin`): the uploads read straight from
    /// them, with no owned copy first.
    pub fn run_view(
        &self,
        config: &OpConfig,
        view: TensorView<'_>,
        shape: &[u64],
        tensor: &str,
    ) -> Result<KernelResult> {
        self.run_view_into(config, view, None, shape, tensor)
    }

    /// [`GpuBackend::run_view`], collecting the kept values into `out`'s allocation when it holds
    /// the view's dtype (a buffer the writer has finished with: no fresh pages per tensor).
    fn run_view_into(
        &self,
        config: &OpConfig,
        view: TensorView<'_>,
        out: Option<TensorData>,
        shape: &[u64],
        tensor: &str,
    ) -> Result<KernelResult> {
        match view.with_spare(out) {
            ViewWithSpare::F16(w, spare) => self.run_typed(config, w, spare, shape, tensor, TensorData::F16),
            ViewWithSpare::F32(w, spare) => self.run_typed(config, w, spare, shape, tensor, TensorData::F32),
        }
    }

    /// Elements per chunk for tensors whose chunks must hold whole bands of `band` elements.
    fn chunk_elems(&self, elem_bytes: u64, band: u64) -> Option<u64> {
        let cap = self.ctx.chunk_bytes() / elem_bytes;
        let unit = lcm(32, band)?;
        let chunk = cap / unit * unit;
        (chunk > 0).then_some(chunk)
    }

    /// The GPU plan, or `None` when the CPU kernel must run (see the module doc). Mirrors the check
    /// order of `dispatch::run_kernel` and the kernels, so every rejected case is a CPU case.
    fn plan(&self, config: &OpConfig, len: usize, elem_bytes: u64, shape: &[u64]) -> Option<(Work, u64)> {
        // u32 indices on the device, with headroom for block indices past the last element.
        if len == 0 || len as u64 > u64::from(u32::MAX / 2) {
            return None;
        }
        let shape: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()?;
        let size = |v: u64| usize::try_from(v).ok();
        let plain = self.chunk_elems(elem_bytes, 1)?;
        match *config {
            OpConfig::Threshold {
                threshold,
                minimum_sparsity_percentile,
                ..
            } => Some((
                Work::Threshold {
                    threshold,
                    minimum_sparsity: minimum_sparsity_percentile,
                },
                plain,
            )),
            OpConfig::Magnitude {
                n_m_ratio: Some((n, m)),
                dim,
                ..
            } => {
                let (n, m) = (size(n)?, size(m)?);
                let layout = ChannelLayout::new(&shape, len, dim.unwrap_or(1) as usize).ok()?;
                let valid = n <= m && m > 0 && m <= MAX_GPU_M && !layout.exceeds_half_channel(m);
                if !valid || check_structural_rank(&shape, "").is_err() {
                    return None;
                }
                // Chunks hold whole groups: bands of m channels, or whole channel runs when the
                // channel count leaves a padded group at the end of each run.
                let band = if layout.channel % m == 0 {
                    m * layout.inner
                } else {
                    layout.channel * layout.inner
                };
                let chunk = self.chunk_elems(elem_bytes, band as u64)?;
                Some((Work::NM { layout, n, m }, chunk))
            }
            OpConfig::Magnitude {
                target_sparsity: Some(sparsity),
                block_size: Some(b),
                dim,
                ..
            } => {
                let block_size = size(b).filter(|&b| b > 0)?;
                let layout = ChannelLayout::new(&shape, len, dim.unwrap_or(0) as usize).ok()?;
                if layout.exceeds_half_channel(block_size) || check_structural_rank(&shape, "").is_err() {
                    return None;
                }
                let flag_bytes = (block_count(layout, block_size)? as u64).div_ceil(32) * 4;
                if flag_bytes > self.ctx.chunk_bytes() {
                    return None;
                }
                Some((
                    Work::Block {
                        layout,
                        block_size,
                        sparsity,
                    },
                    plain,
                ))
            }
            OpConfig::Magnitude {
                target_sparsity: Some(sparsity),
                ..
            } => Some((Work::Magnitude { sparsity }, plain)),
            OpConfig::Magnitude {
                target_sparsity: None,
                n_m_ratio: None,
                ..
            } => None,
        }
    }

    fn run_typed<T: GpuElement>(
        &self,
        config: &OpConfig,
        w: &[T],
        spare: Vec<T>,
        shape: &[u64],
        tensor: &str,
        wrap: fn(Vec<T>) -> TensorData,
    ) -> Result<KernelResult> {
        let Some((work, chunk_elems)) = self.plan(config, w.len(), T::BYTES, shape) else {
            return run_kernel(config, &wrap(w.to_vec()), shape, tensor);
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
        let multiply_all = Params {
            mode: MODE_MULTIPLY_ALL,
            ..Params::default()
        };
        let params = match work {
            Work::Threshold {
                threshold,
                minimum_sparsity,
            } => {
                let cut = <T::Mag as MapValue>::threshold_cut(threshold).map(|k| k.to_u64() as u32);
                let sparse =
                    self.ctx
                        .mask_and_compact(pool, &t, where_cut(cut), &[], &mut resident, spare)?;
                // numpy: int64 / int -> float64.
                let sparsity = (n - sparse.kept) as f64 / n as f64;
                if sparsity < minimum_sparsity {
                    return Ok(KernelResult::Skipped(format!(
                        "weight value has sparsity of {} < minimum_sparsity_percentile {}. Skipped.",
                        python_float_repr(sparsity),
                        python_float_repr(minimum_sparsity)
                    )));
                }
                return Ok(pruned(sparse, wrap));
            }
            Work::Magnitude { sparsity } => match sparsity * 100.0 {
                100.0 => multiply_all,
                0.0 => where_cut(None), // float patterns compare with ==: -0.0 too
                _ => where_cut(T::percentile_cut_on_gpu(
                    &self.ctx,
                    pool,
                    &t,
                    sparsity,
                    &mut resident,
                    tensor,
                )?),
            },
            Work::Block {
                layout,
                block_size,
                sparsity,
            } => match sparsity * 100.0 {
                100.0 => multiply_all,
                0.0 => where_cut(None),
                _ => {
                    // The norms and their percentile stay on the CPU (WGSL rounds neither sqrt
                    // nor f16 conversion correctly), computed by the CPU path's own parallel
                    // kernel: one rule, never a serial pass over the tensor. `None` is only for
                    // empty or non-float tensors, which `plan` already sent to the CPU.
                    let Some(decisions) = fast_block_decisions(w, layout, block_size, sparsity) else {
                        return run_kernel(config, &wrap(w.to_vec()), shape, tensor);
                    };
                    let flags = decisions.map_err(|e| e.for_tensor(tensor))?.pruned_words();
                    let p = Params {
                        mode: MODE_BLOCK,
                        channel: layout.channel as u32,
                        inner: layout.inner as u32,
                        group: block_size as u32,
                        blocks: layout.channel.div_ceil(block_size) as u32,
                        ..Params::default()
                    };
                    return Ok(pruned(
                        self.ctx
                            .mask_and_compact(pool, &t, p, &flags, &mut resident, spare)?,
                        wrap,
                    ));
                }
            },
            Work::NM { layout, n, m } => Params {
                mode: MODE_NM,
                channel: layout.channel as u32,
                inner: layout.inner as u32,
                group: m as u32,
                n_prune: n as u32,
                ..Params::default()
            },
        };
        Ok(pruned(
            self.ctx
                .mask_and_compact(pool, &t, params, &[], &mut resident, spare)?,
            wrap,
        ))
    }
}

impl GpuBackend {
    /// Whether [`GpuBackend::run_order`] runs `order` on these values on the GPU (otherwise it runs
    /// the CPU kernel).
    pub fn handles_order(&self, order: Order<'_>, view: TensorView<'_>, shape: &[u64]) -> bool {
        match order {
            Order::Config(config) => self.handles_view(config, view, shape),
            Order::Cut(_) => {
                let elem_bytes = match view {
                    TensorView::F16(_) => 2,
                    TensorView::F32(_) => 4,
                };
                self.cut_chunk(view.len(), elem_bytes).is_some()
            }
        }
    }

    /// Runs `order` on borrowed values (see [`GpuBackend::run_view`]), collecting the kept values
    /// into `out`'s allocation when it holds the view's dtype.
    pub fn run_order(
        &self,
        order: Order<'_>,
        view: TensorView<'_>,
        out: Option<TensorData>,
        shape: &[u64],
        tensor: &str,
    ) -> Result<KernelResult> {
        match order {
            Order::Config(config) => self.run_view_into(config, view, out, shape, tensor),
            Order::Cut(cut) => self.run_cut_view(cut, view, out, tensor),
        }
    }

    /// Elements per chunk for the global cut, or `None` where the CPU kernel runs (as in `plan`).
    fn cut_chunk(&self, len: usize, elem_bytes: u64) -> Option<u64> {
        if len == 0 || len as u64 > u64::from(u32::MAX / 2) {
            return None;
        }
        self.chunk_elems(elem_bytes, 1)
    }

    /// The `--global-sparsity` work order ("every key <= the cut becomes 0") on borrowed values:
    /// the mask and compaction of threshold pruning, with the cut the CPU selected.
    fn run_cut_view(
        &self,
        cut: GlobalCut,
        view: TensorView<'_>,
        out: Option<TensorData>,
        tensor: &str,
    ) -> Result<KernelResult> {
        match view.with_spare(out) {
            ViewWithSpare::F16(w, spare) => self.run_cut_typed(cut, w, spare, tensor, TensorData::F16),
            ViewWithSpare::F32(w, spare) => self.run_cut_typed(cut, w, spare, tensor, TensorData::F32),
        }
    }

    fn run_cut_typed<T: GpuElement + CutKey>(
        &self,
        cut: GlobalCut,
        w: &[T],
        spare: Vec<T>,
        tensor: &str,
        wrap: fn(Vec<T>) -> TensorData,
    ) -> Result<KernelResult> {
        let Some(chunk_elems) = self.cut_chunk(w.len(), T::BYTES) else {
            return run_cut_in_place(cut, wrap(w.to_vec()), tensor);
        };
        let t = TensorBytes {
            bytes: bytemuck::cast_slice(w),
            n: w.len() as u64,
            is_f16: T::IS_F16,
            chunk_elems,
        };
        let key = T::cut_key(cut);
        let params = Params {
            mode: MODE_WHERE_CUT,
            cut: key.map_or(0, |k| k.to_u64() as u32),
            has_cut: u32::from(key.is_some()),
            ..Params::default()
        };
        let mut pool = self.ctx.lock_pool()?;
        let mut resident = Resident::default();
        Ok(pruned(
            self.ctx
                .mask_and_compact(&mut pool, &t, params, &[], &mut resident, spare)?,
            wrap,
        ))
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn run(&self, config: &OpConfig, data: &TensorData, shape: &[u64], tensor: &str) -> Result<KernelResult> {
        match data {
            TensorData::F16(w) => self.run_typed(config, w, Vec::new(), shape, tensor, TensorData::F16),
            TensorData::F32(w) => self.run_typed(config, w, Vec::new(), shape, tensor, TensorData::F32),
            other => run_kernel(config, other, shape, tensor),
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

fn block_count(layout: ChannelLayout, block_size: usize) -> Option<usize> {
    layout
        .outer
        .checked_mul(layout.channel.div_ceil(block_size))?
        .checked_mul(layout.inner)
}

/// The float weight types the GPU kernels handle, and how each selects its percentile.
trait GpuElement: Element {
    const IS_F16: bool;
    const BYTES: u64;
    /// The magnitude cut of `np.percentile(|w|, sparsity * 100)`: order statistics from GPU
    /// histograms, interpolation on the CPU by the reference `percentile_cut`.
    fn percentile_cut_on_gpu(
        ctx: &GpuContext,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        sparsity: f64,
        resident: &mut Resident,
        tensor: &str,
    ) -> Result<Option<u32>>;
}

impl GpuElement for f16 {
    const IS_F16: bool = true;
    const BYTES: u64 = 2;

    /// fp16 keys have 15 bits: one histogram holds every key with its exact multiplicity.
    fn percentile_cut_on_gpu(
        ctx: &GpuContext,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        sparsity: f64,
        resident: &mut Resident,
        tensor: &str,
    ) -> Result<Option<u32>> {
        let params = Params {
            hist_shift: 0,
            hist_mask: 0x7fff,
            ..Params::default()
        };
        let hist = ctx.histogram(pool, t, params, 0x8000, resident)?;
        let items = || {
            hist.iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(k, &c)| (k as u16, u64::from(c)))
        };
        let cut = percentile_cut::<f16, _, _>(items, t.n, sparsity).map_err(|e| e.for_tensor(tensor))?;
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
    fn percentile_cut_on_gpu(
        ctx: &GpuContext,
        pool: &mut BufferPool,
        t: &TensorBytes<'_>,
        sparsity: f64,
        resident: &mut Resident,
        tensor: &str,
    ) -> Result<Option<u32>> {
        let quantile = sparsity * 100.0 / 100.0;
        if !(0.0..=1.0).contains(&quantile) {
            // The reference reports the bad quantile before looking at any data.
            let cut = percentile_cut::<f32, _, _>(std::iter::empty, t.n, sparsity);
            return cut.map_err(|e| e.for_tensor(tensor));
        }
        let high = Params {
            hist_shift: 16,
            hist_mask: 0x7fff,
            ..Params::default()
        };
        let hi = ctx.histogram(pool, t, high, 0x8000, resident)?;
        let vi = virtual_index(t.n, quantile);
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
        let lo = ctx.histogram(pool, t, low, 0x20000, resident)?;
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
        percentile_cut::<f32, _, _>(|| items.iter().copied(), t.n, sparsity).map_err(|e| e.for_tensor(tensor))
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
