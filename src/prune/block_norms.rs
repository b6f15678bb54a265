//! The fast block-sparsity path for fp16 and fp32 weights (see [`super::block`] for the rules).
//!
//! The reference path computes one norm per block by gathering its elements through index
//! arithmetic. Here the work follows memory instead:
//! * `inner > 1` (sequential sums): block (o, b) is `real <= block_size` whole rows of `inner`
//!   contiguous elements, so its `inner` norms are element-wise running sums over those rows,
//!   computed a tile at a time on f32 vectors. Padding rows add +0 to a sum that is +0, positive
//!   or NaN, which changes nothing, so they are skipped.
//! * `inner == 1` (numpy's pairwise sum): a tile of whole blocks is squared in bulk, then each
//!   block is summed by [`pairwise_sum_f32`] over its zero-padded squares.
//!
//! fp16 arithmetic is numpy's: every `+`, `*`, `sqrt` is done in f32 and rounded once to fp16,
//! which equals the correctly rounded fp16 result (f32 has 24 ≥ 2·11 + 2 significand bits). The
//! conversions are `half`'s slice conversions, which use F16C (round to nearest even) when the CPU
//! has it and an exact software rounding otherwise.
//!
//! The percentile counts every norm once per real element of its block. For fp16 norms (16-bit
//! keys) that is a count around a sampled key bracket (see [`super::bracket`]), or if the bracket
//! misses, a weighted 65536-bin histogram built in parallel, which the generic selection then
//! reads as at most 65536 (key, count) items; wider keys go through the selection directly.
//! Every result (norms, integer counts, flags) is independent of the number of threads. The
//! x86-64 builds (AVX2, F16C) give the portable norms bit for bit, except that a NaN norm's sign
//! and payload are unspecified (which NaN operand an addition passes on differs between builds);
//! every NaN norm has the same key, so no decision depends on them.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::axes::ChannelLayout;
use super::bracket::{count_bracket, sample_bracket};
use super::cpu::{Avx2, Avx2F16c};
use super::element::{pairwise_sum_f32, Element, MapValue};
use super::f16_lanes;
use super::keys::{key_histogram, order_stats, Key};
use super::mask::mask_from_pruned;
use super::percentile::{cut_from_stats, percentile_cut};
use super::KernelError;
use crate::dtype::ScalarType;

/// Elements per tile of the vector loops: the f32 buffers stay in L1.
const TILE: usize = 1024;

/// The per-element "pruned" flags of block sparsity for fp16 and fp32 weights, `None` for other
/// element types (the caller then takes the reference path). `0 < q < 100` is the caller's. The
/// tests compare it with the reference path, which checks [`BlockDecisions::fill`] too.
#[cfg(test)]
pub fn fast_block_flags<T: Element>(
    w: &[T],
    layout: ChannelLayout,
    block_size: usize,
    target_sparsity: f64,
) -> Option<Result<Vec<bool>, KernelError>> {
    let decisions = fast_block_decisions(w, layout, block_size, target_sparsity)?;
    Some(decisions.map(|d| {
        let mut flags = vec![false; w.len()];
        d.fill(0, &mut flags);
        flags
    }))
}

/// `fast_block_flags` as one decision per block, which the encoder expands chunk by chunk
/// ([`BlockDecisions::fill`]) instead of materializing a flag per element.
pub fn fast_block_decisions<T: Element>(
    w: &[T],
    layout: ChannelLayout,
    block_size: usize,
    target_sparsity: f64,
) -> Option<Result<BlockDecisions, KernelError>> {
    if w.is_empty() {
        // The reference path reports numpy's error for an empty percentile.
        return None;
    }
    match T::DTYPE {
        ScalarType::Float16 => bytemuck::try_cast_slice::<T, f16>(w)
            .ok()
            .map(|w| block_decisions(w, layout, block_size, target_sparsity)),
        ScalarType::Float32 => bytemuck::try_cast_slice::<T, f32>(w)
            .ok()
            .map(|w| block_decisions(w, layout, block_size, target_sparsity)),
        _ => None,
    }
}

