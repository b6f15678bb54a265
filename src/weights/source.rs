//! Reading a weight tensor's values, from an immediate `TensorValue` or from `weight.bin`.
//!
//! Everything a file says is checked before use: the declared tensor type must have a known dtype
//! and a fully known shape whose element count fits, and the stored data must agree with both.

use std::fs::File;
use std::path::Path;

use crate::blob::{count_zero_elements, BlobReader, ReadThreads};
use crate::dtype::ScalarType;
use crate::error::{Error, IoContext, Result};
use crate::mil::value::{decode_immediate, element_count, TensorTypeExt, ValueExt};
use crate::open_file::{open_regular_or_err, Links};
use crate::package::Package;
use crate::proto::mil::Value;
use crate::tensor::TensorData;
use crate::weights::mapped::MappedTensor;

/// Declared type of a tensor value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: ScalarType,
    pub shape: Vec<u64>,
    pub count: u64,
}

impl TensorMeta {
    /// The declared dtype and shape of `value`; `None` when it is not a numeric tensor with a known
    /// shape (strings, lists, symbolic shapes), which mlprune never rewrites.
    pub fn of(value: &Value) -> Option<TensorMeta> {
        let ty = value.tensor_type()?;
        let dtype = ty.scalar_type()?;
        let shape = ty.shape()?;
        let count = element_count(&shape)?;
        Some(TensorMeta { dtype, shape, count })
    }

    /// Stored size in bytes (bit-packed for sub-byte types), `None` on overflow.
    pub fn storage_bytes(&self) -> Option<u64> {
        self.dtype.storage_bytes(self.count)
    }
}

/// Reads tensor values of one package.
pub struct WeightSource {
    blobs: Option<BlobReader<File>>,
    /// `weight.bin`'s version when it was opened, to tell whether it was written to since.
    opened: Option<FileVersion>,
}

