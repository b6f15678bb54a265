//! Test support, not API: every `prune` kernel that has a SIMD path or writes through raw
//! pointers, callable on a chosen path, for the `kernels` fuzz target (`fuzz/src/entry.rs`) and
//! the identity tests (`simd_tests.rs`).
//!
//! `None` runs the portable code; a token (from its `detect()`, so only where the CPU has its
//! features) runs the SIMD code. Every function checks the preconditions its kernel relies on
//! and panics on arguments outside them, so that any input a caller makes up is either run or
//! refused, never misused.

use std::mem::MaybeUninit;

use half::f16;

pub use super::cpu::{Avx2, Avx2F16c, Avx2Popcnt, Avx2PopcntBmi1, Ssse3Popcnt, PORTABLE_ENV};
use super::element::Element;
pub use super::keep_mask::keep_mask_generic;
use super::keys::Key;

/// The keep-mask compare of fp16 bit patterns: bit `i` of the returned `ceil(len / 8)` bytes is
/// `bits[i] & 0x7fff > cut`; and how many are set. `cut <= 0x7fff`.
pub fn keep_mask_u16(simd: Option<Avx2Popcnt>, bits: &[u16], cut: u16) -> (Vec<u8>, usize) {
    assert!(cut <= 0x7fff, "a cut is a non-negative magnitude");
    let mut bytes = vec![0xa5; bits.len().div_ceil(8)];
    let kept = super::keep_mask::above_u16(simd, bits, cut, &mut bytes);
    (bytes, kept)
}

/// [`keep_mask_u16`] for fp32 bit patterns: `bits[i] & 0x7fff_ffff > cut`, `cut <= 0x7fff_ffff`.
pub fn keep_mask_u32(simd: Option<Avx2Popcnt>, bits: &[u32], cut: u32) -> (Vec<u8>, usize) {
    assert!(cut <= 0x7fff_ffff, "a cut is a non-negative magnitude");
    let mut bytes = vec![0xa5; bits.len().div_ceil(8)];
    let kept = super::keep_mask::above_u32(simd, bits, cut, &mut bytes);
    (bytes, kept)
}

/// Compaction in place of the `bytes.len()` whole groups of `values` (`values.len() >= 8 *
/// bytes.len()`); returns how many were kept.
pub fn compact_in_place<T: bytemuck::Pod>(
    simd: Option<Ssse3Popcnt>,
    values: &mut [T],
    bytes: &[u8],
) -> usize {
    super::compact::compact_groups_with(simd, values, bytes)
}

/// Compaction of the `bytes.len()` whole groups of `src` into the front of `dst` (both at least
/// `8 * bytes.len()` long); returns how many were kept.
pub fn compact_into<T: bytemuck::Pod>(
    simd: Option<Ssse3Popcnt>,
    src: &[T],
    dst: &mut [T],
    bytes: &[u8],
) -> usize {
    super::compact::compact_groups_into_with(simd, src, dst, bytes)
}

/// Exact compaction of all of `src` (mask `bytes`, at least `ceil(src.len() / 8)`, bits past the
/// end ignored) into exactly `dst`, which must have one slot per set bit below `src.len()`.
/// Only `dst`'s slots are written.
pub fn compact_exact<T: bytemuck::Pod>(
    simd: Option<Ssse3Popcnt>,
    src: &[T],
    bytes: &[u8],
    dst: &mut [MaybeUninit<T>],
) {
    super::compact::compact_exact_into_with(simd, src, bytes, dst)
}

/// [`compact_exact`] into a fresh vector allocated for exactly the kept elements, so that a
/// memory checker sees any store past them.
pub fn compact_exact_vec<T: bytemuck::Pod>(simd: Option<Ssse3Popcnt>, src: &[T], bytes: &[u8]) -> Vec<T> {
    assert!(bytes.len() >= src.len().div_ceil(8));
    let kept = (0..src.len())
        .filter(|&i| bytes[i / 8] & (1 << (i % 8)) != 0)
        .count();
    let mut out = Vec::with_capacity(kept);
    compact_exact(simd, src, bytes, &mut out.spare_capacity_mut()[..kept]);
    // SAFETY: `compact_exact` wrote all `kept` slots (it panics rather than return otherwise),
    // and the capacity holds them.
    unsafe { out.set_len(kept) };
    out
}

