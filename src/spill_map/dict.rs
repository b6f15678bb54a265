//! A map from byte strings to byte strings, bounded in memory like [`SpillMap`]: the entries are
//! records of a [`SpillLog`], found through a [`SpillMap`] from a seeded hash of the key to the
//! record's position. Insert-only, first writer wins, like the map.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;

use super::log::SpillLog;
use super::SpillMap;
use crate::error::{Error, Result};

pub struct SpillDict {
    /// Hash of a key → position of its record.
    index: SpillMap<8>,
    /// Further records under a hash already in `index` (different keys; the seed is random, so
    /// no input can aim at them).
    collided: HashMap<u64, Vec<u64>>,
    /// Records: key length and value length (4 bytes each, little-endian), key, value.
    log: SpillLog,
    seed: u64,
    /// The key hash; a test swaps in a constant one to force collisions.
    hash: fn(&[u8], u64) -> u64,
}

impl SpillDict {
    pub fn new_in(dir: Option<&Path>) -> Self {
        SpillDict {
            index: SpillMap::new_in(dir),
            collided: HashMap::new(),
            log: SpillLog::new_in(dir),
            seed: RandomState::new().hash_one(0u8),
            hash: xxhash_rust::xxh3::xxh3_64_with_seed,
        }
    }

    /// A dict that keeps almost nothing in memory (other modules' tests).
    #[cfg(test)]
    pub(crate) fn with_tiny_memory() -> Self {
        SpillDict {
            index: SpillMap::with_limit(None, 8),
            log: SpillLog::with_memory(None, 64),
            ..SpillDict::new_in(None)
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        (self.hash)(key, self.seed)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let hash = self.hash(key);
        self.find(hash, key)
    }

    /// The value under `key` (hashed to `hash`), looked up through the index once.
    fn find(&self, hash: u64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(first) = self.index.get(hash)? else {
            return Ok(None);
        };
        let first = u64::from_le_bytes(first);
        let later = self.collided.get(&hash).into_iter().flatten();
        for &position in std::iter::once(&first).chain(later) {
            if let Some(value) = self.value_if_key(position, key)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// The value stored under `key` if there is one; otherwise stores `value` under it and
    /// answers `None`. One lookup where a `get` then an `insert_new` take two.
    pub fn get_or_insert(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        let hash = self.hash(key);
        let held = self.index.get(hash)?.is_some();
        if held {
            if let Some(found) = self.find(hash, key)? {
                return Ok(Some(found));
            }
        }
        let position = self.append(key, value)?;
        if held {
            self.collided.entry(hash).or_default().push(position);
        } else {
            self.index.insert_new(hash, position.to_le_bytes())?;
        }
        Ok(None)
    }

    fn append(&mut self, key: &[u8], value: &[u8]) -> Result<u64> {
        let too_long = || Error::Graph("a deduplication key or value of 4 GiB or more".into());
        let key_len = u32::try_from(key.len()).map_err(|_| too_long())?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_long())?;
        self.log
            .append(&[&key_len.to_le_bytes(), &value_len.to_le_bytes(), key, value])
    }

    /// Stores `value` under `key`, which the dict must not hold yet (callers ask first).
    pub fn insert_new(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let position = self.append(key, value)?;
        let hash = self.hash(key);
        if self.index.get(hash)?.is_some() {
            self.collided.entry(hash).or_default().push(position);
        } else {
            self.index.insert_new(hash, position.to_le_bytes())?;
        }
        Ok(())
    }

    /// The value of the record at `position` if its key is `key`.
    fn value_if_key(&self, position: u64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut lengths = [0u8; 8];
        self.log.read(position, &mut lengths)?;
        let key_len = u32::from_le_bytes(lengths[..4].try_into().expect("four bytes")) as usize;
        let value_len = u32::from_le_bytes(lengths[4..].try_into().expect("four bytes")) as usize;
        if key_len != key.len() {
            return Ok(None);
        }
        let mut record = vec![0u8; key_len + value_len];
        self.log.read(position + 8, &mut record)?;
        if &record[..key_len] != key {
            return Ok(None);
        }
        record.drain(..key_len);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_their_whole_key() {
        let mut dict = SpillDict::new_in(None);
        dict.log = SpillLog::with_memory(None, 100);
        let key = |i: u32| format!("key {i}").into_bytes();
        for i in 0..5_000 {
            assert_eq!(dict.get(&key(i)).unwrap(), None);
            dict.insert_new(&key(i), &i.to_le_bytes().repeat((i % 5) as usize))
                .unwrap();
        }
        for i in 0..5_000 {
            assert_eq!(
                dict.get(&key(i)).unwrap(),
                Some(i.to_le_bytes().repeat((i % 5) as usize))
            );
        }
        assert_eq!(dict.get(b"key").unwrap(), None);
        assert_eq!(dict.get(b"").unwrap(), None);
        dict.insert_new(b"", b"empty key").unwrap();
        assert_eq!(dict.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]));
    }

    #[test]
    fn get_or_insert_keeps_the_first_value_also_under_one_hash() {
        let mut colliding = SpillDict::with_tiny_memory();
        colliding.hash = |_, _| 7;
        for mut dict in [SpillDict::with_tiny_memory(), colliding] {
            for i in 0..300u32 {
                let key = format!("k{i}");
                assert_eq!(
                    dict.get_or_insert(key.as_bytes(), &i.to_le_bytes()).unwrap(),
                    None
                );
                let again = dict.get_or_insert(key.as_bytes(), b"later").unwrap();
                assert_eq!(again, Some(i.to_le_bytes().to_vec()));
            }
            assert_eq!(dict.get(b"k299").unwrap(), Some(299u32.to_le_bytes().to_vec()));
        }
    }

    #[test]
    fn keys_under_one_hash_are_told_apart_by_their_bytes() {
        let mut dict = SpillDict::new_in(None);
        dict.log = SpillLog::with_memory(None, 16);
        dict.hash = |_, _| 7;
        let keys = [&b"a"[..], b"b", b"ab", b"ba", b""];
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(dict.get(key).unwrap(), None);
            dict.insert_new(key, &[i as u8]).unwrap();
        }
        assert_eq!(dict.collided[&7].len(), keys.len() - 1);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(dict.get(key).unwrap(), Some(vec![i as u8]), "{key:?}");
        }
        assert_eq!(dict.get(b"c").unwrap(), None);
    }
}
