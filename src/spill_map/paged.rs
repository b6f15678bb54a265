//! Append-mostly stores bounded in memory (issue 18): a vector of fixed-size records
//! ([`PagedVec`]) and a buffer of texts ([`PagedText`]). Each is held in memory, as a plain `Vec`
//! or `String`, until it passes a limit; then its bytes move to an unlinked scratch file and are
//! read and written through a small cache of pages, the least recently used written back and
//! dropped first. Reads take `&self` (the cache is behind a lock), so a store can be shared with
//! other threads.
//!
//! Nothing here is mapped: mapped pages would count in the resident size this bounds.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hashbrown::HashMap;

use crate::error::{Error, IoContext, Result};

/// Bytes read or written back at a time.
const PAGE: usize = 16 << 10;

/// Bytes a store holds in memory before it moves to a file.
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 20;

/// Pages a store on disk keeps in memory (256 KiB).
pub const DEFAULT_CACHE_PAGES: usize = 16;

/// Where a store goes once it passes its memory limit, and how much of it stays cached there.
#[derive(Debug, Clone)]
pub struct Spill {
    /// Where the scratch file is created (unlinked); the system temporary folder when `None`.
    pub dir: Option<PathBuf>,
    pub memory_limit: usize,
    pub cache_pages: usize,
}

impl Default for Spill {
    fn default() -> Self {
        Spill {
            dir: None,
            memory_limit: super::memory_override().unwrap_or(DEFAULT_MEMORY_LIMIT),
            cache_pages: DEFAULT_CACHE_PAGES,
        }
    }
}

impl Spill {
    /// The default limits, the files in `dir` (the system temporary folder when `None`).
    pub fn in_dir(dir: Option<&Path>) -> Self {
        Spill {
            dir: dir.map(Path::to_path_buf),
            ..Spill::default()
        }
    }

    fn open(&self, bytes: &[u8]) -> Result<PageFile> {
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let file = tempfile::tempfile_in(&dir).at(&dir)?;
        file.write_all_at(bytes, 0).at(&dir)?;
        Ok(PageFile {
            file,
            dir,
            cache: Mutex::new(PageCache {
                capacity: self.cache_pages.max(1),
                slots: Vec::new(),
                index: HashMap::new(),
                tick: 0,
                file_len: bytes.len() as u64,
            }),
        })
    }
}

/// Bytes in an unlinked file, through a cache of pages.
#[derive(Debug)]
struct PageFile {
    file: File,
    /// Where the file was created, for error messages (it has no name).
    dir: PathBuf,
    cache: Mutex<PageCache>,
}

#[derive(Debug)]
struct PageCache {
    capacity: usize,
    slots: Vec<Slot>,
    /// Page number to slot.
    index: HashMap<u64, usize>,
    tick: u64,
    /// Bytes in the file: pages past it were never written back and read as zeros.
    file_len: u64,
}

#[derive(Debug)]
struct Slot {
    page: u64,
    bytes: Box<[u8]>,
    dirty: bool,
    used: u64,
}

/// The part of a byte range that lies in one page.
struct PageSpan {
    page: u64,
    /// Where it starts in the page ...
    within: usize,
    /// ... and in the range.
    done: usize,
    len: usize,
}

impl PageSpan {
    fn within(&self) -> std::ops::Range<usize> {
        self.within..self.within + self.len
    }

    fn bytes(&self) -> std::ops::Range<usize> {
        self.done..self.done + self.len
    }
}

/// The range of `len` bytes at `at`, page by page.
fn page_spans(at: u64, len: usize) -> impl Iterator<Item = PageSpan> {
    let mut done = 0;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let position = at + done as u64;
            let (page, within) = (position / PAGE as u64, (position % PAGE as u64) as usize);
            let span = PageSpan {
                page,
                within,
                done,
                len: (PAGE - within).min(len - done),
            };
            done += span.len;
            span
        })
    })
}

impl PageFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, PageCache> {
        // The cache is consistent between statements: a panic elsewhere leaves it usable.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Copies the bytes at `at` into `out`.
    fn read(&self, at: u64, out: &mut [u8]) -> Result<()> {
        let mut cache = self.lock();
        for span in page_spans(at, out.len()) {
            let slot = cache.slot(self, span.page)?;
            out[span.bytes()].copy_from_slice(&slot.bytes[span.within()]);
        }
        Ok(())
    }

    /// Stores `data` at `at`.
    fn write(&self, at: u64, data: &[u8]) -> Result<()> {
        let mut cache = self.lock();
        for span in page_spans(at, data.len()) {
            let slot = cache.slot(self, span.page)?;
            slot.bytes[span.within()].copy_from_slice(&data[span.bytes()]);
            slot.dirty = true;
        }
        Ok(())
    }
}

