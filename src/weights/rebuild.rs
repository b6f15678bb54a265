//! Rebuilding `weight.bin` from scratch in program order (spec §3.3, §6.1 step 7).
//!
//! Blobs are written in the order coremltools writes them: ops in block order, and within an op its
//! values in the op's parameter order. An original blob referenced several times (shared values,
//! multifunction models) is copied once and every reference is patched to the new offset. The result
//! is compact: no orphan regions, which Core ML's blob enumeration relies on.

use std::path::{Path, PathBuf};

use crate::blob::{BlobReader, BlobWriter, TensorSink};
use crate::dtype::ScalarType;
use crate::error::{Error, IoContext, Result};
use crate::proto::mil::{argument::binding::Binding, value, Operation, Value};
use crate::spill_map::SpillMap;
use crate::tensor::TensorData;

use super::background::BackgroundWriter;

/// Parameter order of ops whose values coremltools writes to the blob file, from the MIL op
/// definitions. Parameters not listed follow in name order.
fn param_order(op_type: &str) -> &'static [&'static str] {
    match op_type {
        "const" => &["val"],
        "constexpr_sparse_to_dense" => &["nonzero_data", "mask", "shape"],
        "constexpr_lut_to_dense" => &["indices", "lut", "vector_axis", "shape"],
        "constexpr_affine_dequantize" => &["quantized_data", "zero_point", "scale", "axis"],
        "constexpr_blockwise_shift_scale" => &["data", "scale", "offset"],
        "constexpr_sparse_blockwise_shift_scale" => &["data_mask", "nonzero_data", "scale", "offset"],
        "constexpr_lut_to_sparse" => &["indices_mask", "indices_nonzero_data", "lut", "vector_axis"],
        "constexpr_cast" => &["source_val", "output_dtype"],
        _ => &[],
    }
}

/// Every value held inline by `op` (attributes and input bindings), in blob write order.
pub fn op_values_mut(op: &mut Operation) -> Vec<(String, &mut Value)> {
    let mut values: Vec<(String, &mut Value)> = Vec::new();
    for entry in op.attributes.iter_mut() {
        if let (name, Some(v)) = (&entry.key, &mut entry.value) {
            if name != "name" {
                values.push((name.clone(), v));
            }
        }
    }
    for entry in op.inputs.iter_mut() {
        let (name, Some(arg)) = (&entry.key, &mut entry.value) else {
            continue;
        };
        for binding in &mut arg.arguments {
            if let Some(Binding::Value(v)) = &mut binding.binding {
                values.push((name.clone(), v));
            }
        }
    }
    let order = param_order(&op.r#type);
    let rank = |n: &str| order.iter().position(|p| *p == n).unwrap_or(order.len());
    // Stable: attributes before inputs and name order among parameters the table does not know.
    values.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    values
}

/// Writes a fresh `weight.bin`, copying original blobs on first reference and appending new ones.
pub struct WeightFileBuilder<W: TensorSink = BackgroundWriter> {
    writer: BlobWriter<W>,
    /// Original offset → [`CopiedBlob`] of each blob copied so far: in memory up to a bound, then
    /// on disk (issue 18).
    copied: SpillMap<{ CopiedBlob::BYTES }>,
}

/// Where a copied blob went, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CopiedBlob {
    offset: u64,
    dtype: ScalarType,
    count: u64,
}

impl CopiedBlob {
    const BYTES: usize = 17;

    fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut bytes = [0; Self::BYTES];
        bytes[..8].copy_from_slice(&self.offset.to_le_bytes());
        bytes[8] = ScalarType::ALL
            .iter()
            .position(|&d| d == self.dtype)
            .expect("every dtype is listed") as u8;
        bytes[9..].copy_from_slice(&self.count.to_le_bytes());
        bytes
    }

    fn from_bytes(bytes: [u8; Self::BYTES]) -> Self {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
        CopiedBlob {
            offset: word(0),
            dtype: ScalarType::ALL[usize::from(bytes[8])],
            count: word(9),
        }
    }
}

