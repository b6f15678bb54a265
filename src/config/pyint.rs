//! Python integers of any size, as far as a config needs them: read from decimal, binary, octal,
//! hexadecimal and base 60 (PyYAML's YAML 1.1 forms), truncated from floats, compared, converted to
//! float and printed as Python does.
//!
//! Why not i128: PyYAML reads `0x` + 40 hex digits or a 50-digit decimal as an exact `int`, and
//! coremltools then compares it (`n <= m`, `weight_threshold >= 0`) and prints it in its messages;
//! saturating would accept `n_m_ratio: [2**200, 2**130]` (equal once saturated, `n > m` in Python).

use std::cmp::Ordering;
use std::fmt;

/// CPython's default `sys.get_int_max_str_digits()`: `int(str)` and `str(int)` refuse more
/// decimal digits than this.
pub(crate) const MAX_STR_DIGITS: usize = 4300;

/// Widest integer mlprune builds (about 19,700 decimal digits). Only base 60, whose value grows by
/// a multiplication per `:` part, can get past it from a 16 MiB config in reasonable time; PyYAML
/// would take quadratic time there too. Binary, octal and hex are read in linear time and checked
/// against this as well.
pub(crate) const MAX_BITS: u64 = 1 << 16;

/// A Python `int`: sign and magnitude in base 2^32, least significant limb first, no trailing zero
/// limbs (zero is no limbs and not negative).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct PyInt {
    negative: bool,
    limbs: Vec<u32>,
}

impl PyInt {
    fn normalize(mut self) -> Self {
        while self.limbs.last() == Some(&0) {
            self.limbs.pop();
        }
        if self.limbs.is_empty() {
            self.negative = false;
        }
        self
    }

    /// `-self`.
    pub(crate) fn negated(mut self) -> Self {
        self.negative = !self.negative;
        self.normalize()
    }

    /// Bits of the magnitude.
    pub(crate) fn bits(&self) -> u64 {
        match self.limbs.last() {
            None => 0,
            Some(top) => (self.limbs.len() as u64 - 1) * 32 + u64::from(32 - top.leading_zeros()),
        }
    }

    /// `self = self * m + a` on the magnitude.
    fn mul_add_small(&mut self, m: u32, a: u32) {
        let mut carry = u64::from(a);
        for limb in &mut self.limbs {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry != 0 {
            self.limbs.push(carry as u32);
        }
    }

    /// `self * m`.
    pub(crate) fn times_small(mut self, m: u32) -> PyInt {
        self.mul_add_small(m, 0);
        self.normalize()
    }

    /// `int(digits)` for ASCII decimal digits (no sign, no underscores), with CPython's limit of
    /// [`MAX_STR_DIGITS`] digits; the error is CPython's message.
    pub(crate) fn from_decimal(digits: &str) -> Result<PyInt, String> {
        if digits.len() > MAX_STR_DIGITS {
            return Err(format!(
                "Exceeds the limit ({MAX_STR_DIGITS} digits) for integer string conversion: value has {} digits; \
                 use sys.set_int_max_str_digits() to increase the limit",
                digits.len()
            ));
        }
        let mut v = PyInt::default();
        for chunk in digits.as_bytes().chunks(9) {
            let mut part = 0u32;
            for &b in chunk {
                part = part * 10 + u32::from(b - b'0');
            }
            v.mul_add_small(10u32.pow(chunk.len() as u32), part);
        }
        Ok(v.normalize())
    }

    /// `int(digits, 2 ** shift)` for ASCII digits valid in that base (no sign, no underscores), in
    /// linear time; wider than [`MAX_BITS`] is refused.
    pub(crate) fn from_power_of_two_radix(digits: &str, shift: u32) -> Result<PyInt, String> {
        let significant = digits.trim_start_matches('0');
        if significant.len() as u64 * u64::from(shift) > MAX_BITS + 8 {
            return Err(too_wide());
        }
        let mut limbs = Vec::new();
        let (mut acc, mut filled) = (0u64, 0u32);
        for c in significant.bytes().rev() {
            let d = (c as char).to_digit(1 << shift).unwrap_or(0);
            acc |= u64::from(d) << filled;
            filled += shift;
            if filled >= 32 {
                limbs.push(acc as u32);
                acc >>= 32;
                filled -= 32;
            }
        }
        if filled > 0 {
            limbs.push(acc as u32);
        }
        let v = PyInt {
            negative: false,
            limbs,
        }
        .normalize();
        if v.bits() > MAX_BITS {
            return Err(too_wide());
        }
        Ok(v)
    }

    /// PyYAML's base 60: `sum(part * 60 ** i)` over the parts, last part first.
    pub(crate) fn from_base60<'a>(parts: impl IntoIterator<Item = &'a str>) -> Result<PyInt, String> {
        // Read as they are summed: 16 MB of `1:1:…` collected as numbers first took 576 MB.
        let mut parts = parts.into_iter();
        let mut v = PyInt::from_decimal(parts.next().unwrap_or("0"))?;
        for part in parts {
            // Every part after the first is below 60 (`[0-5]?[0-9]`, checked by the resolver).
            let small = PyInt::from_decimal(part)?.limbs.first().copied().unwrap_or(0);
            v.mul_add_small(60, small);
            if v.bits() > MAX_BITS {
                return Err(too_wide());
            }
        }
        if v.bits() > MAX_BITS {
            return Err(too_wide());
        }
        Ok(v.normalize())
    }

