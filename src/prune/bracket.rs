//! Sample-guided order statistics for narrow (at most 16-bit) keys.
//!
//! A full histogram of a tensor's keys costs a scattered increment per element, about 3.4 cycles
//! on the machines we measured; it was a third of magnitude pruning's CPU time. Yet the order
//! statistics a percentile needs sit in a narrow band of ranks. So:
//! 1. sample the keys, and take from the sample a key bracket `[lo, hi]` that very probably holds
//!    the wanted ranks;
//! 2. one parallel pass counts the keys below `lo` with vectorized compares, and histograms only
//!    the few keys inside the bracket;
//! 3. if the wanted ranks did land inside the bracket, the bracket's histogram gives them exactly;
//!    otherwise the caller runs the full histogram.
//!
//! The sample only decides how fast the answer comes, never what it is: every key is counted, and
//! a bracket that misses is detected from exact counts. The sample is a fixed pseudo-random choice,
//! so runs are repeatable too.

use super::compact::compact_flagged;
use super::cpu::Avx2PopcntBmi1;
use super::keys::{for_each_part_with_table, Key, OrderStats};
use std::sync::{Mutex, PoisonError};

/// Below this many keys the full histogram costs too little for a bracket to pay.
pub(crate) const MIN_KEYS: usize = 1 << 20;

/// The sample: `RUNS` runs of `RUN_LEN` consecutive keys at pseudo-random places. Runs cost one
/// cache miss per 32 keys instead of one per key.
const RUNS: usize = 2048;
const RUN_LEN: usize = 32;
const SAMPLE: usize = RUNS * RUN_LEN;

/// Sample ranks added on each side of the wanted ones: eight standard deviations of a random
/// sample's rank at the median (`sqrt(SAMPLE) / 2` = 128), halved in effect if neighbouring keys
/// in a run are correlated. The bracket then holds about 1.6% of the keys.
const MARGIN: usize = 1024;

/// The key range `lo..=hi` a counting pass histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bracket<K> {
    pub lo: K,
    pub hi: K,
}

/// A bracket around sorted ranks `prev..=next` of `n` items, chosen from a sample of `keys` (`n`
/// items spread evenly over them, so the rank fractions carry over). `None` when `keys` is shorter
/// than [`MIN_KEYS`], or the keys are wider than 16 bits.
pub(crate) fn sample_bracket<T, K, F>(keys: &[T], key: &F, prev: u64, next: u64, n: u64) -> Option<Bracket<K>>
where
    K: Key,
    F: Fn(&T) -> K,
{
    if K::BITS > 16 || keys.len() < MIN_KEYS {
        return None;
    }
    Some(sampled_bracket(keys, key, prev, next, n))
}

/// [`sample_bracket`] for any `keys.len() >= RUN_LEN` and `n >= 1`.
fn sampled_bracket<T, K, F>(keys: &[T], key: &F, prev: u64, next: u64, n: u64) -> Bracket<K>
where
    K: Key,
    F: Fn(&T) -> K,
{
    let places = keys.len() - RUN_LEN + 1;
    let starts: Vec<usize> = (0..RUNS as u64)
        .map(|r| (splitmix64(r) % places as u64) as usize)
        .collect();
    // Touch every run first: these loads are independent, so their cache misses overlap, where
    // the gathering loop below would wait for each in turn.
    let touched = starts.iter().fold(0u64, |acc, &s| {
        acc ^ key(&keys[s]).to_u64() ^ key(&keys[s + RUN_LEN - 1]).to_u64()
    });
    std::hint::black_box(touched);
    let mut sample: Vec<K> = Vec::with_capacity(SAMPLE);
    for &start in &starts {
        sample.extend(keys[start..start + RUN_LEN].iter().map(key));
    }
    let scaled = |rank: u64| (u128::from(rank) * SAMPLE as u128 / u128::from(n)) as usize;
    let lo_rank = scaled(prev).checked_sub(MARGIN);
    let hi_rank = Some(scaled(next) + 1 + MARGIN).filter(|&r| r < SAMPLE);
    let lo = match lo_rank {
        Some(r) => *sample.select_nth_unstable(r).1,
        None => K::from_u64(0),
    };
    let hi = match hi_rank {
        Some(r) => *sample.select_nth_unstable(r).1,
        None => K::from_u64(u64::MAX >> (64 - K::BITS)),
    };
    Bracket { lo, hi }
}

