//! Writer for `weight.bin` producing the compact layout coremltools writes (spec §3.3): the header,
//! then per blob zero padding to a multiple of 64, the 64-byte record and the data, with no padding
//! after the last blob. Blobs written in the same order as coremltools give a byte-identical file.
//!
//! Identical content is stored once: every blob is hashed as it is appended, and a blob whose
//! (dtype, element count, hash) matches one already in the file is compared byte for byte against
//! that blob's bytes read back from the file; only if they are equal is the earlier record's offset
//! returned instead of writing a second copy. So the hash only finds candidates (a collision costs a
//! read, never a wrong offset), and no blob is kept in memory beyond the one being appended. The
//! hash is seeded at random per file, so that no input can be crafted to collide (xxh3's default
//! secret is public: 4,000 crafted 2 KiB blobs under one hash took 243 s, quadratic; red team,
//! session 22), and at most [`MAX_CANDIDATES`] blobs are compared per key whatever happens.
//! coremltools stores a value once per deduplicated MIL value (`const_deduplication`, then one blob
//! per value name); storing once per content is at least that, and also covers blobs it writes twice
//! (equal masks of differently shaped weights, shared blobs across functions).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::{align64, describe_dtype, subbyte, BLOB_SENTINEL, HEADER_SIZE, RECORD_SIZE, STORAGE_VERSION};
use crate::dtype::ScalarType;
use crate::error::{Error, IoContext, Result};
use crate::spill_map::SpillMap;
use crate::tensor::TensorData;

/// Appends blobs to a fresh `weight.bin`. Offsets are counted from where `inner` stood when the writer
/// was created (the file start for a new file), since that is where the header goes.
pub struct BlobWriter<W: TensorSink> {
    inner: W,
    path: PathBuf,
    /// Stream position of the header.
    base: u64,
    /// Bytes written so far, relative to `base`.
    position: u64,
    count: u32,
    /// The first blob written under each content key, as a [`Stored`] word (little-endian): in
    /// memory up to a bound, then in sorted runs on disk (a model of hundreds of thousands of
    /// small tensors writes as many blobs; issue 18).
    stored: SpillMap<8>,
    /// Later blobs under a key already taken (their keys collide with an earlier blob's). Kept
    /// apart so that a blob costs one 16-byte table slot and no allocation: a model of tens of
    /// thousands of small tensors writes a hundred thousand blobs (issue 18).
    collided: HashMap<ContentKey, Vec<Stored>>,
    /// Appends answered with an earlier blob's offset instead of a new blob.
    shared: u64,
    /// Record offsets of the fp16/fp32 blobs written that hold a NaN, found while their bytes are
    /// in memory: deduplication asks (a value with NaN equals nothing), and reading a blob back
    /// would wait for the background writer.
    /// In memory up to a bound, then on disk, like `stored`.
    with_nan: SpillMap<0>,
    /// The content hash, of the bytes and [`BlobWriter::seed`]; a test swaps in a constant one to
    /// force collisions.
    hash: fn(&[u8], u64) -> u64,
    /// Drawn at random for each file. Equal bytes hash alike under any seed, so what is stored
    /// once, and every offset, does not depend on it.
    seed: u64,
}

/// One word that must agree for two blobs to be the same: a hash of the bytes' hash, the dtype and
/// the element count. Equal keys are only candidates: a match is confirmed against the dtype kept
/// in [`Stored`] and the bytes in the file, so that a collision costs a comparison, never a wrong
/// blob. The element count is in the key only: among blobs of the same dtype and bytes, counts
/// differ only for sub-byte types, by elements the padding holds, and telling those apart would
/// take a 2^-64 collision of the key. A slot of a model of many small tensors is 16 bytes (24
/// with the three words apart; issue 18).
type ContentKey = u64;

fn content_key(bytes_hash: u64, dtype: ScalarType, count: u64, seed: u64) -> ContentKey {
    let mut words = [0u8; 24];
    words[..8].copy_from_slice(&bytes_hash.to_le_bytes());
    words[8..16].copy_from_slice(&(dtype as u64).to_le_bytes());
    words[16..].copy_from_slice(&count.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&words, seed)
}

/// The most blobs kept, and compared, under one content key. Past it a blob under that key is
/// written again rather than compared with more: distinct blobs under one seeded 64-bit key are
/// not met by chance, and a bound keeps time linear even if they were.
const MAX_CANDIDATES: usize = 16;

/// A blob's record offset (a multiple of 64) with its dtype in the six bits that leaves free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored(u64);

impl Stored {
    fn new(record_offset: u64, dtype: ScalarType) -> Self {
        debug_assert!(record_offset & 63 == 0 && (dtype as u64) < 64);
        Stored(record_offset | dtype as u64)
    }

    fn record_offset(self) -> u64 {
        self.0 & !63
    }

    fn holds(self, dtype: ScalarType) -> bool {
        self.0 & 63 == dtype as u64
    }
}

/// Bytes compared per read when a candidate blob is checked against the file.
const COMPARE_CHUNK: usize = 64 << 10;

const ZEROS: [u8; 64] = [0; 64];

/// Where [`BlobWriter`] writes. A sink may take tensor data by value and write it later (a
/// background writer does), and give the allocation back once written, so that a large tensor is
/// neither copied nor allocated again.
pub trait TensorSink: Write + Seek {
    /// Writes `data`'s little-endian storage bytes, in order with every other write.
    fn write_tensor(&mut self, data: TensorData) -> std::io::Result<()> {
        self.write_all(&data.as_le_bytes())
    }

