//! The element types pruning handles and what each of numpy's operations means for them.
//!
//! coremltools prunes `const` values of dtype float16, float32, int8 and uint8 (spec §5.4, §5.11).
//! Two traits describe them:
//! * [`MapValue`]: a value a percentile and a `map <= thr` comparison run on — a magnitude
//!   `np.abs(w)` or a block norm. It has an integer [`Key`] in numpy's sort order.
//! * [`Element`]: a weight type: its magnitude type, its block-norm type, `== 0`, and `w * mask`.
//!
//! What numpy 2.4 does for the integer types (measured in the project venv):
//! * `np.abs(int8)` stays int8, so `np.abs(-128) == -128`: −128 is the *smallest* magnitude.
//!   `|w| <= threshold` compares in float64 (Python float with an integer array), so −128 is pruned
//!   by every threshold ≥ −128, i.e. always.
//! * `np.percentile` of an integer array returns float64. The interpolation subtracts the two
//!   neighbours in the array dtype first, so int8 `b - a` wraps (`127 - (-128)` = −1):
//!   `np.percentile(np.abs([-128, 127, 127, 127]), 10) == -128.3`. Reproduced literally.
//! * Block norms: `x * x` wraps in int8/uint8, `np.sum` accumulates in int64/uint64, `np.sqrt` gives
//!   float64 — NaN for a negative int8 sum, which then disables pruning (any NaN in the map makes the
//!   percentile NaN). Reproduced literally: the norm type of int8/uint8 is f64.
//! * `w * (1 - mask)` and `0 * w` are exact for integers.

use half::f16;

use super::float::IeeeFloat;
use super::keys::Key;
use crate::dtype::ScalarType;

/// A value that a percentile and the pruning comparison `map <= thr` run on.
pub trait MapValue: Copy + std::fmt::Debug + Send + Sync + 'static {
    type Key: Key;
    /// The sort key (see [`super::keys`]): ascending keys are numpy's ascending sort order, all NaNs
    /// share the largest key.
    fn key(self) -> Self::Key;
    /// A value with this key (for NaN: some NaN).
    fn from_key(key: Self::Key) -> Self;
    /// True for the key of NaN.
    fn is_nan_key(key: Self::Key) -> bool;
    /// numpy's `_lerp(a, b, gamma)` for a Python-float `gamma`, then the pruning cut it implies:
    /// `Some(k)` means "every value with key ≤ k satisfies `value <= thr`", `None` means nothing
    /// does (thr is NaN or below every value).
    fn percentile_cut(a: Self, b: Self, gamma: f64) -> Option<Self::Key>;
    /// The cut for `|w| <= threshold` with a Python-float `threshold`.
    fn threshold_cut(threshold: f64) -> Option<Self::Key>;
}

/// A weight element type that coremltools can prune.
pub trait Element: bytemuck::Pod + std::fmt::Debug + Send + Sync + 'static {
    const DTYPE: ScalarType;
    /// The type of `np.abs(w)`.
    type Mag: MapValue;
    /// The type of a block norm `sqrt(sum(|w|²))` as numpy computes it.
    type Norm: MapValue;
    fn magnitude(self) -> Self::Mag;
    /// `w == 0`: true for ±0.0, false for NaN.
    fn is_zero(self) -> bool;
    /// The value `np.where(cond, 0, w)` writes: +0 in the weight dtype.
    fn zero() -> Self;
    /// `w * 1` (`keep`) or `w * 0` (not `keep`) in the weight dtype, bit for bit as numpy computes
    /// it. For floats: NaN stays NaN with the quiet bit set (so it is kept even when "pruned"),
    /// `±inf * 0` is the default NaN `0xfe00`/`0xffc00000` (also kept), finite `x * 0` is a zero.
    fn mul_keep(self, keep: bool) -> Self;
    /// The norm of one block of magnitudes (`block[j]` = `|w|` of the j-th element along the block
    /// axis, zero for padding). `innermost` says whether numpy's reduction runs along the innermost
    /// memory axis (pairwise f32 summation) or not (sequential summation in the weight dtype); see
    /// [`super::block()`].
    fn block_norm(block: &[Self::Mag], innermost: bool) -> Self::Norm;
    /// The keep mask of `np.where(|w| <= thr, 0, w)` for the cut of `thr`; see
    /// [`super::keep_mask`], whose one-compare path fp16 and fp32 take.
    fn keep_mask(values: &[Self], cut: Option<<Self::Mag as MapValue>::Key>, bytes: &mut [u8]) -> usize {
        super::keep_mask::keep_mask_generic(values, cut, bytes)
    }
}

// ----- floats ------------------------------------------------------------------------------------

