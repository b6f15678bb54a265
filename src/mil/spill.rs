//! The ops a walk changes, kept in a scratch file until it ends.
//!
//! A rewrite stores an op again for every pruned const and every const whose blob moved: in a
//! model of many small tensors that is nearly every const, as many bytes as the ops themselves.
//! Held in memory, they sat beside the graph index, the plan and the writer's tables for the whole
//! walk (issue 18: about a sixth of the peak at 80,000 tensors). The walk never reads them back (it
//! reads each op as it was read, see [`crate::mil::GraphView::op_bytes`]), so they wait on disk
//! and come back once the index is freed.
//!
//! The file is created unlinked ([`tempfile::tempfile_in`]), next to the output it is written for:
//! nothing is left behind, whatever ends the run.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::bytes::Bytes;
use prost::Message;
use smallvec::SmallVec;

use super::access::OpPath;
use crate::error::{Error, IoContext, Result};
use crate::proto::mil::Operation;

/// Changed ops in program order, each as `(path, encoded op)`: on disk while the walk goes on.
pub struct SpilledOps {
    file: BufWriter<File>,
    /// Named in errors: the folder holding the unlinked file.
    dir: PathBuf,
    /// The distinct (function, specialization) pairs of the paths, in order of first use; a record
    /// names its pair by index.
    blocks: Vec<(Arc<str>, Arc<str>)>,
    count: usize,
}

impl SpilledOps {
    /// An empty store, its file unlinked in `dir`.
    pub fn create_in(dir: &Path) -> Result<Self> {
        let file = tempfile::tempfile_in(dir).at(dir)?;
        Ok(SpilledOps {
            file: BufWriter::new(file),
            dir: dir.to_owned(),
            blocks: Vec::new(),
            count: 0,
        })
    }

    /// How many ops are stored.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `op` to replace the op at `path`. Record: block index, step count, steps, op length
    /// (all little-endian u64), then the encoded op.
    pub fn push(&mut self, path: &OpPath, op: &Operation) -> Result<()> {
        let block = self.block_index(path);
        let bytes = op.encode_to_vec();
        let mut head: SmallVec<[u64; 6]> = SmallVec::new();
        head.push(block as u64);
        head.push(path.steps.len() as u64);
        head.extend(path.steps.iter().map(|&s| s as u64));
        head.push(bytes.len() as u64);
        for word in head {
            self.file.write_all(&word.to_le_bytes()).at(&self.dir)?;
        }
        self.file.write_all(&bytes).at(&self.dir)?;
        self.count += 1;
        Ok(())
    }

    /// Every stored op with its path, in the order they were stored.
    pub fn read_back(self) -> Result<Vec<(OpPath, Bytes)>> {
        let SpilledOps {
            file,
            dir,
            blocks,
            count,
        } = self;
        let mut file = file.into_inner().map_err(|e| e.into_error()).at(&dir)?;
        file.seek(SeekFrom::Start(0)).at(&dir)?;
        let mut reader = Records {
            reader: BufReader::new(file),
            dir: &dir,
        };
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let (function, specialization) = blocks
                .get(reader.size()?)
                .cloned()
                .ok_or_else(|| reader.broken("names no block"))?;
            let steps = (0..reader.size()?)
                .map(|_| reader.size())
                .collect::<Result<SmallVec<[usize; 1]>>>()?;
            let mut bytes = vec![0u8; reader.size()?];
            reader.reader.read_exact(&mut bytes).at(&dir)?;
            let path = OpPath {
                function,
                specialization,
                steps,
            };
            out.push((path, Bytes::from(bytes)));
        }
        Ok(out)
    }

    fn block_index(&mut self, path: &OpPath) -> usize {
        let found = self
            .blocks
            .iter()
            .position(|(f, s)| *f == path.function && *s == path.specialization);
        found.unwrap_or_else(|| {
            self.blocks
                .push((path.function.clone(), path.specialization.clone()));
            self.blocks.len() - 1
        })
    }
}

/// Reads the records [`SpilledOps::push`] wrote.
struct Records<'a> {
    reader: BufReader<File>,
    dir: &'a Path,
}

impl Records<'_> {
    /// One head word, as a size or an index.
    fn size(&mut self) -> Result<usize> {
        let mut word = [0u8; 8];
        self.reader.read_exact(&mut word).at(self.dir)?;
        usize::try_from(u64::from_le_bytes(word)).map_err(|_| self.broken("holds a size past usize"))
    }

    /// The file read back is not what was written (only a failing disk or another process could
    /// make it so).
    fn broken(&self, what: &str) -> Error {
        Error::Graph(format!(
            "the scratch file of changed ops in {} {what}",
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
        assert_eq!(spilled.len(), stored.len());
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
    fn an_empty_store_reads_back_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spilled = SpilledOps::create_in(dir.path()).unwrap();
        assert!(spilled.is_empty());
        assert!(spilled.read_back().unwrap().is_empty());
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = SpilledOps::create_in(&gone).err().unwrap().to_string();
        assert!(err.contains("gone"), "{err}");
    }
}
