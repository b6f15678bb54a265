//! Every SIMD path gives the portable path's bytes, on arbitrary inputs and lengths (whole SIMD
//! steps, ragged tails, empty). Both paths are called explicitly ([`super::kernel_paths`]): `None`
//! for portable, the token for SIMD, so these run the SIMD code whatever `MLPRUNE_PORTABLE` says
//! (on a CPU without a token's features only the portable side runs, and the SIMD half of a test
//! has nothing to compare).

use std::mem::MaybeUninit;

use half::f16;
use proptest::prelude::*;

use super::element::Element;
use super::kernel_paths::*;

/// fp16 bit patterns with the awkward ones often: ±0, subnormals, ±inf, NaNs, the largest finite.
/// Shared with the other kernel tests of `prune`.
pub(super) fn f16_bits() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => any::<u16>(),
        2 => prop::sample::select(vec![
            0x0000u16, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x3c00, 0xbc00, 0x7bff, 0xfbff, 0x7c00,
            0xfc00, 0x7c01, 0x7e00, 0xfe00, 0x7fff, 0xffff,
        ]),
    ]
}

/// fp32 bit patterns with the awkward ones often, as [`f16_bits`].
pub(super) fn f32_bits() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => any::<u32>(),
        2 => prop::sample::select(vec![
            0u32, 0x8000_0000, 1, 0x8000_0001, 0x3f80_0000, 0xbf80_0000, 0x7f7f_ffff, 0x7f80_0000,
            0xff80_0000, 0x7f80_0001, 0x7fc0_0000, 0xffc0_0000, 0x7fff_ffff,
        ]),
    ]
}

fn f16s(bits: &[u16]) -> Vec<f16> {
    bits.iter().map(|&b| f16::from_bits(b)).collect()
}

/// A mask whose every byte, and long runs of all-kept and none-kept, show up.
fn mask_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![2 => any::<u8>(), 1 => Just(0xffu8), 1 => Just(0u8)],
        0..max,
    )
}

fn kept_in_order<T: Copy>(values: &[T], bytes: &[u8], n: usize) -> Vec<T> {
    (0..n)
        .filter(|&i| bytes[i / 8] & (1 << (i % 8)) != 0)
        .map(|i| values[i])
        .collect()
}

/// Every compaction of `values` (`n` elements, mask `bytes`) on `simd` against the kept elements
/// in order: in place (the tail past the whole groups untouched), into another buffer, and exact
/// into a part of a larger buffer (nothing around it touched).
fn check_compaction<T: bytemuck::Pod + std::fmt::Debug>(
    simd: Option<Ssse3Popcnt>,
    values: &[T],
    bytes: &[u8],
    sentinel: T,
) -> Result<(), TestCaseError> {
    let n = values.len();
    let groups = &bytes[..n / 8];
    let want = kept_in_order(values, groups, groups.len() * 8);
    let b = |v: &[T]| bytemuck::cast_slice::<T, u8>(v).to_vec();

    let mut in_place = values.to_vec();
    let kept = compact_in_place(simd, &mut in_place, groups);
    prop_assert_eq!(kept, want.len());
    prop_assert_eq!(b(&in_place[..kept]), b(&want));
    prop_assert_eq!(b(&in_place[groups.len() * 8..]), b(&values[groups.len() * 8..]));

    let mut into = vec![sentinel; n];
    prop_assert_eq!(compact_into(simd, values, &mut into, groups), kept);
    prop_assert_eq!(b(&into[..kept]), b(&want));

    let want = kept_in_order(values, bytes, n);
    let mut buffer = vec![MaybeUninit::new(sentinel); want.len() + 16];
    compact_exact(simd, values, bytes, &mut buffer[8..8 + want.len()]);
    // SAFETY: every slot was initialized with the sentinel and, if at all, written with a T since.
    let got: Vec<T> = buffer.iter().map(|x| unsafe { x.assume_init() }).collect();
    prop_assert_eq!(b(&got[8..8 + want.len()]), b(&want));
    prop_assert_eq!(b(&got[..8]), b(&[sentinel; 8]));
    prop_assert_eq!(b(&got[8 + want.len()..]), b(&[sentinel; 8]));
    Ok(())
}