fn block_decisions<F: NormFloat>(
    w: &[F],
    layout: ChannelLayout,
    block_size: usize,
    target_sparsity: f64,
) -> Result<BlockDecisions, KernelError> {
    let geometry = Geometry::new(layout, block_size);
    let norms = block_norms(w, &geometry);
    let cut = weighted_cut(&norms, &geometry, w.len() as u64, target_sparsity)?;
    let inner = layout.inner;
    let decisions = if inner > 1 && inner.is_multiple_of(8) {
        // Whole bytes per decision row: the element mask will be the non-zero mask ANDed with
        // the rows' bits, a byte at a time. A kept norm is one above the cut, which is the keep
        // mask of the norms themselves (a norm above a cut is never zero).
        let mut bits = vec![0xffu8; norms.len().div_ceil(8)];
        if let Some(cut) = cut {
            bits.par_chunks_mut(1 << 13)
                .zip(norms.par_chunks(1 << 16))
                .for_each(|(bits, norms)| {
                    F::keep_mask(norms, Some(cut), bits);
                });
        }
        Decisions::KeptBits(bits)
    } else {
        Decisions::Pruned(match cut {
            Some(cut) => norms.par_iter().map(|n| n.key() <= cut).collect(),
            None => vec![false; norms.len()],
        })
    };
    Ok(BlockDecisions { geometry, decisions })
}

/// Whether each block is pruned, per norm in the norms' (outer, block, inner) order.
pub struct BlockDecisions {
    geometry: Geometry,
    decisions: Decisions,
}

enum Decisions {
    /// One flag per norm.
    Pruned(Vec<bool>),
    /// "Kept" bits, LSB first, when `inner` is a multiple of 8 (and above 1), so that every row
    /// of decisions starts on a byte.
    KeptBits(Vec<u8>),
}

impl Decisions {
    fn pruned(&self, norm: usize) -> bool {
        match self {
            Decisions::Pruned(flags) => flags[norm],
            Decisions::KeptBits(bits) => bits[norm / 8] & (1 << (norm % 8)) == 0,
        }
    }
}

impl BlockDecisions {
    /// Every block's decision as "pruned" bits, LSB first in `u32` words, in the norms' (outer,
    /// block, inner) order: the flags the GPU's block mask pass reads. Bits past the last block
    /// are 0.
    pub fn pruned_words(&self) -> Vec<u32> {
        let norms = self.geometry.layout.outer * self.geometry.blocks * self.geometry.layout.inner;
        let mut words = vec![0u32; norms.div_ceil(32)];
        words.par_iter_mut().enumerate().for_each(|(w, word)| {
            let first = w * 32;
            for bit in 0..(norms - first).min(32) {
                if self.decisions.pruned(first + bit) {
                    *word |= 1 << bit;
                }
            }
        });
        words
    }

    /// The keep mask of the elements `values` from element `start` on (a multiple of 8), as
    /// [`super::mask::encode_kept`] asks for: not pruned and not zero. Returns how many are kept.
    pub fn mask_into<T: Element>(&self, start: usize, values: &[T], bytes: &mut [u8]) -> usize {
        let Decisions::KeptBits(kept_bits) = &self.decisions else {
            return mask_from_pruned(start, values, bytes, |start, flags| self.fill(start, flags));
        };
        debug_assert_eq!(start % 8, 0);
        T::keep_mask(values, None, bytes);
        let Geometry {
            layout,
            block_size,
            blocks,
        } = self.geometry;
        let ChannelLayout { channel, inner, .. } = layout;
        // Rows of `inner` elements share a row of decisions, and start on a byte.
        let mut at = 0;
        while at < values.len() {
            let f = start + at;
            let (row, i) = (f / inner, f % inner);
            let (o, c) = (row / channel, row % channel);
            let n = (inner - i).min(values.len() - at);
            let decisions = ((o * blocks + c / block_size) * inner + i) / 8;
            let row_bytes = &mut bytes[at / 8..(at + n).div_ceil(8)];
            for (byte, kept) in row_bytes.iter_mut().zip(&kept_bits[decisions..]) {
                *byte &= kept;
            }
            at += n;
        }
        crate::blob::count_ones(&bytes[..values.len().div_ceil(8)]) as usize
    }

