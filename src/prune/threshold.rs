//! Threshold pruning, `OpThresholdPrunerConfig` (spec §5.5).
//!
//! Rules, exactly as coremltools 9.0 / numpy 2.4:
//! * comparison: `|w| <= T(threshold)` — inclusive, in the weight dtype T: the Python-float
//!   threshold is first rounded to T (fp16: round-to-nearest-even directly from f64, so
//!   `threshold = 0.09997` zeroes fp16 values equal to 0.0999755859375). int8/uint8 compare in
//!   float64 against the unrounded threshold; int8 −128 has `np.abs` −128 and is always pruned.
//! * NaN is never pruned (`NaN <= t` is false); ±inf is pruned only by a threshold that rounds to
//!   inf in T; −0.0 and +0.0 are zeros either way.
//! * pruned elements become 0 (`np.where`), kept elements keep their exact bits.
//! * `sparsity = count(result == 0) / size` (pre-existing zeros and −0.0 count) in float64; if
//!   `sparsity < minimum_sparsity_percentile` (equality passes) the op is skipped with
//!   coremltools' warning text.

use super::element::{Element, MapValue};
use super::mask::{encode_kept, Dense};
use super::{python_float_repr, Outcome};

/// Prunes `w` by magnitude threshold. See the module doc for the exact rules.
pub fn threshold<T: Element>(w: &[T], threshold: f64, minimum_sparsity_percentile: f64) -> Outcome<T> {
    threshold_in_place(
        Dense::Borrowed {
            values: w,
            out: Vec::new(),
        },
        threshold,
        minimum_sparsity_percentile,
    )
}

/// [`threshold()`], with the kept values in `w`'s own allocation or its output buffer.
pub fn threshold_in_place<'a, T: Element>(
    w: impl Into<Dense<'a, T>>,
    threshold: f64,
    minimum_sparsity_percentile: f64,
) -> Outcome<T> {
    let cut = <T::Mag as MapValue>::threshold_cut(threshold);
    let w = w.into();
    let n = w.values().len();
    let sparse = encode_kept(w, |_, values, bytes| T::keep_mask(values, cut, bytes));
    let zeros = n as u64 - sparse.kept;
    // numpy: int64 / int -> float64 (NaN for an empty tensor, which never compares below).
    let sparsity = zeros as f64 / n as f64;
    if sparsity < minimum_sparsity_percentile {
        return Outcome::Skipped(format!(
            "weight value has sparsity of {} < minimum_sparsity_percentile {}. Skipped.",
            python_float_repr(sparsity),
            python_float_repr(minimum_sparsity_percentile)
        ));
    }
    Outcome::Pruned(sparse)
}