/// The canonical key of NaN for a float type: the largest key, `ABS_MASK`.
fn float_key<F: IeeeFloat>(x: F) -> u64 {
    let k = x.bits() & F::ABS_MASK;
    if k > F::INF_BITS {
        F::ABS_MASK
    } else {
        k
    }
}

/// numpy 2.x `_lerp(a, b, t)` with `a`, `b` scalars of float type F and `t` a Python float:
/// `diff = F(b - a)`; if `t >= 0.5`: `F(b - F(diff * F(1 - t)))` else `F(a + F(diff * F(t)))`,
/// where `1 - t` is computed in f64 and every F(...) is one round-to-nearest-even.
fn float_lerp<F: IeeeFloat>(a: F, b: F, t: f64) -> F {
    let r = |x: f64| F::round_from_f64(x).to_f64();
    let (a, b) = (a.to_f64(), b.to_f64());
    let diff = r(b - a);
    if t >= 0.5 {
        F::round_from_f64(b - r(diff * r(1.0 - t)))
    } else {
        F::round_from_f64(a + r(diff * r(t)))
    }
}

/// The cut for `map <= thr` on non-negative float magnitudes: NaN or negative thr prunes nothing
/// (−0.0 is not negative: it prunes the zeros); otherwise every key up to thr's key.
fn float_cut<F: IeeeFloat>(thr: F) -> Option<u64> {
    let x = thr.to_f64();
    if x.is_nan() || x < 0.0 {
        None
    } else {
        Some(thr.bits() & F::ABS_MASK)
    }
}

macro_rules! impl_float_map {
    ($t:ty, $k:ty) => {
        impl MapValue for $t {
            type Key = $k;
            fn key(self) -> $k {
                float_key(self) as $k
            }
            fn from_key(key: $k) -> Self {
                <$t as IeeeFloat>::from_raw(u64::from(key))
            }
            fn is_nan_key(key: $k) -> bool {
                u64::from(key) > <$t as IeeeFloat>::INF_BITS
            }
            fn percentile_cut(a: Self, b: Self, gamma: f64) -> Option<$k> {
                float_cut(float_lerp(a, b, gamma)).map(|k| k as $k)
            }
            fn threshold_cut(threshold: f64) -> Option<$k> {
                // numpy 2 casts the weak Python float to the array dtype before comparing.
                float_cut(<$t as IeeeFloat>::round_from_f64(threshold)).map(|k| k as $k)
            }
        }
    };
}
impl_float_map!(f16, u16);
impl_float_map!(f32, u32);
impl_float_map!(f64, u64);

/// Sum of squares along the innermost axis: numpy's float32 `pairwise_sum` (for n < 8 a plain loop
/// from 0; for 8 ≤ n ≤ 128 eight interleaved partial sums `r[k] += x[8i+k]` combined as
/// `((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))` plus the remainder in order; above 128 the range is split
/// at `n/2` rounded down to a multiple of 8 and both halves summed recursively).
/// `x(j)` is the j-th addend; reading through a closure avoids a buffer per block.
pub(crate) fn pairwise_sum_f32(n: usize, x: &impl Fn(usize) -> f32) -> f32 {
    pairwise_range(0, n, x)
}

