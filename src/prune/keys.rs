//! Integer magnitude keys and linear-time order statistics over them.
//!
//! Every value a percentile or a `<=` comparison runs on (a magnitude `|w|` or a block norm) is
//! mapped to an unsigned integer key whose order is numpy's sort order for that value:
//! * finite and infinite floats: `bits & 0x7fff…` (non-negative values order like their bits);
//! * every NaN: one canonical key, the largest (`0x7fff…`). numpy sorts NaN last and treats all NaNs
//!   as equal (neither is less), so the payload must not influence the order;
//! * int8 magnitudes (`np.abs` keeps −128 as −128): `(v as u8) ^ 0x80`, so −128 sorts first;
//! * uint8: the value itself.
//!
//! Order statistics use a radix select (16-bit digits, most significant first): one histogram pass
//! per digit plus one pass to find the successor, so the cost is linear and deterministic and never
//! sorts. Items carry a multiplicity, which lets block sparsity count a block norm once per element
//! it covers without materializing the element-wise map.

use std::fmt::Debug;

/// An unsigned integer key (`u8`, `u16`, `u32`, `u64`).
pub trait Key: bytemuck::Pod + Ord + Debug + Send + Sync + 'static {
    const BITS: u32;
    fn to_u64(self) -> u64;
    /// Inverse of `to_u64` for values that fit (always the case for values produced by `to_u64`).
    fn from_u64(v: u64) -> Self;
}

macro_rules! impl_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            const BITS: u32 = <$t>::BITS;
            fn to_u64(self) -> u64 {
                u64::from(self)
            }
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    )*};
}
impl_key!(u8, u16, u32, u64);

/// The two neighbouring order statistics a percentile interpolates between, and the maximum
/// (whose key tells whether a NaN is present).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderStats<K> {
    /// `sorted[prev]`.
    pub prev: K,
    /// `sorted[next]` for `next` up to `prev + 1` (numpy's two neighbours, the only use); for a
    /// larger `next`, `sorted[prev]` if that is `sorted[next]` too, else the smallest key above it.
    pub next: K,
    /// `sorted[total - 1]`.
    pub max: K,
}

/// `sorted[prev]`, `sorted[next]` and the maximum of the multiset described by `items` (key,
/// multiplicity), where `sorted` is its ascending expansion of length `total`. `items` is called
/// once per pass and must yield the same sequence each time. `None` when a rank is out of range
/// (`prev > next` or `next >= total`) or the multiplicities do not add up to `total`.
pub fn order_stats<K, I, F>(items: F, total: u64, prev: u64, next: u64) -> Option<OrderStats<K>>
where
    K: Key,
    I: Iterator<Item = (K, u64)>,
    F: Fn() -> I,
{
    if prev > next || next >= total {
        return None;
    }
    let a = kth_smallest(&items, prev)?;
    // One more pass: how many items are <= a, the smallest key above a, and the maximum.
    let mut count_le: u64 = 0;
    let mut min_above: Option<K> = None;
    let mut max: Option<K> = None;
    let mut seen: u64 = 0;
    for (k, c) in items() {
        if c == 0 {
            continue;
        }
        seen = seen.checked_add(c)?;
        if k <= a {
            count_le = count_le.checked_add(c)?;
        } else if min_above.is_none_or(|m| k < m) {
            min_above = Some(k);
        }
        if max.is_none_or(|m| k > m) {
            max = Some(k);
        }
    }
    if seen != total {
        return None;
    }
    let b = if next < count_le { a } else { min_above? };
    Some(OrderStats {
        prev: a,
        next: b,
        max: max?,
    })
}