/// SplitMix64's output function: a fixed, well-spread sequence of sample places.
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Exact counts of a multiset of keys relative to a bracket: how many lie below it, how many at
/// each key inside it, how many above, and the largest key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BracketCounts<K> {
    lo: K,
    below: u64,
    /// `inside[i]`: how many keys equal `lo + i`.
    inside: Vec<u64>,
    above: u64,
    max: Option<K>,
}

impl<K: Key> BracketCounts<K> {
    fn empty(b: Bracket<K>) -> Self {
        let span = b.hi.to_u64().saturating_sub(b.lo.to_u64()) + 1;
        BracketCounts {
            lo: b.lo,
            below: 0,
            inside: vec![0; span as usize],
            above: 0,
            max: None,
        }
    }

    /// Every count times `factor` (each key standing for `factor` items).
    pub fn scale(&mut self, factor: u64) -> Option<()> {
        self.below = self.below.checked_mul(factor)?;
        self.above = self.above.checked_mul(factor)?;
        for c in &mut self.inside {
            *c = c.checked_mul(factor)?;
        }
        Some(())
    }

    /// Takes `count` items of `key` away. `None` if there are not that many (the largest key is
    /// unchanged: callers take away part of a key's multiplicity, never all of it).
    pub fn remove(&mut self, key: K, count: u64) -> Option<()> {
        let slot = if key < self.lo {
            &mut self.below
        } else {
            match self.inside.get_mut((key.to_u64() - self.lo.to_u64()) as usize) {
                Some(slot) => slot,
                None => &mut self.above,
            }
        };
        *slot = slot.checked_sub(count)?;
        Some(())
    }

    /// `sorted[prev]`, `sorted[next]` and the maximum, where `sorted` is the ascending expansion of
    /// the counted multiset; `None` when either rank falls outside the bracket (or the multiset is
    /// empty), so that the bracket cannot tell.
    pub fn order_stats(&self, prev: u64, next: u64) -> Option<OrderStats<K>> {
        let max = self.max?;
        // `before`: items with keys below the bin at hand.
        let mut before = self.below;
        if prev < before {
            return None;
        }
        let mut bins = self.inside.iter().enumerate().filter(|(_, &c)| c > 0);
        let (a, count_le) = loop {
            let (i, &c) = bins.next()?;
            if prev < before + c {
                break (i, before + c);
            }
            before += c;
        };
        let b = if next < count_le {
            a
        } else {
            let (i, &c) = bins.next()?;
            if next >= count_le + c {
                return None;
            }
            i
        };
        let at = |i: usize| K::from_u64(self.lo.to_u64() + i as u64);
        Some(OrderStats {
            prev: at(a),
            next: at(b),
            max,
        })
    }

    fn add(&mut self, other: &PartCounts<K>, table: &[u32]) {
        self.below += other.below;
        self.above += other.above;
        self.inside
            .iter_mut()
            .zip(table)
            .for_each(|(t, &c)| *t += u64::from(c));
        self.max = self.max.max(other.max);
    }
}

/// One part's counts besides its bracket table.
pub(crate) struct PartCounts<K> {
    pub below: u64,
    pub above: u64,
    pub max: Option<K>,
}

/// Counts `key(x)` for every `x` of `w` against `bracket`, in parallel. The same counts for any
/// thread count.
pub(crate) fn count_bracket<T, K, F>(w: &[T], key: &F, bracket: Bracket<K>) -> BracketCounts<K>
where
    T: Sync,
    K: Key,
    F: Fn(&T) -> K + Sync,
{
    let total = Mutex::new(BracketCounts::empty(bracket));
    let span = total.lock().unwrap_or_else(PoisonError::into_inner).inside.len();
    for_each_part_with_table(w, 1 << 16, span, |part, table| {
        let counts = count_part(part, key, bracket, table);
        total
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&counts, table);
    });
    total.into_inner().unwrap_or_else(PoisonError::into_inner)
}

/// One part of [`count_bracket`]: `table[k - lo]` counts the keys inside the bracket.
///
/// Block by block, with no branch per key (about half the steps of a few keys hold a key inside,
/// at random, so a branch would mispredict constantly): the keys, their count below, the maximum
/// and the "inside" flags in one vectorized loop; then the inside keys are moved to the front of
/// the block's key buffer ([`compact_flagged`]), and only those few are histogrammed.
fn count_part<T, K, F>(part: &[T], key: &F, b: Bracket<K>, table: &mut [u32]) -> PartCounts<K>
where
    K: Key,
    F: Fn(&T) -> K,
{
    count_part_on(Avx2PopcntBmi1::detect(), part, key, b, table)
}