impl WeightFileBuilder<BackgroundWriter> {
    /// Creates `path`; its bytes are written on a background thread while the caller goes on.
    pub fn create(path: &Path) -> Result<Self> {
        Self::new(BackgroundWriter::create(path).at(path)?, path.to_owned())
    }
}

impl<W: TensorSink> WeightFileBuilder<W> {
    pub fn new(inner: W, path: PathBuf) -> Result<Self> {
        Ok(WeightFileBuilder {
            copied: SpillMap::beside(&path),
            writer: BlobWriter::new(inner, path)?,
        })
    }

    /// Makes room to remember `blobs` stored blobs at once: the table that finds equal content
    /// would otherwise double while the run holds everything else, its old half and new whole both
    /// in memory at that moment.
    pub fn reserve_blobs(&mut self, blobs: usize) {
        self.writer.reserve_blobs(blobs);
    }

    /// Copies every blob `op` references from `source` (once per original offset) and patches the
    /// references. Each blob is validated against the value's declared dtype and element count.
    /// Returns whether a reference changed (so the op must be stored again).
    pub fn copy_op_blobs<R: crate::blob::ReadAt>(
        &mut self,
        op: &mut Operation,
        op_name: &str,
        source: Option<&BlobReader<R>>,
    ) -> Result<bool> {
        let mut changed = false;
        for (param, v) in op_values_mut(op) {
            let Some(value::Value::BlobFileValue(blob)) = v.value.as_ref() else {
                continue;
            };
            let old = blob.offset;
            let tensor = format!("{op_name}.{param}");
            let meta = super::source::blob_value_meta(&tensor, v)?;
            let new = match self.copied.get(old)?.map(CopiedBlob::from_bytes) {
                // A blob shared by several values was validated against the first one's type; every
                // other must declare the same, or the copy would carry a reference that misreads it.
                Some(CopiedBlob { offset, dtype, count }) if (dtype, count) == (meta.dtype, meta.count) => {
                    offset
                }
                Some(CopiedBlob { dtype, count, .. }) => {
                    return Err(Error::tensor(
                        &tensor,
                        format!(
                            "declares {} {} elements, but the weight.bin blob at offset {old} it shares \
                             with another value holds {count} {dtype} elements",
                            meta.count, meta.dtype
                        ),
                    ))
                }
                None => {
                    let reader = source.ok_or_else(|| {
                        Error::tensor(
                            &tensor,
                            format!("refers to weight.bin offset {old} but the package has no weight.bin"),
                        )
                    })?;
                    let bytes = reader
                        .read(old, meta.dtype, meta.count)
                        .map_err(|e| super::source::in_tensor(&tensor, e))?;
                    let new = self.writer.append(meta.dtype, &bytes, meta.count)?;
                    let copy = CopiedBlob {
                        offset: new,
                        dtype: meta.dtype,
                        count: meta.count,
                    };
                    self.copied.insert_new(old, copy.to_bytes())?;
                    new
                }
            };
            if let Some(value::Value::BlobFileValue(blob)) = v.value.as_mut() {
                if blob.offset != new || blob.file_name != crate::mil::value::WEIGHT_FILE_REF {
                    changed = true;
                    blob.offset = new;
                    blob.file_name = crate::mil::value::WEIGHT_FILE_REF.to_owned();
                }
            }
        }
        Ok(changed)
    }

    /// Appends already-encoded little-endian bytes of `count` elements; returns the record offset.
    pub fn append_raw(&mut self, dtype: crate::dtype::ScalarType, bytes: &[u8], count: u64) -> Result<u64> {
        self.writer.append(dtype, bytes, count)
    }

    /// Appends new data and returns its record offset.
    pub fn append(&mut self, data: &TensorData) -> Result<u64> {
        self.writer.append_tensor(data)
    }

    /// [`WeightFileBuilder::append`], handing `data` to the sink instead of copying it.
    pub fn append_owned(&mut self, data: TensorData) -> Result<u64>
    where
        W: TensorSink,
    {
        self.writer.append_tensor_owned(data)
    }