impl PageCache {
    /// The slot holding `page`, read in (after writing back the least recently used) if absent.
    fn slot(&mut self, file: &PageFile, page: u64) -> Result<&mut Slot> {
        self.tick += 1;
        let tick = self.tick;
        let i = match self.index.get(&page) {
            Some(&i) => i,
            None => {
                let i = if self.slots.len() < self.capacity {
                    self.slots.push(Slot {
                        page,
                        bytes: vec![0; PAGE].into_boxed_slice(),
                        dirty: false,
                        used: tick,
                    });
                    self.slots.len() - 1
                } else {
                    let (i, _) = (self.slots.iter().enumerate())
                        .min_by_key(|(_, s)| s.used)
                        .expect("a cache holds a page");
                    let old = &mut self.slots[i];
                    if old.dirty {
                        let at = old.page * PAGE as u64;
                        file.file.write_all_at(&old.bytes, at).at(&file.dir)?;
                        self.file_len = self.file_len.max(at + PAGE as u64);
                        old.dirty = false;
                    }
                    self.index.remove(&old.page);
                    old.page = page;
                    i
                };
                let start = page * PAGE as u64;
                let stored = self.file_len.saturating_sub(start).min(PAGE as u64) as usize;
                let slot = &mut self.slots[i];
                file.file
                    .read_exact_at(&mut slot.bytes[..stored], start)
                    .at(&file.dir)?;
                slot.bytes[stored..].fill(0);
                self.index.insert(page, i);
                i
            }
        };
        let slot = &mut self.slots[i];
        slot.used = tick;
        Ok(slot)
    }
}

/// A record of a fixed size in bytes, as a [`PagedVec`] stores it.
pub trait Record: Copy {
    /// At most 64.
    const SIZE: usize;
    fn put(&self, out: &mut [u8]);
    fn take(bytes: &[u8]) -> Self;
}

impl Record for u32 {
    const SIZE: usize = 4;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_le_bytes());
    }
    fn take(bytes: &[u8]) -> Self {
        u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

/// A vector of records, held until it passes its memory limit, then in a file.
#[derive(Debug)]
pub struct PagedVec<T> {
    held: Vec<T>,
    disk: Option<PageFile>,
    len: usize,
    spill: Spill,
}

impl<T: Record> PagedVec<T> {
    pub fn new(spill: Spill) -> Self {
        assert!(T::SIZE <= 64, "records of at most 64 bytes");
        PagedVec {
            held: Vec::new(),
            disk: None,
            len: 0,
            spill,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the records are in a file.
    pub fn on_disk(&self) -> bool {
        self.disk.is_some()
    }

    pub fn push(&mut self, record: T) -> Result<()> {
        match &self.disk {
            None if (self.len + 1) * T::SIZE <= self.spill.memory_limit => self.held.push(record),
            None => {
                let mut bytes = vec![0; self.len * T::SIZE];
                for (r, out) in self.held.iter().zip(bytes.chunks_exact_mut(T::SIZE)) {
                    r.put(out);
                }
                self.disk = Some(self.spill.open(&bytes)?);
                self.held = Vec::new();
                return self.push(record);
            }
            Some(disk) => {
                let mut buf = [0; 64];
                record.put(&mut buf[..T::SIZE]);
                disk.write((self.len * T::SIZE) as u64, &buf[..T::SIZE])?;
            }
        }
        self.len += 1;
        Ok(())
    }

    /// Record `index`, `None` past the last.
    pub fn get(&self, index: usize) -> Result<Option<T>> {
        if index >= self.len {
            return Ok(None);
        }
        match &self.disk {
            None => Ok(Some(self.held[index])),
            Some(disk) => {
                let mut buf = [0; 64];
                disk.read((index * T::SIZE) as u64, &mut buf[..T::SIZE])?;
                Ok(Some(T::take(&buf[..T::SIZE])))
            }
        }
    }

    /// Replaces record `index`, which must exist.
    pub fn set(&mut self, index: usize, record: T) -> Result<()> {
        assert!(index < self.len, "record {index} of {}", self.len);
        match &self.disk {
            None => self.held[index] = record,
            Some(disk) => {
                let mut buf = [0; 64];
                record.put(&mut buf[..T::SIZE]);
                disk.write((index * T::SIZE) as u64, &buf[..T::SIZE])?;
            }
        }
        Ok(())
    }

    /// The records held in memory, when they are (tests and fast paths).
    pub fn held(&self) -> Option<&[T]> {
        self.disk.is_none().then_some(&self.held[..])
    }

    pub fn shrink_to_fit(&mut self) {
        self.held.shrink_to_fit();
    }
}

/// Where one text lies in a [`PagedText`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextSpan {
    pub start: u32,
    pub len: u32,
}

/// Many short texts in one buffer, held until it passes its memory limit, then in a file.
#[derive(Debug)]
pub struct PagedText {
    held: String,
    disk: Option<PageFile>,
    len: u32,
    spill: Spill,
}

impl PagedText {
    pub fn new(spill: Spill) -> Self {
        PagedText {
            held: String::new(),
            disk: None,
            len: 0,
            spill,
        }
    }

    /// Whether the texts are in a file.
    pub fn on_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Appends `text`; `Ok(None)` once the buffer would pass 4 GiB.
    pub fn push(&mut self, text: &str) -> Result<Option<TextSpan>> {
        let Some(len) = u32::try_from(text.len()).ok() else {
            return Ok(None);
        };
        let start = self.len;
        let Some(end) = start.checked_add(len) else {
            return Ok(None);
        };
        match &self.disk {
            None if end as usize <= self.spill.memory_limit => self.held.push_str(text),
            None => {
                self.disk = Some(self.spill.open(self.held.as_bytes())?);
                self.held = String::new();
                return self.push(text);
            }
            Some(disk) => disk.write(start.into(), text.as_bytes())?,
        }
        self.len = end;
        Ok(Some(TextSpan { start, len }))
    }

    /// The text at `span`, a span this buffer handed out.
    pub fn get(&self, span: TextSpan) -> Result<Cow<'_, str>> {
        let range = span.start as usize..(span.start + span.len) as usize;
        match &self.disk {
            // Spans are made by `push` from whole `&str`s: in range, on char boundaries.
            None => Ok(Cow::Borrowed(&self.held[range])),
            Some(disk) => {
                let mut bytes = vec![0; range.len()];
                disk.read(span.start.into(), &mut bytes)?;
                String::from_utf8(bytes).map(Cow::Owned).map_err(|_| {
                    let e =
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "a text read back is not UTF-8");
                    Error::io(&disk.dir, e)
                })
            }
        }
    }

    pub fn shrink_to_fit(&mut self) {
        self.held.shrink_to_fit();
    }
}

