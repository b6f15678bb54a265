//! The sparse encoding of a pruned tensor (spec §5.10) and its inverse.
//!
//! coremltools keeps element `i` iff the pruned dense value at `i` is `!= 0`: −0.0 counts as zero
//! (and comes back as +0.0), NaN counts as non-zero. `nonzero_data` is the kept values in row-major
//! order; the mask is `np.packbits(keep, bitorder="little")`: bit `i % 8` (LSB first) of byte
//! `i / 8`, `ceil(n/8)` bytes, padding bits zero.

use super::compact::{compact_exact_into, compact_masked, flags_to_bytes};
use super::element::Element;
use super::{Apply, SparseTensor};

/// Elements per parallel work item of [`encode_sparse_in_place`]: a multiple of 8, so every chunk
/// owns whole mask bytes, and small enough that a chunk and its flags stay in L2. The chunking is
/// fixed, so the bytes never depend on the number of threads.
pub const ENCODE_CHUNK: usize = 1 << 16;

/// [`encode_sparse_in_place`] on a borrowed `w`, with the decision given per element.
pub fn encode_sparse<T: Element>(
    w: &[T],
    apply: Apply,
    pruned: impl Fn(usize) -> bool + Sync,
) -> SparseTensor<T> {
    let w = Dense::Borrowed {
        values: w,
        out: Vec::new(),
    };
    encode_sparse_in_place(w, apply, |start, _, flags| {
        for (k, flag) in flags.iter_mut().enumerate() {
            *flag = pruned(start + k);
        }
    })
}

/// A tensor's dense values, and where its kept values go.
pub enum Dense<'a, T> {
    /// The buffer itself becomes `nonzero_data`: kept values are compacted in place.
    Owned(Vec<T>),
    /// Values borrowed from elsewhere (a mapped input file): kept values go to `out`, whose
    /// allocation is reused when it holds the tensor (any length; its contents are ignored).
    Borrowed { values: &'a [T], out: Vec<T> },
}

impl<T> Dense<'_, T> {
    /// The dense values.
    pub fn values(&self) -> &[T] {
        match self {
            Dense::Owned(w) => w,
            Dense::Borrowed { values, .. } => values,
        }
    }
}

impl<T> From<Vec<T>> for Dense<'_, T> {
    fn from(w: Vec<T>) -> Self {
        Dense::Owned(w)
    }
}

/// Encodes the dense result of pruning `w`: element `i` becomes `0` where it is pruned under
/// [`Apply::Where`], or `w[i] * (1 - pruned)` under [`Apply::Multiply`]; then every non-zero result
/// is kept (see the module doc). `pruned_into(start, values, flags)` fills `flags[k]` with whether
/// element `start + k`, whose value is `values[k]`, is pruned; it is called per chunk, from several
/// threads ([`encode_kept`], [`encode_products`]).
///
/// An owned `w` becomes `nonzero_data`, so a tensor costs no second buffer; a borrowed one is
/// compacted straight into its output buffer, never copied whole.
pub fn encode_sparse_in_place<'a, T: Element>(
    w: impl Into<Dense<'a, T>>,
    apply: Apply,
    pruned_into: impl Fn(usize, &[T], &mut [bool]) + Sync,
) -> SparseTensor<T> {
    match apply {
        Apply::Where => encode_kept(w, |start, values, bytes| {
            let mut flags = vec![false; values.len()];
            pruned_into(start, values, &mut flags);
            keep_flags(values, &mut flags);
            mask_of_flags(&flags, bytes)
        }),
        Apply::Multiply => encode_products(w, pruned_into),
    }
}

/// Puts the kept prefixes of the [`ENCODE_CHUNK`]-element chunks of `out` (`counts[c]` values at
/// the front of chunk c) together at its front, in order, and cuts off the rest; returns how many
/// there are.
fn slide_chunk_prefixes<T: Copy>(out: &mut Vec<T>, counts: &[usize]) -> usize {
    let mut kept = 0usize;
    for (c, &count) in counts.iter().enumerate() {
        let start = c * ENCODE_CHUNK;
        out.copy_within(start..start + count, kept);
        kept += count;
    }
    out.truncate(kept);
    kept
}

