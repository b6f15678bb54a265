//! S of `--global-sparsity` as the exact decimal the user wrote, and `k = floor(S × N)` in integers.

/// The sparsity S of `--global-sparsity`, as the exact decimal `numerator / 10^scale` in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sparsity {
    numerator: u64,
    scale: u32,
}

/// At most this many digits after the decimal point (so `numerator × N` fits in 128 bits).
const MAX_SCALE: u32 = 19;

impl Sparsity {
    /// Parses a plain decimal (`0.5`, `.25`, `1`, `5e-1`, `2.5E-3`) in [0, 1]. NaN, infinities,
    /// hexadecimal floats and more than 19 significant fractional digits are refused.
    pub fn parse(text: &str) -> Result<Sparsity, String> {
        let bad = || format!("'{text}' is not a decimal number in [0, 1]");
        let t = text.trim();
        let t = t.strip_prefix('+').unwrap_or(t);
        let (mantissa, exponent) = match t.find(['e', 'E']) {
            Some(i) => {
                let exp: i64 = t[i + 1..].parse().map_err(|_| bad())?;
                (&t[..i], exp)
            }
            None => (t, 0),
        };
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty()) || !digits_ok(int_part) || !digits_ok(frac_part) {
            return Err(bad());
        }
        // value = digits × 10^(exponent − frac_len), digits without leading/trailing zeros.
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        let trailing = digits.len() - digits.trim_end_matches('0').len();
        let digits = digits.trim_end_matches('0');
        if digits.is_empty() {
            return Ok(Sparsity {
                numerator: 0,
                scale: 0,
            });
        }
        let power = exponent
            .checked_sub(frac_part.len() as i64)
            .and_then(|p| p.checked_add(trailing as i64))
            .ok_or_else(bad)?;
        let out_of_range = || format!("{text} is outside [0, 1]");
        if power >= 0 {
            // An integer ≥ 1: only exactly 1 is in range.
            return if digits == "1" && power == 0 {
                Ok(Sparsity {
                    numerator: 1,
                    scale: 0,
                })
            } else {
                Err(out_of_range())
            };
        }
        let scale = u32::try_from(-power).map_err(|_| bad())?;
        if digits.len() as u64 > u64::from(scale) {
            return Err(out_of_range());
        }
        if scale > MAX_SCALE {
            return Err(format!(
                "{text} has more than {MAX_SCALE} digits after the decimal point"
            ));
        }
        let numerator = digits.parse().map_err(|_| bad())?;
        Ok(Sparsity { numerator, scale })
    }

    /// `floor(S × n)`, exactly.
    pub fn count_of(&self, n: u64) -> u64 {
        let product = u128::from(self.numerator) * u128::from(n);
        // S ≤ 1, so the quotient is at most n.
        (product / 10u128.pow(self.scale)) as u64
    }

    /// The nearest binary64, for coremltools' `target_sparsity` (eligibility does not depend on it).
    pub fn to_f64(&self) -> f64 {
        format!("{}e-{}", self.numerator, self.scale)
            .parse()
            .unwrap_or(0.0)
    }
}

impl std::fmt::Display for Sparsity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.numerator);
        }
        let digits = format!("{:0>width$}", self.numerator, width = self.scale as usize);
        let (int, frac) = digits.split_at(digits.len() - self.scale as usize);
        write!(f, "{}.{frac}", if int.is_empty() { "0" } else { int })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsity_is_read_as_the_exact_decimal() {
        let s = |t: &str| Sparsity::parse(t).unwrap();
        // binary64 0.3 × 10 is 2.9999999999999996 in exact arithmetic: the decimal gives 3.
        assert_eq!(s("0.3").count_of(10), 3);
        assert_eq!(s(".25").count_of(7), 1);
        assert_eq!(s("1").count_of(u64::MAX), u64::MAX);
        assert_eq!(s("1.000").count_of(5), 5);
        assert_eq!(s("0").count_of(u64::MAX), 0);
        assert_eq!(s("5e-1").count_of(9), 4);
        assert_eq!(s("25E-2").count_of(8), 2);
        // floor(M − M / 10^19) with M / 10^19 = 1.84…
        assert_eq!(s("0.9999999999999999999").count_of(u64::MAX), u64::MAX - 2);
        assert_eq!(s("0.5").to_string(), "0.5");
        assert_eq!(s("0.05").to_string(), "0.05");
        assert_eq!(s("0.05").to_f64(), 0.05);
        for bad in [
            "nan", "NaN", "inf", "-0.1", "1.5", "2", "", ".", "0x1p-1", "1e", "0.5.5", "1e400",
        ] {
            assert!(Sparsity::parse(bad).is_err(), "{bad}");
        }
        assert!(Sparsity::parse("0.00000000000000000001").is_err());
    }
}