    /// A buffer of an earlier [`TensorSink::write_tensor`] that has been written, for reuse.
    fn recycled_tensor(&mut self) -> Option<TensorData> {
        None
    }

    /// Fills `buf` with bytes already written, starting at stream position `at` (what
    /// `stream_position` said before they were written), once every earlier write has landed.
    /// A sink that writes later returns the failure of such a write as an [`EarlierWriteFailed`].
    fn read_written(&mut self, at: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// A write that failed, reported by a later [`TensorSink::read_written`]: the error line must
/// say that writing failed (a full disk read "cannot read back an earlier blob"; red team,
/// session 22).
#[derive(Debug)]
pub struct EarlierWriteFailed(pub std::io::Error);

impl EarlierWriteFailed {
    /// `e` marked as the failure of an earlier write, keeping its kind.
    pub fn wrap(e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), EarlierWriteFailed(e))
    }
}

impl std::fmt::Display for EarlierWriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for EarlierWriteFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl TensorSink for std::io::Cursor<Vec<u8>> {
    fn read_written(&mut self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let written = self.get_ref();
        let range = usize::try_from(at)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .filter(|r| r.end <= written.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&written[range]);
        Ok(())
    }
}

impl<W: TensorSink> BlobWriter<W> {
    /// Writes the header with a zero `count`, patched by [`BlobWriter::finish`]. `path` labels errors.
    pub fn new(mut inner: W, path: PathBuf) -> Result<Self> {
        let base = inner.stream_position().at(&path)?;
        let stored = SpillMap::beside(&path);
        let with_nan = SpillMap::beside(&path);
        let mut writer = BlobWriter {
            inner,
            path,
            base,
            position: 0,
            count: 0,
            stored,
            collided: HashMap::new(),
            shared: 0,
            with_nan,
            hash: content_hash,
            seed: std::collections::hash_map::RandomState::new().hash_one(0x626c_6f62_u64),
        };
        writer.write_all(&header_bytes(0))?;
        Ok(writer)
    }

