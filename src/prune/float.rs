//! IEEE-754 helpers shared by the float element types: correctly rounded conversions to fp16 and
//! the "compute exactly, round once to T" arithmetic that reproduces numpy.
//!
//! Why one rounding is enough: numpy evaluates fp16 `+ - * /` and `sqrt` in f32 and rounds the f32
//! result to fp16. f32 has 24 significand bits ≥ 2·11 + 2, so that double rounding is innocuous:
//! the result equals the correctly rounded fp16 result. Likewise f64 (53 bits ≥ 2·24 + 2) stands in
//! for f32 arithmetic. So every fp16/f32 operation here is "exact-or-f64 result, then one
//! round-to-nearest-even to T", which is what numpy produces bit for bit (NaN payloads aside).
//!
//! `half::f16::from_f64` is deliberately not used: its x86 F16C path converts through f32 (double
//! rounding) and its software path truncates the low mantissa bits, while numpy's
//! `np.float16(python_float)` rounds the f64 directly. The two differ near fp16 halfway points.

/// fp16 bits nearest to `x` (round half to even; overflow to ±inf like numpy's
/// `npy_double_to_half`). NaN maps to a quiet NaN of the same sign; its payload is not preserved
/// because no caller stores the result of NaN arithmetic through this function.
/// Round half to even for `0 <= y < 2^51`: adding 2^52 leaves no fraction bits, so the addition
/// itself rounds (to nearest even, the default mode) and the subtraction is exact. Same result as
/// `y.round_ties_even()`, without the libm call baseline x86-64 makes for it.
#[inline]
fn rne_small(y: f64) -> f64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    (y + TWO_52) - TWO_52
}

pub(crate) fn f16_bits_from_f64(x: f64) -> u16 {
    let sign: u16 = if x.is_sign_negative() { 0x8000 } else { 0 };
    if x.is_nan() {
        return sign | 0x7e00;
    }
    let a = x.abs();
    // 65520 is the midpoint between the largest finite fp16 (65504, odd significand) and 2^16;
    // ties go to the even neighbour, which is infinity.
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    // Below 2^-14 the result is subnormal: a multiple of 2^-24. Scaling by 2^24 is exact in f64.
    if a < f64::from_bits((1023 - 14) << 52) {
        let m = rne_small(a * f64::from_bits((1023 + 24) << 52));
        // m is in 0..=1024; 1024 is the smallest normal (0x0400), which the bit layout gives for free.
        return sign | m as u16;
    }
    // Normal range: a = 1.f × 2^e with -14 ≤ e ≤ 15; scale the significand to [1024, 2048).
    let e = ((a.to_bits() >> 52) as i32) - 1023;
    let scale = f64::from_bits(((1023 + 10 - e) as u64) << 52);
    let m = rne_small(a * scale) as u16;
    // m may round up to 2048: adding it to the exponent field carries into the next binade.
    sign | ((((e + 15) as u16) << 10) + (m - 1024))
}

/// A binary floating-point type whose arithmetic kernels emulate numpy's.
pub(crate) trait IeeeFloat: Copy {
    /// Mask of every bit except the sign.
    const ABS_MASK: u64;
    /// Bits of +inf.
    const INF_BITS: u64;
    /// The most significant significand bit (set in a quiet NaN).
    const QUIET_BIT: u64;
    /// The NaN x86 produces for invalid operations such as `inf * 0` ("real indefinite": sign set).
    const DEFAULT_NAN_BITS: u64;

    fn bits(self) -> u64;
    fn from_raw(bits: u64) -> Self;
    /// Exact widening.
    fn to_f64(self) -> f64;
    /// Round-to-nearest-even narrowing.
    fn round_from_f64(x: f64) -> Self;

    fn is_nan_value(self) -> bool {
        self.bits() & Self::ABS_MASK > Self::INF_BITS
    }
    fn is_inf_value(self) -> bool {
        self.bits() & Self::ABS_MASK == Self::INF_BITS
    }
    /// `x == 0` in IEEE terms: true for +0.0 and −0.0, false for NaN.
    fn is_zero_value(self) -> bool {
        self.bits() & Self::ABS_MASK == 0
    }

    /// numpy's `x * 1` (`keep`) or `x * 0` (not `keep`), bit for bit as measured on x86-64:
    /// NaN → the same NaN with the quiet bit set (sign and payload kept), in both cases;
    /// `keep` → x unchanged otherwise; not `keep` → ±inf becomes the default NaN (sign set),
    /// finite x becomes a zero (whose sign does not matter: zeros are dropped by the encoder).
    fn mul_keep(self, keep: bool) -> Self {
        if self.is_nan_value() {
            Self::from_raw(self.bits() | Self::QUIET_BIT)
        } else if keep {
            self
        } else if self.is_inf_value() {
            Self::from_raw(Self::DEFAULT_NAN_BITS)
        } else {
            Self::from_raw(0)
        }
    }
}

