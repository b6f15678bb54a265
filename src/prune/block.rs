//! Block sparsity: `target_sparsity` with `block_size` (spec §5.7).
//!
//! Rules, exactly as coremltools 9.0 / numpy 2.4:
//! * `channel = shape[dim]`; if `block_size > channel / 2` (true division) the op is skipped with
//!   coremltools' warning (checked before anything else, even for q = 0 or 100).
//! * a block is `block_size` consecutive indices along `dim` at one fixed index of every other axis;
//!   the last block along `dim` is completed with zero padding.
//! * block norm `sqrt(sum_j |w_j|²)` in the weight dtype: squares rounded to T (fp16 squares
//!   overflow to inf above |w| ≈ 255.9), then the sum in numpy's reduction order — if the block axis
//!   is the innermost memory axis (`inner == 1`, i.e. dim 0 with `prod(shape[1:]) == 1` or dim 1 with
//!   `prod(shape[2:]) == 1`) numpy's f32 pairwise sum rounded once to T, otherwise a sequential sum
//!   from 0 rounded to T after every addition — then sqrt computed in f32 and rounded to T.
//!   int8/uint8: wrapping squares, integer sum, float64 sqrt (see [`super::element`]).
//! * the norm is broadcast to every element of its block and cropped, and the percentile runs over
//!   this element-wise map (a block counts once per real element it covers). Then exactly as
//!   magnitude pruning: `q == 100` → `0 * w`; `q == 0` → `w`; else `map <= thr` is pruned (any NaN
//!   norm makes thr NaN: nothing pruned); pruned elements become 0 (`np.where`).
//!
//! fp16 and fp32 weights take the vectorized path of `super::block_norms`; int8/uint8 (and the
//! tests, as the reference) take `reference_flags`, which gathers each block by index.

use super::axes::ChannelLayout;
use super::block_norms::fast_block_decisions;
use super::element::{Element, MapValue};
use super::mask::{encode_kept, mask_from_pruned, Dense};
use super::percentile::{at_or_below, percentile_cut};
use super::{KernelError, SparseTensor};

/// [`WorkOrder::Block`] (`0 < q < 100`), with the kept values in `w`'s own allocation or its
/// output buffer.
pub(super) fn block_decided<T: Element>(
    w: Dense<'_, T>,
    layout: ChannelLayout,
    block_size: usize,
    target_sparsity: f64,
) -> Result<SparseTensor<T>, KernelError> {
    if let Some(decisions) = fast_block_decisions(w.values(), layout, block_size, target_sparsity) {
        let decisions = decisions?;
        return Ok(encode_kept(w, |start, values, bytes| {
            decisions.mask_into(start, values, bytes)
        }));
    }
    let pruned = reference_flags(w.values(), layout, block_size, target_sparsity)?;
    Ok(encode_kept(w, |start, values, bytes| {
        mask_from_pruned(start, values, bytes, |start, flags| {
            flags.copy_from_slice(&pruned[start..start + flags.len()])
        })
    }))
}

/// The per-element "pruned" flags for `0 < q < 100` by gathering every block through index
/// arithmetic: the reference for every element type, and the path for int8/uint8.
pub(super) fn reference_flags<T: Element>(
    w: &[T],
    layout: ChannelLayout,
    block_size: usize,
    target_sparsity: f64,
) -> Result<Vec<bool>, KernelError> {
    use rayon::prelude::*;
    let norms = BlockNorms::compute(w, layout, block_size);
    let cut = percentile_cut::<T::Norm, _, _>(|| norms.weighted_keys(), w.len() as u64, target_sparsity)?;
    let block_pruned: Vec<bool> = norms.values.iter().map(|n| at_or_below(n.key(), cut)).collect();
    Ok((0..w.len())
        .into_par_iter()
        .map(|f| block_pruned[norms.block_of(f)])
        .collect())
}

/// The reference norms' keys, each counted once per real element of its block, summed per key:
/// the multiset the percentile selects from (test support, see `kernel_paths`).
pub(super) fn reference_norm_counts<T: Element>(
    w: &[T],
    layout: ChannelLayout,
    block_size: usize,
) -> std::collections::BTreeMap<u64, u64> {
    use super::keys::Key;
    let mut counts = std::collections::BTreeMap::new();
    for (key, covered) in BlockNorms::compute(w, layout, block_size).weighted_keys() {
        *counts.entry(key.to_u64()).or_insert(0) += covered;
    }
    counts
}

/// One norm per (outer, block, inner) position, stored in that row-major order.
struct BlockNorms<N> {
    layout: ChannelLayout,
    block_size: usize,
    blocks: usize,
    values: Vec<N>,
}

impl<N: MapValue> BlockNorms<N> {
    fn compute<T: Element<Norm = N>>(w: &[T], layout: ChannelLayout, block_size: usize) -> Self {
        use rayon::prelude::*;
        let blocks = layout.channel.div_ceil(block_size);
        let innermost = layout.inner == 1;
        let pad = T::zero().magnitude();
        let inner = layout.inner.max(1);
        // Each norm depends only on its own block, and `collect` keeps index order, so the values
        // are the same for any number of threads.
        let values: Vec<N> = (0..layout.outer * blocks * layout.inner)
            .into_par_iter()
            .with_min_len(1 << 12)
            .map_init(
                || vec![pad; block_size],
                |buf, idx| {
                    let (ob, i) = (idx / inner, idx % inner);
                    let (o, blk) = (ob / blocks, ob % blocks);
                    let c0 = blk * block_size;
                    for (j, slot) in buf.iter_mut().enumerate() {
                        let c = c0 + j;
                        *slot = if c < layout.channel {
                            w[layout.flat(o, c, i)].magnitude()
                        } else {
                            pad
                        };
                    }
                    T::block_norm(buf, innermost)
                },
            )
            .collect();
        BlockNorms {
            layout,
            block_size,
            blocks,
            values,
        }
    }

    /// (key, number of real elements the block covers) for every block, for the percentile.
    fn weighted_keys(&self) -> impl Iterator<Item = (N::Key, u64)> + '_ {
        let inner = self.layout.inner.max(1);
        self.values.iter().enumerate().map(move |(idx, n)| {
            let blk = (idx / inner) % self.blocks;
            let covered = (self.layout.channel - blk * self.block_size).min(self.block_size);
            (n.key(), covered as u64)
        })
    }

    /// Index into `values` of the block holding flat element `f`.
    fn block_of(&self, f: usize) -> usize {
        let ChannelLayout { channel, inner, .. } = self.layout;
        let i = f % inner;
        let c = (f / inner) % channel;
        let o = f / inner / channel;
        (o * self.blocks + c / self.block_size) * inner + i
    }
}