    /// `flags[k]` = whether element `start + k` is pruned: its block's decision. Walks runs of
    /// elements that share a decision row (`inner > 1`: one row of `inner` decisions per channel
    /// index) or a decision (`inner == 1`: the elements of one block), with no division per run
    /// after the first.
    pub fn fill(&self, start: usize, flags: &mut [bool]) {
        let Geometry {
            layout,
            block_size,
            blocks,
        } = self.geometry;
        let ChannelLayout { channel, inner, .. } = layout;
        if flags.is_empty() || channel == 0 || inner == 0 {
            return;
        }
        let row = start / inner;
        let (mut i, mut o, mut c) = (start % inner, row / channel, row % channel);
        let mut b = c / block_size;
        let mut out = flags;
        while !out.is_empty() {
            if inner == 1 {
                // The rest of block b in this channel run share one decision.
                let end = ((b + 1) * block_size).min(channel);
                let n = end.saturating_sub(c).clamp(1, out.len());
                let (head, rest) = out.split_at_mut(n);
                head.fill(self.decisions.pruned(o * blocks + b));
                out = rest;
                c += n;
                if c >= end {
                    b += 1;
                }
            } else {
                let n = (inner - i).min(out.len());
                let base = (o * blocks + b) * inner + i;
                let (head, rest) = out.split_at_mut(n);
                match &self.decisions {
                    Decisions::Pruned(flags) => head.copy_from_slice(&flags[base..base + n]),
                    d => head
                        .iter_mut()
                        .enumerate()
                        .for_each(|(k, f)| *f = d.pruned(base + k)),
                }
                out = rest;
                i = 0;
                c += 1;
                if c % block_size == 0 {
                    b += 1;
                }
            }
            if c >= channel {
                c = 0;
                b = 0;
                o += 1;
            }
        }
    }
}

/// Where the blocks are. Norms are stored one block row (`inner` norms) per (outer, block) pair,
/// in row-major (outer, block, inner) order — the reference path's order.
struct Geometry {
    layout: ChannelLayout,
    block_size: usize,
    blocks: usize,
}

impl Geometry {
    fn new(layout: ChannelLayout, block_size: usize) -> Self {
        Geometry {
            layout,
            block_size,
            blocks: layout.channel.div_ceil(block_size),
        }
    }

    /// Real elements per norm of block `b` (the last block of a channel run may be short).
    fn covered(&self, b: usize) -> usize {
        (self.layout.channel - b * self.block_size).min(self.block_size)
    }
}

/// Every block norm, computed in parallel over block rows (`inner > 1`) or tiles of blocks.
fn block_norms<F: NormFloat>(w: &[F], g: &Geometry) -> Vec<F> {
    let ChannelLayout {
        outer,
        channel,
        inner,
    } = g.layout;
    let mut norms = vec![F::ZERO; outer * g.blocks * inner];
    if norms.is_empty() {
        return norms;
    }
    if inner == 1 {
        let tile_blocks = (TILE / g.block_size).max(1);
        norms
            .par_chunks_mut(g.blocks)
            .zip(w.par_chunks(channel))
            .for_each(|(out, row)| {
                out.par_chunks_mut(tile_blocks)
                    .zip(row.par_chunks(tile_blocks * g.block_size))
                    .for_each_init(Scratch::default, |s, (out, part)| {
                        F::pairwise_norms(part, g.block_size, out, s)
                    });
            });
    } else {
        let row_len = channel * inner;
        norms
            .par_chunks_mut(inner)
            .enumerate()
            .for_each_init(Scratch::default, |s, (r, out)| {
                let (o, b) = (r / g.blocks, r % g.blocks);
                let start = o * row_len + b * g.block_size * inner;
                F::sequential_norms(&w[start..start + g.covered(b) * inner], inner, out, s);
            });
    }
    norms
}

