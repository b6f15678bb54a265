//! Reading a weight tensor's values, from an immediate `TensorValue` or from `weight.bin`.
//!
//! Everything a file says is checked before use: the declared tensor type must have a known dtype
//! and a fully known shape whose element count fits, and the stored data must agree with both.

use std::fs::File;
use std::path::Path;

use crate::blob::{BlobReader, ReadThreads};
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
                Some(BlobReader::new(file, label)?.scratch_in(scratch))
            }
            None => None,
        };
        Ok(WeightSource { blobs })
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
