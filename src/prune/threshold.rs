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

use super::execute::cut_in_place;
use super::mask::Dense;
use super::order::threshold_key;
use super::{Element, Outcome};

/// Prunes `w` by magnitude threshold. See the module doc for the exact rules; the device path
/// takes the same cut through [`super::order::WorkOrder::threshold`].
pub fn threshold<T: Element>(w: &[T], threshold: f64, minimum_sparsity_percentile: f64) -> Outcome<T> {
    let w = Dense::Borrowed {
        values: w,
        out: Vec::new(),
    };
    cut_in_place(
        w,
        threshold_key::<T>(threshold),
        Some(minimum_sparsity_percentile),
    )
}