/// Encodes the `np.where(pruned, 0, w)` of a mode whose keep mask is cheap to make straight from
/// the values: `mask_into(start, values, bytes)` writes the mask bytes of the chunk of `values`
/// that starts at element `start` (keep = not pruned and not zero) and returns how many it keeps.
/// It is called once per chunk, in parallel.
///
/// The mask comes first, for the whole tensor, so every chunk's final place is known before any
/// value moves: a borrowed `w` is compacted by all chunks at once straight to their places in the
/// output buffer, which is neither zeroed first nor slid afterwards. An owned `w` is compacted in
/// place as in [`encode_sparse_in_place`].
pub fn encode_kept<'a, T: Element>(
    w: impl Into<Dense<'a, T>>,
    mask_into: impl Fn(usize, &[T], &mut [u8]) -> usize + Sync,
) -> SparseTensor<T> {
    encode_by_mask(w, mask_into, |_, _, _| false)
}

/// The `w * (1 - pruned)` of a mode like [`encode_kept`] does `np.where`: `pruned_into(start,
/// values, flags)` fills the chunk's "pruned" flags, and each chunk calls it once, or twice if it
/// holds a NaN or an infinity.
///
/// A kept product is the value itself (`x * 1 == x` bit for bit) except for NaN (its quiet bit is
/// set) and a pruned infinity (the default NaN, kept): only chunks holding those have their
/// products made, into a scratch buffer the chunk is compacted from.
pub fn encode_products<'a, T: Element>(
    w: impl Into<Dense<'a, T>>,
    pruned_into: impl Fn(usize, &[T], &mut [bool]) + Sync,
) -> SparseTensor<T> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = w.into();
    let chunks = w.values().len().div_ceil(ENCODE_CHUNK);
    let special: Vec<AtomicBool> = (0..chunks).map(|_| AtomicBool::new(false)).collect();
    encode_by_mask(
        w,
        |start, values, bytes| {
            let mut flags = vec![false; values.len()];
            pruned_into(start, values, &mut flags);
            let mut any_special = false;
            for (flag, x) in flags.iter_mut().zip(values) {
                // NaN and ±inf: `x * 0` is not a zero.
                let is_special = !x.mul_keep(false).is_zero();
                any_special |= is_special;
                *flag = is_special | (!*flag & !x.is_zero());
            }
            if any_special {
                special[start / ENCODE_CHUNK].store(true, Ordering::Relaxed);
            }
            mask_of_flags(&flags, bytes)
        },
        |start, values, products| {
            if !special[start / ENCODE_CHUNK].load(Ordering::Relaxed) {
                return false;
            }
            let mut flags = vec![false; values.len()];
            pruned_into(start, values, &mut flags);
            products.clear();
            products.extend(values.iter().zip(&flags).map(|(x, &pruned)| x.mul_keep(!pruned)));
            true
        },
    )
}

/// [`encode_kept`], where `rewrite(start, values, new)` may put new values for a chunk into `new`
/// (and return true), to be compacted instead of the chunk's own (with the same mask).
fn encode_by_mask<'a, T: Element>(
    w: impl Into<Dense<'a, T>>,
    mask_into: impl Fn(usize, &[T], &mut [u8]) -> usize + Sync,
    rewrite: impl Fn(usize, &[T], &mut Vec<T>) -> bool + Sync,
) -> SparseTensor<T> {
    use rayon::prelude::*;
    let w = w.into();
    let values = w.values();
    let n = values.len();
    let mut mask = vec![0u8; n.div_ceil(8)];
    let counts: Vec<usize> = values
        .par_chunks(ENCODE_CHUNK)
        .zip(mask.par_chunks_mut(ENCODE_CHUNK / 8))
        .enumerate()
        .map(|(c, (chunk, bytes))| mask_into(c * ENCODE_CHUNK, chunk, bytes))
        .collect();
    let kept: usize = counts.iter().sum();
    let nonzero = match w {
        Dense::Owned(mut w) => {
            w.par_chunks_mut(ENCODE_CHUNK)
                .zip(mask.par_chunks(ENCODE_CHUNK / 8))
                .enumerate()
                .for_each_init(Vec::new, |new, (c, (chunk, bytes))| {
                    if rewrite(c * ENCODE_CHUNK, chunk, new) {
                        chunk.copy_from_slice(new);
                    }
                    compact_masked(chunk, bytes);
                });
            slide_chunk_prefixes(&mut w, &counts);
            w
        }
        Dense::Borrowed { values, mut out } => {
            out.clear();
            if out.capacity() < n {
                // Room for any tensor of this size, so the buffer can be reused for the next.
                out = Vec::with_capacity(n);
            }
            let mut places = Vec::with_capacity(counts.len());
            let mut rest = &mut out.spare_capacity_mut()[..kept];
            for &count in &counts {
                let (place, after) = std::mem::take(&mut rest).split_at_mut(count);
                places.push(place);
                rest = after;
            }
            values
                .par_chunks(ENCODE_CHUNK)
                .zip(mask.par_chunks(ENCODE_CHUNK / 8))
                .zip(places)
                .enumerate()
                .for_each_init(Vec::new, |new, (c, ((chunk, bytes), place))| {
                    if rewrite(c * ENCODE_CHUNK, chunk, new) {
                        compact_exact_into(new, bytes, place)
                    } else {
                        compact_exact_into(chunk, bytes, place)
                    }
                });
            // SAFETY: the places tile `0..kept` of the spare capacity, and `compact_exact_into`
            // wrote every slot of each (it fails rather than return otherwise).
            unsafe { out.set_len(kept) };
            out
        }
    };
    SparseTensor {
        mask,
        nonzero,
        kept: kept as u64,
    }
}