impl IeeeFloat for half::f16 {
    const ABS_MASK: u64 = 0x7fff;
    const INF_BITS: u64 = 0x7c00;
    const QUIET_BIT: u64 = 0x0200;
    const DEFAULT_NAN_BITS: u64 = 0xfe00;

    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
    fn from_raw(bits: u64) -> Self {
        half::f16::from_bits(bits as u16)
    }
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn round_from_f64(x: f64) -> Self {
        half::f16::from_bits(f16_bits_from_f64(x))
    }
}

impl IeeeFloat for f32 {
    const ABS_MASK: u64 = 0x7fff_ffff;
    const INF_BITS: u64 = 0x7f80_0000;
    const QUIET_BIT: u64 = 0x0040_0000;
    const DEFAULT_NAN_BITS: u64 = 0xffc0_0000;

    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
    fn from_raw(bits: u64) -> Self {
        f32::from_bits(bits as u32)
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn round_from_f64(x: f64) -> Self {
        x as f32
    }
}

impl IeeeFloat for f64 {
    const ABS_MASK: u64 = 0x7fff_ffff_ffff_ffff;
    const INF_BITS: u64 = 0x7ff0_0000_0000_0000;
    const QUIET_BIT: u64 = 0x0008_0000_0000_0000;
    const DEFAULT_NAN_BITS: u64 = 0xfff8_0000_0000_0000;

    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn from_raw(bits: u64) -> Self {
        f64::from_bits(bits)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn round_from_f64(x: f64) -> Self {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the nearest fp16 to `x` (ties to the even significand), found by binary search
    /// over the monotone positive bit patterns.
    fn nearest_f16(x: f64) -> u16 {
        let a = x.abs();
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        if a >= 65520.0 {
            return sign | 0x7c00;
        }
        let value = |b: u16| half::f16::from_bits(b).to_f64();
        // Largest finite pattern whose value is <= a.
        let (mut lo, mut hi) = (0u16, 0x7bffu16);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if value(mid) <= a {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo == 0x7bff {
            return sign | 0x7bff;
        }
        let (dl, dh) = (a - value(lo), value(lo + 1) - a);
        sign | if dl < dh || (dl == dh && lo % 2 == 0) {
            lo
        } else {
            lo + 1
        }
    }

    #[test]
    fn f16_rounding_matches_exact_nearest_even() {
        for b in (0..0x7c00u16).step_by(7) {
            let v = half::f16::from_bits(b).to_f64();
            let next = half::f16::from_bits(b + 1).to_f64();
            let mid = (v + next) / 2.0;
            for x in [
                v,
                mid,
                f64::from_bits(mid.to_bits() - 1),
                f64::from_bits(mid.to_bits() + 1),
                -mid,
            ] {
                assert_eq!(f16_bits_from_f64(x), nearest_f16(x), "x = {x:e}");
            }
        }
        assert_eq!(f16_bits_from_f64(65519.99), 0x7bff);
        assert_eq!(f16_bits_from_f64(65520.0), 0x7c00);
        assert_eq!(f16_bits_from_f64(f64::INFINITY), 0x7c00);
        assert_eq!(f16_bits_from_f64(-0.0), 0x8000);
        assert_eq!(f16_bits_from_f64(1e-300), 0);
        // numpy: np.float16(0.09997) == 0.0999755859375 (spec §5.5).
        assert_eq!(
            half::f16::from_bits(f16_bits_from_f64(0.09997)).to_f64(),
            0.0999755859375
        );
    }

    #[test]
    fn mul_keep_follows_x86_nan_rules() {
        let h = |b: u16| half::f16::from_bits(b);
        assert_eq!(h(0x7c01).mul_keep(true).to_bits(), 0x7e01);
        assert_eq!(h(0xfc01).mul_keep(false).to_bits(), 0xfe01);
        assert_eq!(h(0x7c00).mul_keep(false).to_bits(), 0xfe00);
        assert_eq!(h(0xfc00).mul_keep(true).to_bits(), 0xfc00);
        assert!(h(0xbc00).mul_keep(false).is_zero_value());
        assert_eq!(f32::from_bits(0x7f80_0001).mul_keep(true).to_bits(), 0x7fc0_0001);
        assert_eq!(f32::INFINITY.mul_keep(false).to_bits(), 0xffc0_0000);
    }
}
