//! An append-only log of byte records, in memory up to a bound and then in an unlinked file, read
//! back by position.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Bytes held in memory before the log moves to a file ...
const MEMORY_BYTES: usize = 2 << 20;
/// ... and, once it has, bytes gathered before they are written.
const WRITE_BYTES: usize = 64 << 10;

pub struct SpillLog {
    /// Records from position `tail_start` on, not written to the file yet (all of them while
    /// there is no file).
    tail: Vec<u8>,
    tail_start: u64,
    file: Option<File>,
    dir: Option<PathBuf>,
    memory_bytes: usize,
}

impl SpillLog {
    pub fn new_in(dir: Option<&Path>) -> Self {
        Self::with_memory(dir, super::memory_override().unwrap_or(MEMORY_BYTES))
    }

    pub(super) fn with_memory(dir: Option<&Path>, memory_bytes: usize) -> Self {
        SpillLog {
            tail: Vec::new(),
            tail_start: 0,
            file: None,
            dir: dir.map(Path::to_owned),
            memory_bytes,
        }
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Appends the concatenation of `parts` and returns its position.
    pub fn append(&mut self, parts: &[&[u8]]) -> Result<u64> {
        let position = self.tail_start + self.tail.len() as u64;
        for part in parts {
            self.tail.extend_from_slice(part);
        }
        let limit = if self.file.is_some() {
            WRITE_BYTES
        } else {
            self.memory_bytes
        };
        if self.tail.len() >= limit {
            self.write_tail()?;
        }
        Ok(position)
    }

    fn write_tail(&mut self) -> Result<()> {
        let dir = self.dir();
        let file = match &mut self.file {
            Some(file) => file,
            none => none.insert(tempfile::tempfile_in(&dir).at(&dir)?),
        };
        file.write_all_at(&self.tail, self.tail_start).at(&dir)?;
        self.tail_start += self.tail.len() as u64;
        self.tail.clear();
        if self.tail.capacity() > 2 * WRITE_BYTES {
            self.tail = Vec::with_capacity(WRITE_BYTES);
        }
        Ok(())
    }

    /// Fills `buf` with the bytes at `position` (which earlier appends wrote).
    pub fn read(&self, position: u64, buf: &mut [u8]) -> Result<()> {
        let end = position + buf.len() as u64;
        let from_tail = if end <= self.tail_start {
            0
        } else {
            (end - self.tail_start.max(position)) as usize
        };
        let (on_disk, in_tail) = buf.split_at_mut(buf.len() - from_tail);
        if !on_disk.is_empty() {
            let file = self.file.as_ref().expect("bytes before the tail are in the file");
            file.read_exact_at(on_disk, position).at(self.dir())?;
        }
        if from_tail > 0 {
            let at = (position + on_disk.len() as u64 - self.tail_start) as usize;
            in_tail.copy_from_slice(&self.tail[at..at + from_tail]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_from_memory_from_disk_and_across_both() {
        let mut log = SpillLog::with_memory(None, 1000);
        let mut written = Vec::new();
        for i in 0..20_000u32 {
            let record: Vec<u8> = (0..i % 37).map(|b| (b ^ i) as u8).collect();
            let position = log.append(&[&i.to_le_bytes(), &record]).unwrap();
            written.push((position, i, record));
        }
        assert!(log.file.is_some() && !log.tail.is_empty(), "both places in use");
        for (position, i, record) in &written {
            let mut buf = vec![0; 4 + record.len()];
            log.read(*position, &mut buf).unwrap();
            assert_eq!(&buf[..4], &i.to_le_bytes());
            assert_eq!(&buf[4..], &record[..]);
        }
        // A read spanning the file's end and the tail's start.
        let mut all = vec![0; (log.tail_start + 10) as usize];
        log.read(0, &mut all).unwrap();
        assert_eq!(&all[..4], &0u32.to_le_bytes());
    }
}