/// The key at 0-based rank `rank` of the ascending expansion of `items`, by radix select.
fn kth_smallest<K, I, F>(items: &F, rank: u64) -> Option<K>
where
    K: Key,
    I: Iterator<Item = (K, u64)>,
    F: Fn() -> I,
{
    const DIGIT: u32 = 16;
    let mut prefix: u64 = 0;
    let mut done_bits: u32 = 0;
    let mut rank = rank;
    while done_bits < K::BITS {
        let digit_bits = DIGIT.min(K::BITS - done_bits);
        let shift = K::BITS - done_bits - digit_bits;
        let digit_mask = (1u64 << digit_bits) - 1;
        let mut hist = vec![0u64; 1usize << digit_bits];
        for (k, c) in items() {
            let v = k.to_u64();
            // Only keys that share the digits chosen so far take part.
            if done_bits > 0 && (v >> (shift + digit_bits)) != prefix {
                continue;
            }
            let slot = &mut hist[((v >> shift) & digit_mask) as usize];
            *slot = slot.checked_add(c)?;
        }
        let mut digit = None;
        for (d, &count) in hist.iter().enumerate() {
            if rank < count {
                digit = Some(d as u64);
                break;
            }
            rank -= count;
        }
        prefix = (prefix << digit_bits) | digit?;
        done_bits += digit_bits;
    }
    Some(K::from_u64(prefix))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The order statistics by sorting a copy: what every selection must agree with.
    pub(crate) fn stats_by_sorting<K: Key>(keys: &[K], prev: usize, next: usize) -> OrderStats<K> {
        let mut s = keys.to_vec();
        s.sort();
        OrderStats {
            prev: s[prev],
            next: s[next],
            max: s[s.len() - 1],
        }
    }

    proptest! {
        #[test]
        fn radix_select_agrees_with_sorting_u32(keys in prop::collection::vec(0u32..50, 1..300), r in 0usize..300) {
            let prev = r % keys.len();
            let next = (prev + 1).min(keys.len() - 1);
            let got = order_stats(|| keys.iter().map(|&k| (k, 1)), keys.len() as u64, prev as u64, next as u64);
            prop_assert_eq!(got, Some(stats_by_sorting(&keys, prev, next)));
        }

        #[test]
        fn radix_select_agrees_with_sorting_wide_keys(keys in prop::collection::vec(any::<u64>(), 1..200), r in 0usize..200) {
            let prev = r % keys.len();
            let next = (prev + 1).min(keys.len() - 1);
            let got = order_stats(|| keys.iter().map(|&k| (k, 1)), keys.len() as u64, prev as u64, next as u64);
            prop_assert_eq!(got, Some(stats_by_sorting(&keys, prev, next)));
        }

        #[test]
        fn multiplicities_equal_repetition(items in prop::collection::vec((any::<u16>(), 0u64..4), 1..100), r in 0u64..400) {
            let expanded: Vec<u16> = items.iter().flat_map(|&(k, c)| std::iter::repeat_n(k, c as usize)).collect();
            prop_assume!(!expanded.is_empty());
            let prev = (r as usize) % expanded.len();
            let next = (prev + 1).min(expanded.len() - 1);
            let got = order_stats(|| items.iter().copied(), expanded.len() as u64, prev as u64, next as u64);
            prop_assert_eq!(got, Some(stats_by_sorting(&expanded, prev, next)));
        }
    }

    #[test]
    fn bad_ranks_and_totals_are_rejected() {
        let keys = [3u8, 1, 2];
        let it = || keys.iter().map(|&k| (k, 1));
        assert_eq!(order_stats(it, 3, 3, 3), None);
        assert_eq!(order_stats(it, 3, 2, 1), None);
        assert_eq!(order_stats(it, 4, 0, 1), None);
        assert_eq!(
            order_stats(it, 3, 0, 1),
            Some(OrderStats {
                prev: 1,
                next: 2,
                max: 3
            })
        );
    }
}

/// Elements per parallel work item: large enough to amortize a 64 Ki-bin histogram, small enough
/// to balance two to a few dozen cores. Results never depend on it (counts are merged exactly).
const PAR_CHUNK: usize = 1 << 18;

/// [`order_stats`] over the keys of a slice (every multiplicity 1), in one parallel histogram pass
/// for keys of at most 16 bits and two for 32-bit keys; wider keys use the generic radix select.
/// Same result as [`order_stats`] for any thread count.
pub fn order_stats_of<T, K, F>(w: &[T], key: F, prev: u64, next: u64) -> Option<OrderStats<K>>
where
    T: Sync,
    K: Key,
    F: Fn(&T) -> K + Sync,
{
    if w.len() <= SELECT_LIMIT {
        return order_stats_by_selection(w.iter().map(&key).collect(), prev, next);
    }
    order_stats_by_histogram(w, key, prev, next)
}