/// An [`encode_kept`] mask from per-element "pruned" flags: `pruned_into(start, flags)` fills
/// `flags[k]` with whether element `start + k` is pruned; kept are the others that are not zero.
/// The flags go through a small buffer that stays in L1. Returns how many are kept.
pub fn mask_from_pruned<T: Element>(
    start: usize,
    values: &[T],
    bytes: &mut [u8],
    pruned_into: impl Fn(usize, &mut [bool]),
) -> usize {
    const STEP: usize = 2048;
    let mut flags = [false; STEP];
    let mut kept = 0;
    for (k, (part, part_bytes)) in values.chunks(STEP).zip(bytes.chunks_mut(STEP / 8)).enumerate() {
        let flags = &mut flags[..part.len()];
        pruned_into(start + k * STEP, flags);
        keep_flags(part, flags);
        kept += mask_of_flags(flags, part_bytes);
    }
    kept
}

/// Packs "kept" flags into mask bytes ([`flags_to_bytes`]); returns how many are set.
fn mask_of_flags(flags: &[bool], bytes: &mut [u8]) -> usize {
    let bytes = &mut bytes[..flags.len().div_ceil(8)];
    flags_to_bytes(flags, bytes);
    crate::blob::count_ones(bytes) as usize
}

/// Pruned flags become "kept" flags for [`Apply::Where`]: not pruned and not zero.
fn keep_flags<T: Element>(values: &[T], flags: &mut [bool]) {
    for (flag, x) in flags.iter_mut().zip(values) {
        *flag = !*flag & !x.is_zero();
    }
}

