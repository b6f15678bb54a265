//! What a walk changes, kept in a scratch file until it ends: the ops it stores again and the
//! uses it rebinds.
//!
//! A rewrite stores an op again for every pruned const and every const whose blob moved, and
//! renames the output of every pruned const: in a model of many small tensors that is nearly every
//! const, as many bytes as the ops themselves. Held in memory, they sat beside the graph index, the
//! plan and the writer's tables for the whole walk (issue 18: a fifth of the peak at 80,000
//! tensors). The walk never reads them back (it reads each op as it was read, see
//! [`crate::mil::GraphView::op_bytes`]), so they wait on disk and come back once the index is
//! freed.
//!
//! Each file is created unlinked ([`tempfile::tempfile_in`]), next to the output it is written
//! for: nothing is left behind, whatever ends the run.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::bytes::Bytes;
use prost::Message;
use smallvec::SmallVec;

use super::access::OpPath;
use super::names::NameList;
use super::renames::RenameMap;
use crate::error::{Error, IoContext, Result};
use crate::proto::mil::Operation;

/// Changed ops in program order, each as `(path, encoded op)`.
pub struct SpilledOps {
    scratch: Scratch,
    /// The distinct function and specialization names of the paths; a record names them by index.
    names: SharedNames,
}

impl SpilledOps {
    /// An empty store, its file unlinked in `dir`.
    pub fn create_in(dir: &Path) -> Result<Self> {
        Ok(SpilledOps {
            scratch: Scratch::create_in(dir)?,
            names: SharedNames::default(),
        })
    }

    /// Stores `op` to replace the op at `path`.
    pub fn push(&mut self, path: &OpPath, op: &Operation) -> Result<()> {
        let function = self.names.index(&path.function);
        let specialization = self.names.index(&path.specialization);
        let s = &mut self.scratch;
        s.word(function)?;
        s.word(specialization)?;
        s.word(path.steps.len())?;
        for &step in &path.steps {
            s.word(step)?;
        }
        s.field(&op.encode_to_vec())?;
        s.end_record();
        Ok(())
    }

    /// Every stored op with its path, in the order they were stored (tests compare them whole).
    #[cfg(test)]
    pub fn read_back(self) -> Result<Vec<(OpPath, Bytes)>> {
        self.records()?.collect()
    }

    /// Every stored op with its path, in the order they were stored, read one at a time: each
    /// goes into the output while the rest waits on disk (held all at once, the paths and handles
    /// alone took 72 bytes an op).
    pub fn records(self) -> Result<ChangedOps> {
        let SpilledOps { scratch, names } = self;
        let records = scratch.into_records()?;
        Ok(ChangedOps {
            left: records.count,
            records,
            names,
        })
    }
}

/// The ops of a [`SpilledOps`], read back in order.
pub struct ChangedOps {
    records: Records,
    names: SharedNames,
    left: usize,
}

impl ChangedOps {
    fn read_one(&mut self) -> Result<(OpPath, Bytes)> {
        let records = &mut self.records;
        let function = self.names.get(records.word()?, records)?;
        let specialization = self.names.get(records.word()?, records)?;
        let steps = (0..records.word()?)
            .map(|_| records.word())
            .collect::<Result<SmallVec<[usize; 1]>>>()?;
        let op = Bytes::from(records.field()?);
        let path = OpPath {
            function,
            specialization,
            steps,
        };
        Ok((path, op))
    }
}

impl Iterator for ChangedOps {
    type Item = Result<(OpPath, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = self.read_one();
        if item.is_err() {
            // A broken file ends the read.
            self.left = 0;
        }
        Some(item)
    }
}

/// Renames in the order they were made, each as `(function, old output, new output)`.
pub struct SpilledRenames {
    scratch: Scratch,
    functions: SharedNames,
}

impl SpilledRenames {
    /// An empty store, its file unlinked in `dir`.
    pub fn create_in(dir: &Path) -> Result<Self> {
        Ok(SpilledRenames {
            scratch: Scratch::create_in(dir)?,
            functions: SharedNames::default(),
        })
    }