/// The pruning cut of `np.percentile(map, q)` where `map` repeats each norm once per element its
/// block covers (`total` elements in all).
fn weighted_cut<F: NormFloat>(
    norms: &[F],
    g: &Geometry,
    total: u64,
    target_sparsity: f64,
) -> Result<Option<F::Key>, KernelError> {
    let inner = g.layout.inner;
    if F::Key::BITS <= 16 {
        // Every block covers `block_size` elements but the last of each channel run, so count
        // norms, scale, and take back what the short blocks do not cover (no weight lookup per
        // norm).
        let key = |n: &F| n.key();
        let scale = g.block_size as u64;
        let last = g.blocks.saturating_sub(1);
        let short = scale - g.covered(last) as u64;
        let short_norms = || norms.chunks(inner).skip(last).step_by(g.blocks).flatten();
        let stats = |prev, next| {
            // First around a sampled bracket (see `order_stats_of`), ...
            if let Some(bracket) = sample_bracket(norms, &key, prev, next, total) {
                let mut counts = count_bracket(norms, &key, bracket);
                counts.scale(scale)?;
                if short > 0 {
                    short_norms().try_for_each(|n| counts.remove(n.key(), short))?;
                }
                if let Some(stats) = counts.order_stats(prev, next) {
                    return Some(stats);
                }
            }
            // ... else with the full histogram, which is exact: every bin is one key.
            let bins = 1usize << F::Key::BITS;
            let mut hist = key_histogram(norms, &key, 0, bins);
            hist.iter_mut().for_each(|c| *c *= scale);
            if short > 0 {
                short_norms().for_each(|n| hist[n.key().to_u64() as usize] -= short);
            }
            let items = || {
                hist.iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(k, &c)| (F::Key::from_u64(k as u64), c))
            };
            order_stats(items, total, prev, next)
        };
        cut_from_stats::<F>(total, target_sparsity, stats)
    } else {
        // Walk channel runs, then blocks, so a block's weight needs no division.
        let items = || {
            norms.chunks(g.blocks * inner).flat_map(move |run| {
                run.chunks(inner).enumerate().flat_map(move |(b, row)| {
                    let weight = g.covered(b) as u64;
                    row.iter().map(move |n| (n.key(), weight))
                })
            })
        };
        percentile_cut::<F, _, _>(items, total, target_sparsity)
    }
}

/// numpy's f32 pairwise sum of each run of `block_size` values of `sq` (one per `sums` slot).
/// Below 8 addends numpy adds in order from 0, which is inlined here: a call per block would cost
/// more than the block.
fn block_sums(sq: &[f32], block_size: usize, sums: &mut [f32]) {
    let blocks = sq.chunks_exact(block_size).zip(sums.iter_mut());
    if block_size < 8 {
        blocks.for_each(|(b, sum)| *sum = b.iter().fold(0.0, |acc, &x| acc + x));
    } else {
        blocks.for_each(|(b, sum)| *sum = pairwise_sum_f32(block_size, &|j| b[j]));
    }
}

/// Per-thread f32 buffers, grown on demand.
#[derive(Default)]
pub(crate) struct Scratch {
    acc: Vec<f32>,
    sq: Vec<f32>,
}

fn grown<V: Copy + Default>(v: &mut Vec<V>, len: usize) -> &mut [V] {
    if v.len() < len {
        v.resize(len, V::default());
    }
    &mut v[..len]
}

/// The float weight types with a fast norm kernel; their norm type is themselves.
trait NormFloat: Element<Mag = Self> + MapValue {
    const ZERO: Self;
    /// Norms of one block row: `block` is `real` rows of `out.len()` elements; the sum runs over
    /// the rows in order, from 0, rounded to Self after every addition.
    fn sequential_norms(block: &[Self], inner: usize, out: &mut [Self], s: &mut Scratch);
    /// Norms of consecutive blocks of `block_size` elements; `part` holds `out.len()` blocks, the
    /// last one maybe short (zero padded). numpy's pairwise f32 sum per block.
    fn pairwise_norms(part: &[Self], block_size: usize, out: &mut [Self], s: &mut Scratch);
}