    /// `int(f)` for a finite float: truncated toward zero, exactly.
    pub(crate) fn from_f64_trunc(f: f64) -> PyInt {
        let t = f.trunc();
        if t.abs() < 18446744073709551616.0 {
            let v = PyInt::from(t.abs() as u64);
            return if t < 0.0 { v.negated() } else { v };
        }
        let bits = t.abs().to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i64 - 1075;
        let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
        // |t| >= 2^64, so the exponent is positive: mantissa * 2^exponent.
        let mut v = PyInt::from(mantissa);
        let (whole, part) = ((exponent / 32) as usize, (exponent % 32) as u32);
        v.mul_add_small(1 << part, 0);
        let mut limbs = vec![0u32; whole];
        limbs.extend_from_slice(&v.limbs);
        v.limbs = limbs;
        let v = v.normalize();
        if t < 0.0 {
            v.negated()
        } else {
            v
        }
    }

    /// `float(self)`: correctly rounded (half to even); `None` where Python raises
    /// `OverflowError: int too large to convert to float`.
    pub(crate) fn to_f64(&self) -> Option<f64> {
        let bits = self.bits();
        let magnitude = if bits <= 64 {
            self.magnitude_u64() as f64
        } else {
            // The top 64 bits, with a sticky bit for everything below: rounding them to 53 bits
            // rounds the whole value correctly.
            let shift = bits - 64;
            let mut top = 0u64;
            for i in 0..64 {
                if self.bit(shift + i) {
                    top |= 1 << i;
                }
            }
            if (0..shift).any(|i| self.bit(i)) {
                top |= 1;
            }
            let mut f = top as f64;
            let mut left = shift as i32;
            while left > 0 {
                let step = left.min(1000);
                f *= 2f64.powi(step);
                left -= step;
            }
            f
        };
        if magnitude.is_infinite() {
            return None;
        }
        Some(if self.negative { -magnitude } else { magnitude })
    }

    fn bit(&self, i: u64) -> bool {
        self.limbs
            .get((i / 32) as usize)
            .is_some_and(|l| l >> (i % 32) & 1 == 1)
    }

    fn magnitude_u64(&self) -> u64 {
        self.limbs
            .iter()
            .take(2)
            .enumerate()
            .fold(0u64, |acc, (i, &l)| acc | u64::from(l) << (32 * i))
    }

    /// The value as a u64 when it is non-negative, saturated at `u64::MAX`.
    pub(crate) fn to_u64_saturating(&self) -> Option<u64> {
        if self.negative {
            None
        } else if self.limbs.len() > 2 {
            Some(u64::MAX)
        } else {
            Some(self.magnitude_u64())
        }
    }
}

fn too_wide() -> String {
    format!("integer wider than {MAX_BITS} bits; mlprune refuses it (coremltools reads it, it cannot be a valid value)")
}

impl From<u64> for PyInt {
    fn from(v: u64) -> Self {
        PyInt {
            negative: false,
            limbs: vec![v as u32, (v >> 32) as u32],
        }
        .normalize()
    }
}

impl From<u32> for PyInt {
    fn from(v: u32) -> Self {
        PyInt::from(u64::from(v))
    }
}

impl From<i64> for PyInt {
    fn from(v: i64) -> Self {
        let m = PyInt::from(v.unsigned_abs());
        if v < 0 {
            m.negated()
        } else {
            m
        }
    }
}

impl From<bool> for PyInt {
    fn from(v: bool) -> Self {
        PyInt::from(u64::from(v))
    }
}

