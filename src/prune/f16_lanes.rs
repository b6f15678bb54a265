//! fp16 conversions written as plain integer and float arithmetic, so that loops over slices
//! vectorize. The `half` crate converts slices with F16C when the CPU has it, but only through a
//! call per eight elements; the fp16 block norms convert five times per element and were dominated
//! by those calls. Both functions are exact (tested exhaustively against `half` below).

use half::f16;

/// `x` as f32 (exact: every fp16 value is an f32 value).
#[inline(always)]
pub fn to_f32(x: f16) -> f32 {
    let h = u32::from(x.to_bits());
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff;
    // Shifted into place the exponent is 112 too small; multiplying by 2^112 fixes it exactly for
    // normal and subnormal values alike (an f32 subnormal times a power of two is exact).
    let finite = f32::from_bits(magnitude << 13) * f32::from_bits((127 + 112) << 23);
    // Exponent 31: infinity, and NaN made quiet (as the hardware conversion does).
    let quiet = if magnitude > 0x7c00 { 0x0040_0000 } else { 0 };
    let special = f32::from_bits(0x7f80_0000 | quiet | (magnitude << 13));
    let value = if magnitude >= 0x7c00 { special } else { finite };
    f32::from_bits(value.to_bits() | sign)
}

/// `x` rounded to the nearest fp16 value, ties to even, kept as f32: `f16::from_f32(x).to_f32()`
/// for every `x >= 0`, +inf and NaN (the block norms only round sums of squares).
#[inline(always)]
pub fn round_non_negative(x: f32) -> f32 {
    // fp16 normals have 11 significant bits: drop the low 13 of f32's 24, rounding to even (a
    // carry into the exponent is the correct next binade).
    let bits = x.to_bits();
    let normal = f32::from_bits((bits + 0xfff + ((bits >> 13) & 1)) & !0x1fff);
    // Below 2^-14 the fp16 grid is fixed, 2^-24 apart: adding 0.5 (whose f32 ulp is 2^-24) rounds
    // to it, ties to even, and subtracting 0.5 again is exact.
    let subnormal = (x + 0.5) - 0.5;
    // 65520 lies halfway between the largest fp16 (65504, odd significand) and 2^16: ties to even
    // overflow to infinity.
    let rounded = if x < f32::from_bits(0x3880_0000) {
        subnormal
    } else {
        normal
    };
    if x >= 65520.0 {
        f32::INFINITY
    } else if x.is_nan() {
        // The quiet NaN the hardware conversion makes.
        f32::from_bits(bits | 0x0040_0000)
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_f32_matches_half_for_every_fp16() {
        for h in 0..=u16::MAX {
            let (got, want) = (to_f32(f16::from_bits(h)), f16::from_bits(h).to_f32());
            // NaN payloads never matter to the norms (every NaN has the same key).
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}"
            );
        }
    }

    fn check(bits: u32) {
        let x = f32::from_bits(bits);
        let want = f16::from_f32(x).to_f32();
        let got = round_non_negative(x);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{bits:#010x}: {got:?} != {want:?}"
        );
    }

    #[test]
    fn rounding_matches_half_around_every_fp16_boundary() {
        // Every fp16 value, the f32 neighbours of every midpoint between consecutive fp16 values
        // (where ties and carries happen), and the ends of the range.
        for h in 0..0x7c00u16 {
            let lo = f16::from_bits(h).to_f32();
            let hi = f16::from_bits(h + 1).to_f32();
            let mid = ((f64::from(lo) + f64::from(hi)) / 2.0) as f32;
            for b in [lo.to_bits(), mid.to_bits()] {
                for d in 0..3 {
                    check(b.saturating_sub(d));
                    check(b + d);
                }
            }
        }
        for bits in [
            0,
            1,
            0x7f7f_ffff,
            0x7f80_0000,
            0x7f80_0001,
            0x7fc0_0000,
            0x7fff_ffff,
        ] {
            check(bits);
        }
    }

    #[test]
    fn rounding_matches_half_on_a_stride_through_all_non_negative_f32() {
        // Every 1021st bit pattern: about two million values over every exponent.
        for bits in (0..0x7fff_ffffu32).step_by(1021) {
            check(bits);
        }
    }
}
