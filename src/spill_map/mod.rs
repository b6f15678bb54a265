//! A map from `u64` keys to fixed-size values that keeps a bounded part in memory and the rest in
//! sorted runs on disk (issue 18: peak memory bounded whatever the tensor count).
//!
//! The walk's per-blob tables (the writer's store-once table, the copy map of blobs carried over)
//! grow by one entry per blob: a model of hundreds of thousands of small tensors took tens of MiB
//! for them alone. Here a table is an ordinary hash map until it holds [`SpillMap::memtable_limit`]
//! entries; then those are sorted by key into a run, an unlinked scratch file, and the map starts
//! empty again. A lookup asks the hash map, then each run: a run keeps in memory only the first key
//! of each page and a Bloom filter of about one byte per entry, so a key it does not hold costs
//! nothing but a few bit tests, and one it holds costs one page read. Runs of similar size are
//! merged (each is at least twice the size of the next newer one), so a map of `n` entries has
//! `log2(n / limit)` runs at most and each entry is rewritten that many times.
//!
//! Entries are only ever added, each under a key the map does not hold yet: that is how the
//! callers use them (first writer wins), and it keeps every key in one place, so a lookup stops at
//! the first hit and merging never has to choose between two values.

mod bloom;
mod dict;
mod log;
mod numbering;
pub mod paged;
mod run;

pub use dict::SpillDict;
pub use log::SpillLog;
pub use numbering::Numbering;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hashbrown::HashMap;

use crate::error::Result;
use run::Run;

/// `MLPRUNE_SCRATCH_BYTES`, when set to a number: the bytes every scratch store (these maps, their
/// dicts and logs, [`paged`] stores) keeps in memory before it moves to its files, in place of its
/// own default. Outputs are the same whatever it is; tests set it small to drive every store
/// through its files in a whole run (`tests/hostile/scaling.rs`).
pub(crate) fn memory_override() -> Option<usize> {
    static OVERRIDE: OnceLock<Option<usize>> = OnceLock::new();
    *OVERRIDE.get_or_init(|| std::env::var("MLPRUNE_SCRATCH_BYTES").ok()?.trim().parse().ok())
}

/// Entries held in memory before they go to a run: a `u64 → [u8; 8]` table of this many takes
/// about 2 MiB (a hash table of 2^17 slots of 17 bytes).
const DEFAULT_MEMTABLE_LIMIT: usize = 114_688;

pub struct SpillMap<const V: usize> {
    memtable: HashMap<u64, [u8; V]>,
    memtable_limit: usize,
    /// Oldest (largest) first.
    runs: Vec<Run<V>>,
    /// Where run files are created (unlinked); the system temporary folder when `None`.
    dir: Option<PathBuf>,
}

impl<const V: usize> SpillMap<V> {
    /// An empty map whose runs, if it ever needs them, are unlinked files in `dir`.
    pub fn new_in(dir: Option<&Path>) -> Self {
        // About 16 bytes an entry in the hash map.
        let limit = memory_override().map_or(DEFAULT_MEMTABLE_LIMIT, |bytes| bytes / 16);
        Self::with_limit(dir, limit)
    }

    /// An empty map whose runs go next to `path`, the file its entries describe (on the same file
    /// system as the output, not in a possibly small system temporary folder).
    pub fn beside(path: &Path) -> Self {
        Self::new_in(path.parent().filter(|dir| !dir.as_os_str().is_empty()))
    }

    /// An empty map holding at most `memtable_limit` entries in memory (tests force runs so).
    pub(crate) fn with_limit(dir: Option<&Path>, memtable_limit: usize) -> Self {
        SpillMap {
            memtable: HashMap::new(),
            memtable_limit: memtable_limit.max(1),
            runs: Vec::new(),
            dir: dir.map(Path::to_owned),
        }
    }

    /// Entries held in memory before they are written to a run.
    pub fn memtable_limit(&self) -> usize {
        self.memtable_limit
    }

    /// Makes room for `additional` more entries in memory, up to what the map ever holds there.
    pub fn reserve(&mut self, additional: usize) {
        let room = self.memtable_limit.saturating_sub(self.memtable.len());
        self.memtable.reserve(additional.min(room));
    }

