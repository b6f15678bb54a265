//! Writer for `weight.bin` producing the compact layout coremltools writes (spec §3.3): the header,
//! then per blob zero padding to a multiple of 64, the 64-byte record and the data, with no padding
//! after the last blob. Blobs written in the same order as coremltools give a byte-identical file.

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::{
    align64, describe_dtype, subbyte, BLOB_SENTINEL, HEADER_SIZE, RECORD_SIZE, STORAGE_VERSION,
};
use crate::dtype::ScalarType;
use crate::error::{Error, IoContext, Result};
use crate::tensor::TensorData;

/// Appends blobs to a fresh `weight.bin`. Offsets are counted from where `inner` stood when the writer
/// was created (the file start for a new file), since that is where the header goes.
pub struct BlobWriter<W: Write + Seek> {
    inner: W,
    path: PathBuf,
    /// Stream position of the header.
    base: u64,
    /// Bytes written so far, relative to `base`.
    position: u64,
    count: u32,
}

const ZEROS: [u8; 64] = [0; 64];

impl<W: Write + Seek> BlobWriter<W> {
    /// Writes the header with a zero `count`, patched by [`BlobWriter::finish`]. `path` labels errors.
    pub fn new(mut inner: W, path: PathBuf) -> Result<Self> {
        let base = inner.stream_position().at(&path)?;
        let mut writer = BlobWriter {
            inner,
            path,
            base,
            position: 0,
            count: 0,
        };
        writer.write_all(&header_bytes(0))?;
        Ok(writer)
    }

    /// Blobs appended so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// File size so far (header included).
    pub fn bytes_written(&self) -> u64 {
        self.position
    }

    fn error(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Blob {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write_all(bytes).at(&self.path)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// Appends one blob of `element_count` elements whose storage bytes (bit-packed for sub-byte types)
    /// are `data`, and returns its record offset, the value for `BlobFileValue.offset`.
    pub fn append(&mut self, dtype: ScalarType, data: &[u8], element_count: u64) -> Result<u64> {
        let record_offset = align64(self.position)
            .ok_or_else(|| self.error(self.position, "file offset overflows"))?;
        let code = dtype.blob_code().ok_or_else(|| {
            self.error(
                record_offset,
                format!("{} cannot be stored in a blob", describe_dtype(dtype)),
            )
        })?;
        let expected_len = dtype.storage_bytes(element_count);
        if expected_len != Some(data.len() as u64) {
            return Err(self.error(
                record_offset,
                format!(
                    "{} data bytes do not hold {element_count} {dtype} elements",
                    data.len()
                ),
            ));
        }
        let padding = subbyte::padding_bits(element_count, dtype.bits());
        // Core ML ignores the padding bits, but coremltools writes them as zero; keep files canonical.
        if let Some(&last) = data.last() {
            if padding != 0 && u32::from(last) >> (8 - padding) != 0 {
                return Err(self.error(
                    record_offset,
                    format!("the {padding} padding bits of the last {dtype} byte are not zero"),
                ));
            }
        }
        let count = self
            .count
            .checked_add(1)
            .ok_or_else(|| self.error(record_offset, "more than u32::MAX blobs in one file"))?;
        let data_offset = record_offset + RECORD_SIZE;

        let gap = (record_offset - self.position) as usize;
        self.write_all(&ZEROS[..gap])?;
        self.write_all(&record_bytes(code, data.len() as u64, data_offset, padding))?;
        self.write_all(data)?;
        self.count = count;
        Ok(record_offset)
    }

    /// Appends typed data, encoded with [`TensorData::to_le_bytes`].
    pub fn append_tensor(&mut self, data: &TensorData) -> Result<u64> {
        self.append(data.dtype(), &data.to_le_bytes(), data.len() as u64)
    }

    /// Patches the header's `count` and returns the inner writer, positioned at the end of the file.
    /// Nothing is written after the last blob's data.
    pub fn finish(mut self) -> Result<W> {
        self.inner.seek(SeekFrom::Start(self.base)).at(&self.path)?;
        self.inner
            .write_all(&header_bytes(self.count))
            .at(&self.path)?;
        self.inner
            .seek(SeekFrom::Start(self.base + self.position))
            .at(&self.path)?;
        self.inner.flush().at(&self.path)?;
        Ok(self.inner)
    }
}

/// Storage header (§3.1): count, version, zero reserved fields.
fn header_bytes(count: u32) -> [u8; 64] {
    let mut header = [0u8; HEADER_SIZE as usize];
    header[0..4].copy_from_slice(&count.to_le_bytes());
    header[4..8].copy_from_slice(&STORAGE_VERSION.to_le_bytes());
    header
}

/// Metadata record (§3.2) with zero reserved fields.
fn record_bytes(code: u32, size_in_bytes: u64, data_offset: u64, padding_bits: u64) -> [u8; 64] {
    let mut record = [0u8; RECORD_SIZE as usize];
    record[0..4].copy_from_slice(&BLOB_SENTINEL.to_le_bytes());
    record[4..8].copy_from_slice(&code.to_le_bytes());
    record[8..16].copy_from_slice(&size_in_bytes.to_le_bytes());
    record[16..24].copy_from_slice(&data_offset.to_le_bytes());
    record[24..32].copy_from_slice(&padding_bits.to_le_bytes());
    record
}