/// Counts of keys relative to a bracket `lo..=hi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BracketTally<K> {
    pub below: u64,
    pub above: u64,
    pub max: Option<K>,
    /// `inside[k - lo]`: how many keys equal `k`.
    pub inside: Vec<u32>,
}

/// The bracket count of one part: `keys` against `lo..=hi` (`lo <= hi`), in blocks as
/// `count_bracket` runs it.
pub fn bracket_tally<K: Key>(simd: Option<Avx2PopcntBmi1>, keys: &[K], lo: K, hi: K) -> BracketTally<K> {
    assert!(lo <= hi);
    let b = super::bracket::Bracket { lo, hi };
    let mut inside = vec![0u32; (hi.to_u64() - lo.to_u64() + 1) as usize];
    let counts = super::bracket::count_part_on(simd, keys, &|&k: &K| k, b, &mut inside);
    BracketTally {
        below: counts.below,
        above: counts.above,
        max: counts.max,
        inside,
    }
}

/// The n:m "pruned" flags of `w` as consecutive groups of `m` (the last one maybe short),
/// `1 <= m <= 16`, `n <= m`. Groups of 2 and 4 take the AVX2 build with the token.
pub fn nm_flags<T: Element>(simd: Option<Avx2>, w: &[T], n: usize, m: usize) -> Vec<bool> {
    assert!((1..=super::nm_rank::MAX_STABLE_M).contains(&m) && n <= m);
    let mut flags = vec![false; w.len()];
    super::nm_rank::stable_rank_flags_on(
        simd,
        w,
        super::nm_rank::Span::Groups { inner: 1 },
        n,
        m,
        &mut flags,
    );
    flags
}

/// fp16 block norms by numpy's pairwise sum: one per `block_size` values of `part` (the last
/// block zero padded), `block_size >= 1`.
pub fn pairwise_norms_f16(simd: Option<Avx2>, part: &[f16], block_size: usize) -> Vec<f16> {
    assert!(block_size >= 1);
    let mut out = vec![f16::ZERO; part.len().div_ceil(block_size)];
    let mut s = super::block_norms::Scratch::default();
    super::block_norms::pairwise_norms_f16_on(simd, part, block_size, &mut out, &mut s);
    out
}

/// fp16 block norms by sequential sums: `block` is `block.len() / inner >= 1` whole rows of
/// `inner` values, summed down the rows (a trailing partial row is ignored).
pub fn sequential_norms_f16(simd: Option<Avx2F16c>, block: &[f16], inner: usize) -> Vec<f16> {
    assert!(inner >= 1 && block.len() >= inner);
    let mut out = vec![f16::ZERO; inner];
    let mut s = super::block_norms::Scratch::default();
    let rows = block.len() / inner * inner;
    super::block_norms::sequential_norms_f16(simd, &block[..rows], inner, &mut out, &mut s);
    out
}

/// The row step of sequential norms: `acc[i] = f16(acc[i] + f16(row[i]²))` (or the square alone
/// for the `first` row), kept as f32; `row.len() >= acc.len()`.
pub fn accumulate_squares(simd: Option<Avx2F16c>, acc: &mut [f32], row: &[f16], first: bool) {
    super::block_norms::accumulate_squares(simd, acc, row, first)
}

/// The reference block norms of weights `w` of `shape` (blocks of `block_size` along `dim`), as
/// key -> number of elements covered: what a device's norm histogram must equal. Panics on a
/// shape that does not fit `w` or a block size the rules skip.
pub fn block_norm_key_counts<T: Element>(
    w: &[T],
    shape: &[usize],
    block_size: usize,
    dim: usize,
) -> std::collections::BTreeMap<u64, u64> {
    let layout = super::axes::ChannelLayout::new(shape, w.len(), dim).expect("a shape that fits");
    assert!(
        block_size > 0 && !layout.exceeds_half_channel(block_size),
        "a block size the rules take"
    );
    super::block::reference_norm_counts(w, layout, block_size)
}
