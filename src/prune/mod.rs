//! CPU reference pruning kernels with coremltools 9.0 / numpy 2.4 arithmetic (spec §5.5–§5.8,
//! §5.10).
//!
//! These are pure functions over typed slices of a const's dense values (row-major, with its
//! shape). They are the reference a GPU path is tested against byte for byte, so every rule is
//! written down in the module of its mode:
//! * [`threshold()`] — `OpThresholdPrunerConfig` ([`threshold`](mod@threshold) module);
//! * [`magnitude()`] — `OpMagnitudePrunerConfig(target_sparsity)` ([`magnitude`](mod@magnitude));
//! * [`block()`] — `target_sparsity` + `block_size` ([`block`](mod@block));
//! * [`n_m()`] — `n_m_ratio` ([`nm`]);
//!
//! and the shared pieces: element types and their numpy semantics ([`element`]), integer keys and
//! order statistics ([`keys`]), the percentile ([`percentile`]), the sparse encoding ([`mask`]).
//!
//! Common rules:
//! * comparisons are `<=` (inclusive) and run on integer keys that order magnitudes exactly like
//!   numpy's sort (NaN last, all NaNs equal); float arithmetic happens only where numpy does it —
//!   percentile interpolation and block norms — and is rounded to the weight dtype after every
//!   operation exactly as numpy's (fp16 ops are f32 ops rounded to nearest even).
//! * every mode yields a dense result; the encoding keeps element i iff that result is `!= 0`
//!   (−0.0 is zero, NaN is not). `np.where` modes (threshold, magnitude, block) write +0 for pruned
//!   elements and keep exact bits otherwise; `w * mask` modes (n:m, and `target_sparsity == 1.0`'s
//!   `0 * w`) follow IEEE multiplication, so NaN and a pruned ±inf survive as NaN.
//! * a skipped op is [`Outcome::Skipped`] with coremltools' warning text. coremltools then also logs
//!   `op named {name} not applicable for {config} configuration. Skipped.`, which needs the op name
//!   and config, so the caller adds it.
//!
//! Rank and eligibility checks are the caller's (spec §5.4); the kernels still never panic: bad
//! shapes and parameters are [`KernelError`]s.

pub mod axes;
pub mod block;
mod block_norms;
mod bracket;
mod compact;
mod cpu;
pub mod element;
mod execute;
mod f16_lanes;
mod float;
pub mod keep_mask;
#[doc(hidden)]
pub mod kernel_paths;
pub mod keys;
pub mod magnitude;
pub mod mask;
pub mod nm;
mod nm_rank;
pub mod order;
pub mod percentile;
pub mod threshold;

#[cfg(test)]
mod fast_path_tests;
#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod simd_tests;

pub use block_norms::{fast_block_decisions, BlockDecisions};
pub use element::{Element, I8Mag, MapValue};
pub use execute::{block, execute, magnitude, n_m, threshold};
pub use mask::{decode_dense, encode_sparse, mask_bit};
pub use order::WorkOrder;

/// A pruned tensor in coremltools' sparse form (spec §5.10).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseTensor<T> {
    /// Keep-mask packed LSB-first: bit `i % 8` of byte `i / 8` is set iff element `i` is kept;
    /// `ceil(n / 8)` bytes, padding bits zero.
    pub mask: Vec<u8>,
    /// The kept values in row-major order (`nonzero_data`).
    pub nonzero: Vec<T>,
    /// `nonzero.len()` (= popcount of `mask`).
    pub kept: u64,
}

/// What a pruning kernel decided for one const.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    /// The const is replaced by its sparse form.
    Pruned(SparseTensor<T>),
    /// coremltools leaves the const alone and logs this warning.
    Skipped(String),
}

/// How a per-element "pruned" decision becomes the dense result (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// `np.where(pruned, 0, w)`.
    Where,
    /// `w * (1 - pruned)` in the weight dtype.
    Multiply,
}

/// A kernel input coremltools itself would fail on, or a shape that does not fit the data.
/// Wrap it with [`KernelError::for_tensor`] to name the tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub String);

impl KernelError {
    pub fn for_tensor(self, tensor: &str) -> crate::Error {
        crate::Error::tensor(tensor, self.0)
    }
}

/// Python's `repr(float)` (also numpy 2's `str(np.float64)`): shortest round-trip digits, positional
/// for decimal exponents in [-4, 16), otherwise `d.ddde±XX`. coremltools formats its warnings with
/// it.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` prints the shortest round-trip digits as `d.ddde<exp>`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else {
            let point = exp as usize + 1;
            if digits.len() <= point {
                format!("{}{}.0", digits, "0".repeat(point - digits.len()))
            } else {
                format!("{}.{}", &digits[..point], &digits[point..])
            }
        };
        format!("{sign}{body}")
    } else {
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr_matches_cpython() {
        let cases = [
            (1e-05, "1e-05"),
            (0.5, "0.5"),
            (1.0 / 3.0, "0.3333333333333333"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.1 + 0.2, "0.30000000000000004"),
            (3.0 / 70000.0, "4.2857142857142856e-05"),
            (1.0, "1.0"),
            (0.0, "0.0"),
            (1234.5, "1234.5"),
            (1e15, "1000000000000000.0"),
            (-2.5e-7, "-2.5e-07"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:e}");
        }
    }
}