/// Tensors up to this many elements find their order statistics by selection on a copy of their
/// keys, on the calling thread. The histogram path clears, merges and scans 64 Ki bins and hands
/// the work to the thread pool: for a tensor of a thousand elements that was most of its pruning
/// time (issue 18's models of many small tensors).
const SELECT_LIMIT: usize = 1 << 14;

/// [`order_stats`] of `keys` by selection (`select_nth_unstable`): the same order statistics as
/// sorting, in linear time.
fn order_stats_by_selection<K: Key>(mut keys: Vec<K>, prev: u64, next: u64) -> Option<OrderStats<K>> {
    let (prev, next) = (usize::try_from(prev).ok()?, usize::try_from(next).ok()?);
    if prev > next || next >= keys.len() {
        return None;
    }
    let (_, &mut a, above) = keys.select_nth_unstable(prev);
    // Everything in `above` is at least `a`; the rest of the keys at most `a`.
    let count_le = prev + 1 + above.iter().filter(|&&k| k == a).count();
    let b = if next < count_le {
        a
    } else {
        above.iter().copied().filter(|&k| k > a).min()?
    };
    let max = above.iter().copied().max().map_or(a, |m| m.max(a));
    Some(OrderStats {
        prev: a,
        next: b,
        max,
    })
}

/// [`order_stats_of`] by histograms of the keys (the path for tensors above [`SELECT_LIMIT`]).
fn order_stats_by_histogram<T, K, F>(w: &[T], key: F, prev: u64, next: u64) -> Option<OrderStats<K>>
where
    T: Sync,
    K: Key,
    F: Fn(&T) -> K + Sync,
{
    use rayon::prelude::*;
    let total = w.len() as u64;
    if prev > next || next >= total {
        return None;
    }
    if K::BITS > 32 {
        return order_stats(|| w.iter().map(|x| (key(x), 1)), total, prev, next);
    }
    // Narrow keys of a large tensor: count around a sampled bracket first, and fall back to the
    // full histogram below only if the wanted ranks turn out to lie outside it.
    if let Some(bracket) = super::bracket::sample_bracket(w, &key, prev, next, total) {
        let counts = super::bracket::count_bracket(w, &key, bracket);
        if let Some(stats) = counts.order_stats(prev, next) {
            return Some(stats);
        }
    }
    let low_bits = K::BITS.min(16);
    let high_shift = K::BITS - low_bits;
    let bins = 1usize << low_bits;
    // Pass 1: histogram of the top (up to) 16 bits.
    let top_hist = key_histogram(w, &key, high_shift, bins);
    // Bucket of rank `prev`, and the count of everything below it.
    let mut below = 0u64;
    let mut bucket = 0usize;
    for (b, &c) in top_hist.iter().enumerate() {
        if below + c > prev {
            bucket = b;
            break;
        }
        below += c;
    }
    let next_bucket = (bucket + 1..bins).find(|&b| top_hist[b] > 0);
    let max_bucket = (0..bins).rev().find(|&b| top_hist[b] > 0)?;
    if high_shift == 0 {
        // The histogram is exact: every bin is one key.
        let a = bucket as u64;
        let count_le = below + top_hist[bucket];
        let b = if next < count_le { a } else { next_bucket? as u64 };
        return Some(OrderStats {
            prev: K::from_u64(a),
            next: K::from_u64(b),
            max: K::from_u64(max_bucket as u64),
        });
    }
    // Pass 2: the low bits inside `bucket`, the smallest key of the next bucket, the largest key.
    let low_mask = (1u64 << high_shift) - 1;
    let (low_hist, min_next, max_key) = w
        .par_chunks(PAR_CHUNK)
        .fold(
            || (vec![0u64; 1usize << high_shift.min(16)], u64::MAX, 0u64),
            |(mut h, mut min_next, mut max_key), c| {
                for x in c {
                    let k = key(x).to_u64();
                    let top = (k >> high_shift) as usize;
                    if top == bucket {
                        h[(k & low_mask) as usize] += 1;
                    } else if Some(top) == next_bucket {
                        min_next = min_next.min(k);
                    }
                    if top == max_bucket {
                        max_key = max_key.max(k);
                    }
                }
                (h, min_next, max_key)
            },
        )
        .reduce(
            || (vec![0u64; 1usize << high_shift.min(16)], u64::MAX, 0),
            |(h1, n1, m1), (h2, n2, m2)| (add_counts(h1, h2), n1.min(n2), m1.max(m2)),
        );
    let rank = prev - below;
    let mut seen = 0u64;
    let mut low = 0usize;
    for (l, &c) in low_hist.iter().enumerate() {
        if seen + c > rank {
            low = l;
            break;
        }
        seen += c;
    }
    let a = ((bucket as u64) << high_shift) | low as u64;
    let count_le = below + seen + low_hist[low];
    let b = if next < count_le {
        a
    } else if let Some(l) = (low + 1..low_hist.len()).find(|&l| low_hist[l] > 0) {
        ((bucket as u64) << high_shift) | l as u64
    } else {
        next_bucket?;
        min_next
    };
    Some(OrderStats {
        prev: K::from_u64(a),
        next: K::from_u64(b),
        max: K::from_u64(max_key),
    })
}