    /// Flushes the sink (see [`WeightFileBuilder::flush`](crate::weights::WeightFileBuilder::flush)).
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush().at(&self.path)
    }

    /// The sink, e.g. to take back buffers it has written.
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Blobs appended so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// File size so far (header included).
    pub fn bytes_written(&self) -> u64 {
        self.position
    }

    /// Appends answered with the offset of an identical blob already in the file.
    pub fn shared_count(&self) -> u64 {
        self.shared
    }

    /// The offset of a blob already written with exactly `data` as its `dtype` content of
    /// `element_count` elements, confirmed byte for byte against the file.
    fn find_stored(&mut self, key: ContentKey, dtype: ScalarType, data: &[u8]) -> Result<Option<u64>> {
        let Some(first) = self.stored_under(key)? else {
            return Ok(None);
        };
        let mut candidates = vec![first];
        candidates.extend(self.collided.get(&key).into_iter().flatten());
        let mut chunk = vec![0u8; COMPARE_CHUNK.min(data.len())];
        for stored in candidates.into_iter().filter(|s| s.holds(dtype)) {
            let record_offset = stored.record_offset();
            if self.written_bytes_equal(record_offset + RECORD_SIZE, data, &mut chunk)? {
                self.shared += 1;
                return Ok(Some(record_offset));
            }
        }
        Ok(None)
    }

    /// Whether the file holds `data` at `data_offset` (relative to the header).
    fn written_bytes_equal(&mut self, data_offset: u64, data: &[u8], chunk: &mut [u8]) -> Result<bool> {
        let mut at = self.base + data_offset;
        for expected in data.chunks(chunk.len().max(1)) {
            let got = &mut chunk[..expected.len()];
            self.inner.read_written(at, got).map_err(|e| {
                self.read_back_error(data_offset, "cannot read back an earlier blob to compare", e)
            })?;
            if got != expected {
                return Ok(false);
            }
            at += expected.len() as u64;
        }
        Ok(true)
    }

    /// Whether `test(start, chunk)` holds for any chunk of the `len` data bytes of the blob written
    /// at `record_offset` (`start`: the chunk's place in the blob), read back from the file a chunk
    /// at a time (chunks hold whole elements of any byte-sized type).
    pub fn any_written_chunk(
        &mut self,
        record_offset: u64,
        len: u64,
        mut test: impl FnMut(usize, &[u8]) -> bool,
    ) -> Result<bool> {
        let data_offset = record_offset + RECORD_SIZE;
        if data_offset.checked_add(len).is_none_or(|end| end > self.position) {
            return Err(self.error(record_offset, "no blob of that size was written there"));
        }
        let mut chunk = vec![0u8; COMPARE_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(COMPARE_CHUNK as u64) as usize;
            let at = self.base + data_offset + done;
            self.inner
                .read_written(at, &mut chunk[..n])
                .map_err(|e| self.read_back_error(record_offset, "cannot read back an earlier blob", e))?;
            if test(done as usize, &chunk[..n]) {
                return Ok(true);
            }
            done += n as u64;
        }
        Ok(false)
    }

    /// Whether the blob written at `record_offset` holds a NaN (fp16 and fp32 blobs; any other is
    /// reported as holding none).
    pub fn holds_nan(&self, record_offset: u64) -> Result<bool> {
        Ok(self.with_nan.get(record_offset)?.is_some())
    }

    /// Notes whether a new blob holds a NaN (each record offset is noted once: blobs are new).
    fn note_nan(&mut self, record_offset: u64, dtype: ScalarType, data: &[u8]) -> Result<()> {
        if matches!(dtype, ScalarType::Float16 | ScalarType::Float32) && any_nan(dtype, data) {
            self.with_nan.insert_new(record_offset, [])?;
        }
        Ok(())
    }

    fn content_key(&self, dtype: ScalarType, element_count: u64, data: &[u8]) -> ContentKey {
        content_key((self.hash)(data, self.seed), dtype, element_count, self.seed)
    }

    /// The error of a failed [`TensorSink::read_written`] at `offset`: the file's own write error
    /// where an earlier write failed, else `failed_read` and the read's error.
    fn read_back_error(&self, offset: u64, failed_read: &str, e: std::io::Error) -> Error {
        match e.downcast::<EarlierWriteFailed>() {
            Ok(failed) => Error::io(&self.path, failed.0),
            Err(e) => self.error(offset, format!("{failed_read}: {e}")),
        }
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

    /// Makes room in the store-once table for `blobs` more blobs.
    pub fn reserve_blobs(&mut self, blobs: usize) {
        self.stored.reserve(blobs);
    }

    /// Appends one blob of `element_count` elements whose storage bytes (bit-packed for sub-byte types)
    /// are `data`, and returns its record offset, the value for `BlobFileValue.offset`.
    /// Content already in the file is not written again: the earlier blob's offset is returned.
    pub fn append(&mut self, dtype: ScalarType, data: &[u8], element_count: u64) -> Result<u64> {
        let blob = self.check_blob(dtype, data.len() as u64, data.last().copied(), element_count)?;
        let key = self.content_key(dtype, element_count, data);
        if let Some(offset) = self.find_stored(key, dtype, data)? {
            return Ok(offset);
        }
        self.begin_blob(&blob)?;
        self.write_all(data)?;
        self.note_nan(blob.record_offset, dtype, data)?;
        self.end_blob(blob, key, dtype)?;
        Ok(blob.record_offset)
    }

    /// Appends typed data, encoded with [`TensorData::to_le_bytes`].
    pub fn append_tensor(&mut self, data: &TensorData) -> Result<u64> {
        self.append(data.dtype(), &data.as_le_bytes(), data.len() as u64)
    }

    /// [`BlobWriter::append_tensor`], handing `data` itself to the sink, which may write it later
    /// (see [`TensorSink`]) instead of copying it.
    pub fn append_tensor_owned(&mut self, data: TensorData) -> Result<u64>
    where
        W: TensorSink,
    {
        let dtype = data.dtype();
        let bytes = match data.as_le_bytes() {
            std::borrow::Cow::Borrowed(stored) if !dtype.is_sub_byte() => stored.len() as u64,
            // Sub-byte data needs its padding bits checked, and converted bytes are a fresh buffer
            // anyway: write them as they are.
            other => return self.append(dtype, &other, data.len() as u64),
        };
        let blob = self.check_blob(dtype, bytes, None, data.len() as u64)?;
        let key = self.content_key(dtype, data.len() as u64, &data.as_le_bytes());
        if let Some(offset) = self.find_stored(key, dtype, &data.as_le_bytes())? {
            return Ok(offset);
        }
        self.begin_blob(&blob)?;
        self.note_nan(blob.record_offset, dtype, &data.as_le_bytes())?;
        self.inner.write_tensor(data).at(&self.path)?;
        self.position += bytes;
        self.end_blob(blob, key, dtype)?;
        Ok(blob.record_offset)
    }

    /// Checks a blob of `len` data bytes holding `element_count` elements (its last byte `last`,
    /// for the padding check of sub-byte types) and says where and how it would be written.
    fn check_blob(
        &self,
        dtype: ScalarType,
        len: u64,
        last: Option<u8>,
        element_count: u64,
    ) -> Result<NewBlob> {
        let record_offset =
            align64(self.position).ok_or_else(|| self.error(self.position, "file offset overflows"))?;
        let code = dtype.blob_code().ok_or_else(|| {
            self.error(
                record_offset,
                format!("{} cannot be stored in a blob", describe_dtype(dtype)),
            )
        })?;
        let expected_len = dtype.storage_bytes(element_count);
        if expected_len != Some(len) {
            return Err(self.error(
                record_offset,
                format!("{len} data bytes do not hold {element_count} {dtype} elements"),
            ));
        }
        let padding = subbyte::padding_bits(element_count, dtype.bits());
        // Core ML ignores the padding bits, but coremltools writes them as zero; keep files canonical.
        if let Some(last) = last {
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
        Ok(NewBlob {
            record_offset,
            count,
            record: record_bytes(code, len, record_offset + RECORD_SIZE, padding),
        })
    }

    /// Writes the alignment gap and the record of a checked blob.
    fn begin_blob(&mut self, blob: &NewBlob) -> Result<()> {
        let gap = (blob.record_offset - self.position) as usize;
        self.write_all(&ZEROS[..gap])?;
        self.write_all(&blob.record)
    }

    /// Counts a blob whose data is written and indexes its content.
    fn end_blob(&mut self, blob: NewBlob, key: ContentKey, dtype: ScalarType) -> Result<()> {
        self.count = blob.count;
        let stored = Stored::new(blob.record_offset, dtype);
        if self.stored_under(key)?.is_some() {
            let later = self.collided.entry(key).or_default();
            if later.len() + 1 < MAX_CANDIDATES {
                later.push(stored);
            }
        } else {
            self.stored.insert_new(key, stored.0.to_le_bytes())?;
        }
        Ok(())
    }

    /// The first blob written under `key`.
    fn stored_under(&self, key: ContentKey) -> Result<Option<Stored>> {
        Ok(self.stored.get(key)?.map(|word| Stored(u64::from_le_bytes(word))))
    }

    /// Patches the header's `count` and returns the inner writer, positioned at the end of the file.
    /// Nothing is written after the last blob's data.
    pub fn finish(mut self) -> Result<W> {
        self.inner.seek(SeekFrom::Start(self.base)).at(&self.path)?;
        self.inner.write_all(&header_bytes(self.count)).at(&self.path)?;
        self.inner
            .seek(SeekFrom::Start(self.base + self.position))
            .at(&self.path)?;
        self.inner.flush().at(&self.path)?;
        Ok(self.inner)
    }
}

/// Pieces hashed on their own, in parallel, when a blob is larger than one.
const HASH_PIECE: usize = 1 << 20;

/// xxh3 of the bytes under `seed`; a blob larger than [`HASH_PIECE`] is hashed as the xxh3 of its
/// pieces' hashes, pieces hashed in parallel (the same value whatever the thread count), so that
/// hashing a large tensor costs a fraction of writing it.
fn content_hash(bytes: &[u8], seed: u64) -> u64 {
    use rayon::prelude::*;
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    if bytes.len() <= HASH_PIECE {
        return xxh3_64_with_seed(bytes, seed);
    }
    let pieces: Vec<u8> = bytes
        .par_chunks(HASH_PIECE)
        .map(|piece| xxh3_64_with_seed(piece, seed).to_le_bytes())
        .collect::<Vec<[u8; 8]>>()
        .concat();
    xxh3_64_with_seed(&pieces, seed)
}

/// Whether little-endian fp16 or fp32 `bytes` hold a NaN: the largest magnitude bits above
/// infinity's. A max over the bits (no early exit, so it vectorizes), in parallel pieces.
fn any_nan(dtype: ScalarType, bytes: &[u8]) -> bool {
    use rayon::prelude::*;
    let scan = |piece: &[u8]| match dtype {
        ScalarType::Float16 => {
            largest_bits(piece, u16::from_le, |b| u16::from_le_bytes([b[0], b[1]])) > 0x7c00
        }
        ScalarType::Float32 => {
            largest_bits(piece, u32::from_le, |b| {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }) > 0x7f80_0000
        }
        _ => false,
    };
    if bytes.len() <= HASH_PIECE {
        scan(bytes)
    } else {
        bytes.par_chunks(HASH_PIECE).any(scan)
    }
}

/// The largest of the little-endian elements' magnitude bits (sign cleared), as `T`. Loaded as
/// whole aligned elements when the bytes start on one (tensor data always does).
fn largest_bits<
    T: bytemuck::Pod + Ord + Default + std::ops::Shl<u32, Output = T> + std::ops::Shr<u32, Output = T>,
>(
    bytes: &[u8],
    from_le: fn(T) -> T,
    from_le_bytes: fn(&[u8]) -> T,
) -> T {
    // Shifting the sign bit out and back clears it whatever T's width.
    let magnitude = |v: T| (v << 1) >> 1;
    let chunked = |b: &[u8]| {
        b.chunks_exact(size_of::<T>())
            .map(|e| magnitude(from_le_bytes(e)))
            .fold(T::default(), T::max)
    };
    match bytemuck::pod_align_to::<u8, T>(bytes) {
        ([], mid, tail) => mid
            .iter()
            .map(|&v| magnitude(from_le(v)))
            .fold(T::default(), T::max)
            .max(chunked(tail)),
        _ => chunked(bytes),
    }
}

/// A checked blob not yet written: its record offset, the blob count once it is, and its record.
#[derive(Clone, Copy)]
struct NewBlob {
    record_offset: u64,
    count: u32,
    record: [u8; RECORD_SIZE as usize],
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use half::f16;

    use super::*;
    use crate::blob::{BlobReader, BlobRecord};

    const DENSE: &[u8] = include_bytes!("testdata/linear_fp16.weight.bin");
    const PRUNED: &[u8] = include_bytes!("testdata/linear_fp16_pruned.weight.bin");

    fn write(blobs: &[TensorData]) -> (Vec<u8>, Vec<u64>) {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        let offsets = blobs.iter().map(|b| writer.append_tensor(b).unwrap()).collect();
        assert_eq!(writer.count() as usize, blobs.len());
        let written = writer.bytes_written();
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(bytes.len() as u64, written);
        (bytes, offsets)
    }

    fn read_back(bytes: &[u8]) -> BlobReader<&[u8]> {
        BlobReader::new(bytes, PathBuf::from("out.bin")).unwrap()
    }

    /// One tensor of every type that has a blob code, with awkward lengths and extreme values.
    fn every_blob_type() -> Vec<TensorData> {
        let sub = |dtype: ScalarType, len: usize| {
            let max = ((1u16 << dtype.bits()) - 1) as u8;
            TensorData::SubByte {
                dtype,
                values: (0..len).map(|i| (i * 5 % 7) as u8 & max).collect(),
            }
        };
        vec![
            TensorData::F16(vec![f16::from_f32(1.0), f16::from_f32(-0.0), f16::MAX]),
            TensorData::F32(vec![1.5, -2.25, f32::MIN_POSITIVE, 0.0, 7.0]),
            TensorData::U8(vec![0, 1, 255]),
            TensorData::I8(vec![-128, -1, 0, 127]),
            TensorData::Opaque {
                dtype: ScalarType::BFloat16,
                count: 2,
                bytes: vec![0x80, 0x3f, 0x00, 0xc0],
            },
            TensorData::I16(vec![i16::MIN, -1, i16::MAX]),
            TensorData::U16(vec![0, u16::MAX]),
            TensorData::I4(vec![-8, -7, -1, 0, 1, 7, -3]),
            sub(ScalarType::UInt1, 13),
            sub(ScalarType::UInt2, 5),
            sub(ScalarType::UInt4, 3),
            sub(ScalarType::UInt3, 11),
            sub(ScalarType::UInt6, 7),
            TensorData::I32(vec![i32::MIN, -5, i32::MAX]),
            TensorData::U32(vec![0, u32::MAX]),
            TensorData::Opaque {
                dtype: ScalarType::Float8E4M3FN,
                count: 3,
                bytes: vec![0x7e, 0x80, 0x01],
            },
            TensorData::Opaque {
                dtype: ScalarType::Float8E5M2,
                count: 1,
                bytes: vec![0x3c],
            },
        ]
    }

    #[test]
    fn nan_is_noted_as_blobs_are_appended() {
        use half::f16;
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        // Past one parallel piece, the NaN in the last one.
        let mut big = vec![f16::from_f32(1.0); HASH_PIECE];
        big[HASH_PIECE - 1] = f16::NAN;
        let clean = writer
            .append_tensor(&TensorData::F16(vec![f16::INFINITY, f16::NEG_INFINITY, f16::MAX]))
            .unwrap();
        let with_nan = writer.append_tensor_owned(TensorData::F16(big.clone())).unwrap();
        let again = writer.append_tensor(&TensorData::F16(big)).unwrap();
        let f32_nan = writer
            .append_tensor(&TensorData::F32(vec![0.0, -f32::NAN]))
            .unwrap();
        let bytes = writer.append(ScalarType::UInt8, &[0xff; 4], 4).unwrap();
        assert!(!writer.holds_nan(clean).unwrap(), "infinities are not NaN");
        assert!(writer.holds_nan(with_nan).unwrap());
        assert_eq!(again, with_nan, "stored once, noted once");
        assert!(writer.holds_nan(f32_nan).unwrap(), "sign does not matter");
        assert!(!writer.holds_nan(bytes).unwrap(), "only float blobs hold NaN");
        assert!(any_nan(ScalarType::Float32, &0x7f80_0001u32.to_le_bytes()));
        assert!(!any_nan(ScalarType::Float32, &0x7f80_0000u32.to_le_bytes()));
        assert!(any_nan(ScalarType::Float16, &0xfc01u16.to_le_bytes()));
    }

    #[test]
    fn every_blob_type_round_trips() {
        let blobs = every_blob_type();
        let covered: Vec<ScalarType> = blobs.iter().map(TensorData::dtype).collect();
        let with_code: Vec<ScalarType> = ScalarType::ALL
            .into_iter()
            .filter(|t| t.blob_code().is_some())
            .collect();
        assert!(
            with_code.iter().all(|t| covered.contains(t)),
            "a blob type is missing from the test"
        );

        let (bytes, offsets) = write(&blobs);
        let reader = read_back(&bytes);
        assert_eq!(reader.count() as usize, blobs.len());
        let records = reader.records().unwrap();
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), offsets);
        for (blob, &offset) in blobs.iter().zip(&offsets) {
            let decoded = reader
                .read_tensor(offset, blob.dtype(), blob.len() as u64)
                .unwrap();
            assert_eq!(&decoded, blob, "{}", blob.dtype());
        }
    }

    #[test]
    fn records_are_64_aligned_with_no_trailing_padding() {
        let blobs = vec![
            TensorData::U8(vec![1; 3]),
            TensorData::F32(vec![2.0; 16]),
            TensorData::U8(vec![3; 5]),
        ];
        let (bytes, offsets) = write(&blobs);
        // 64 + 64 + 3 = 131 → 192; 192 + 64 + 64 = 320 (already aligned); 320 + 64 + 5 = 389.
        assert_eq!(offsets, vec![64, 192, 320]);
        assert_eq!(bytes.len(), 389);
        // Gap bytes are zero, header count patched, version 2.
        assert!(bytes[131..192].iter().all(|&b| b == 0));
        assert_eq!(&bytes[0..8], &[3, 0, 0, 0, 2, 0, 0, 0]);
        assert!(bytes[8..64].iter().all(|&b| b == 0));
    }

    #[test]
    fn record_bytes_match_the_spec_layout() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        let mut mask = vec![0u8; 9];
        mask[1] = 1;
        mask[8] = 1;
        let offset = writer
            .append(ScalarType::UInt1, &subbyte::pack(&mask, 1), 9)
            .unwrap();
        assert_eq!(offset, 64);
        let bytes = writer.finish().unwrap().into_inner();
        let mut expected = vec![1, 0, 0, 0, 2, 0, 0, 0];
        expected.resize(64, 0);
        expected.extend_from_slice(&[0xef, 0xbe, 0xad, 0xde, 9, 0, 0, 0]); // sentinel, uint1 code
        expected.extend_from_slice(&2u64.to_le_bytes()); // size
        expected.extend_from_slice(&128u64.to_le_bytes()); // data offset
        expected.extend_from_slice(&7u64.to_le_bytes()); // padding bits
        expected.resize(128, 0); // reserved
        expected.extend_from_slice(&[0x02, 0x01]); // index 1 → bit 1 of byte 0; index 8 → bit 0 of byte 1
        assert_eq!(bytes, expected);
    }

    #[test]
    fn spec_sub_byte_examples() {
        // (dtype, count, packed bytes, padding bits)
        let cases = [
            (ScalarType::UInt1, 2193, 275, 7),
            (ScalarType::Int4, 1535, 768, 4),
            (ScalarType::UInt3, 1104, 414, 0),
        ];
        for (dtype, count, size, padding) in cases {
            let values = vec![1u8; count];
            let (bytes, offsets) = match dtype {
                ScalarType::Int4 => write(&[TensorData::I4(vec![-1; count])]),
                _ => write(&[TensorData::SubByte { dtype, values }]),
            };
            assert_eq!(offsets, vec![64]);
            assert_eq!(bytes.len(), 128 + size, "{dtype}: no trailing padding");
            let record = read_back(&bytes).record(64).unwrap();
            assert_eq!(
                record,
                BlobRecord {
                    offset: 64,
                    dtype,
                    data_offset: 128,
                    size_in_bytes: size as u64,
                    padding_bits: padding
                }
            );
            assert_eq!(record.element_count(), count as u64);
        }
    }

    #[test]
    fn append_rejects_inconsistent_input() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        let reason = |e: Error| match e {
            Error::Blob { offset, reason, .. } => {
                assert_eq!(offset, 64);
                reason
            }
            other => panic!("unexpected {other:?}"),
        };
        let r = reason(writer.append(ScalarType::Float32, &[0; 7], 2).unwrap_err());
        assert!(r.contains("7 data bytes do not hold 2 fp32 elements"), "{r}");
        let r = reason(writer.append(ScalarType::UInt1, &[0; 2], 17).unwrap_err());
        assert!(r.contains("do not hold 17 uint1"), "{r}");
        let r = reason(writer.append(ScalarType::Float64, &[0; 8], 1).unwrap_err());
        assert!(r.contains("fp64 (no blob dtype code"), "{r}");
        let r = reason(writer.append(ScalarType::UInt2, &[0b0100_0000], 3).unwrap_err());
        assert!(r.contains("padding bits"), "{r}");
        assert!(reason(writer.append(ScalarType::UInt8, &[], u64::MAX).unwrap_err()).contains("do not hold"));
        // Nothing was written by the failed appends.
        assert_eq!((writer.count(), writer.bytes_written()), (0, 64));
        assert_eq!(writer.append(ScalarType::UInt8, &[], 0).unwrap(), 64);
    }

    #[test]
    fn offsets_are_relative_to_the_starting_position() {
        let mut cursor = Cursor::new(vec![0xAA; 10]);
        cursor.set_position(10);
        let mut writer = BlobWriter::new(cursor, PathBuf::from("out.bin")).unwrap();
        assert_eq!(writer.append(ScalarType::UInt8, &[5], 1).unwrap(), 64);
        let cursor = writer.finish().unwrap();
        assert_eq!(cursor.position(), 10 + 129);
        let bytes = cursor.into_inner();
        assert_eq!(&bytes[..10], &[0xAA; 10]);
        assert_eq!(
            read_back(&bytes[10..]).read(64, ScalarType::UInt8, 1).unwrap(),
            vec![5]
        );
    }

    #[test]
    fn identical_content_is_stored_once_and_shares_the_offset() {
        let mask = TensorData::U8(vec![0xA5; 300]);
        let values = TensorData::F16((0..200u16).map(f16::from_bits).collect());
        let blobs = [mask.clone(), values.clone(), mask.clone(), values.clone()];
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        let offsets: Vec<u64> = blobs.iter().map(|b| writer.append_tensor(b).unwrap()).collect();
        // Handed over by value, the same content is found too.
        let owned = writer.append_tensor_owned(values.clone()).unwrap();
        assert_eq!(offsets, vec![64, 448, 64, 448]);
        assert_eq!(owned, 448);
        assert_eq!((writer.count(), writer.shared_count()), (2, 3));
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(
            bytes.len(),
            448 + 64 + 400,
            "each content once, nothing after the last"
        );
        let reader = read_back(&bytes);
        assert_eq!(reader.count(), 2);
        assert_eq!(reader.read_tensor(448, ScalarType::Float16, 200).unwrap(), values);
    }

    #[test]
    fn content_keys_differ_when_the_dtype_or_the_count_does() {
        let dtypes: Vec<ScalarType> = every_blob_type().iter().map(TensorData::dtype).collect();
        let counts = [0u64, 1, 255, 256, (1 << 56) - 1, 1 << 56, u64::MAX];
        let mut seen = std::collections::HashSet::new();
        for &dtype in &dtypes {
            for &count in &counts {
                assert!(seen.insert(content_key(42, dtype, count, 0)), "{dtype:?} {count}");
            }
        }
    }

    #[test]
    fn a_key_collision_with_equal_bytes_of_another_dtype_is_a_separate_blob() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        let a = writer.append(ScalarType::UInt8, &[7; 16], 16).unwrap();
        // The int8 blob of the same bytes finds the uint8 one under its key, as a collision would.
        let int8_key = writer.content_key(ScalarType::Int8, 16, &[7; 16]);
        let word = Stored::new(a, ScalarType::UInt8).0.to_le_bytes();
        writer.stored.insert_new(int8_key, word).unwrap();
        let b = writer.append(ScalarType::Int8, &[7; 16], 16).unwrap();
        assert_eq!((a, b), (64, 192));
        assert_eq!(writer.shared_count(), 0);
        // Found again under its own dtype.
        assert_eq!(writer.append(ScalarType::Int8, &[7; 16], 16).unwrap(), 192);
    }

    #[test]
    fn stored_words_keep_the_offset_and_the_dtype() {
        for dtype in every_blob_type().iter().map(TensorData::dtype) {
            for offset in [0u64, 64, 1 << 40, !63] {
                let stored = Stored::new(offset, dtype);
                assert_eq!(stored.record_offset(), offset);
                assert!(stored.holds(dtype));
                assert!(ScalarType::ALL
                    .iter()
                    .filter(|&&d| d != dtype)
                    .all(|&d| !stored.holds(d)));
            }
        }
    }

    #[test]
    fn equal_bytes_of_another_dtype_or_count_are_a_separate_blob() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        let a = writer.append(ScalarType::UInt8, &[7; 16], 16).unwrap();
        let b = writer.append(ScalarType::Int8, &[7; 16], 16).unwrap();
        let c = writer.append(ScalarType::Float16, &[7; 16], 8).unwrap();
        // uint1: 16 bytes hold 128 elements; 127 elements would leave one padding bit set.
        let d = writer.append(ScalarType::UInt1, &[7; 16], 128).unwrap();
        assert_eq!(vec![a, b, c, d], vec![64, 192, 320, 448]);
        assert_eq!(writer.shared_count(), 0);
    }

    #[test]
    fn the_content_hash_of_a_large_blob_depends_on_every_piece_and_their_order() {
        let a: Vec<u8> = (0..3 * HASH_PIECE + 5).map(|i| (i % 253) as u8).collect();
        assert_eq!(content_hash(&a, 7), content_hash(&a.clone(), 7));
        assert_ne!(content_hash(&a, 7), content_hash(&a, 8), "the seed counts");
        let mut b = a.clone();
        b[2 * HASH_PIECE + 1] ^= 1;
        assert_ne!(content_hash(&a, 7), content_hash(&b, 7));
        // The same pieces in another order.
        let mut swapped = a[HASH_PIECE..2 * HASH_PIECE].to_vec();
        swapped.extend_from_slice(&a[..HASH_PIECE]);
        swapped.extend_from_slice(&a[2 * HASH_PIECE..]);
        assert_ne!(content_hash(&a, 7), content_hash(&swapped, 7));
        assert_eq!(
            content_hash(&a[..10], 7),
            xxhash_rust::xxh3::xxh3_64_with_seed(&a[..10], 7)
        );
    }

    #[test]
    fn under_a_hash_collision_the_byte_compare_decides() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        // Every content hashes alike: only the comparison with the file can tell blobs apart.
        writer.hash = |_, _| 0;
        let first: Vec<u8> = (0..200u8).collect();
        let mut last_differs = first.clone();
        last_differs[199] ^= 1;
        let mut first_differs = first.clone();
        first_differs[0] ^= 0x80;
        let a = writer.append(ScalarType::UInt8, &first, 200).unwrap();
        let b = writer.append(ScalarType::UInt8, &last_differs, 200).unwrap();
        let c = writer.append(ScalarType::UInt8, &first_differs, 200).unwrap();
        assert_eq!(
            vec![a, b, c],
            vec![64, 384, 704],
            "colliding but different: three blobs"
        );
        // Each finds its own twin among the colliding candidates, whatever its place in the list.
        assert_eq!(writer.append(ScalarType::UInt8, &first_differs, 200).unwrap(), c);
        assert_eq!(writer.append(ScalarType::UInt8, &last_differs, 200).unwrap(), b);
        assert_eq!(writer.append(ScalarType::UInt8, &first, 200).unwrap(), a);
        assert_eq!((writer.count(), writer.shared_count()), (3, 3));
        let bytes = writer.finish().unwrap().into_inner();
        let reader = read_back(&bytes);
        for (offset, data) in [(a, &first), (b, &last_differs), (c, &first_differs)] {
            assert_eq!(&reader.read(offset, ScalarType::UInt8, 200).unwrap(), data);
        }
    }

    /// Under one key, only the first [`MAX_CANDIDATES`] blobs are compared: a later twin of one
    /// past them is written again, never given a wrong offset, and one of the first is found.
    #[test]
    fn candidates_under_one_key_are_bounded() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        writer.hash = |_, _| 0;
        let blob = |i: usize| -> Vec<u8> { vec![i as u8; 64] };
        let distinct = MAX_CANDIDATES + 4;
        let offsets: Vec<u64> = (0..distinct)
            .map(|i| writer.append(ScalarType::UInt8, &blob(i), 64).unwrap())
            .collect();
        assert_eq!(
            writer
                .collided
                .get(&content_key(0, ScalarType::UInt8, 64, writer.seed))
                .map(Vec::len),
            Some(MAX_CANDIDATES - 1)
        );
        assert_eq!(
            writer.append(ScalarType::UInt8, &blob(3), 64).unwrap(),
            offsets[3]
        );
        let past = writer.append(ScalarType::UInt8, &blob(distinct - 1), 64).unwrap();
        assert!(past > offsets[distinct - 1], "written again");
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(
            read_back(&bytes).read(past, ScalarType::UInt8, 64).unwrap(),
            blob(distinct - 1)
        );
    }

    /// What is stored once, and so every offset, is the same whatever the seed.
    #[test]
    fn the_file_does_not_depend_on_the_seed() {
        let write = |seed: u64| {
            let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
            writer.seed = seed;
            for i in [1u8, 2, 1, 3, 2, 1] {
                writer.append(ScalarType::UInt8, &[i; 100], 100).unwrap();
            }
            writer.finish().unwrap().into_inner()
        };
        assert_eq!(write(1), write(0xdead_beef));
        // The header, three records of 100 bytes each and the padding between them.
        assert_eq!(write(1).len(), 64 + 3 * (64 + 100) + 2 * 28);
    }

    #[test]
    fn a_blob_longer_than_one_compare_chunk_is_compared_whole() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        writer.hash = |_, _| 0;
        let len = 2 * COMPARE_CHUNK + 3;
        let base: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut tail_differs = base.clone();
        tail_differs[len - 1] ^= 1;
        let a = writer.append(ScalarType::UInt8, &base, len as u64).unwrap();
        let b = writer
            .append(ScalarType::UInt8, &tail_differs, len as u64)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(
            writer
                .append(ScalarType::UInt8, &tail_differs, len as u64)
                .unwrap(),
            b
        );
    }

    /// A sink that cannot read back what it wrote: `disk_full` says an earlier write failed.
    struct WriteOnly {
        written: Cursor<Vec<u8>>,
        disk_full: bool,
    }
    impl Write for WriteOnly {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Seek for WriteOnly {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.written.seek(to)
        }
    }
    impl TensorSink for WriteOnly {
        fn read_written(&mut self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Err(match self.disk_full {
                true => EarlierWriteFailed::wrap(std::io::ErrorKind::StorageFull.into()),
                false => std::io::Error::other("no reading here"),
            })
        }
    }

    /// Appends a blob twice to a [`WriteOnly`] sink: the second append reads the first back.
    fn read_back_failure(disk_full: bool) -> Error {
        let sink = WriteOnly {
            written: Cursor::new(Vec::new()),
            disk_full,
        };
        let mut writer = BlobWriter::new(sink, PathBuf::from("out.bin")).unwrap();
        writer.append(ScalarType::UInt8, &[1; 20], 20).unwrap();
        writer.append(ScalarType::UInt8, &[1; 20], 20).unwrap_err()
    }

    #[test]
    fn a_failed_read_back_is_an_error_naming_the_blob() {
        let err = read_back_failure(false);
        assert!(
            matches!(&err, Error::Blob { offset: 128, reason, .. } if reason.contains("no reading here")),
            "{err}"
        );
    }

    /// A full disk, seen when bytes are read back, is a failed write of the file, not a read.
    #[test]
    fn an_earlier_write_failure_is_reported_as_a_write_failure() {
        let err = read_back_failure(true);
        assert!(
            matches!(&err, Error::Io { path, source } if path == std::path::Path::new("out.bin")
                && source.kind() == std::io::ErrorKind::StorageFull),
            "{err}"
        );
        assert!(!err.to_string().contains("read back"), "{err}");
    }

    /// Re-writes every blob of `file` in order and returns the new bytes.
    fn rewrite(file: &[u8]) -> Vec<u8> {
        let reader = read_back(file);
        let mut writer = BlobWriter::new(Cursor::new(Vec::new()), PathBuf::from("out.bin")).unwrap();
        for record in reader.records().unwrap() {
            let count = record.element_count();
            let data = reader.read(record.offset, record.dtype, count).unwrap();
            assert_eq!(writer.append(record.dtype, &data, count).unwrap(), record.offset);
        }
        writer.finish().unwrap().into_inner()
    }

    fn f16_bits(data: &TensorData) -> Vec<u16> {
        match data {
            TensorData::F16(v) => v.iter().map(|x| x.to_bits()).collect(),
            other => panic!("expected fp16, got {}", other.dtype()),
        }
    }

    #[test]
    fn coremltools_dense_file_parses_and_rewrites_identically() {
        let reader = read_back(DENSE);
        let summary: Vec<(u64, ScalarType, u64)> = reader
            .records()
            .unwrap()
            .iter()
            .map(|r| (r.offset, r.dtype, r.element_count()))
            .collect();
        // 64x48 fp16 weight, then the 64-element fp16 bias at align64(128 + 6144).
        assert_eq!(
            summary,
            vec![(64, ScalarType::Float16, 3072), (6272, ScalarType::Float16, 64)]
        );
        let weight = f16_bits(&reader.read_tensor(64, ScalarType::Float16, 3072).unwrap());
        let bias = f16_bits(&reader.read_tensor(6272, ScalarType::Float16, 64).unwrap());
        // Values printed by numpy for the fixture script's W[0,0], W[63,47], b[0], b[63].
        assert_eq!(
            (weight[0], weight[3071], bias[0], bias[63]),
            (0x150a, 0x31a4, 0x3d68, 0xb067)
        );
        assert_eq!(rewrite(DENSE), DENSE);
    }

    #[test]
    fn coremltools_pruned_file_parses_and_rewrites_identically() {
        let reader = read_back(PRUNED);
        let summary: Vec<(u64, ScalarType, u64)> = reader
            .records()
            .unwrap()
            .iter()
            .map(|r| (r.offset, r.dtype, r.element_count()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (64, ScalarType::Float16, 1535),
                (3200, ScalarType::UInt1, 3072),
                (3648, ScalarType::Float16, 64)
            ]
        );
        let nonzero = f16_bits(&reader.read_tensor(64, ScalarType::Float16, 1535).unwrap());
        let mask = match reader.read_tensor(3200, ScalarType::UInt1, 3072).unwrap() {
            TensorData::SubByte { values, .. } => values,
            other => panic!("expected uint1, got {}", other.dtype()),
        };
        // The mask selects, in row-major order, exactly the dense weights kept as nonzero_data.
        let dense = f16_bits(
            &read_back(DENSE)
                .read_tensor(64, ScalarType::Float16, 3072)
                .unwrap(),
        );
        let kept: Vec<u16> = dense
            .iter()
            .zip(&mask)
            .filter(|(_, &m)| m == 1)
            .map(|(&w, _)| w)
            .collect();
        assert_eq!(kept, nonzero);
        let dense_bias = read_back(DENSE).read(6272, ScalarType::Float16, 64).unwrap();
        assert_eq!(reader.read(3648, ScalarType::Float16, 64).unwrap(), dense_bias);
        assert_eq!(rewrite(PRUNED), PRUNED);
    }
}