fn pairwise_range(start: usize, n: usize, x: &impl Fn(usize) -> f32) -> f32 {
    if n < 8 {
        let mut res = 0.0f32;
        for j in start..start + n {
            res += x(j);
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f32; 8];
        for (k, acc) in r.iter_mut().enumerate() {
            *acc = x(start + k);
        }
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for (k, acc) in r.iter_mut().enumerate() {
                *acc += x(start + i + k);
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for j in start + full..start + n {
            res += x(j);
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_range(start, n2, x) + pairwise_range(start + n2, n - n2, x)
    }
}

impl Element for f16 {
    const DTYPE: ScalarType = ScalarType::Float16;
    type Mag = f16;
    type Norm = f16;

    fn magnitude(self) -> f16 {
        f16::from_bits(self.to_bits() & 0x7fff)
    }
    fn is_zero(self) -> bool {
        self.is_zero_value()
    }
    fn zero() -> Self {
        f16::from_bits(0)
    }
    fn mul_keep(self, keep: bool) -> Self {
        IeeeFloat::mul_keep(self, keep)
    }
    /// Squares rounded to fp16 (so |w| > ~255.9 squares to inf); innermost: f32 pairwise sum of the
    /// fp16 squares rounded once to fp16; otherwise `s = f16(s + sq)` from 0 in order; then
    /// `f16(sqrtf(s))`.
    fn keep_mask(values: &[f16], cut: Option<u16>, bytes: &mut [u8]) -> usize {
        super::keep_mask::keep_mask_f16(values, cut, bytes)
    }
    fn block_norm(block: &[f16], innermost: bool) -> f16 {
        // An fp16 square has at most 22 significant bits, so the f32 product is exact and one
        // f32 -> f16 rounding equals numpy's (checked for every fp16 value in the tests).
        let sq = |m: f16| f16::from_f32(m.to_f32() * m.to_f32());
        let sum = if innermost {
            let sum = pairwise_sum_f32(block.len(), &|j| sq(block[j]).to_f32());
            f16::round_from_f64(f64::from(sum))
        } else {
            let mut s = f16::from_bits(0);
            for &m in block {
                s = f16::round_from_f64(s.to_f64() + sq(m).to_f64());
            }
            s
        };
        f16::round_from_f64(f64::from(sum.to_f32().sqrt()))
    }
}

impl Element for f32 {
    const DTYPE: ScalarType = ScalarType::Float32;
    type Mag = f32;
    type Norm = f32;

    fn magnitude(self) -> f32 {
        f32::from_bits(self.to_bits() & 0x7fff_ffff)
    }
    fn is_zero(self) -> bool {
        self.is_zero_value()
    }
    fn zero() -> Self {
        0.0
    }
    fn mul_keep(self, keep: bool) -> Self {
        IeeeFloat::mul_keep(self, keep)
    }
    /// Squares in f32; innermost: f32 pairwise sum; otherwise sequential f32 sum from 0; `sqrtf`.
    fn keep_mask(values: &[f32], cut: Option<u32>, bytes: &mut [u8]) -> usize {
        super::keep_mask::keep_mask_f32(values, cut, bytes)
    }
    fn block_norm(block: &[f32], innermost: bool) -> f32 {
        let sum = if innermost {
            pairwise_sum_f32(block.len(), &|j| block[j] * block[j])
        } else {
            let mut s = 0.0f32;
            for &m in block {
                s += m * m;
            }
            s
        };
        sum.sqrt()
    }
}

// ----- integers ----------------------------------------------------------------------------------

/// `np.abs(w)` of an int8 weight: an int8 in which −128 stays −128 (the smallest magnitude).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct I8Mag(pub i8);

/// The cut for `map <= thr` with integer map values `lo..=hi` compared in float64: the largest
/// integer ≤ thr, clamped to `hi`; nothing when thr is NaN or below `lo`.
fn int_cut(thr: f64, lo: i64, hi: i64) -> Option<i64> {
    if thr.is_nan() || thr < lo as f64 {
        None
    } else if thr >= hi as f64 {
        Some(hi)
    } else {
        Some(thr.floor() as i64)
    }
}

/// numpy's `_lerp` for integer scalars and a Python-float t: `diff = b - a` in the array dtype
/// (wrapping), then everything in float64.
fn int_lerp(a: i64, b: i64, diff: i64, t: f64) -> f64 {
    let (a, b, diff) = (a as f64, b as f64, diff as f64);
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

impl MapValue for I8Mag {
    type Key = u8;
    fn key(self) -> u8 {
        (self.0 as u8) ^ 0x80
    }
    fn from_key(key: u8) -> Self {
        I8Mag((key ^ 0x80) as i8)
    }
    fn is_nan_key(_: u8) -> bool {
        false
    }
    fn percentile_cut(a: Self, b: Self, gamma: f64) -> Option<u8> {
        let diff = b.0.wrapping_sub(a.0);
        let thr = int_lerp(i64::from(a.0), i64::from(b.0), i64::from(diff), gamma);
        Self::threshold_cut(thr)
    }
    fn threshold_cut(threshold: f64) -> Option<u8> {
        int_cut(threshold, -128, 127).map(|v| I8Mag(v as i8).key())
    }
}

impl MapValue for u8 {
    type Key = u8;
    fn key(self) -> u8 {
        self
    }
    fn from_key(key: u8) -> Self {
        key
    }
    fn is_nan_key(_: u8) -> bool {
        false
    }
    fn percentile_cut(a: Self, b: Self, gamma: f64) -> Option<u8> {
        let diff = b.wrapping_sub(a);
        let thr = int_lerp(i64::from(a), i64::from(b), i64::from(diff), gamma);
        Self::threshold_cut(thr)
    }
    fn threshold_cut(threshold: f64) -> Option<u8> {
        int_cut(threshold, 0, 255).map(|v| v as u8)
    }
}

impl Element for i8 {
    const DTYPE: ScalarType = ScalarType::Int8;
    type Mag = I8Mag;
    type Norm = f64;

    fn magnitude(self) -> I8Mag {
        I8Mag(self.wrapping_abs())
    }
    fn is_zero(self) -> bool {
        self == 0
    }
    fn zero() -> Self {
        0
    }
    fn mul_keep(self, keep: bool) -> Self {
        if keep {
            self
        } else {
            0
        }
    }
    /// int8 squares wrap (`12 * 12` = −112, `(-128)²` = 0), the sum is int64, `sqrt` float64 (NaN
    /// for a negative sum).
    fn block_norm(block: &[I8Mag], _innermost: bool) -> f64 {
        let sum: i64 = block.iter().map(|m| i64::from(m.0.wrapping_mul(m.0))).sum();
        (sum as f64).sqrt()
    }
}

impl Element for u8 {
    const DTYPE: ScalarType = ScalarType::UInt8;
    type Mag = u8;
    type Norm = f64;

    fn magnitude(self) -> u8 {
        self
    }
    fn is_zero(self) -> bool {
        self == 0
    }
    fn zero() -> Self {
        0
    }
    fn mul_keep(self, keep: bool) -> Self {
        if keep {
            self
        } else {
            0
        }
    }
    /// uint8 squares wrap modulo 256, the sum is uint64, `sqrt` float64.
    fn block_norm(block: &[u8], _innermost: bool) -> f64 {
        let sum: u64 = block.iter().map(|&m| u64::from(m.wrapping_mul(m))).sum();
        (sum as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_magnitude_keeps_minus_128_smallest() {
        assert_eq!((-128i8).magnitude(), I8Mag(-128));
        assert!((-128i8).magnitude().key() < 0i8.magnitude().key());
        assert!(0i8.magnitude().key() < (-1i8).magnitude().key());
        assert_eq!(I8Mag::from_key((-5i8).magnitude().key()), I8Mag(5));
    }

    #[test]
    fn int8_percentile_wraps_like_numpy() {
        // np.percentile(np.abs(np.int8([-128, 127, 127, 127])), 10.0) == -128.3: vi = 0.3.
        let cut = I8Mag::percentile_cut(I8Mag(-128), I8Mag(127), 0.30000000000000004);
        // -128.3 < -128: nothing is pruned, not even -128.
        assert_eq!(cut, None);
        assert_eq!(I8Mag::threshold_cut(-128.3), None);
        assert_eq!(I8Mag::threshold_cut(-128.0), Some(0));
        assert_eq!(I8Mag::threshold_cut(2.5), Some(I8Mag(2).key()));
        assert_eq!(u8::threshold_cut(1e9), Some(255));
    }

    #[test]
    fn float_keys_order_magnitudes_and_merge_nans() {
        let k = |b: u16| f16::from_bits(b).magnitude().key();
        assert_eq!(k(0x8000), k(0x0000));
        assert!(k(0x0001) > k(0x0000));
        assert!(k(0x7c00) > k(0x7bff));
        assert_eq!(k(0x7c01), k(0xfe00));
        assert_eq!(k(0x7c01), 0x7fff);
        assert!(f16::is_nan_key(0x7fff) && !f16::is_nan_key(0x7c00));
    }

    #[test]
    fn float_lerp_follows_ieee_for_inf() {
        let inf = f16::INFINITY;
        let one = f16::from_f32(1.0);
        // B = inf, 0 < g < 0.5 -> thr = inf -> everything with a finite or infinite key is pruned.
        assert_eq!(f16::percentile_cut(one, inf, 0.25), Some(0x7c00));
        // g >= 0.5: inf - inf*0.5 = NaN -> nothing pruned.
        assert_eq!(f16::percentile_cut(one, inf, 0.75), None);
        // g == 0 with B = inf: inf * 0 = NaN -> nothing pruned.
        assert_eq!(f16::percentile_cut(one, inf, 0.0), None);
    }

    #[test]
    fn pairwise_sum_matches_the_numpy_blocking() {
        let x: Vec<f32> = (0..300).map(|i| 1.0 + (i as f32) * 1e-7).collect();
        let sum = |s: &[f32]| pairwise_sum_f32(s.len(), &|j| s[j]);
        // n > 128 splits at 144 (= 150 rounded down to a multiple of 8).
        assert_eq!(sum(&x), sum(&x[..144]) + sum(&x[144..]));
        assert_eq!(sum(&[1.0, 2.0, 3.0]), 6.0);
        // 8..=128: eight interleaved partial sums, then the remainder in order.
        let y: Vec<f32> = (0..11).map(|i| 1.0 + (i as f32) * 1e-7).collect();
        let r = &y[..8];
        let want = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])) + y[8] + y[9] + y[10];
        assert_eq!(sum(&y), want);
    }

    #[test]
    fn f16_square_via_f32_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let m = f16::from_bits(bits);
            let fast = f16::from_f32(m.to_f32() * m.to_f32());
            let exact = f16::round_from_f64(m.to_f64() * m.to_f64());
            assert!(
                fast.to_bits() == exact.to_bits() || (fast.is_nan() && exact.is_nan()),
                "{bits:#06x}: {fast:?} vs {exact:?}"
            );
        }
    }
}
