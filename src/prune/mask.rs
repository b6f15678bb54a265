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
///
/// Runs in parallel over fixed chunks of `CHUNK` elements (a multiple of 8, so chunks own whole
/// mask bytes): pass 1 writes each chunk's mask bytes and counts its kept values, pass 2 copies
/// them into disjoint ranges of the output. Chunking is fixed, so the bytes never depend on the
/// number of threads.
pub fn encode_sparse<T: Element>(
    w: &[T],
    apply: Apply,
    pruned: impl Fn(usize) -> bool + Sync,
) -> SparseTensor<T> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    // The kept value of element i, and whether it is kept. Evaluated without short-circuits: with
    // about half the elements kept at random, a branch per element would mispredict constantly.
    let value = |i: usize, x: T| -> (T, bool) {
        let p = pruned(i);
        match apply {
            Apply::Where => (x, !p & !x.is_zero()),
            Apply::Multiply => {
                let out = x.mul_keep(!p);
                (out, !out.is_zero())
            }
        }
    };
    let mut mask = vec![0u8; w.len().div_ceil(8)];
    let counts: Vec<usize> = w
        .par_chunks(CHUNK)
        .zip(mask.par_chunks_mut(CHUNK / 8))
        .enumerate()
        .map(|(c, (values, bytes))| {
            let base = c * CHUNK;
            let mut kept = 0usize;
            for (j, (byte, group)) in bytes.iter_mut().zip(values.chunks(8)).enumerate() {
                let mut bits = 0u8;
                for (k, &x) in group.iter().enumerate() {
                    bits |= u8::from(value(base + j * 8 + k, x).1) << k;
                }
                kept += bits.count_ones() as usize;
                *byte = bits;
            }
            kept
        })
        .collect();
    let total: usize = counts.iter().sum();
    let mut nonzero = vec![T::zero(); total];
    let mut slots: Vec<&mut [T]> = Vec::with_capacity(counts.len());
    let mut rest = nonzero.as_mut_slice();
    for &c in &counts {
        let (head, tail) = rest.split_at_mut(c);
        slots.push(head);
        rest = tail;
    }
    // Pass 2 visits only the set bits of each mask byte.
    w.par_chunks(CHUNK)
        .zip(mask.par_chunks(CHUNK / 8))
        .zip(slots)
        .enumerate()
        .for_each(|(c, ((values, bytes), slot))| {
            let base = c * CHUNK;
            let mut out = slot.iter_mut();
            for (j, &byte) in bytes.iter().enumerate() {
                let mut bits = byte;
                while bits != 0 {
                    let k = j * 8 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if let (Some(o), Some(&x)) = (out.next(), values.get(k)) {
                        *o = value(base + k, x).0;
                    }
                }
            }
        });
    SparseTensor {
        mask,
        nonzero,
        kept: total as u64,
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