    /// Records that uses of `old` in `function` are to read `new`.
    pub fn push(&mut self, function: &Arc<str>, old: &str, new: &str) -> Result<()> {
        let function = self.functions.index(function);
        let s = &mut self.scratch;
        s.word(function)?;
        s.field(old.as_bytes())?;
        s.field(new.as_bytes())?;
        s.end_record();
        Ok(())
    }

    /// Every rename, in the order they were made (tests compare them whole).
    #[cfg(test)]
    pub fn read_back(self) -> Result<Vec<(Arc<str>, String, String)>> {
        let mut out = Vec::new();
        self.for_each(|function, old, new| {
            out.push((function.clone(), old.to_owned(), new.to_owned()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every rename, straight into a [`RenameMap`] (which refuses an old name renamed twice),
    /// whose scratch files go in `dir`.
    pub fn read_back_into_map(self, dir: Option<&Path>) -> Result<RenameMap> {
        let mut map = RenameMap::new_in(dir);
        self.for_each(|function, old, new| map.insert(function, old, new))?;
        Ok(map)
    }

    fn for_each(self, mut f: impl FnMut(&Arc<str>, &str, &str) -> Result<()>) -> Result<()> {
        let SpilledRenames { scratch, functions } = self;
        let mut records = scratch.into_records()?;
        for _ in 0..records.count {
            let function = functions.get(records.word()?, &records)?;
            let old = records.text()?;
            let new = records.text()?;
            f(&function, &old, &new)?;
        }
        Ok(())
    }
}

/// Names a store's records refer to by index (functions, specializations: a handful per model),
/// so that records read back share them as the index's paths do.
#[derive(Default)]
struct SharedNames(NameList);

impl SharedNames {
    fn index(&mut self, name: &Arc<str>) -> usize {
        self.0.number(name)
    }

    fn get(&self, index: usize, records: &Records) -> Result<Arc<str>> {
        self.0
            .get(index)
            .cloned()
            .ok_or_else(|| records.broken("names a name it never stored"))
    }
}

/// An unlinked file of records: little-endian u64 words and length-prefixed fields.
struct Scratch {
    file: BufWriter<File>,
    /// Named in errors: the folder holding the file.
    dir: PathBuf,
    records: usize,
}

impl Scratch {
    fn create_in(dir: &Path) -> Result<Self> {
        let file = tempfile::tempfile_in(dir).at(dir)?;
        Ok(Scratch {
            file: BufWriter::new(file),
            dir: dir.to_owned(),
            records: 0,
        })
    }

    fn word(&mut self, word: usize) -> Result<()> {
        self.file.write_all(&(word as u64).to_le_bytes()).at(&self.dir)
    }

    fn field(&mut self, bytes: &[u8]) -> Result<()> {
        self.word(bytes.len())?;
        self.file.write_all(bytes).at(&self.dir)
    }

    fn end_record(&mut self) {
        self.records += 1;
    }

    /// The records written, read from the start.
    fn into_records(self) -> Result<Records> {
        let Scratch { file, dir, records } = self;
        let mut file = file.into_inner().map_err(|e| e.into_error()).at(&dir)?;
        file.seek(SeekFrom::Start(0)).at(&dir)?;
        Ok(Records {
            reader: BufReader::new(file),
            dir,
            count: records,
        })
    }
}

/// Reads back what [`Scratch`] wrote.
struct Records {
    reader: BufReader<File>,
    dir: PathBuf,
    count: usize,
}

impl Records {
    /// One word, as a size or an index.
    fn word(&mut self) -> Result<usize> {
        let mut word = [0u8; 8];
        self.reader.read_exact(&mut word).at(&self.dir)?;
        usize::try_from(u64::from_le_bytes(word)).map_err(|_| self.broken("holds a size past usize"))
    }

    fn field(&mut self) -> Result<Vec<u8>> {
        let len = self.word()?;
        // Grown as read: a length gone wrong ends the read, not the memory.
        let mut bytes = Vec::with_capacity(len.min(1 << 20));
        (&mut self.reader)
            .take(len as u64)
            .read_to_end(&mut bytes)
            .at(&self.dir)?;
        if bytes.len() != len {
            return Err(self.broken("ends inside a record"));
        }
        Ok(bytes)
    }

    fn text(&mut self) -> Result<String> {
        String::from_utf8(self.field()?).map_err(|_| self.broken("holds a name that is not UTF-8"))
    }

    /// The file read back is not what was written (only a failing disk or another process could
    /// make it so).
    fn broken(&self, what: &str) -> Error {
        Error::Graph(format!(
            "a scratch file of the rewrite in {} {what}",
            self.dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::ops::decode_op;

    fn op(name: &str) -> Operation {
        Operation {
            r#type: format!("type_of_{name}"),
            ..Default::default()
        }
    }

    fn path(function: &str, specialization: &str, steps: &[usize]) -> OpPath {
        OpPath {
            function: function.into(),
            specialization: specialization.into(),
            steps: steps.iter().copied().collect(),
        }
    }

    #[test]
    fn gives_back_every_op_with_its_path_in_order_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut spilled = SpilledOps::create_in(dir.path()).unwrap();
        let stored = [
            (path("main", "CoreML8", &[3]), op("a")),
            (path("main", "CoreML8", &[7, 1, 0]), op("b")),
            (path("other", "CoreML8", &[0]), op("")),
            (path("main", "CoreML7", &[2, 0, 4, 1, 9]), op("d")),
            (path("main", "CoreML8", &[1]), op("e")),
        ];
        for (p, o) in &stored {
            spilled.push(p, o).unwrap();
        }
        // Unlinked: nothing in the folder for a commit to publish or a failure to leave behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let back = spilled.read_back().unwrap();
        assert_eq!(back.len(), stored.len());
        for ((p, o), (q, bytes)) in stored.iter().zip(&back) {
            assert_eq!(p, q);
            assert_eq!(&decode_op(bytes).unwrap(), o);
        }
        // Paths of one block share their names, as the index's do.
        assert!(Arc::ptr_eq(&back[0].0.function, &back[1].0.function));
    }

    #[test]
    fn gives_back_every_rename_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spilled = SpilledRenames::create_in(dir.path()).unwrap();
        let (main, other): (Arc<str>, Arc<str>) = ("main".into(), "other".into());
        let made = [
            (main.clone(), "w", "w_sparsified"),
            (other.clone(), "w", "w_sparsified"),
            (main.clone(), "dup", "w"),
            (main.clone(), "", "naïve"),
        ];
        for (f, old, new) in &made {
            spilled.push(f, old, new).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let back = spilled.read_back().unwrap();
        let expected: Vec<(Arc<str>, String, String)> = made
            .iter()
            .map(|(f, o, n)| (f.clone(), o.to_string(), n.to_string()))
            .collect();
        assert_eq!(back, expected);

        let mut again = SpilledRenames::create_in(dir.path()).unwrap();
        for (f, old, new) in &made {
            again.push(f, old, new).unwrap();
        }
        let map = again.read_back_into_map(None).unwrap();
        assert_eq!(map.len(), made.len());
        for (f, old, new) in &made {
            assert_eq!(map.get(f, old).unwrap().as_deref(), Some(*new));
        }
        let mut twice = SpilledRenames::create_in(dir.path()).unwrap();
        twice.push(&main, "w", "a").unwrap();
        twice.push(&main, "w", "b").unwrap();
        assert!(twice.read_back_into_map(None).is_err());
    }

    #[test]
    fn an_empty_store_reads_back_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spilled = SpilledOps::create_in(dir.path()).unwrap();
        assert!(spilled.read_back().unwrap().is_empty());
        let renames = SpilledRenames::create_in(dir.path()).unwrap();
        assert!(renames.read_back().unwrap().is_empty());
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = SpilledOps::create_in(&gone).err().unwrap().to_string();
        assert!(err.contains("gone"), "{err}");
    }
}
