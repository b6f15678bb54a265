//! Ops read again from `model.mlmodel` instead of held in memory.
//!
//! The program keeps every op as a slice of the file read, so the whole file stays in memory for
//! the run: at 80,000 tensors, a third of the peak (issue 18). Once the graph index is built, the
//! engine moves the ops to the file: each op's place in it is recorded with a check of its bytes,
//! the program's op lists are emptied and the file read is dropped. Ops are then read back from
//! the open file, through two read-ahead windows (the walk and the reader thread each go through
//! the program in order), and at the end the output's bodies are assembled from them, op by op
//! ([`crate::mil::assemble`]).
//!
//! The file is the one opened at load, so a path renamed meanwhile does not matter; bytes that
//! differ from the check (the file changed in place) make the read fail, and
//! [`ChangeWatch`] says why.

use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::bytes::Bytes;

use super::fault::Fault;
use crate::blob::ReadAt;
use crate::error::{Error, Result};
use crate::spill_map::paged::{PagedVec, Record, Spill};

/// Bytes read ahead on a miss: most ops are a few hundred bytes.
const WINDOW: usize = 256 << 10;

/// Where one op's bytes lie in the file, and a check of them ([`op_check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpPlace {
    pub offset: u64,
    pub len: u32,
    pub check: u32,
}

impl Record for OpPlace {
    const SIZE: usize = 16;
    fn put(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..16].copy_from_slice(&self.check.to_le_bytes());
    }
    fn take(bytes: &[u8]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        OpPlace {
            offset: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            len: u32_at(8),
            check: u32_at(12),
        }
    }
}

/// The check of an op's bytes kept with its place: what the file must still hold when it is read
/// back. `hasher` is the op file's.
pub fn op_check(hasher: &RandomState, bytes: &[u8]) -> u32 {
    hasher.hash_one(bytes) as u32
}

/// The top-level ops of one function body, as a range of the op file's list of them.
#[derive(Debug, Clone)]
pub struct BodyOps {
    pub function: Arc<str>,
    pub specialization: Arc<str>,
    pub ops: Range<usize>,
}

/// A piece of the file read ahead.
#[derive(Debug)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
}

#[derive(Debug)]
pub struct OpFile {
    file: Arc<File>,
    /// Its size when the ops were moved to it: a window stops there.
    file_len: u64,
    label: PathBuf,
    /// By op index of the graph (past a MiB, in a scratch file).
    places: PagedVec<OpPlace>,
    /// The op indices of the function bodies' own ops, body after body.
    top: PagedVec<u32>,
    bodies: Vec<BodyOps>,
    hasher: RandomState,
    /// Most recently used last.
    windows: Mutex<Vec<Window>>,
    changed: Arc<AtomicBool>,
    /// Where a failed read of `places` or `top` is kept (the graph index's).
    fault: Fault,
}

/// Whether an [`OpFile`] found its file changed, kept by a caller that outlives it.
#[derive(Debug, Clone)]
pub struct ChangeWatch {
    changed: Arc<AtomicBool>,
    label: PathBuf,
}

impl ChangeWatch {
    /// The error to report instead of whatever failed, once a read found the file changed.
    pub fn error_if_changed(&self) -> Option<Error> {
        self.changed
            .load(Ordering::Relaxed)
            .then(|| changed_error(&self.label))
    }
}

fn changed_error(label: &std::path::Path) -> Error {
    Error::Model {
        path: label.to_owned(),
        reason: "changed while mlprune was reading it (its ops no longer match what was read)".into(),
    }
}