impl Ord for PyInt {
    fn cmp(&self, other: &Self) -> Ordering {
        let magnitude = || {
            self.limbs
                .len()
                .cmp(&other.limbs.len())
                .then_with(|| self.limbs.iter().rev().cmp(other.limbs.iter().rev()))
        };
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => magnitude(),
            (true, true) => magnitude().reverse(),
        }
    }
}

impl PartialOrd for PyInt {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<i64> for PyInt {
    fn eq(&self, other: &i64) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd<i64> for PyInt {
    fn partial_cmp(&self, other: &i64) -> Option<Ordering> {
        let small = PyInt::from(*other);
        Some(self.cmp(&small))
    }
}

impl fmt::Display for PyInt {
    /// `str(int)`; past [`MAX_STR_DIGITS`] digits Python refuses to print, and so a placeholder
    /// stands in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits() > (MAX_STR_DIGITS as u64) * 3322 / 1000 {
            return f.write_str("<an integer of more than 4300 digits>");
        }
        let mut chunks = Vec::new();
        let mut limbs = self.limbs.clone();
        while !limbs.is_empty() {
            let mut rem = 0u64;
            for limb in limbs.iter_mut().rev() {
                let v = (rem << 32) | u64::from(*limb);
                *limb = (v / 1_000_000_000) as u32;
                rem = v % 1_000_000_000;
            }
            chunks.push(rem as u32);
            while limbs.last() == Some(&0) {
                limbs.pop();
            }
        }
        let mut s = String::new();
        if self.negative {
            s.push('-');
        }
        match chunks.split_last() {
            None => s.push('0'),
            Some((top, rest)) => {
                s.push_str(&top.to_string());
                for c in rest.iter().rev() {
                    s.push_str(&format!("{c:09}"));
                }
            }
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prints_and_compares_like_python() {
        let big = PyInt::from_decimal("18446744073709551616").unwrap();
        assert_eq!(big.to_string(), "18446744073709551616");
        assert_eq!(big.to_u64_saturating(), Some(u64::MAX));
        assert_eq!(big.to_f64(), Some(18446744073709551616.0));
        let hex = PyInt::from_power_of_two_radix("10000000000000000", 4).unwrap();
        assert_eq!(hex, big);
        assert_eq!(
            PyInt::from_power_of_two_radix("7777", 3).unwrap(),
            PyInt::from(4095u64)
        );
        assert_eq!(
            PyInt::from_power_of_two_radix("101", 1).unwrap(),
            PyInt::from(5u64)
        );
        let a = PyInt::from_power_of_two_radix(&format!("1{}", "0".repeat(50)), 4).unwrap();
        let b = PyInt::from_power_of_two_radix(&format!("1{}", "0".repeat(40)), 4).unwrap();
        assert!(a > b && b > big && big > 0);
        let minus_three = PyInt::from(-3i64);
        assert!(minus_three < 0);
        assert!(a.clone().negated() < b.clone().negated());
        assert_eq!(PyInt::from(-3i64).to_string(), "-3");
        assert_eq!(PyInt::default().to_string(), "0");
        assert_eq!(
            PyInt::from_decimal("1000000000000").unwrap().to_string(),
            "1000000000000"
        );
        assert!(PyInt::from_decimal(&"1".repeat(4301))
            .unwrap_err()
            .contains("value has 4301 digits"));
        assert_eq!(
            PyInt::from_f64_trunc(1e30).to_string(),
            "1000000000000000019884624838656"
        );
        assert_eq!(PyInt::from_f64_trunc(-2.7), PyInt::from(-2i64));
        assert_eq!(
            PyInt::from_decimal(&format!("1{}", "0".repeat(400)))
                .unwrap()
                .to_f64(),
            None
        );
        // 2^53 + 1 rounds to even; 2^64 + 2^11 + 1 rounds up.
        assert_eq!(
            PyInt::from(9007199254740993u64).to_f64(),
            Some(9007199254740992.0)
        );
        let up = PyInt::from_power_of_two_radix("10000000000000801", 4).unwrap();
        assert_eq!(up.to_f64(), Some(18446744073709555712.0));
        assert_eq!(PyInt::from_base60(["1", "20"]).unwrap(), PyInt::from(80u64));
        // 60^11,100 is wider than MAX_BITS: refused at the part that makes it so.
        let wide = format!("1{}", ":59".repeat(11_100));
        assert_eq!(PyInt::from_base60(wide.split(':')), Err(too_wide()));
    }
}