    /// Waits until the sink has taken everything appended so far: with a [`TensorSink`] that writes
    /// on its own thread, until the last tensor handed over is written (the writer takes the next
    /// item only then).
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush()
    }

    /// The buffer of an earlier [`WeightFileBuilder::append_owned`], once written, for reuse.
    pub fn recycled_tensor(&mut self) -> Option<TensorData>
    where
        W: TensorSink,
    {
        self.writer.inner_mut().recycled_tensor()
    }

    pub fn blob_count(&self) -> u32 {
        self.writer.count()
    }

    /// Appends answered with an identical blob already written (see [`BlobWriter`]).
    pub fn shared_count(&self) -> u64 {
        self.writer.shared_count()
    }

    pub fn finish(self) -> Result<W> {
        self.writer.finish()
    }
}

impl<W: TensorSink> crate::dedupe::StoredBlobs for WeightFileBuilder<W> {
    fn blob_holds_nan(&mut self, offset: u64, dtype: ScalarType, _count: u64) -> Result<bool> {
        // Noted by the writer while the bytes were in memory; only float blobs can hold NaN.
        Ok(matches!(dtype, ScalarType::Float16 | ScalarType::Float32) && self.writer.holds_nan(offset)?)
    }

    fn blob_all_close(&mut self, offset: u64, dtype: ScalarType, values: &[u8]) -> Result<bool> {
        let differs = self
            .writer
            .any_written_chunk(offset, values.len() as u64, |start, chunk| {
                !crate::dedupe::all_close(dtype, chunk, &values[start..start + chunk.len()])
            })?;
        Ok(!differs)
    }

    fn blob_prefix(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut prefix = Vec::with_capacity(len);
        self.writer.any_written_chunk(offset, len as u64, |_, chunk| {
            prefix.extend_from_slice(chunk);
            false
        })?;
        Ok(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_blob_reads_back_as_written() {
        for dtype in ScalarType::ALL {
            let copy = CopiedBlob {
                offset: u64::MAX - 63,
                dtype,
                count: (1 << 40) + 3,
            };
            assert_eq!(CopiedBlob::from_bytes(copy.to_bytes()), copy);
        }
    }
    use crate::mil::value::blob_value;

    /// A `weight.bin` in memory holding one fp16 blob of 4 elements at offset 64.
    fn one_blob_file() -> Vec<u8> {
        let mut builder = WeightFileBuilder::new(std::io::Cursor::new(Vec::new()), "w.bin".into()).unwrap();
        assert_eq!(
            builder.append(&TensorData::F16(vec![half::f16::ONE; 4])).unwrap(),
            64
        );
        builder.finish().unwrap().into_inner()
    }

    fn const_op(value: Value) -> Operation {
        Operation {
            r#type: "const".into(),
            attributes: crate::mil::entries::entries_from([("val".to_owned(), value)]),
            ..Default::default()
        }
    }

    #[test]
    fn a_shared_blob_must_be_declared_alike_by_every_reference() {
        let file = one_blob_file();
        let reader = BlobReader::new(file.as_slice(), "w.bin".into()).unwrap();
        let mut out = WeightFileBuilder::new(std::io::Cursor::new(Vec::new()), "o.bin".into()).unwrap();
        let mut first = const_op(blob_value(ScalarType::Float16, &[4], 64));
        let mut same = const_op(blob_value(ScalarType::Float16, &[2, 2], 64));
        out.copy_op_blobs(&mut first, "a", Some(&reader)).unwrap();
        out.copy_op_blobs(&mut same, "b", Some(&reader)).unwrap();
        assert_eq!(out.blob_count(), 1, "copied once");
        // Same offset, another type: refused, where it used to be patched through unchecked.
        for (dtype, shape) in [(ScalarType::Float32, vec![2]), (ScalarType::Float16, vec![100])] {
            let mut other = const_op(blob_value(dtype, &shape, 64));
            let err = out.copy_op_blobs(&mut other, "c", Some(&reader)).unwrap_err();
            assert!(
                matches!(&err, Error::Tensor { tensor, .. } if tensor == "c.val"),
                "{err}"
            );
            assert!(err.to_string().contains("offset 64"), "{err}");
        }
    }
}