/// The place of `op` inside `file` (the buffer it was decoded from), if it is a slice of it.
pub fn place_in(file: &Bytes, op: &Bytes) -> Option<(u64, u32)> {
    let base = file.as_ptr() as usize;
    let start = (op.as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(op.len())?;
    (end <= file.len()).then_some((start as u64, u32::try_from(op.len()).ok()?))
}

impl OpFile {
    /// The ops of `file`, none entered yet: the graph index enters each as it reads it
    /// ([`OpFile::enter`]). `hasher` made the checks of the places read at load; `fault` keeps
    /// what a read of the places met, for the reads that answer `None` ([`OpFile::read`]).
    /// `spill` says when the places move to a scratch file.
    pub fn open(file: Arc<File>, label: PathBuf, hasher: RandomState, fault: Fault, spill: &Spill) -> Self {
        OpFile {
            file_len: ReadAt::size(&*file),
            file,
            label,
            places: PagedVec::new(spill.clone()),
            top: PagedVec::new(spill.clone()),
            bodies: Vec::new(),
            hasher,
            windows: Mutex::new(Vec::new()),
            changed: Arc::new(AtomicBool::new(false)),
            fault,
        }
    }

    /// The check of `bytes`, as [`OpFile::enter`] takes it.
    pub fn check(&self, bytes: &[u8]) -> u32 {
        op_check(&self.hasher, bytes)
    }

    /// Enters the next op of the index at `place`; a function body's own op also as the next op of
    /// that body.
    pub fn enter(&mut self, place: OpPlace, body: Option<(&Arc<str>, &Arc<str>)>) -> Result<()> {
        let index = self.places.len() as u32;
        self.places.push(place)?;
        let Some((function, specialization)) = body else {
            return Ok(());
        };
        let same_body = self.bodies.last().is_some_and(|b| {
            Arc::ptr_eq(&b.function, function) && Arc::ptr_eq(&b.specialization, specialization)
        });
        if !same_body {
            self.bodies.push(BodyOps {
                function: function.clone(),
                specialization: specialization.clone(),
                ops: self.top.len()..self.top.len(),
            });
        }
        self.top.push(index)?;
        if let Some(body) = self.bodies.last_mut() {
            body.ops.end = self.top.len();
        }
        Ok(())
    }

    /// Frees what the ops entered took beyond their number.
    pub fn shrink_to_fit(&mut self) {
        self.places.shrink_to_fit();
        self.top.shrink_to_fit();
    }

    /// The bytes at `place`, if the file still holds what was checked there.
    pub fn read_place(&self, place: OpPlace) -> Option<Bytes> {
        let bytes = self.read_range(place);
        if bytes.is_none() {
            self.changed.store(true, Ordering::Relaxed);
        }
        bytes
    }

    /// Forgets what was read ahead, so that the next reads go to the file.
    #[cfg(test)]
    pub fn forget_read_ahead(&self) {
        self.windows.lock().unwrap().clear();
    }

    /// The error for a read that found the file changed.
    pub fn changed_error(&self) -> Error {
        changed_error(&self.label)
    }

    /// The bytes of op `index`, as they were when the index was built; `None` if the file no
    /// longer holds them (see [`OpFile::watch`]).
    pub fn read(&self, index: usize) -> Option<Bytes> {
        self.read_place(self.place(index)?)
    }

    /// The place of op `index`; `None` past the last op, or when reading it failed (kept as the
    /// fault).
    fn place(&self, index: usize) -> Option<OpPlace> {
        self.places.get(index).unwrap_or_else(|e| {
            self.fault.record(e);
            None
        })
    }

    /// How many bytes op `index` is stored as, without reading it.
    pub fn len_of(&self, index: usize) -> Option<u32> {
        self.place(index).map(|place| place.len)
    }

    fn read_range(&self, range: OpPlace) -> Option<Bytes> {
        let bytes = if range.len as usize > WINDOW / 2 {
            // An op owning a large nested block: read on its own, not through a window it would
            // fill (and keep) with a second copy of itself.
            let mut bytes = vec![0; range.len as usize];
            ReadAt::read_exact_at(&*self.file, &mut bytes, range.offset).ok()?;
            Bytes::from(bytes)
        } else {
            self.read_through_window(range)?
        };
        (self.check(&bytes) == range.check).then_some(bytes)
    }

    fn read_through_window(&self, range: OpPlace) -> Option<Bytes> {
        let len = range.len as usize;
        let end = range.offset.checked_add(len as u64)?;
        let within = |w: &Window| range.offset >= w.start && end <= w.start + w.bytes.len() as u64;
        let copy = |w: &Window| {
            let at = (range.offset - w.start) as usize;
            Bytes::copy_from_slice(&w.bytes[at..at + len])
        };
        let found = {
            let mut windows = self.windows.lock().ok()?;
            let hit = windows.iter().position(within);
            hit.map(|i| {
                let window = windows.remove(i);
                let bytes = copy(&window);
                windows.push(window);
                bytes
            })
        };
        match found {
            Some(bytes) => Some(bytes),
            None => {
                let size = self.file_len.saturating_sub(range.offset).min(WINDOW as u64);
                let mut window = Window {
                    start: range.offset,
                    bytes: vec![0; size as usize],
                };
                ReadAt::read_exact_at(&*self.file, &mut window.bytes, range.offset).ok()?;
                if !within(&window) {
                    return None;
                }
                let bytes = copy(&window);
                let mut windows = self.windows.lock().ok()?;
                if windows.len() == 2 {
                    windows.remove(0);
                }
                windows.push(window);
                Some(bytes)
            }
        }
    }

    /// A handle that tells whether a read found the file changed since it was read at load.
    pub fn watch(&self) -> ChangeWatch {
        ChangeWatch {
            changed: self.changed.clone(),
            label: self.label.clone(),
        }
    }

    /// The function bodies' own ops: which function, which specialization, which of `top`.
    pub fn body_ops(&self) -> &[BodyOps] {
        &self.bodies
    }

    /// Op `k` of body `body` (see [`OpFile::body_ops`]), as it was read.
    pub fn read_top(&self, body: usize, k: usize) -> Result<Bytes> {
        let index = match self.bodies.get(body) {
            Some(b) if k < b.ops.len() => self.top.get(b.ops.start + k)?,
            _ => None,
        }
        .ok_or_else(|| Error::Graph(format!("no op {k} in body {body}")))?;
        let place = self
            .places
            .get(index as usize)?
            .ok_or_else(|| self.changed_error())?;
        self.read_place(place).ok_or_else(|| self.changed_error())
    }

    /// Fills the program's function bodies again, each with its ops read from the file, except
    /// those `replaced` says the caller puts in place itself (left empty).
    #[cfg(test)]
    pub fn restore(
        &self,
        program: &mut crate::proto::mil::Program,
        replaced: impl Fn(usize) -> bool,
    ) -> Result<()> {
        for body in &self.bodies {
            let block = program
                .functions
                .get_mut(&*body.function)
                .and_then(|f| f.block_specializations.get_mut(&*body.specialization))
                .ok_or_else(|| Error::Graph(format!("no function '{}'", body.function)))?;
            let mut ops = Vec::with_capacity(body.ops.len());
            for k in body.ops.clone() {
                let index = self.top.get(k)?.expect("a body's op") as usize;
                if replaced(index) {
                    ops.push(Bytes::new());
                } else {
                    ops.push(self.read(index).ok_or_else(|| self.changed_error())?);
                }
            }
            block.operations = ops;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of three "ops": small, larger than a window's half (read on its own), small.
    fn ops_file(dir: &std::path::Path) -> (PathBuf, Vec<u8>, Vec<(u64, u32)>) {
        let sizes = [300usize, WINDOW / 2 + 1, 40];
        let mut bytes = Vec::new();
        let mut places = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            bytes.extend_from_slice(&[0xAA; 7]); // what lies between ops in a real file
            places.push((bytes.len() as u64, size as u32));
            bytes.extend((0..size).map(|b| (b * 31 + i) as u8));
        }
        let path = dir.join("model.mlmodel");
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes, places)
    }

    fn open(path: &std::path::Path, bytes: &[u8], places: &[(u64, u32)]) -> OpFile {
        let file = Arc::new(File::open(path).unwrap());
        let mut ops = OpFile::open(
            file,
            path.to_owned(),
            RandomState::new(),
            Fault::default(),
            &Spill::default(),
        );
        let (function, specialization): (Arc<str>, Arc<str>) = ("main".into(), "CoreML7".into());
        for &(offset, len) in places {
            let check = ops.check(&bytes[offset as usize..offset as usize + len as usize]);
            let place = OpPlace { offset, len, check };
            ops.enter(place, Some((&function, &specialization))).unwrap();
        }
        assert_eq!(ops.body_ops().len(), 1);
        assert_eq!(ops.body_ops()[0].ops, 0..3);
        ops
    }

    #[test]
    fn small_and_large_ops_read_back_as_they_were_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes, places) = ops_file(dir.path());
        let ops = open(&path, &bytes, &places);
        for index in [2, 0, 1, 1, 0, 2] {
            let (at, len) = places[index];
            let expected = &bytes[at as usize..at as usize + len as usize];
            assert_eq!(ops.read(index).as_deref(), Some(expected), "op {index}");
        }
        assert!(ops.read(3).is_none());
        assert!(ops.watch().error_if_changed().is_none());
    }

    #[test]
    fn a_large_op_changed_in_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes, places) = ops_file(dir.path());
        let ops = open(&path, &bytes, &places);
        let inside_large = places[1].0 as usize + 1000;
        bytes[inside_large] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        assert!(ops.read(1).is_none());
        let error = ops.watch().error_if_changed().unwrap().to_string();
        assert!(error.contains("changed while mlprune was reading it"), "{error}");
    }
}