fn check_bracket<K: super::keys::Key>(keys: &[K], lo: K, hi: K) -> Result<(), TestCaseError> {
    let portable = bracket_tally(None, keys, lo, hi);
    prop_assert_eq!(portable.below, keys.iter().filter(|&&k| k < lo).count() as u64);
    prop_assert_eq!(portable.above, keys.iter().filter(|&&k| k > hi).count() as u64);
    prop_assert_eq!(portable.max, keys.iter().copied().max());
    let inside = keys.iter().filter(|&&k| lo <= k && k <= hi).count() as u64;
    prop_assert_eq!(portable.inside.iter().map(|&c| u64::from(c)).sum::<u64>(), inside);
    if let Some(token) = Avx2PopcntBmi1::detect() {
        prop_assert_eq!(bracket_tally(Some(token), keys, lo, hi), portable);
    }
    Ok(())
}

fn check_nm<T: Element>(w: &[T], n: usize, m: usize) -> Result<(), TestCaseError> {
    let portable = nm_flags(None, w, n, m);
    // Each whole group prunes exactly n.
    for group in portable.chunks_exact(m) {
        prop_assert_eq!(group.iter().filter(|&&f| f).count(), n);
    }
    if let Some(token) = Avx2::detect() {
        prop_assert_eq!(nm_flags(Some(token), w, n, m), portable);
    }
    Ok(())
}