    pub fn len(&self) -> usize {
        self.memtable.len() + self.runs.iter().map(Run::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value stored under `key`.
    pub fn get(&self, key: u64) -> Result<Option<[u8; V]>> {
        if let Some(value) = self.memtable.get(&key) {
            return Ok(Some(*value));
        }
        // Newest first: recent keys are the likeliest to be asked again.
        for run in self.runs.iter().rev() {
            if let Some(value) = run.get(key)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Stores `value` under `key`, which the map must not hold yet (callers ask [`SpillMap::get`]
    /// first).
    pub fn insert_new(&mut self, key: u64, value: [u8; V]) -> Result<()> {
        debug_assert!(matches!(self.get(key), Ok(None)), "key {key} stored twice");
        self.memtable.insert(key, value);
        if self.memtable.len() >= self.memtable_limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Stores `value` under `key` unless the map holds `key` already; whether it stored it (the
    /// insert of a set).
    pub fn insert_if_new(&mut self, key: u64, value: [u8; V]) -> Result<bool> {
        if self.get(key)?.is_some() {
            return Ok(false);
        }
        self.insert_new(key, value)?;
        Ok(true)
    }

    /// Writes the memtable to a new run, then merges runs until each is at least twice the size of
    /// the next newer one.
    fn spill(&mut self) -> Result<()> {
        let mut entries: Vec<(u64, [u8; V])> = self.memtable.drain().collect();
        // The drained table keeps its slots for the next entries.
        entries.sort_unstable_by_key(|&(key, _)| key);
        let run = Run::write(self.dir.as_deref(), entries.len(), entries.into_iter().map(Ok))?;
        self.runs.push(run);
        while let [.., older, newer] = &self.runs[..] {
            if older.len() >= 2 * newer.len() {
                break;
            }
            let newer = self.runs.pop().expect("two runs");
            let older = self.runs.pop().expect("two runs");
            self.runs.push(Run::merge(self.dir.as_deref(), older, newer)?);
        }
        Ok(())
    }

    /// How many runs are on disk (tests check the merging).
    #[cfg(test)]
    fn run_count(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(key: u64) -> [u8; 8] {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x55).to_le_bytes()
    }

    /// A key sequence with no order a run could profit from.
    fn scrambled(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| i.wrapping_mul(0xd6e8_feb8_6659_fd93).rotate_left(17))
    }

    #[test]
    fn every_entry_is_found_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = SpillMap::<8>::with_limit(Some(dir.path()), 100);
        let keys: Vec<u64> = scrambled(5_000).collect();
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(map.get(key).unwrap(), None);
            map.insert_new(key, value(key)).unwrap();
            // Everything stored so far is still there, whether in memory or in a run.
            if i % 397 == 0 {
                for &k in &keys[..=i] {
                    assert_eq!(map.get(k).unwrap(), Some(value(k)), "key {k} after {i}");
                }
            }
        }
        assert_eq!(map.len(), keys.len());
        for &key in &keys {
            assert_eq!(map.get(key).unwrap(), Some(value(key)));
        }
        for key in scrambled(5_000).map(|k| k ^ 1) {
            if !keys.contains(&key) {
                assert_eq!(map.get(key).unwrap(), None, "key {key} was never stored");
            }
        }
        // The unlinked run files leave no name behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn runs_are_merged_to_a_logarithmic_count() {
        let mut map = SpillMap::<8>::with_limit(None, 64);
        for key in scrambled(64 * 1000) {
            map.insert_new(key, value(key)).unwrap();
        }
        // 1000 spills: binary-counter merging keeps at most log2(1000) + 1 runs.
        assert!(map.run_count() <= 10, "{} runs", map.run_count());
        for key in scrambled(64 * 1000).step_by(101) {
            assert_eq!(map.get(key).unwrap(), Some(value(key)));
        }
    }

    #[test]
    fn keys_at_the_ends_of_the_range_and_wide_values() {
        let mut map = SpillMap::<24>::with_limit(None, 3);
        let keys = [0, u64::MAX, 1, u64::MAX - 1, 1 << 63, 42, 7, 8, 9, 10];
        for (i, &key) in keys.iter().enumerate() {
            let mut v = [0u8; 24];
            v[0] = i as u8;
            v[23] = !(i as u8);
            map.insert_new(key, v).unwrap();
        }
        for (i, &key) in keys.iter().enumerate() {
            let v = map.get(key).unwrap().unwrap();
            assert_eq!((v[0], v[23]), (i as u8, !(i as u8)));
        }
        assert_eq!(map.get(2).unwrap(), None);
        assert_eq!(map.get(u64::MAX - 2).unwrap(), None);
    }

    #[test]
    fn the_memtable_reserves_no_more_than_its_limit() {
        let mut map = SpillMap::<8>::with_limit(None, 1000);
        map.reserve(usize::MAX / 2);
        assert!(map.memtable.capacity() < 4096);
    }
}