/// What changes when a file is written to: its size and its modification time. Not its change
/// time, which a new hard link, a mode or an extended attribute (set by a backup or an indexer)
/// changes too, without touching a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileVersion {
    fn of(file: &File) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        Ok(FileVersion {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

impl WeightSource {
    /// Opens the package's `weight.bin` if it has one; errors name it as the user knows it. The
    /// table of the blob records read keeps its scratch files in `scratch` (the system temporary
    /// folder when `None`).
    pub fn open(package: &Package, scratch: Option<&Path>) -> Result<Self> {
        let blobs = match package.weight_file() {
            Some(path) => {
                let label = package.display_path(&path);
                // Never blocking on a FIFO swapped in for it, and only a regular file read.
                let file = open_regular_or_err(&path, Links::Follow).at(&label)?;
                let version = FileVersion::of(&file).at(&label)?;
                Some((BlobReader::new(file, label)?.scratch_in(scratch), version))
            }
            None => None,
        };
        let (blobs, opened) = blobs.unzip();
        Ok(WeightSource { blobs, opened })
    }

    /// The declared type of `value` and how many of its elements are zero. A sub-byte blob is
    /// counted on its packed bytes: read to a byte per element, a uint1 weight took 9 times its
    /// bytes in `inspect` (red team, session 22).
    pub fn count_zeros(&self, tensor: &str, value: &Value) -> Result<(TensorMeta, u64)> {
        if let (Some(meta), Some(offset), Some(reader)) =
            (TensorMeta::of(value), value.blob_offset(), &self.blobs)
        {
            if meta.dtype.is_sub_byte() {
                check_blob_file(tensor, value)?;
                let count = usize::try_from(meta.count)
                    .map_err(|_| Error::tensor(tensor, "has more elements than fit in memory"))?;
                let packed = reader
                    .read(offset, meta.dtype, meta.count)
                    .map_err(|e| in_tensor(tensor, e))?;
                let zeros = count_zero_elements(&packed, meta.dtype.bits(), count);
                return Ok((meta, zeros));
            }
        }
        let (meta, data) = self.read(tensor, value)?;
        Ok((meta, data.count_zeros()))
    }

    /// Refuses a `weight.bin` written to since it was opened (its size or modification time
    /// changed): the tensors read may mix old and new bytes. Another process rewriting it in place
    /// during a run gave an output matching neither, exit 0, in 16 of 40 runs (red team, session
    /// 22). Called once every tensor is read, before the output is committed. A write within the
    /// clock tick of one before the open can go unseen: file times are that coarse.
    pub fn check_unchanged(&self) -> Result<()> {
        let (Some(reader), Some(opened)) = (&self.blobs, self.opened) else {
            return Ok(());
        };
        let now = FileVersion::of(reader.source()).at(reader.path())?;
        if now != opened {
            return Err(Error::Package {
                path: reader.path().to_owned(),
                reason: "changed while mlprune was reading it".into(),
            });
        }
        Ok(())
    }

    pub fn blob_reader(&self) -> Option<&BlobReader<File>> {
        self.blobs.as_ref()
    }

    /// The values of `value`, named `tensor` in errors.
    pub fn read(&self, tensor: &str, value: &Value) -> Result<(TensorMeta, TensorData)> {
        self.read_reusing(tensor, value, None, ReadThreads::Caller)
    }

    /// [`WeightSource::read`], into `spare`'s allocation where it fits, by `threads` (see
    /// [`BlobReader::read_tensor_reusing`]).
    pub fn read_reusing(
        &self,
        tensor: &str,
        value: &Value,
        spare: Option<TensorData>,
        threads: ReadThreads,
    ) -> Result<(TensorMeta, TensorData)> {
        let meta = TensorMeta::of(value)
            .ok_or_else(|| Error::tensor(tensor, "is not a numeric tensor with a known shape"))?;
        let data = if let Some(offset) = value.blob_offset() {
            check_blob_file(tensor, value)?;
            let reader = self.blobs.as_ref().ok_or_else(|| {
                Error::tensor(
                    tensor,
                    format!("refers to weight.bin offset {offset} but the package has no weight.bin"),
                )
            })?;
            reader
                .read_tensor_reusing(offset, meta.dtype, meta.count, spare, threads)
                .map_err(|e| in_tensor(tensor, e))?
        } else if let Some(imm) = value.immediate_tensor() {
            decode_immediate(imm, meta.dtype, meta.count).map_err(|r| Error::tensor(tensor, r))?
        } else {
            return Err(Error::tensor(
                tensor,
                "has neither an immediate value nor a blob reference",
            ));
        };
        Ok((meta, data))
    }
}

impl WeightSource {
    /// `value`'s data mapped from `weight.bin`, or `Ok(None)` where mapping does not apply (an
    /// immediate value, a dtype other than fp16/fp32; see [`MappedTensor::map`]) and the tensor
    /// must be read. The blob is checked exactly as a read checks it.
    pub fn map(&self, tensor: &str, value: &Value) -> Result<Option<(TensorMeta, MappedTensor)>> {
        let (Some(meta), Some(offset), Some(reader)) =
            (TensorMeta::of(value), value.blob_offset(), &self.blobs)
        else {
            return Ok(None);
        };
        if !matches!(meta.dtype, ScalarType::Float16 | ScalarType::Float32) {
            return Ok(None);
        }
        check_blob_file(tensor, value)?;
        let (data_offset, len) = reader
            .data_range(offset, meta.dtype, meta.count)
            .map_err(|e| in_tensor(tensor, e))?;
        Ok(MappedTensor::map(reader.source(), data_offset, len, meta.dtype).map(|m| (meta, m)))
    }
}

/// coremltools resolves a `BlobFileValue` by the basename of its file name inside the weights
/// folder, and writes only `weight.bin`. Any other name would make us read the wrong file, and a
/// path is never followed, so the reference cannot point outside the package.
pub fn check_blob_file(tensor: &str, value: &Value) -> Result<()> {
    if let Some(crate::proto::mil::value::Value::BlobFileValue(b)) = &value.value {
        let base = b.file_name.rsplit(['/', '\\']).next().unwrap_or_default();
        if base != "weight.bin" {
            return Err(Error::tensor(
                tensor,
                format!(
                    "refers to blob file '{}'; only weights/weight.bin is supported",
                    b.file_name
                ),
            ));
        }
    }
    Ok(())
}

/// The dtype and shape of a value stored in `weight.bin`, after [`check_blob_file`]: every reader
/// of a blob (prune, copy, inspect) refuses one whose type does not say how to read it.
pub fn blob_value_meta(tensor: &str, value: &Value) -> Result<TensorMeta> {
    check_blob_file(tensor, value)?;
    TensorMeta::of(value)
        .ok_or_else(|| Error::tensor(tensor, "blob value without a numeric tensor type of known shape"))
}

/// Blob errors already name file and offset; add the tensor so the user can find it in the model.
pub(crate) fn in_tensor(tensor: &str, e: Error) -> Error {
    match e {
        Error::Blob { path, offset, reason } => Error::Blob {
            path,
            offset,
            reason: format!("{reason} (tensor '{tensor}')"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate, SynthSpec};
    use std::io::{Seek, SeekFrom, Write};
    use std::time::{Duration, SystemTime};

    /// A `weight.bin` written to in place after it was opened, same size, is refused; one only
    /// read is not.
    #[test]
    fn a_weight_file_written_to_since_it_was_opened_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.mlpackage");
        let spec = SynthSpec {
            layers: 2,
            rows: 16,
            cols: 16,
            dtype: ScalarType::Float16,
            spec_version: 7,
            seed: 1,
        };
        generate(&spec, &path, false).unwrap();
        let package = Package::open(&path).unwrap();
        let weight_file = package.weight_file().unwrap();
        // File times are as coarse as a clock tick: an old time makes the write below show.
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(&weight_file)
            .unwrap()
            .set_modified(old)
            .unwrap();

        let source = WeightSource::open(&package, None).unwrap();
        source.check_unchanged().unwrap();
        let mut writer = File::options().write(true).open(&weight_file).unwrap();
        writer.seek(SeekFrom::Start(200)).unwrap();
        writer.write_all(&[0x55; 8]).unwrap();
        drop(writer);
        let err = source.check_unchanged().unwrap_err().to_string();
        assert!(err.contains("changed while mlprune was reading it"), "{err}");
        assert!(err.contains("weight.bin"), "{err}");
    }
}
