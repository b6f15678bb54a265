//! The keep mask of `np.where(|w| <= thr, 0, w)`, straight from the weights: threshold and
//! magnitude pruning keep element `i` iff its magnitude key is above the cut and it is not zero.
//!
//! This runs over every element of every tensor those modes prune. Going through per-element
//! flags (a closure call, a flag byte, then eight flags packed per mask byte) cost about three
//! times the compaction it feeds. For fp16 and fp32 the decision is one integer compare instead:
//! with `c` the cut (`0` for none), element `x` is kept iff `bits(x) & 0x7fff…  > c`, because
//! * a cut is the key of a non-negative non-NaN value (`c <= INF_BITS`), so the raw magnitude bits
//!   order every value against it as the key does — a NaN's bits are above `INF_BITS` like its
//!   canonical key;
//! * a kept value is above `c >= 0`, hence never a zero (±0 has magnitude bits 0), and without a cut
//!   `bits > 0` is exactly "not zero".
//!
//! Both sides stay below the sign bit, so the compare is a signed SIMD compare: 32 elements give
//! four mask bytes with AVX2. Other element types, and cuts that are no key of a cut (above
//! `INF_BITS`), take the generic per-element rule.

use half::f16;

use super::cpu::Avx2Popcnt;
use super::element::{Element, MapValue};
use super::float::IeeeFloat;
use super::percentile::at_or_below;

/// The key of `np.abs` of `T`, which a cut is given in.
pub type MagKey<T> = <<T as Element>::Mag as MapValue>::Key;

/// Writes the keep mask of `values` into `bytes` (LSB first, `ceil(len / 8)` bytes, padding bits
/// zero): element `i` is kept iff `!(key(|x|) <= cut)` and `x != 0`. Returns how many are kept.
pub fn keep_mask<T: Element>(values: &[T], cut: Option<MagKey<T>>, bytes: &mut [u8]) -> usize {
    T::keep_mask(values, cut, bytes)
}

/// [`keep_mask`] by the rule itself, one element at a time: the reference, and the path for
/// element types without a faster one.
pub fn keep_mask_generic<T: Element>(values: &[T], cut: Option<MagKey<T>>, bytes: &mut [u8]) -> usize {
    let mut kept = 0;
    for (group, byte) in values.chunks(8).zip(bytes.iter_mut()) {
        *byte = group.iter().enumerate().fold(0u8, |bits, (k, x)| {
            let keep = !at_or_below(x.magnitude().key(), cut) && !x.is_zero();
            bits | (u8::from(keep) << k)
        });
        kept += byte.count_ones() as usize;
    }
    kept
}

/// [`keep_mask`] for fp16.
pub fn keep_mask_f16(values: &[f16], cut: Option<u16>, bytes: &mut [u8]) -> usize {
    let cut = match cut {
        Some(c) if c > <f16 as IeeeFloat>::INF_BITS as u16 => {
            return keep_mask_generic(values, Some(c), bytes)
        }
        c => c.unwrap_or(0),
    };
    above_u16(Avx2Popcnt::detect(), bytemuck::cast_slice(values), cut, bytes)
}

/// [`keep_mask`] for fp32.
pub fn keep_mask_f32(values: &[f32], cut: Option<u32>, bytes: &mut [u8]) -> usize {
    let cut = match cut {
        Some(c) if c > <f32 as IeeeFloat>::INF_BITS as u32 => {
            return keep_mask_generic(values, Some(c), bytes)
        }
        c => c.unwrap_or(0),
    };
    above_u32(Avx2Popcnt::detect(), bytemuck::cast_slice(values), cut, bytes)
}

