//! The sparse encoding of a pruned tensor (spec §5.10) and its inverse.
//!
//! coremltools keeps element `i` iff the pruned dense value at `i` is `!= 0`: −0.0 counts as zero
//! (and comes back as +0.0), NaN counts as non-zero. `nonzero_data` is the kept values in row-major
//! order; the mask is `np.packbits(keep, bitorder="little")`: bit `i % 8` (LSB first) of byte
//! `i / 8`, `ceil(n/8)` bytes, padding bits zero.

use super::element::Element;
use super::{Apply, SparseTensor};

/// Encodes the dense result of pruning `w`: element `i` becomes `0` where `pruned(i)` under
/// [`Apply::Where`], or `w[i] * (1 - pruned(i))` under [`Apply::Multiply`]; then every non-zero
/// result is kept (see the module doc).
pub fn encode_sparse<T: Element>(
    w: &[T],
    apply: Apply,
    pruned: impl Fn(usize) -> bool,
) -> SparseTensor<T> {
    let mut mask = vec![0u8; w.len().div_ceil(8)];
    let mut nonzero = Vec::new();
    for (i, &x) in w.iter().enumerate() {
        let p = pruned(i);
        let out = match apply {
            Apply::Where if p => continue,
            Apply::Where => x,
            Apply::Multiply => x.mul_keep(!p),
        };
        if !out.is_zero() {
            mask[i / 8] |= 1 << (i % 8);
            nonzero.push(out);
        }
    }
    let kept = nonzero.len() as u64;
    SparseTensor {
        mask,
        nonzero,
        kept,
    }
}

/// The dense tensor of `n` elements a [`SparseTensor`] stands for: kept values in mask order, +0
/// elsewhere (what `constexpr_sparse_to_dense` produces). `None` when the mask length, popcount,
/// `kept` or padding bits disagree with `n` and `nonzero`.
pub fn decode_dense<T: Element>(sparse: &SparseTensor<T>, n: usize) -> Option<Vec<T>> {
    if sparse.mask.len() != n.div_ceil(8) || sparse.kept != sparse.nonzero.len() as u64 {
        return None;
    }
    let popcount: u64 = sparse.mask.iter().map(|b| u64::from(b.count_ones())).sum();
    if popcount != sparse.kept {
        return None;
    }
    let mut values = sparse.nonzero.iter();
    let mut dense = Vec::with_capacity(n);
    for i in 0..n {
        if sparse.mask[i / 8] & (1 << (i % 8)) != 0 {
            dense.push(*values.next()?);
        } else {
            dense.push(T::zero());
        }
    }
    // Every set bit must lie inside the tensor, so all values were consumed.
    values.next().is_none().then_some(dense)
}

/// `mask` bit `i` (LSB-first packing).
pub fn mask_bit(mask: &[u8], i: usize) -> bool {
    mask.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}
