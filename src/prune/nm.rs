//! n:m sparsity, `n_m_ratio = (n, m)` (spec §5.8).
//!
//! Rules, exactly as coremltools 9.0 / numpy 2.4 with numpy's SIMD sorts disabled
//! (`NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL"`, the parity reference):
//! * the pruned axis is `dim` (C = `shape[dim]`); if `m > C / 2` (true division) the op is skipped
//!   with coremltools' warning.
//! * every run of C elements along `dim` (other indices fixed) is zero-padded to a multiple of m and
//!   cut into groups of m consecutive elements. Padding slots have magnitude 0 and take part.
//! * in each group the n positions that come first in `np.argsort(|x|)` are pruned. numpy's
//!   default argsort is an introsort ported here literally ([`numpy_argsort`]): for m ≤ 16 it is an
//!   insertion sort, i.e. stable — ties go to the lower index first, so real zeros are pruned before
//!   the trailing padding; for m > 16 the median-of-3 partitioning decides tie order. NaN sorts as
//!   the largest magnitude (all NaNs equal). Prunes that land on padding are lost.
//! * n = 0 prunes nothing; n = m prunes every real element of a group.
//! * the result is `w * (1 - mask)`: kept elements are `w * 1`, pruned `w * 0`. So a pruned ±inf
//!   becomes the default NaN and a NaN stays NaN (quiet bit set) — both are then *kept* by the
//!   encoder; every NaN's quiet bit is set even when it is not pruned.
//!
//! Two paths compute the flags: for m ≤ 16 the stable ranking of `super::nm_rank` (no sort;
//! vectorized), otherwise `argsort_flags`, which sorts every group with `numpy_argsort` and is
//! also the reference the fast path is tested against.

use super::axes::ChannelLayout;
use super::element::{Element, MapValue};
use super::keys::Key;
use super::mask::{encode_products, encode_sparse_in_place, Dense, ENCODE_CHUNK};
use super::nm_rank::{stable_rank_flags, stable_rank_flags_into, Span, MAX_STABLE_M};
use super::{Apply, SparseTensor};

/// [`WorkOrder::NM`]: the flags of every group, multiplied in.
pub(super) fn n_m_decided<T: Element>(
    w: Dense<'_, T>,
    layout: ChannelLayout,
    n: usize,
    m: usize,
) -> SparseTensor<T> {
    if m <= MAX_STABLE_M {
        if let Some(inner) = chunk_holds_whole_groups(layout, m) {
            // Each encoding chunk ranks its own groups while they are in cache, with no
            // tensor-sized flag array.
            return encode_products(w, |_, values, flags| {
                stable_rank_flags_into(values, Span::Groups { inner }, n, m, flags)
            });
        }
    }
    let pruned = if m <= MAX_STABLE_M {
        stable_rank_flags(w.values(), layout, n, m)
    } else {
        argsort_flags(w.values(), layout, n, m)
    };
    encode_sparse_in_place(w, Apply::Multiply, |start, _, flags| {
        flags.copy_from_slice(&pruned[start..start + flags.len()])
    })
}

/// `Some(inner)` when every chunk of the encoding ([`ENCODE_CHUNK`] elements, the last one shorter)
/// is a run of whole groups: rows split into groups exactly (no padding) and a group, m rows of
/// `inner` elements, divides the chunk length.
fn chunk_holds_whole_groups(layout: ChannelLayout, m: usize) -> Option<usize> {
    let group = m.checked_mul(layout.inner)?;
    (layout.channel.is_multiple_of(m) && group > 0 && ENCODE_CHUNK.is_multiple_of(group))
        .then_some(layout.inner)
}

/// The per-element "pruned" flags by sorting every group with [`numpy_argsort`]: the reference
/// for any m (and the only path for m > 16, where numpy's tie order is not stable).
pub(super) fn argsort_flags<T: Element>(w: &[T], layout: ChannelLayout, n: usize, m: usize) -> Vec<bool> {
    use rayon::prelude::*;
    let mut pruned = vec![false; w.len()];
    let pad_key = T::zero().magnitude().key();
    let row_len = layout.channel * layout.inner;
    // Each outer index owns a contiguous slice of the output, so rows are ranked in parallel with
    // no shared writes; each group's ranking is the same whatever thread runs it.
    if row_len > 0 {
        pruned.par_chunks_mut(row_len).enumerate().for_each_init(
            || (vec![pad_key; m], Vec::with_capacity(m)),
            |(keys, order), (o, out)| {
                for g0 in (0..layout.channel).step_by(m) {
                    for i in 0..layout.inner {
                        for (j, key) in keys.iter_mut().enumerate() {
                            let c = g0 + j;
                            *key = if c < layout.channel {
                                w[layout.flat(o, c, i)].magnitude().key()
                            } else {
                                pad_key
                            };
                        }
                        order.clear();
                        order.extend(0..m);
                        numpy_argsort(keys, order);
                        for &j in &order[..n] {
                            let c = g0 + j;
                            if c < layout.channel {
                                out[c * layout.inner + i] = true;
                            }
                        }
                    }
                }
            },
        );
    }
    pruned
}