/// Bit `i` of `bytes` (`ceil(bits.len() / 8)` of them) set iff `bits[i] & 0x7fff > cut`, for
/// `cut <= 0x7fff`; returns how many are set. With AVX2 when given the token, else portable: the
/// same bytes either way.
pub(crate) fn above_u16(simd: Option<Avx2Popcnt>, bits: &[u16], cut: u16, bytes: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = simd {
        // SAFETY: the token exists only on a CPU with AVX2 and POPCNT, all `above_u16_avx2`
        // enables; it has no other requirement.
        return unsafe { x86::above_u16_avx2(token, bits, cut, bytes) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    above_portable(bits, 0x7fff, cut, bytes)
}

/// [`above_u16`] for 32-bit patterns: `bits[i] & 0x7fff_ffff > cut`, `cut <= 0x7fff_ffff`.
pub(crate) fn above_u32(simd: Option<Avx2Popcnt>, bits: &[u32], cut: u32, bytes: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = simd {
        // SAFETY: the token exists only on a CPU with AVX2 and POPCNT, all `above_u32_avx2`
        // enables; it has no other requirement.
        return unsafe { x86::above_u32_avx2(token, bits, cut, bytes) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    above_portable(bits, 0x7fff_ffff, cut, bytes)
}

/// Bit `i` set iff `bits[i] & abs > cut`, one mask byte per eight elements.
fn above_portable<U>(bits: &[U], abs: U, cut: U, bytes: &mut [u8]) -> usize
where
    U: Copy + Ord + std::ops::BitAnd<Output = U>,
{
    let mut kept = 0;
    for (group, byte) in bits.chunks(8).zip(bytes.iter_mut()) {
        *byte = group
            .iter()
            .enumerate()
            .fold(0u8, |m, (k, &b)| m | (u8::from((b & abs) > cut) << k));
        kept += byte.count_ones() as usize;
    }
    kept
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Avx2Popcnt;

    /// [`super::above_u16`], 32 elements per step. (`cut > 0x7fff` or too few `bytes` give a
    /// wrong mask or a panic, never undefined behaviour.)
    ///
    /// # Safety
    /// None beyond the token's proof that the CPU has AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub unsafe fn above_u16_avx2(_: Avx2Popcnt, bits: &[u16], cut: u16, bytes: &mut [u8]) -> usize {
        let abs = _mm256_set1_epi16(0x7fff);
        let cut_lanes = _mm256_set1_epi16(cut as i16);
        let mut kept = 0;
        let mut groups = bits.chunks_exact(32);
        for (group, out) in (&mut groups).zip(bytes.chunks_exact_mut(4)) {
            // SAFETY: `group` holds 32 elements: two unaligned 32-byte loads.
            let (a, b) = unsafe {
                (
                    _mm256_loadu_si256(group.as_ptr().cast()),
                    _mm256_loadu_si256(group.as_ptr().add(16).cast()),
                )
            };
            // Magnitudes and the cut are below 0x8000: the signed compare orders them correctly.
            let a = _mm256_cmpgt_epi16(_mm256_and_si256(a, abs), cut_lanes);
            let b = _mm256_cmpgt_epi16(_mm256_and_si256(b, abs), cut_lanes);
            // packs works per 128-bit lane (a0–7, b0–7, a8–15, b8–15): the permute puts the 32
            // byte flags back in element order before one byte-mask extract.
            let flags = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(a, b));
            let mask = _mm256_movemask_epi8(flags) as u32;
            out.copy_from_slice(&mask.to_le_bytes());
            kept += mask.count_ones() as usize;
        }
        let done = bits.len() - groups.remainder().len();
        kept + super::above_portable(groups.remainder(), 0x7fff, cut, &mut bytes[done / 8..])
    }

    /// [`super::above_u32`], 8 elements per step.
    ///
    /// # Safety
    /// None beyond the token's proof that the CPU has AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub unsafe fn above_u32_avx2(_: Avx2Popcnt, bits: &[u32], cut: u32, bytes: &mut [u8]) -> usize {
        let abs = _mm256_set1_epi32(0x7fff_ffff);
        let cut_lanes = _mm256_set1_epi32(cut as i32);
        let mut kept = 0;
        let mut groups = bits.chunks_exact(8);
        for (group, out) in (&mut groups).zip(bytes.iter_mut()) {
            // SAFETY: `group` holds 8 elements: one unaligned 32-byte load.
            let x = unsafe { _mm256_loadu_si256(group.as_ptr().cast()) };
            let above = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs), cut_lanes);
            let mask = _mm256_movemask_ps(_mm256_castsi256_ps(above)) as u8;
            *out = mask;
            kept += mask.count_ones() as usize;
        }
        let done = bits.len() - groups.remainder().len();
        kept + super::above_portable(groups.remainder(), 0x7fff_ffff, cut, &mut bytes[done / 8..])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::prune::simd_tests::{f16_bits, f32_bits};

    /// A cut as the kernels make them (an element's key, either end, none) or any key at all.
    fn cut_of<K: Copy + 'static + std::fmt::Debug>(
        keys: Vec<K>,
        any: impl Strategy<Value = K> + 'static,
    ) -> impl Strategy<Value = Option<K>> {
        prop_oneof![
            Just(None),
            prop::sample::select(keys).prop_map(Some),
            any.prop_map(Some),
        ]
    }

    fn agrees<T: Element>(values: &[T], cut: Option<MagKey<T>>) -> Result<(), TestCaseError> {
        let n = values.len();
        let mut want = vec![0u8; n.div_ceil(8)];
        let kept = keep_mask_generic(values, cut, &mut want);
        let mut got = vec![0xa5u8; n.div_ceil(8)];
        prop_assert_eq!(keep_mask(values, cut, &mut got), kept);
        prop_assert_eq!(&got, &want, "cut {:?}", cut);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The one-compare rule is the per-element rule, for every length (SIMD groups and a
        /// ragged tail) and every cut, including keys no cut has (NaN keys) and none.
        #[test]
        fn fp16_keep_mask_matches_the_rule(
            bits in prop::collection::vec(f16_bits(), 0..300),
            cut in cut_of(vec![0u16, 1, 0x3c00, 0x7bff, 0x7c00, 0x7c01, 0x7fff], any::<u16>()),
        ) {
            let values: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
            agrees(&values, cut)?;
            let keys: Vec<u16> = values.iter().map(|x| x.magnitude().key()).collect();
            for &k in keys.iter().take(4) {
                agrees(&values, Some(k))?;
            }
        }

        #[test]
        fn fp32_keep_mask_matches_the_rule(
            bits in prop::collection::vec(f32_bits(), 0..100),
            cut in cut_of(vec![0u32, 1, 0x3f80_0000, 0x7f80_0000, 0x7f80_0001, 0x7fff_ffff], any::<u32>()),
        ) {
            let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            agrees(&values, cut)?;
            let keys: Vec<u32> = values.iter().map(|x| x.magnitude().key()).collect();
            for &k in keys.iter().take(4) {
                agrees(&values, Some(k))?;
            }
        }
    }

    /// Both compares, each called explicitly (the token for AVX2, `None` for portable), over every
    /// fp16 pattern and every length up to two SIMD steps and a tail, against the rule.
    #[test]
    fn the_portable_compare_and_the_simd_one_give_the_rules_bytes() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let values: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
        let paths = [None, Avx2Popcnt::detect()];
        for cut in [None, Some(0u16), Some(0x3555), Some(0x7c00)] {
            let mut want = vec![0u8; bits.len() / 8];
            let kept = keep_mask_generic(&values, cut, &mut want);
            for simd in paths {
                let mut got = vec![0u8; bits.len() / 8];
                assert_eq!(
                    above_u16(simd, &bits, cut.unwrap_or(0), &mut got),
                    kept,
                    "{simd:?}"
                );
                assert_eq!(got, want, "{simd:?}");
            }
            for len in 0..80 {
                let (bits, values) = (&bits[0x7bd0..0x7bd0 + len], &values[0x7bd0..0x7bd0 + len]);
                let mut want = vec![0u8; len.div_ceil(8)];
                let kept = keep_mask_generic(values, cut, &mut want);
                for simd in paths {
                    let mut got = vec![0x5au8; len.div_ceil(8)];
                    assert_eq!(
                        above_u16(simd, bits, cut.unwrap_or(0), &mut got),
                        kept,
                        "{simd:?} {len}"
                    );
                    assert_eq!(got, want, "{simd:?} {len}");
                }
            }
        }
    }
}