/// Element-wise sum of two histograms.
fn add_counts(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
    a
}

/// Counts of `key(x) >> high_shift` over `w` (`bins` bins), in parallel. `w` is split into a few
/// parts per thread (enough to balance the load); each part counts into its thread's own table,
/// kept across calls, and adds it into the total. Zeroing and merging 64 Ki bins costs as much as
/// counting a few hundred thousand keys, so per-chunk tables would cost more than the counting,
/// and fresh tables per call would page-fault. The tables count in u32 (half the cache footprint of
/// u64): a part never holds more than `u32::MAX` keys. The counts are the same for any thread count.
pub(crate) fn key_histogram<T, K, F>(w: &[T], key: &F, high_shift: u32, bins: usize) -> Vec<u64>
where
    T: Sync,
    K: Key,
    F: Fn(&T) -> K + Sync,
{
    use std::sync::{Mutex, PoisonError};
    let total = Mutex::new(vec![0u64; bins]);
    for_each_part_with_table(w, PAR_CHUNK, bins, |part, counts| {
        for x in part {
            counts[(key(x).to_u64() >> high_shift) as usize] += 1;
        }
        let mut total = total.lock().unwrap_or_else(PoisonError::into_inner);
        total
            .iter_mut()
            .zip(counts.iter())
            .for_each(|(t, &c)| *t += u64::from(c));
    });
    total.into_inner().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `count(part, table)` on `w` split into a few parts per thread (at least `min_part`
/// elements each, enough to balance the load), in parallel. Each part gets its thread's own table
/// of `bins` u32 zeros, kept across calls: zeroing and merging a large table costs as much as
/// counting a few hundred thousand keys, and fresh tables per call would page-fault. A part never
/// holds more than `u32::MAX` elements, so its counts fit.
pub(crate) fn for_each_part_with_table<T: Sync>(
    w: &[T],
    min_part: usize,
    bins: usize,
    count: impl Fn(&[T], &mut [u32]) + Sync,
) {
    use rayon::prelude::*;
    use std::cell::RefCell;
    thread_local! {
        static TABLE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }
    let parts = 4 * rayon::current_num_threads();
    let part_len = w.len().div_ceil(parts).clamp(min_part, u32::MAX as usize);
    w.par_chunks(part_len).for_each(|part| {
        TABLE.with(|table| {
            let mut table = table.borrow_mut();
            table.clear();
            table.resize(bins, 0);
            // A plain slice, so counting loops keep its pointer and length in registers.
            count(part, &mut table)
        })
    });
}

#[cfg(test)]
mod parallel_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The parallel histogram path agrees with the generic radix select (itself checked
        /// against sorting), for 16- and 32-bit keys, including heavy duplication.
        #[test]
        fn order_stats_of_matches_generic(
            keys in prop::collection::vec(any::<u32>(), 1..3000),
            narrow in any::<bool>(),
            dup in 1u32..64,
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
        ) {
            let keys: Vec<u32> = keys.iter().map(|k| if narrow { k % dup } else { k / dup * dup }).collect();
            let n = keys.len();
            let (p, q) = { let (x, y) = (a.index(n), b.index(n)); (x.min(y) as u64, x.max(y) as u64) };
            let generic = order_stats(|| keys.iter().map(|&k| (k, 1)), n as u64, p, q);
            prop_assert_eq!(order_stats_of(&keys, |&k| k, p, q), generic);
            prop_assert_eq!(order_stats_by_histogram(&keys, |&k| k, p, q), generic);
            let keys16: Vec<u16> = keys.iter().map(|&k| k as u16).collect();
            let generic16 = order_stats(|| keys16.iter().map(|&k| (k, 1)), n as u64, p, q);
            prop_assert_eq!(order_stats_of(&keys16, |&k| k, p, q), generic16);
            prop_assert_eq!(order_stats_by_histogram(&keys16, |&k| k, p, q), generic16);
        }

        /// Selection (the path of small tensors) agrees with sorting for numpy's neighbours, and
        /// with the generic select for any pair of ranks.
        #[test]
        fn selection_matches_sorting(
            keys in prop::collection::vec(any::<u16>(), 1..600),
            dup in 1u16..300,
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
        ) {
            let keys: Vec<u16> = keys.iter().map(|k| k / dup).collect();
            let n = keys.len();
            let (p, q) = { let (x, y) = (a.index(n), b.index(n)); (x.min(y), x.max(y)) };
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            let q1 = (p + 1).min(n - 1);
            let expected = OrderStats { prev: sorted[p], next: sorted[q1], max: sorted[n - 1] };
            prop_assert_eq!(order_stats_by_selection(keys.clone(), p as u64, q1 as u64), Some(expected));
            let generic = order_stats(|| keys.iter().map(|&k| (k, 1)), n as u64, p as u64, q as u64);
            prop_assert_eq!(order_stats_by_selection(keys.clone(), p as u64, q as u64), generic);
            prop_assert_eq!(order_stats_by_selection(keys, q as u64, p as u64), if p == q { generic } else { None });
        }
    }

    #[test]
    fn both_paths_answer_at_the_selection_limit() {
        for n in [SELECT_LIMIT - 1, SELECT_LIMIT, SELECT_LIMIT + 1] {
            let keys: Vec<u16> = (0..n as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 20) as u16)
                .collect();
            let n = n as u64;
            for (p, q) in [
                (0, 0),
                (n / 2, n / 2 + 1),
                (n - 2, n - 1),
                (n - 1, n - 1),
                (3, n - 1),
            ] {
                let generic = order_stats(|| keys.iter().map(|&k| (k, 1)), n, p, q);
                assert_eq!(order_stats_of(&keys, |&k| k, p, q), generic);
                assert_eq!(order_stats_by_histogram(&keys, |&k| k, p, q), generic);
            }
            assert_eq!(order_stats_of(&keys, |&k| k, 0, n), None);
        }
    }

    #[test]
    fn order_stats_of_spans_several_chunks() {
        // More than one PAR_CHUNK, so partial histograms are merged.
        let keys: Vec<u32> = (0..(PAR_CHUNK as u32 * 2 + 777))
            .map(|i| i.wrapping_mul(2_654_435_761) >> 3)
            .collect();
        let n = keys.len() as u64;
        for (p, q) in [(0, 0), (n / 2, n / 2 + 1), (n - 1, n - 1), (12345, 12346)] {
            let generic = order_stats(|| keys.iter().map(|&k| (k, 1)), n, p, q);
            assert_eq!(order_stats_of(&keys, |&k| k, p, q), generic);
        }
    }
}