/// Norms as bits, every NaN as one: a NaN norm's sign and payload depend on which NaN operand an
/// addition passes on, which two builds of the same code need not agree on (the fuzzer found
/// such a pair); the decisions give every NaN the same key.
fn norm_bits(norms: &[f16]) -> Vec<u16> {
    norms
        .iter()
        .map(|x| if x.is_nan() { 0x7e00 } else { x.to_bits() })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The AVX2 keep-mask compare gives the portable bytes and count for any cut, and both are the
    /// per-element rule for every cut that is a key a cut can be (at most infinity's).
    #[test]
    fn simd_keep_mask_fp16_is_the_portable_one(
        bits in prop::collection::vec(f16_bits(), 0..300),
        cut in prop_oneof![0u16..=0x7fff, prop::sample::select(vec![0u16, 1, 0x3c00, 0x7bff, 0x7c00])],
    ) {
        let portable = keep_mask_u16(None, &bits, cut);
        if cut <= 0x7c00 {
            let mut rule = vec![0u8; bits.len().div_ceil(8)];
            let kept = keep_mask_generic(&f16s(&bits), (cut > 0).then_some(cut), &mut rule);
            prop_assert_eq!(&portable, &(rule, kept));
        }
        if let Some(token) = Avx2Popcnt::detect() {
            prop_assert_eq!(keep_mask_u16(Some(token), &bits, cut), portable);
        }
    }

    #[test]
    fn simd_keep_mask_fp32_is_the_portable_one(
        bits in prop::collection::vec(f32_bits(), 0..120),
        cut in prop_oneof![0u32..=0x7fff_ffff, prop::sample::select(vec![0u32, 1, 0x3f80_0000, 0x7f80_0000])],
    ) {
        let portable = keep_mask_u32(None, &bits, cut);
        if cut <= 0x7f80_0000 {
            let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            let mut rule = vec![0u8; bits.len().div_ceil(8)];
            let kept = keep_mask_generic(&values, (cut > 0).then_some(cut), &mut rule);
            prop_assert_eq!(&portable, &(rule, kept));
        }
        if let Some(token) = Avx2Popcnt::detect() {
            prop_assert_eq!(keep_mask_u32(Some(token), &bits, cut), portable);
        }
    }

    /// Compaction of 1-, 2-, 4- and 8-byte elements, any length, on both paths.
    #[test]
    fn simd_compaction_is_the_portable_one(
        bytes in mask_bytes(80),
        seed in any::<u64>(),
        cut in 0usize..8,
    ) {
        let n = (bytes.len() * 8).saturating_sub(cut);
        let bits = |i: usize| seed.wrapping_mul(i as u64 + 1).rotate_left((i % 63) as u32) | 1;
        for simd in [None, Ssse3Popcnt::detect()] {
            check_compaction(simd, &(0..n).map(|i| bits(i) as u8).collect::<Vec<_>>(), &bytes, 0)?;
            check_compaction(simd, &(0..n).map(|i| bits(i) as u16).collect::<Vec<_>>(), &bytes, 0)?;
            check_compaction(simd, &(0..n).map(|i| bits(i) as u32).collect::<Vec<_>>(), &bytes, 0)?;
            check_compaction(simd, &(0..n).map(bits).collect::<Vec<_>>(), &bytes, 0)?;
        }
    }

    /// The bracket count over 16-bit keys (the AVX2 mask tally, whole 32-key steps and a tail,
    /// several blocks) and 8-bit keys (the generic tally compiled for AVX2).
    #[test]
    fn simd_bracket_count_is_the_portable_one(
        keys in prop::collection::vec(prop_oneof![0u16..64, any::<u16>(), Just(u16::MAX)], 0..5000),
        ends in (any::<u16>(), any::<u16>()),
        narrow in any::<bool>(),
    ) {
        let (lo, hi) = (ends.0.min(ends.1), ends.0.max(ends.1));
        let (lo, hi) = if narrow { (lo % 64, lo % 64 + hi % 8) } else { (lo, hi) };
        check_bracket(&keys, lo, hi)?;
        let bytes: Vec<u8> = keys.iter().map(|&k| k as u8).collect();
        check_bracket(&bytes, lo as u8, (lo as u8).max(hi as u8))?;
    }

    /// n:m ranking of consecutive groups (2 and 4 unrolled for AVX2; others transposed), fp16 and
    /// fp32, with a short last group.
    #[test]
    fn simd_nm_ranking_is_the_portable_one(
        bits in prop::collection::vec(f16_bits(), 0..700),
        wide in prop::collection::vec(f32_bits(), 0..200),
        m in prop::sample::select(vec![2usize, 4, 2, 4, 3, 8, 16]),
        n in 0usize..=16,
    ) {
        let n = n.min(m);
        check_nm(&f16s(&bits), n, m)?;
        check_nm(&wide.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>(), n, m)?;
    }

    /// fp16 pairwise block norms (the AVX2 build) and sequential ones (the F16C row step).
    #[test]
    fn simd_block_norms_are_the_portable_ones(
        bits in prop::collection::vec(f16_bits(), 1..600),
        block_size in 1usize..40,
        inner in 1usize..50,
    ) {
        let part = f16s(&bits);
        let portable = pairwise_norms_f16(None, &part, block_size);
        prop_assert_eq!(portable.len(), part.len().div_ceil(block_size));
        if let Some(token) = Avx2::detect() {
            prop_assert_eq!(norm_bits(&pairwise_norms_f16(Some(token), &part, block_size)), norm_bits(&portable));
        }
        let inner = inner.min(part.len());
        let portable = sequential_norms_f16(None, &part, inner);
        if let Some(token) = Avx2F16c::detect() {
            prop_assert_eq!(norm_bits(&sequential_norms_f16(Some(token), &part, inner)), norm_bits(&portable));
        }
    }

    /// The F16C row step: the same f32 accumulators, except that a NaN may differ in sign and
    /// payload (F16C drops payload bits below fp16 precision, the portable rounding keeps them,
    /// and see [`norm_bits`]).
    #[test]
    fn simd_row_step_is_the_portable_one(
        row in prop::collection::vec(f16_bits(), 0..100),
        acc in prop::collection::vec(f16_bits(), 0..100),
        first in any::<bool>(),
    ) {
        let Some(token) = Avx2F16c::detect() else { return Ok(()) };
        let len = acc.len().min(row.len());
        // Accumulators hold fp16 values of sums of squares: non-negative.
        let acc: Vec<f32> = acc[..len].iter().map(|&b| f16::from_bits(b & 0x7fff).to_f32()).collect();
        let row = f16s(&row);
        let (mut simd, mut portable) = (acc.clone(), acc);
        accumulate_squares(Some(token), &mut simd, &row, first);
        accumulate_squares(None, &mut portable, &row, first);
        for (s, p) in simd.iter().zip(&portable) {
            let same = s.to_bits() == p.to_bits() || (s.is_nan() && p.is_nan());
            prop_assert!(same, "{:#010x} vs {:#010x}", s.to_bits(), p.to_bits());
        }
    }
}