impl NormFloat for f16 {
    const ZERO: Self = f16::ZERO;

    fn sequential_norms(block: &[f16], inner: usize, out: &mut [f16], s: &mut Scratch) {
        sequential_norms_f16(Avx2F16c::detect(), block, inner, out, s)
    }

    fn pairwise_norms(part: &[f16], block_size: usize, out: &mut [f16], s: &mut Scratch) {
        pairwise_norms_f16_on(Avx2::detect(), part, block_size, out, s)
    }
}

/// [`NormFloat::pairwise_norms`] for fp16, compiled for AVX2 when given the token, else portable:
/// the same norms.
pub(crate) fn pairwise_norms_f16_on(
    simd: Option<Avx2>,
    part: &[f16],
    block_size: usize,
    out: &mut [f16],
    s: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = simd {
        // SAFETY: the token exists only on a CPU with AVX2, all `wide::pairwise_norms_f16`
        // enables; it has no other requirement.
        return unsafe { wide::pairwise_norms_f16(token, part, block_size, out, s) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    pairwise_norms_f16(part, block_size, out, s)
}

/// The fp16 kernels for x86-64 CPUs with AVX2 and F16C, eight lanes at a time. The rounding steps
/// are most of a block norm; F16C does each in two instructions (the same IEEE conversions `half`
/// uses on such CPUs, so the result is the portable one).
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::{
        __m128i, _mm256_add_ps, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_mul_ps,
        _mm256_storeu_ps, _mm_loadu_si128, _MM_FROUND_TO_NEAREST_INT,
    };

    use half::f16;

    use super::Scratch;
    use crate::prune::cpu::{Avx2, Avx2F16c};

    /// [`super::pairwise_norms_f16`] compiled for AVX2.
    ///
    /// # Safety
    /// None beyond the token's proof that the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn pairwise_norms_f16(
        _: Avx2,
        part: &[f16],
        block_size: usize,
        out: &mut [f16],
        s: &mut Scratch,
    ) {
        super::pairwise_norms_f16(part, block_size, out, s)
    }

    /// [`super::accumulate_squares`], eight lanes per step.
    ///
    /// # Safety
    /// `row.len() >= acc.len()` (the token proves AVX2 and F16C).
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn accumulate_squares(_: Avx2F16c, acc: &mut [f32], row: &[f16], first: bool) {
        let lanes = acc.len() / 8 * 8;
        for i in (0..lanes).step_by(8) {
            // SAFETY: i + 8 <= acc.len() <= row.len(): the loads and the store are in bounds.
            unsafe {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(i).cast::<__m128i>()));
                let square =
                    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(x, x)));
                let sum = if first {
                    square
                } else {
                    let total = _mm256_add_ps(_mm256_loadu_ps(acc.as_ptr().add(i)), square);
                    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(total))
                };
                _mm256_storeu_ps(acc.as_mut_ptr().add(i), sum);
            }
        }
        super::accumulate_squares_portable(&mut acc[lanes..], &row[lanes..], first);
    }
}