/// [`count_part`] compiled for AVX2 when given the token, else portable: the same counts.
/// `table` holds at least `hi - lo + 1` counters.
pub(crate) fn count_part_on<T, K, F>(
    simd: Option<Avx2PopcntBmi1>,
    part: &[T],
    key: &F,
    b: Bracket<K>,
    table: &mut [u32],
) -> PartCounts<K>
where
    K: Key,
    F: Fn(&T) -> K,
{
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = simd {
        // SAFETY: the token exists only on a CPU with AVX2, POPCNT and BMI1, all that
        // `count_part_avx2` enables; it has no other requirement.
        return unsafe { count_part_avx2(token, part, key, b, table) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    count_part_portable(part, key, b, table)
}

/// The same code compiled for AVX2, where the key loop runs 16 keys per instruction and 16-bit
/// keys are tallied by [`tally_u16_avx2`].
///
/// # Safety
/// None beyond the token's proof that the CPU has AVX2, POPCNT and BMI1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1")]
unsafe fn count_part_avx2<T, K, F>(
    token: Avx2PopcntBmi1,
    part: &[T],
    key: &F,
    b: Bracket<K>,
    table: &mut [u32],
) -> PartCounts<K>
where
    K: Key,
    F: Fn(&T) -> K,
{
    count_part_with(part, key, table, |keys, table| {
        if K::BITS == 16 {
            let (lo, hi) = (b.lo.to_u64() as u16, b.hi.to_u64() as u16);
            // SAFETY: the token proves AVX2, POPCNT and BMI1, all `tally_u16_avx2` enables;
            // 16-bit keys are u16s (`cast_slice` checks size and alignment).
            let (below, above, max) =
                unsafe { tally_u16_avx2(token, bytemuck::cast_slice(keys), lo, hi, table) };
            (below, above, K::from_u64(u64::from(max)))
        } else {
            tally(keys, b, table)
        }
    })
}

/// Keys per block: the block's keys, flags and mask bytes stay in L1.
const BLOCK: usize = 2048;

fn count_part_portable<T, K, F>(part: &[T], key: &F, b: Bracket<K>, table: &mut [u32]) -> PartCounts<K>
where
    K: Key,
    F: Fn(&T) -> K,
{
    count_part_with(part, key, table, |keys, table| tally(keys, b, table))
}

/// Block by block: the keys, then `tally(keys, table)`, which histograms the keys inside the
/// bracket into `table` and returns how many lie below and above it, and the largest key.
#[inline(always)]
fn count_part_with<T, K, F>(
    part: &[T],
    key: &F,
    table: &mut [u32],
    tally: impl Fn(&[K], &mut [u32]) -> (u32, u32, K),
) -> PartCounts<K>
where
    K: Key,
    F: Fn(&T) -> K,
{
    let mut keys = [K::from_u64(0); BLOCK];
    let (mut below, mut above) = (0u64, 0u64);
    let mut max: Option<K> = None;
    for block in part.chunks(BLOCK) {
        let keys = &mut keys[..block.len()];
        for (x, k) in block.iter().zip(keys.iter_mut()) {
            *k = key(x);
        }
        let (block_below, block_above, block_max) = tally(keys, table);
        below += u64::from(block_below);
        above += u64::from(block_above);
        max = max.max(Some(block_max));
    }
    PartCounts { below, above, max }
}

/// One block of keys (at most [`BLOCK`]): with no branch per key (about half the steps of a few
/// keys hold a key inside, at random, so a branch would mispredict constantly), the counts below
/// and above, the maximum and the "inside" flags in one vectorized loop; then the inside keys are
/// moved to the front ([`compact_flagged`]) and only those few are histogrammed.
#[inline(always)]
fn tally<K: Key>(keys: &[K], b: Bracket<K>, table: &mut [u32]) -> (u32, u32, K) {
    let lo = b.lo.to_u64();
    let mut inside = [false; BLOCK];
    let mut bytes = [0u8; BLOCK / 8];
    let mut scratch = [K::from_u64(0); BLOCK];
    let (inside, scratch) = (&mut inside[..keys.len()], &mut scratch[..keys.len()]);
    let (mut below, mut above) = (0u32, 0u32);
    let mut max = K::from_u64(0);
    for ((&k, flag), slot) in keys.iter().zip(inside.iter_mut()).zip(scratch.iter_mut()) {
        below += u32::from(k < b.lo);
        above += u32::from(k > b.hi);
        *flag = b.lo <= k && k <= b.hi;
        max = max.max(k);
        *slot = k;
    }
    let kept = compact_flagged(scratch, inside, &mut bytes);
    for k in &scratch[..kept] {
        table[(k.to_u64() - lo) as usize] += 1;
    }
    (below, above, max)
}

/// [`tally`] for 16-bit keys, 32 at a time: unsigned compares give "at least lo" and "at most hi"
/// masks, one bit per key, whose bit counts are the counts below and above and whose AND marks
/// the keys inside. Those are compacted by their mask bytes ([`compact_groups_into`]) and only
/// they are histogrammed: no flags, and no branch per key or per few keys (about one key in 30
/// is inside, at random, so a branch on "any inside" would mispredict constantly).
///
/// At most [`BLOCK`] keys; `table` holds at least `hi - lo + 1` counters (else it panics).
///
/// # Safety
/// None beyond the token's proof that the CPU has AVX2, POPCNT and BMI1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1")]
unsafe fn tally_u16_avx2(
    _: Avx2PopcntBmi1,
    keys: &[u16],
    lo: u16,
    hi: u16,
    table: &mut [u32],
) -> (u32, u32, u16) {
    use std::arch::x86_64::*;
    assert!(keys.len() <= BLOCK);
    let (lo_lanes, hi_lanes) = (_mm256_set1_epi16(lo as i16), _mm256_set1_epi16(hi as i16));
    let mut max_lanes = _mm256_setzero_si256();
    let (mut below, mut above) = (0u32, 0u32);
    let mut bytes = [0u8; BLOCK / 8];
    let mut groups = keys.chunks_exact(32);
    for (group, out) in (&mut groups).zip(bytes.chunks_exact_mut(4)) {
        // SAFETY: `group` holds 32 keys: two unaligned 32-byte loads.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(group.as_ptr().cast()),
                _mm256_loadu_si256(group.as_ptr().add(16).cast()),
            )
        };
        let at_least_lo = |k| _mm256_cmpeq_epi16(_mm256_max_epu16(k, lo_lanes), k);
        let at_most_hi = |k| _mm256_cmpeq_epi16(_mm256_min_epu16(k, hi_lanes), k);
        max_lanes = _mm256_max_epu16(max_lanes, _mm256_max_epu16(a, b));
        // One bit per key, in key order (packs works per 128-bit lane: the permute undoes that).
        let bits = |x, y| {
            _mm256_movemask_epi8(_mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(
                x, y,
            ))) as u32
        };
        let lo_mask = bits(at_least_lo(a), at_least_lo(b));
        let hi_mask = bits(at_most_hi(a), at_most_hi(b));
        below += 32 - lo_mask.count_ones();
        above += 32 - hi_mask.count_ones();
        out.copy_from_slice(&(lo_mask & hi_mask).to_le_bytes());
    }
    let done = keys.len() - groups.remainder().len();
    let mut inside = [0u16; BLOCK];
    let kept = super::compact::compact_groups_into(&keys[..done], &mut inside[..done], &bytes[..done / 8]);
    for &k in &inside[..kept] {
        table[usize::from(k - lo)] += 1;
    }
    let mut lanes = [0u16; 16];
    // SAFETY: `lanes` is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), max_lanes) };
    let mut max = lanes.iter().copied().max().unwrap_or(0);
    for &k in groups.remainder() {
        below += u32::from(k < lo);
        above += u32::from(k > hi);
        max = max.max(k);
        if (lo..=hi).contains(&k) {
            table[usize::from(k - lo)] += 1;
        }
    }
    (below, above, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::keys::{order_stats, order_stats_of};
    use proptest::prelude::*;

    fn by_sorting<K: Key>(keys: &[K], prev: u64, next: u64) -> OrderStats<K> {
        crate::prune::keys::tests::stats_by_sorting(keys, prev as usize, next as usize)
    }

    /// Ranks `prev <= next` (one apart, or equal at the end, as a percentile asks for) of `n`.
    fn ranks(r: prop::sample::Index, n: usize) -> (u64, u64) {
        let prev = r.index(n) as u64;
        (prev, (prev + 1).min(n as u64 - 1))
    }

    /// Counts against `b` by brute force, and checks `counts` holds them.
    fn check_counts<K: Key>(
        keys: &[K],
        b: Bracket<K>,
        counts: &BracketCounts<K>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(counts.below, keys.iter().filter(|&&k| k < b.lo).count() as u64);
        prop_assert_eq!(counts.above, keys.iter().filter(|&&k| k > b.hi).count() as u64);
        let mut tally = std::collections::BTreeMap::new();
        keys.iter()
            .for_each(|k| *tally.entry(k.to_u64()).or_insert(0u64) += 1);
        for (i, &c) in counts.inside.iter().enumerate() {
            prop_assert_eq!(c, tally.get(&(b.lo.to_u64() + i as u64)).copied().unwrap_or(0));
        }
        prop_assert_eq!(counts.max, keys.iter().copied().max());
        Ok(())
    }

    /// Whatever the bracket, the order statistics it gives are right, and it gives them exactly
    /// when both ranks' keys lie inside it.
    fn check_stats<K: Key>(
        keys: &[K],
        b: Bracket<K>,
        counts: &BracketCounts<K>,
        prev: u64,
        next: u64,
    ) -> Result<(), TestCaseError> {
        let want = by_sorting(keys, prev, next);
        let inside = b.lo <= want.prev && want.next <= b.hi;
        match counts.order_stats(prev, next) {
            Some(got) => prop_assert_eq!(got, want),
            None => prop_assert!(!inside, "bracket {:?} holds {:?} yet gave nothing", b, want),
        }
        Ok(())
    }

    /// Counts against the bracket between `ends` are exact, and so are the statistics it gives.
    fn check_any_bracket<K: Key>(
        keys: &[K],
        ends: (K, K),
        r: prop::sample::Index,
    ) -> Result<(), TestCaseError> {
        let b = Bracket {
            lo: ends.0.min(ends.1),
            hi: ends.0.max(ends.1),
        };
        let counts = count_bracket(keys, &|&k: &K| k, b);
        check_counts(keys, b, &counts)?;
        // Both part counters, each called explicitly: portable, and AVX2 where the CPU has it.
        for simd in [None, Avx2PopcntBmi1::detect()] {
            let mut table = vec![0u32; counts.inside.len()];
            let part = count_part_on(simd, keys, &|&k: &K| k, b, &mut table);
            prop_assert_eq!(
                (part.below, part.above, part.max),
                (counts.below, counts.above, counts.max)
            );
            prop_assert!(
                table.iter().zip(&counts.inside).all(|(&t, &c)| u64::from(t) == c),
                "{:?}",
                simd
            );
        }
        let (prev, next) = ranks(r, keys.len());
        check_stats(keys, b, &counts, prev, next)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn counts_are_exact_for_any_bracket_u16(
            keys in prop::collection::vec(prop_oneof![0u16..40, any::<u16>(), Just(0x7fff)], 1..6000),
            ends in (any::<u16>(), any::<u16>()),
            r in any::<prop::sample::Index>(),
        ) {
            check_any_bracket(&keys, ends, r)?;
        }

        #[test]
        fn counts_are_exact_for_any_bracket_u8(
            keys in prop::collection::vec(any::<u8>(), 1..3000),
            ends in (any::<u8>(), any::<u8>()),
            r in any::<prop::sample::Index>(),
        ) {
            check_any_bracket(&keys, ends, r)?;
        }

        /// A sampled bracket, over keys from narrow (heavy ties) to wide, sorted or not: the
        /// statistics are right whenever given, and given for keys spread at random.
        #[test]
        fn sampled_brackets_give_exact_statistics(
            keys in prop::collection::vec(any::<u16>(), RUN_LEN..20_000),
            spread in prop::sample::select(vec![1u16, 3, 1000, u16::MAX]),
            sorted in any::<bool>(),
            r in any::<prop::sample::Index>(),
        ) {
            let mut keys: Vec<u16> = keys.iter().map(|k| k % spread.max(1)).collect();
            if sorted {
                keys.sort();
            }
            let (prev, next) = ranks(r, keys.len());
            let b = sampled_bracket(&keys, &|&k: &u16| k, prev, next, keys.len() as u64);
            prop_assert!(b.lo <= b.hi);
            let counts = count_bracket(&keys, &|&k: &u16| k, b);
            check_stats(&keys, b, &counts, prev, next)?;
        }

        /// `scale` and `remove` turn the counts of distinct items into those of items with
        /// multiplicities, as block sparsity uses them.
        #[test]
        fn scaled_counts_with_removals_are_weighted_counts(
            keys in prop::collection::vec(0u16..500, 1..3000),
            factor in 2u64..6,
            short in prop::collection::vec(any::<bool>(), 3000),
            ends in (0u16..500, 0u16..500),
            r in any::<prop::sample::Index>(),
        ) {
            let b = Bracket { lo: ends.0.min(ends.1), hi: ends.0.max(ends.1) };
            let mut counts = count_bracket(&keys, &|&k: &u16| k, b);
            counts.scale(factor).unwrap();
            // Every marked key covers one item less (never none: the largest key stays).
            let weight = |i: usize| if short[i] { factor - 1 } else { factor };
            for (i, &k) in keys.iter().enumerate() {
                if short[i] {
                    counts.remove(k, 1).unwrap();
                }
            }
            let expanded: Vec<u16> = keys.iter().enumerate().flat_map(|(i, &k)| std::iter::repeat_n(k, weight(i) as usize)).collect();
            prop_assume!(!expanded.is_empty());
            let (prev, next) = ranks(r, expanded.len());
            check_stats(&expanded, b, &counts, prev, next)?;
        }
    }

    /// Keys that nothing in the sample represents: every sampled place holds 0, everything else a
    /// spread of large keys. The bracket misses, and `order_stats_of` still answers exactly (from
    /// its full histogram).
    #[test]
    fn a_misleading_sample_falls_back_to_the_full_histogram() {
        let n = MIN_KEYS + 12_345;
        let mut keys: Vec<u16> = (0..n as u64)
            .map(|i| 1000 + (splitmix64(i) % 30_000) as u16)
            .collect();
        let starts = (n - RUN_LEN + 1) as u64;
        for r in 0..RUNS as u64 {
            let start = (splitmix64(r) % starts) as usize;
            keys[start..start + RUN_LEN].fill(0);
        }
        let key = |&k: &u16| k;
        let (prev, next) = (n as u64 / 2, n as u64 / 2 + 1);
        let b = sample_bracket(&keys, &key, prev, next, n as u64).expect("large enough");
        assert_eq!(
            count_bracket(&keys, &key, b).order_stats(prev, next),
            None,
            "the sample should mislead"
        );
        let generic = order_stats(|| keys.iter().map(|&k| (k, 1)), n as u64, prev, next);
        assert_eq!(order_stats_of(&keys, key, prev, next), generic);
    }

    /// Large tensors take the bracket: normal-like magnitudes at several quantiles, a tensor that
    /// is mostly zeros, and one holding a single value; always the generic selection's answer.
    #[test]
    fn large_tensors_agree_with_the_generic_selection() {
        let n = MIN_KEYS + 777;
        let normal: Vec<u16> = (0..n as u64)
            .map(|i| {
                let s = splitmix64(i);
                // A sum of four uniforms: bell-shaped, with ties from the narrow range.
                let g: u64 = (0..4).map(|j| (s >> (16 * j)) & 0x0fff).sum();
                g.abs_diff(8190) as u16
            })
            .collect();
        let zeros: Vec<u16> = normal
            .iter()
            .enumerate()
            .map(|(i, &k)| if i % 10 < 7 { 0 } else { k })
            .collect();
        let flat = vec![0x3c00u16; n];
        let key = |&k: &u16| k;
        for keys in [&normal, &zeros, &flat] {
            for prev in [
                0,
                1,
                n as u64 / 100,
                n as u64 / 2,
                n as u64 * 7 / 10,
                n as u64 - 2,
            ] {
                let next = prev + 1;
                let generic = order_stats(|| keys.iter().map(|&k| (k, 1)), n as u64, prev, next);
                let b = sample_bracket(keys, &key, prev, next, n as u64).expect("large enough");
                let counts = count_bracket(keys, &key, b);
                if keys == &normal {
                    assert!(
                        counts.order_stats(prev, next).is_some(),
                        "a random-like tensor should not miss (rank {prev})"
                    );
                }
                assert_eq!(order_stats_of(keys, key, prev, next), generic, "rank {prev}");
            }
        }
    }
}