/// numpy's `aquicksort_` (npysort/quicksort.cpp, the scalar path used when SIMD dispatch is off),
/// ported literally: sorts the indices in `tosort` by `v[index]` with `<` as the only comparison.
/// Partitions ranges longer than 16 around a median of three, pushes the larger side, switches to
/// heapsort past a depth of `2 * floor(log2(num))`, and finishes ranges of ≤ 16 by insertion sort.
pub fn numpy_argsort<K: Key>(v: &[K], tosort: &mut [usize]) {
    const SMALL_QUICKSORT: usize = 15;
    let num = tosort.len();
    if num < 2 {
        return;
    }
    let t = tosort;
    let less = |a: K, b: K| a < b;
    let mut stack: Vec<(usize, usize, i32)> = Vec::new();
    let (mut pl, mut pr) = (0usize, num - 1);
    let mut cdepth = 2 * (usize::BITS - 1 - num.leading_zeros()) as i32;
    loop {
        if cdepth < 0 {
            numpy_aheapsort(v, &mut t[pl..=pr]);
        } else {
            while pr - pl > SMALL_QUICKSORT {
                let pm = pl + ((pr - pl) >> 1);
                if less(v[t[pm]], v[t[pl]]) {
                    t.swap(pm, pl);
                }
                if less(v[t[pr]], v[t[pm]]) {
                    t.swap(pr, pm);
                }
                if less(v[t[pm]], v[t[pl]]) {
                    t.swap(pm, pl);
                }
                let vp = v[t[pm]];
                let mut pi = pl;
                let mut pj = pr - 1;
                t.swap(pm, pj);
                loop {
                    // Sentinels: v[t[pr - 1]] == vp stops pi, v[t[pl]] <= vp stops pj.
                    pi += 1;
                    while less(v[t[pi]], vp) {
                        pi += 1;
                    }
                    pj -= 1;
                    while less(vp, v[t[pj]]) {
                        pj -= 1;
                    }
                    if pi >= pj {
                        break;
                    }
                    t.swap(pi, pj);
                }
                let pk = pr - 1;
                t.swap(pi, pk);
                cdepth -= 1;
                // Push the larger partition, continue with the smaller one.
                if pi - pl < pr - pi {
                    stack.push((pi + 1, pr, cdepth));
                    pr = pi - 1;
                } else {
                    stack.push((pl, pi - 1, cdepth));
                    pl = pi + 1;
                }
            }
            // Insertion sort of t[pl..=pr].
            for pi in pl + 1..=pr {
                let vi = t[pi];
                let vp = v[vi];
                let mut pj = pi;
                while pj > pl && less(vp, v[t[pj - 1]]) {
                    t[pj] = t[pj - 1];
                    pj -= 1;
                }
                t[pj] = vi;
            }
        }
        match stack.pop() {
            Some((l, r, d)) => {
                pl = l;
                pr = r;
                cdepth = d;
            }
            None => break,
        }
    }
}

/// numpy's `aheapsort_` (1-based max-heap over the index array), ported literally.
fn numpy_aheapsort<K: Key>(v: &[K], tosort: &mut [usize]) {
    let n = tosort.len();
    if n < 2 {
        return;
    }
    // a(k) is tosort[k - 1]: numpy offsets the array by one for heap indexing.
    let sift = |t: &mut [usize], tmp: usize, mut i: usize, n: usize| {
        let mut j = i << 1;
        while j <= n {
            if j < n && v[t[j - 1]] < v[t[j]] {
                j += 1;
            }
            if v[tmp] < v[t[j - 1]] {
                t[i - 1] = t[j - 1];
                i = j;
                j += j;
            } else {
                break;
            }
        }
        t[i - 1] = tmp;
    };
    for l in (1..=n >> 1).rev() {
        let tmp = tosort[l - 1];
        sift(tosort, tmp, l, n);
    }
    let mut n = n;
    while n > 1 {
        let tmp = tosort[n - 1];
        tosort[n - 1] = tosort[0];
        n -= 1;
        sift(tosort, tmp, 1, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn argsort_sorts(keys in prop::collection::vec(0u16..6, 0..200)) {
            let mut idx: Vec<usize> = (0..keys.len()).collect();
            numpy_argsort(&keys, &mut idx);
            prop_assert!(idx.windows(2).all(|p| keys[p[0]] <= keys[p[1]]));
            let mut seen = idx.clone();
            seen.sort();
            prop_assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        }

        #[test]
        fn heapsort_sorts(keys in prop::collection::vec(any::<u8>(), 0..100)) {
            let mut idx: Vec<usize> = (0..keys.len()).collect();
            numpy_aheapsort(&keys, &mut idx);
            prop_assert!(idx.windows(2).all(|p| keys[p[0]] <= keys[p[1]]));
        }
    }

    #[test]
    fn small_groups_are_stable() {
        let keys = [5u16, 1, 5, 1, 0, 0, 5, 1];
        let mut idx: Vec<usize> = (0..8).collect();
        numpy_argsort(&keys, &mut idx);
        assert_eq!(idx, vec![4, 5, 1, 3, 7, 0, 2, 6]);
    }
}