/// `acc[i] = f16(acc[i] + f16(row[i]²))`, or `f16(row[i]²)` for the `first` row (0 + sq is sq
/// itself: a square is never -0, and it is already an fp16 value), kept as f32.
/// With F16C conversions when given the token, else portable: the same bits.
pub(crate) fn accumulate_squares(simd: Option<Avx2F16c>, acc: &mut [f32], row: &[f16], first: bool) {
    assert!(row.len() >= acc.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = simd {
        // SAFETY: the token exists only on a CPU with AVX2 and F16C, all that
        // `wide::accumulate_squares` enables; `row.len() >= acc.len()` was asserted above.
        return unsafe { wide::accumulate_squares(token, acc, row, first) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    accumulate_squares_portable(acc, row, first)
}

#[inline(always)]
fn accumulate_squares_portable(acc: &mut [f32], row: &[f16], first: bool) {
    let square = |x: f16| f16_lanes::round_non_negative(f16_lanes::to_f32(x) * f16_lanes::to_f32(x));
    if first {
        acc.iter_mut().zip(row).for_each(|(a, &x)| *a = square(x));
    } else {
        acc.iter_mut()
            .zip(row)
            .for_each(|(a, &x)| *a = f16_lanes::round_non_negative(*a + square(x)));
    }
}

/// [`NormFloat::sequential_norms`] for fp16, the row step by [`accumulate_squares`] on `simd`.
pub(crate) fn sequential_norms_f16(
    simd: Option<Avx2F16c>,
    block: &[f16],
    inner: usize,
    out: &mut [f16],
    s: &mut Scratch,
) {
    let real = block.len() / inner;
    for (i0, out) in (0..inner).step_by(TILE).zip(out.chunks_mut(TILE)) {
        let len = out.len();
        let acc = grown(&mut s.acc, len);
        for j in 0..real {
            let start = j * inner + i0;
            accumulate_squares(simd, acc, &block[start..start + len], j == 0);
        }
        acc.iter_mut().for_each(|a| *a = a.sqrt());
        out.convert_from_f32_slice(acc);
    }
}

#[inline(always)]
fn pairwise_norms_f16(part: &[f16], block_size: usize, out: &mut [f16], s: &mut Scratch) {
    let padded = out.len() * block_size;
    let sq = grown(&mut s.sq, padded);
    sq.iter_mut().zip(part).for_each(|(q, &x)| {
        let x = f16_lanes::to_f32(x);
        *q = f16_lanes::round_non_negative(x * x);
    });
    sq[part.len()..].fill(0.0);
    let sums = grown(&mut s.acc, out.len());
    block_sums(sq, block_size, sums);
    sums.iter_mut()
        .for_each(|a| *a = f16_lanes::round_non_negative(*a).sqrt());
    out.convert_from_f32_slice(sums);
}

impl NormFloat for f32 {
    const ZERO: Self = 0.0;

    fn sequential_norms(block: &[f32], inner: usize, out: &mut [f32], _: &mut Scratch) {
        out.fill(0.0);
        for row in block.chunks_exact(inner) {
            out.iter_mut().zip(row).for_each(|(a, x)| *a += x * x);
        }
        out.iter_mut().for_each(|a| *a = a.sqrt());
    }

    fn pairwise_norms(part: &[f32], block_size: usize, out: &mut [f32], s: &mut Scratch) {
        let sq = grown(&mut s.sq, out.len() * block_size);
        sq.iter_mut().zip(part).for_each(|(q, x)| *q = x * x);
        sq[part.len()..].fill(0.0);
        block_sums(sq, block_size, out);
        out.iter_mut().for_each(|a| *a = a.sqrt());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F16C row step (called with its token, where this machine has it) against the portable one,
    /// bit for bit: every fp16 pattern as a weight, against accumulators across the fp16 range
    /// (sums that round up, overflow to infinity, stay subnormal), with ragged tails.
    #[test]
    fn accumulate_squares_matches_the_portable_step() {
        let row: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for first in [true, false] {
            for (seed, len) in [(1u32, row.len()), (7, 1001), (11, 5)] {
                let acc0: Vec<f32> = (0..len)
                    .map(|i| {
                        let bits = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 0x7c01;
                        f16::from_bits(bits as u16).to_f32()
                    })
                    .collect();
                let (mut fast, mut portable) = (acc0.clone(), acc0);
                accumulate_squares(Avx2F16c::detect(), &mut fast, &row[..len], first);
                accumulate_squares(None, &mut portable, &row[..len], first);
                for (i, (f, p)) in fast.iter().zip(&portable).enumerate() {
                    assert!(
                        f.to_bits() == p.to_bits() || (f.is_nan() && p.is_nan()),
                        "element {i}: {f} vs {p}"
                    );
                }
            }
        }
    }
}
