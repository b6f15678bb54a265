//! Magnitude pruning with `target_sparsity` and no block size (spec §5.6).
//!
//! Rules, exactly as coremltools 9.0 / numpy 2.4:
//! * `q = target_sparsity * 100` (f64). `q == 100`: the result is `0 * w` — every finite value
//!   becomes zero, but NaN stays NaN (quiet bit set) and ±inf becomes the default NaN, so those are
//!   kept. `q == 0`: the result is `w` (only existing zeros, incl. −0.0, are dropped).
//! * otherwise `thr = np.percentile(|w|, q)` ([`super::percentile`]) and `|w| <= thr` is pruned
//!   (inclusive: every tie with thr goes). Any NaN in `w` makes thr NaN: nothing is pruned, yet the
//!   tensor is still encoded. ±inf follow IEEE arithmetic in the interpolation.
//! * the comparison runs on integer keys, which is exactly `|w| <= thr` in the weight dtype
//!   (float64 for int8/uint8, whose percentile is float64).
//! * pruned elements become 0 (`np.where`), kept elements keep their exact bits.

use super::element::{Element, MapValue};
use super::mask::{encode_kept, Dense};
use super::percentile::percentile_cut_of;
use super::{KernelError, SparseTensor};

/// [`WorkOrder::Percentile`]: the cut is `np.percentile(|w|, sparsity * 100)`.
pub(super) fn percentile_in_place<T: Element>(
    w: Dense<'_, T>,
    sparsity: f64,
) -> Result<SparseTensor<T>, KernelError> {
    let cut = percentile_cut_of::<T::Mag, _, _>(w.values(), |x: &T| x.magnitude().key(), sparsity)?;
    Ok(encode_kept(w, |_, values, bytes| {
        T::keep_mask(values, cut, bytes)
    }))
}
