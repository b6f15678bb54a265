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
use super::mask::{encode_kept, encode_sparse_in_place, Dense};
use super::percentile::percentile_cut_of;
use super::{Apply, KernelError, Outcome};

/// Prunes the `target_sparsity` fraction of smallest magnitudes of `w`. Errors for an empty tensor
/// or a `target_sparsity` numpy's percentile rejects (outside [0, 1], NaN).
pub fn magnitude<T: Element>(w: &[T], target_sparsity: f64) -> Result<Outcome<T>, KernelError> {
    magnitude_in_place(
        Dense::Borrowed {
            values: w,
            out: Vec::new(),
        },
        target_sparsity,
    )
}

/// [`magnitude`], with the kept values in `w`'s own allocation or its output buffer.
pub fn magnitude_in_place<'a, T: Element>(
    w: impl Into<Dense<'a, T>>,
    target_sparsity: f64,
) -> Result<Outcome<T>, KernelError> {
    let w = w.into();
    let q = target_sparsity * 100.0;
    if q == 100.0 {
        return Ok(Outcome::Pruned(encode_sparse_in_place(
            w,
            Apply::Multiply,
            |_, _, flags| flags.fill(true),
        )));
    }
    // No cut keeps every non-zero.
    let cut = if q == 0.0 {
        None
    } else {
        percentile_cut_of::<T::Mag, _, _>(w.values(), |x: &T| x.magnitude().key(), target_sparsity)?
    };
    Ok(Outcome::Pruned(encode_kept(w, |_, values, bytes| {
        T::keep_mask(values, cut, bytes)
    })))
}
