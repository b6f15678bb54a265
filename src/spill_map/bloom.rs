//! The Bloom filter of a run: about one byte per entry, so that a lookup of a key a run does not
//! hold (most lookups: the callers ask before they insert) reads nothing from disk in about 97 % of
//! cases.

/// Filter bits per entry.
const BITS_PER_ENTRY: usize = 8;

/// Bits set per key: with 8 bits per entry, 4 probes give about a 2.4 % false-positive rate.
const PROBES: u64 = 4;

pub struct Bloom {
    words: Box<[u64]>,
}

impl Bloom {
    pub fn for_entries(entries: usize) -> Self {
        let bits = entries.saturating_mul(BITS_PER_ENTRY).max(64);
        Bloom {
            words: vec![0; bits.div_ceil(64)].into_boxed_slice(),
        }
    }

    pub fn insert(&mut self, key: u64) {
        for bit in self.bits(key) {
            self.words[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// False only for keys never inserted.
    pub fn may_hold(&self, key: u64) -> bool {
        self.bits(key)
            .all(|bit| self.words[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// The bits of `key`, by double hashing of a mixed key (keys may be plain offsets, with all
    /// their entropy in a few bits).
    fn bits(&self, key: u64) -> impl Iterator<Item = usize> {
        let mixed = mix(key);
        let (first, step) = (mixed & 0xffff_ffff, (mixed >> 32) | 1);
        let bits = self.words.len() as u64 * 64;
        (0..PROBES).map(move |i| (first.wrapping_add(i.wrapping_mul(step)) % bits) as usize)
    }
}

/// SplitMix64's finalizer: every input bit reaches every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_held_and_few_others_seem_to_be() {
        let mut bloom = Bloom::for_entries(10_000);
        for key in (0..10_000u64).map(|i| i * 64) {
            bloom.insert(key);
        }
        assert!((0..10_000u64).all(|i| bloom.may_hold(i * 64)));
        let false_positives = (0..10_000u64).filter(|i| bloom.may_hold(i * 64 + 1)).count();
        assert!(false_positives < 400, "{false_positives} of 10,000");
    }
}