/// The folder a store spills to, from an optional path (for callers that have one).
pub fn spill_in(dir: Option<&Path>) -> Spill {
    Spill {
        dir: dir.map(Path::to_owned),
        ..Spill::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Row {
        a: u32,
        b: u64,
        c: u8,
    }

    impl Record for Row {
        const SIZE: usize = 13; // does not divide a page: rows straddle pages
        fn put(&self, out: &mut [u8]) {
            out[..4].copy_from_slice(&self.a.to_le_bytes());
            out[4..12].copy_from_slice(&self.b.to_le_bytes());
            out[12] = self.c;
        }
        fn take(bytes: &[u8]) -> Self {
            Row {
                a: u32::from_le_bytes(bytes[..4].try_into().unwrap()),
                b: u64::from_le_bytes(bytes[4..12].try_into().unwrap()),
                c: bytes[12],
            }
        }
    }

    fn row(i: usize) -> Row {
        Row {
            a: i as u32,
            b: (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            c: (i % 251) as u8,
        }
    }

    fn tiny(dir: &Path) -> Spill {
        Spill {
            dir: Some(dir.to_owned()),
            memory_limit: 1000,
            cache_pages: 3,
        }
    }

    #[test]
    fn records_on_disk_read_and_update_as_a_vec_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut paged = PagedVec::new(tiny(dir.path()));
        let mut plain = Vec::new();
        for i in 0..20_000 {
            paged.push(row(i)).unwrap();
            plain.push(row(i));
            // Updates of recent and of old records, as a use chain makes them.
            if i % 7 == 0 {
                let j = (i * 31) % plain.len();
                let changed = row(i + j + 1_000_000);
                paged.set(j, changed).unwrap();
                plain[j] = changed;
            }
            if i % 1999 == 0 {
                for (k, r) in plain.iter().enumerate().step_by(13) {
                    assert_eq!(paged.get(k).unwrap(), Some(*r), "row {k} after {i}");
                }
            }
        }
        assert!(paged.on_disk() && paged.held().is_none());
        assert_eq!(paged.len(), plain.len());
        // Backwards: every read a miss in a cache of three pages.
        for (k, r) in plain.iter().enumerate().rev() {
            assert_eq!(paged.get(k).unwrap(), Some(*r));
        }
        assert_eq!(paged.get(plain.len()).unwrap(), None);
        // The unlinked file leaves no name behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn records_under_the_limit_stay_held() {
        let mut paged = PagedVec::new(Spill::default());
        for i in 0..100 {
            paged.push(row(i)).unwrap();
        }
        paged.set(5, row(500)).unwrap();
        assert!(!paged.on_disk());
        assert_eq!(paged.held().unwrap()[5], row(500));
        assert_eq!(paged.get(99).unwrap(), Some(row(99)));
    }

    #[test]
    fn texts_on_disk_read_back_as_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let mut paged = PagedText::new(tiny(dir.path()));
        let mut texts = Vec::new();
        for i in 0..5_000 {
            // Some texts longer than a page, some empty, some not ASCII.
            let text = match i % 4 {
                0 => format!("layer_{i}_weight"),
                1 => String::new(),
                2 => format!("naïve_{i}"),
                _ => "x".repeat(i % 9000),
            };
            let span = paged.push(&text).unwrap().unwrap();
            texts.push((span, text));
        }
        assert!(paged.on_disk());
        for (span, text) in texts.iter().rev() {
            assert_eq!(paged.get(*span).unwrap(), text.as_str());
        }
        assert_eq!(paged.get(TextSpan::default()).unwrap(), "");
    }

    #[test]
    fn texts_under_the_limit_are_borrowed() {
        let mut paged = PagedText::new(Spill::default());
        let span = paged.push("w_sparsified").unwrap().unwrap();
        assert!(matches!(paged.get(span).unwrap(), Cow::Borrowed("w_sparsified")));
    }
}
