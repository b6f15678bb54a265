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

use super::keep_mask::MagKey;
use super::keys::Key;
use super::mask::{encode_kept, Dense};
use super::order::minimum_sparsity_skip;
use super::{Element, Outcome};

/// [`WorkOrder::Cut`]: every element whose magnitude key is at or below `cut` becomes 0, and the
/// minimum-sparsity check where one is given.
pub(super) fn cut_in_place<T: Element>(
    w: Dense<'_, T>,
    cut: Option<u64>,
    minimum_sparsity: Option<f64>,
) -> Outcome<T> {
    let cut = cut.map(MagKey::<T>::from_u64);
    let len = w.values().len() as u64;
    let sparse = encode_kept(w, |_, values, bytes| T::keep_mask(values, cut, bytes));
    match minimum_sparsity.and_then(|m| minimum_sparsity_skip(sparse.kept, len, m)) {
        Some(reason) => Outcome::Skipped(reason),
        None => Outcome::Pruned(sparse),
    }
}
