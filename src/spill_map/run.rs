//! One sorted run of a [`super::SpillMap`]: entries `(key, value)` in ascending key order, packed
//! in an unlinked file as `key` (8 bytes, little-endian) then the value, in pages of whole
//! entries. In memory it keeps the first key of every page and a Bloom filter.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::bloom::Bloom;
use crate::error::{IoContext, Result};

/// Bytes read for one lookup: a page holds as many whole entries as fit.
const PAGE_BYTES: usize = 4096;

/// Bytes read at a time when a run is read whole (to merge it).
const STREAM_BYTES: usize = 64 << 10;

pub struct Run<const V: usize> {
    file: File,
    /// Where the file was created, for error messages (it has no name).
    dir: PathBuf,
    len: usize,
    /// The first key of each page.
    fences: Vec<u64>,
    bloom: Bloom,
}

impl<const V: usize> Run<V> {
    const ENTRY: usize = 8 + V;
    const PER_PAGE: usize = if PAGE_BYTES / Self::ENTRY == 0 {
        1
    } else {
        PAGE_BYTES / Self::ENTRY
    };

    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes `len` entries, in ascending key order, to a new run in `dir`.
    pub fn write(
        dir: Option<&Path>,
        len: usize,
        entries: impl Iterator<Item = Result<(u64, [u8; V])>>,
    ) -> Result<Self> {
        let dir = dir.map_or_else(std::env::temp_dir, Path::to_owned);
        let file = tempfile::tempfile_in(&dir).at(&dir)?;
        let mut out = BufWriter::with_capacity(STREAM_BYTES, file);
        let mut fences = Vec::with_capacity(len.div_ceil(Self::PER_PAGE));
        let mut bloom = Bloom::for_entries(len);
        let mut written = 0;
        let mut last = None;
        for entry in entries {
            let (key, value) = entry?;
            debug_assert!(last.is_none_or(|l| l < key), "run keys ascend");
            last = Some(key);
            if written % Self::PER_PAGE == 0 {
                fences.push(key);
            }
            bloom.insert(key);
            out.write_all(&key.to_le_bytes()).at(&dir)?;
            out.write_all(&value).at(&dir)?;
            written += 1;
        }
        debug_assert_eq!(written, len);
        let file = out.into_inner().map_err(|e| e.into_error()).at(&dir)?;
        Ok(Run {
            file,
            dir,
            len: written,
            fences,
            bloom,
        })
    }

    /// One run holding the entries of both (whose keys are distinct); their files are closed.
    pub fn merge(dir: Option<&Path>, older: Run<V>, newer: Run<V>) -> Result<Self> {
        let len = older.len + newer.len;
        let mut a = older.entries().peekable();
        let mut b = newer.entries().peekable();
        let merged = std::iter::from_fn(|| {
            let take_a = match (a.peek(), b.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => true,
                (None, Some(_)) | (_, Some(Err(_))) => false,
                (Some(Ok((ka, _))), Some(Ok((kb, _)))) => ka < kb,
            };
            if take_a {
                a.next()
            } else {
                b.next()
            }
        });
        Run::write(dir, len, merged)
    }

    /// The value stored under `key`, reading at most one page.
    pub fn get(&self, key: u64) -> Result<Option<[u8; V]>> {
        if !self.bloom.may_hold(key) {
            return Ok(None);
        }
        let page = match self.fences.partition_point(|&first| first <= key) {
            0 => return Ok(None),
            after => after - 1,
        };
        let first = page * Self::PER_PAGE;
        let count = Self::PER_PAGE.min(self.len - first);
        let mut buf = [0u8; PAGE_BYTES];
        let bytes = &mut buf[..count * Self::ENTRY];
        self.file
            .read_exact_at(bytes, (first * Self::ENTRY) as u64)
            .at(&self.dir)?;
        let entry = |i: usize| &bytes[i * Self::ENTRY..(i + 1) * Self::ENTRY];
        let (mut low, mut high) = (0, count);
        while low < high {
            let middle = (low + high) / 2;
            match entry_key(entry(middle)).cmp(&key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(Some(entry_value(entry(middle)))),
            }
        }
        Ok(None)
    }

    /// Every entry in key order, read a block at a time; the file is closed when they are read.
    fn entries(self) -> impl Iterator<Item = Result<(u64, [u8; V])>> {
        let total = self.len * Self::ENTRY;
        let block = (STREAM_BYTES / Self::ENTRY).max(1) * Self::ENTRY;
        let mut buf = Vec::new();
        let (mut read, mut used) = (0usize, 0usize);
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || (used == buf.len() && read == total) {
                return None;
            }
            if used == buf.len() {
                let size = block.min(total - read);
                buf.resize(size, 0);
                if let Err(e) = self.file.read_exact_at(&mut buf, read as u64).at(&self.dir) {
                    failed = true;
                    return Some(Err(e));
                }
                read += size;
                used = 0;
            }
            let entry = &buf[used..used + Self::ENTRY];
            used += Self::ENTRY;
            Some(Ok((entry_key(entry), entry_value(entry))))
        })
    }
}

fn entry_key(entry: &[u8]) -> u64 {
    u64::from_le_bytes(entry[..8].try_into().expect("an entry starts with its key"))
}

fn entry_value<const V: usize>(entry: &[u8]) -> [u8; V] {
    entry[8..].try_into().expect("an entry holds one value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(keys: &[u64]) -> Run<4> {
        let entries = keys.iter().map(|&k| Ok((k, (k as u32).to_le_bytes())));
        Run::write(None, keys.len(), entries).unwrap()
    }

    #[test]
    fn a_lookup_finds_keys_on_every_page_and_nothing_between() {
        // 341 entries of 12 bytes a page: 3,000 keys span nine pages.
        let keys: Vec<u64> = (0..3_000).map(|i| i * 3 + 1).collect();
        let run = run_of(&keys);
        assert_eq!(run.fences.len(), 3_000usize.div_ceil(Run::<4>::PER_PAGE));
        for &k in &keys {
            assert_eq!(run.get(k).unwrap(), Some((k as u32).to_le_bytes()));
            assert_eq!(run.get(k + 1).unwrap(), None);
        }
        assert_eq!(run.get(0).unwrap(), None, "below the first key");
        assert_eq!(run.get(u64::MAX).unwrap(), None, "above the last key");
    }

    #[test]
    fn merging_interleaves_in_key_order() {
        let older = run_of(&(0..1_000).map(|i| i * 2).collect::<Vec<_>>());
        let newer = run_of(&(0..700).map(|i| i * 2 + 1).collect::<Vec<_>>());
        let merged = Run::merge(None, older, newer).unwrap();
        let expected: Vec<u64> = (0..1_400).chain((1_400..2_000).step_by(2)).collect();
        for &k in &expected {
            assert_eq!(merged.get(k).unwrap(), Some((k as u32).to_le_bytes()));
        }
        let keys: Vec<u64> = merged.entries().map(|e| e.unwrap().0).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn an_empty_run_holds_nothing() {
        let run = run_of(&[]);
        assert_eq!(run.get(0).unwrap(), None);
        assert_eq!(run.entries().count(), 0);
    }
}