/// The dense tensor of `n` elements a [`SparseTensor`] stands for: kept values in mask order, +0
/// elsewhere (what `constexpr_sparse_to_dense` produces). `None` when the mask length, popcount,
/// `kept` or padding bits disagree with `n` and `nonzero`.
pub fn decode_dense<T: Element>(sparse: &SparseTensor<T>, n: usize) -> Option<Vec<T>> {
    if sparse.mask.len() != n.div_ceil(8) || sparse.kept != sparse.nonzero.len() as u64 {
        return None;
    }
    let popcount = crate::blob::count_ones(&sparse.mask);
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

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// The encoding written out the obvious way, one element at a time.
    fn encode_sequentially(w: &[f16], apply: Apply, pruned: &[bool]) -> SparseTensor<f16> {
        let mut mask = vec![0u8; w.len().div_ceil(8)];
        let mut nonzero = Vec::new();
        for (i, (&x, &p)) in w.iter().zip(pruned).enumerate() {
            let out = match apply {
                Apply::Where if p => f16::from_bits(0),
                Apply::Where => x,
                Apply::Multiply => x.mul_keep(!p),
            };
            if !out.is_zero() {
                mask[i / 8] |= 1 << (i % 8);
                nonzero.push(out);
            }
        }
        let kept = nonzero.len() as u64;
        SparseTensor { mask, nonzero, kept }
    }

    /// Several chunks plus a ragged tail, zeros, -0.0, NaN and inf among random values, and
    /// pseudo-random decisions that keep a different share in every chunk.
    fn chunky_tensor() -> (Vec<f16>, Vec<bool>) {
        let n = 3 * ENCODE_CHUNK + 13;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let specials = [0x0000, 0x8000, 0x7e01, 0x7c00, 0xfc00];
        let w: Vec<f16> = (0..n)
            .map(|i| {
                let r = next();
                if i % 97 == 0 {
                    f16::from_bits(specials[(r % 5) as usize])
                } else {
                    f16::from_bits(r as u16)
                }
            })
            .collect();
        let pruned: Vec<bool> = (0..n)
            .map(|i| next() % (1 + (i / ENCODE_CHUNK) as u64 + 1) == 0)
            .collect();
        (w, pruned)
    }

    #[test]
    fn in_place_encoding_across_chunks_matches_the_sequential_one() {
        // Every chunk keeps a different count, so the prefixes move.
        let (w, pruned) = chunky_tensor();
        let n = w.len();
        for apply in [Apply::Where, Apply::Multiply] {
            let want = encode_sequentially(&w, apply, &pruned);
            let got = encode_sparse_in_place(w.clone(), apply, |start, values, flags| {
                let same = values
                    .iter()
                    .zip(&w[start..])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "the fill sees chunk {start}'s values before compaction");
                flags.copy_from_slice(&pruned[start..start + flags.len()]);
            });
            assert_eq!(got.mask, want.mask, "{apply:?}");
            assert_eq!(got.kept, want.kept, "{apply:?}");
            let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.nonzero), bits(&want.nonzero), "{apply:?}");
            assert!(got.kept > 0 && got.kept < n as u64);
        }
    }

    #[test]
    fn encoding_by_mask_matches_the_sequential_one_owned_and_borrowed() {
        let (w, pruned) = chunky_tensor();
        let want = encode_sequentially(&w, Apply::Where, &pruned);
        let mask_into = |start: usize, values: &[f16], bytes: &mut [u8]| {
            let mut keep: Vec<bool> = pruned[start..start + values.len()].to_vec();
            keep_flags(values, &mut keep);
            flags_to_bytes(&keep, bytes);
            keep.iter().filter(|&&k| k).count()
        };
        let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let owned = encode_kept(w.clone(), mask_into);
        // Output buffers: none, one too small, one large enough and full of other values.
        let outs = [Vec::new(), vec![f16::ONE; 5], vec![f16::NAN; w.len() + 100]];
        for (k, out) in outs.into_iter().enumerate() {
            let borrowed = encode_kept(Dense::Borrowed { values: &w, out }, mask_into);
            assert_eq!(borrowed.mask, want.mask, "borrowed {k}");
            assert_eq!(borrowed.kept, want.kept, "borrowed {k}");
            assert_eq!(bits(&borrowed.nonzero), bits(&want.nonzero), "borrowed {k}");
        }
        assert_eq!(owned.mask, want.mask);
        assert_eq!(owned.kept, want.kept);
        assert_eq!(bits(&owned.nonzero), bits(&want.nonzero));
    }

    #[test]
    fn encoding_products_matches_the_sequential_one_owned_and_borrowed() {
        // Chunks 1 and 3 (the ragged tail) without NaN or inf, whose kept products are the
        // values themselves; the others full of both.
        let (mut w, pruned) = chunky_tensor();
        for (i, x) in w.iter_mut().enumerate() {
            if matches!(i / ENCODE_CHUNK, 1 | 3) && x.to_bits() & 0x7c00 == 0x7c00 {
                *x = f16::from_bits(x.to_bits() & 0xbfff);
            }
        }
        let want = encode_sequentially(&w, Apply::Multiply, &pruned);
        let pruned_into = |start: usize, values: &[f16], flags: &mut [bool]| {
            flags.copy_from_slice(&pruned[start..start + values.len()])
        };
        let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let outs = [Vec::new(), vec![f16::NAN; w.len()]];
        for (k, out) in outs.into_iter().enumerate() {
            let borrowed = encode_products(Dense::Borrowed { values: &w, out }, pruned_into);
            assert_eq!(borrowed.mask, want.mask, "borrowed {k}");
            assert_eq!(bits(&borrowed.nonzero), bits(&want.nonzero), "borrowed {k}");
            assert_eq!(borrowed.kept, want.kept);
        }
        let owned = encode_products(w.clone(), pruned_into);
        assert_eq!(owned.mask, want.mask);
        assert_eq!(bits(&owned.nonzero), bits(&want.nonzero));
        // The NaNs that were kept got their quiet bit, and pruned infinities became NaN.
        assert!(want
            .nonzero
            .iter()
            .zip(&owned.nonzero)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(
            w.iter()
                .any(|x| x.to_bits() & 0x7e00 == 0x7c00 && x.to_bits() & 0x3ff != 0),
            "a signalling NaN"
        );
    }
}
