//! Validating reader for `weight.bin`. Every length, offset and count taken from the file is checked
//! against the file size with checked arithmetic before it is used, so a corrupt or hostile file fails
//! with an `Error::Blob` instead of panicking or allocating huge buffers. The checks mirror Core ML's
//! `StorageReader` (header version, sentinel, dtype, sub-byte padding) and add bounds checks it leaves
//! to the memory map.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{describe_dtype, BlobRecord, BLOB_SENTINEL, HEADER_SIZE, RECORD_SIZE, STORAGE_VERSION};
use crate::dtype::ScalarType;
use crate::error::{Error, IoContext, Result};
use crate::spill_map::SpillMap;
use crate::tensor::TensorData;

/// Random-access byte source: a file read with positioned reads, or bytes in memory.
pub trait ReadAt: Sync {
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; fails (e.g. `UnexpectedEof`) if the source is too short.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    /// The size at the time of the call; 0 if the metadata cannot be read (then every read fails the
    /// bounds checks). `BlobReader::open` reads the metadata itself first to report such errors.
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        use std::os::windows::fs::FileExt;
        // seek_read may return short counts; loop like unix read_exact_at does.
        while !buf.is_empty() {
            match self.seek_read(buf, offset) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end of buffer");
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        buf.copy_from_slice(self.get(start..end).ok_or_else(eof)?);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// Any reference to a source is a source (`&[u8]`, `&File`, ...).
impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

fn u32_at(bytes: &[u8; 64], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8; 64], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}

/// Who reads a large blob: the calling thread, or the rayon pool in pieces, for a caller that would
/// otherwise wait. Faulting in a fresh buffer's pages is most of such a read, and that scales
/// across cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadThreads {
    Caller,
    Pool,
}

/// The piece one pool thread reads at a time under [`ReadThreads::Pool`].
const READ_PIECE: usize = 4 << 20;

/// Reads blobs from a `weight.bin` whose header has been validated.
pub struct BlobReader<R: ReadAt> {
    source: R,
    path: PathBuf,
    /// Source size captured once, the bound for every check.
    size: u64,
    /// Header `count`: blobs the file claims to hold.
    count: u32,
    claims: Mutex<Claims>,
}

/// The distinct records read so far and the bytes their spans (record to data end) cover in all.
/// Records that do not overlap cover at most the file past its header; more proves that some
/// overlap, and records nested in one another's data would make a small file read and write as
/// many bytes as it likes (issue 18: 120 records inside one 8 MiB blob wrote 566 MB).
struct Claims {
    seen: SpillMap<1>,
    bytes: u64,
}

/// Shows where the reader reads from, not the source itself (a file handle or a whole buffer).
impl<R: ReadAt> std::fmt::Debug for BlobReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl BlobReader<std::fs::File> {
    /// Opens and validates the header of the file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = crate::open_file::open_regular_or_err(path, crate::open_file::Links::Follow).at(path)?;
        // Surface metadata errors here; `ReadAt::size` for a file cannot report them.
        file.metadata().at(path)?;
        Self::new(file, path.to_path_buf())
    }
}

impl<R: ReadAt> BlobReader<R> {
    /// The reader, the table of the blob records it has read (each claimed once, overlaps
    /// refused) keeping its scratch files in `dir` (the system temporary folder when `None`).
    pub fn scratch_in(self, dir: Option<&Path>) -> Self {
        BlobReader {
            claims: Mutex::new(Claims {
                seen: SpillMap::new_in(dir),
                bytes: 0,
            }),
            ..self
        }
    }

    /// Validates the 64-byte header (length and version 2). `path` labels errors.
    pub fn new(source: R, path: PathBuf) -> Result<Self> {
        let size = source.size();
        let mut reader = BlobReader {
            source,
            path,
            size,
            count: 0,
            claims: Mutex::new(Claims {
                seen: SpillMap::new_in(None),
                bytes: 0,
            }),
        };
        if size < HEADER_SIZE {
            return Err(reader.error(
                0,
                format!("file is {size} bytes, shorter than the {HEADER_SIZE}-byte storage header"),
            ));
        }
        let header = reader.read_64(0)?;
        let version = u32_at(&header, 4);
        if version != STORAGE_VERSION {
            return Err(reader.error(
                0,
                format!("storage format version {version}, expected {STORAGE_VERSION}"),
            ));
        }
        reader.count = u32_at(&header, 0);
        Ok(reader)
    }

    /// Number of blobs the header declares.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the underlying source in bytes, as seen when the reader was created.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn error(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Blob {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn read_64(&self, offset: u64) -> Result<[u8; 64]> {
        let mut buf = [0u8; 64];
        self.source.read_exact_at(&mut buf, offset).at(&self.path)?;
        Ok(buf)
    }

    /// Reads and validates the metadata record at `offset` (sentinel, dtype code, data bounds, padding).
    /// Alignment of `offset` is not required: Core ML does not require it either.
    pub fn record(&self, offset: u64) -> Result<BlobRecord> {
        let record_end = offset
            .checked_add(RECORD_SIZE)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| {
                self.error(
                    offset,
                    format!(
                        "the {RECORD_SIZE}-byte record does not fit in the {}-byte file",
                        self.size
                    ),
                )
            })?;
        let bytes = self.read_64(offset)?;
        let sentinel = u32_at(&bytes, 0);
        if sentinel != BLOB_SENTINEL {
            return Err(self.error(
                offset,
                format!("bad sentinel {sentinel:#010x}, expected {BLOB_SENTINEL:#010x}"),
            ));
        }
        let code = u32_at(&bytes, 4);
        let dtype = ScalarType::from_blob_code(code)
            .ok_or_else(|| self.error(offset, format!("unknown blob dtype code {code}")))?;
        let record = BlobRecord {
            offset,
            dtype,
            size_in_bytes: u64_at(&bytes, 8),
            data_offset: u64_at(&bytes, 16),
            padding_bits: u64_at(&bytes, 24),
        };
        if record.data_offset < record_end {
            return Err(self.error(
                offset,
                format!(
                    "data offset {} overlaps its own record (data must start at {record_end} or later)",
                    record.data_offset
                ),
            ));
        }
        match record.data_end() {
            Some(end) if end <= self.size => {}
            _ => {
                return Err(self.error(
                    offset,
                    format!(
                        "{} data bytes at offset {} run past the end of the {}-byte file",
                        record.size_in_bytes, record.data_offset, self.size
                    ),
                ))
            }
        }
        self.check_padding(&record)?;
        self.claim(&record)?;
        Ok(record)
    }

    /// Counts `record`'s span once, and refuses it if the spans counted so far cover more than the
    /// file past its header (see [`Claims`]).
    fn claim(&self, record: &BlobRecord) -> Result<()> {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        if !claims.seen.insert_if_new(record.offset, [1])? {
            return Ok(());
        }
        // `record` checked that its data ends inside the file, past the record.
        let span = record.data_end().unwrap_or(self.size) - record.offset;
        claims.bytes = claims.bytes.saturating_add(span);
        if claims.bytes > self.size - HEADER_SIZE {
            return Err(self.error(
                record.offset,
                format!(
                    "blob records overlap: the {} distinct records read cover {} bytes, more than \
                     the {} bytes past the file's header",
                    claims.seen.len(),
                    claims.bytes,
                    self.size - HEADER_SIZE
                ),
            ));
        }
        Ok(())
    }

    /// Padding rules of Core ML's sub-byte reader, applied to every type: fewer than 8 bits, none for
    /// byte-sized types, and the remaining bits a whole number of elements.
    fn check_padding(&self, record: &BlobRecord) -> Result<()> {
        let (dtype, padding) = (record.dtype, record.padding_bits);
        if padding >= 8 {
            return Err(self.error(
                record.offset,
                format!("{padding} padding bits for {dtype} data; must be fewer than 8"),
            ));
        }
        if padding != 0 && !dtype.is_sub_byte() {
            return Err(self.error(
                record.offset,
                format!("{padding} padding bits for byte-sized {dtype} data; only sub-byte types are padded"),
            ));
        }
        // Bounded by the file size checked above, but keep the arithmetic checked anyway.
        let data_bits = record
            .size_in_bytes
            .checked_mul(8)
            .and_then(|bits| bits.checked_sub(padding));
        let bits = u64::from(dtype.bits());
        match data_bits {
            Some(data_bits) if data_bits % bits == 0 => Ok(()),
            _ => Err(self.error(
                record.offset,
                format!(
                    "{} bytes with {padding} padding bits is not a whole number of {bits}-bit {dtype} elements",
                    record.size_in_bytes
                ),
            )),
        }
    }

    /// Reads the record at `offset` and checks it holds `count` elements of `expected`.
    fn checked_record(&self, offset: u64, expected: ScalarType, count: u64) -> Result<BlobRecord> {
        if expected.blob_code().is_none() {
            return Err(self.error(
                offset,
                format!(
                    "expected type {} cannot be stored in a blob",
                    describe_dtype(expected)
                ),
            ));
        }
        let record = self.record(offset)?;
        if record.dtype != expected {
            return Err(self.error(
                offset,
                format!(
                    "blob holds {}, but the tensor type is {}",
                    describe_dtype(record.dtype),
                    describe_dtype(expected)
                ),
            ));
        }
        let found = record.element_count();
        if found != count {
            return Err(self.error(
                offset,
                format!(
                    "blob holds {found} {} elements ({} bytes), expected {count}",
                    record.dtype, record.size_in_bytes
                ),
            ));
        }
        Ok(record)
    }

    /// Reads the packed bytes of the blob at `offset`, checking its dtype equals `expected` and that it
    /// holds exactly `count` elements.
    pub fn read(&self, offset: u64, expected: ScalarType, count: u64) -> Result<Vec<u8>> {
        let record = self.checked_record(offset, expected, count)?;
        // size_in_bytes is within the file (checked in `record`), so this allocation is bounded by it.
        let len = usize::try_from(record.size_in_bytes).map_err(|_| {
            self.error(
                offset,
                format!("{} bytes do not fit in memory", record.size_in_bytes),
            )
        })?;
        let mut data = vec![0u8; len];
        self.source
            .read_exact_at(&mut data, record.data_offset)
            .at(&self.path)?;
        Ok(data)
    }

    /// Reads the blob at `offset` and decodes it to typed data. The weight dtypes are read straight
    /// into their typed vector (no intermediate byte copy) on little-endian machines.
    pub fn read_tensor(&self, offset: u64, expected: ScalarType, count: u64) -> Result<TensorData> {
        self.read_tensor_reusing(offset, expected, count, None, ReadThreads::Caller)
    }

    /// [`BlobReader::read_tensor`] into `spare`'s allocation when it has the same element type:
    /// reusing a buffer whose pages are already mapped saves the page faults and zeroing a fresh
    /// tensor-sized allocation costs. `threads` says who reads (see [`ReadThreads`]).
    pub fn read_tensor_reusing(
        &self,
        offset: u64,
        expected: ScalarType,
        count: u64,
        spare: Option<TensorData>,
        threads: ReadThreads,
    ) -> Result<TensorData> {
        if cfg!(target_endian = "little") {
            match (expected, spare) {
                (ScalarType::Float16, Some(TensorData::F16(v))) => {
                    return self
                        .read_pod(offset, expected, count, v, threads)
                        .map(TensorData::F16)
                }
                (ScalarType::Float16, _) => {
                    return self
                        .read_pod(offset, expected, count, Vec::new(), threads)
                        .map(TensorData::F16)
                }
                (ScalarType::Float32, Some(TensorData::F32(v))) => {
                    return self
                        .read_pod(offset, expected, count, v, threads)
                        .map(TensorData::F32)
                }
                (ScalarType::Float32, _) => {
                    return self
                        .read_pod(offset, expected, count, Vec::new(), threads)
                        .map(TensorData::F32)
                }
                _ => {}
            }
        }
        let bytes = self.read(offset, expected, count)?;
        TensorData::from_le_bytes(expected, &bytes, count).map_err(|reason| self.error(offset, reason))
    }

    /// Where the `count` elements of `expected` stored at `offset` lie in the source: their byte
    /// offset and length, after the same checks a read makes.
    pub fn data_range(&self, offset: u64, expected: ScalarType, count: u64) -> Result<(u64, u64)> {
        let record = self.checked_record(offset, expected, count)?;
        Ok((record.data_offset, record.size_in_bytes))
    }

    /// What the reader reads from.
    pub fn source(&self) -> &R {
        &self.source
    }

    /// Reads `count` elements of a byte-aligned type whose in-memory layout is its little-endian
    /// storage layout, into `buffer` (its contents are replaced, its allocation reused if large
    /// enough).
    fn read_pod<T: bytemuck::Pod>(
        &self,
        offset: u64,
        expected: ScalarType,
        count: u64,
        buffer: Vec<T>,
        threads: ReadThreads,
    ) -> Result<Vec<T>> {
        let record = self.checked_record(offset, expected, count)?;
        let n = usize::try_from(count)
            .ok()
            .filter(|&n| {
                n.checked_mul(std::mem::size_of::<T>()) == usize::try_from(record.size_in_bytes).ok()
            })
            .ok_or_else(|| {
                self.error(
                    offset,
                    format!("{count} elements of {expected} do not fit in memory"),
                )
            })?;
        // `checked_record` verified size_in_bytes == count elements and that it lies within the file.
        let mut buffer = crate::tensor::reuse_or_zeroed(buffer, n);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buffer);
        match threads {
            ReadThreads::Pool if bytes.len() >= 2 * READ_PIECE => {
                use rayon::prelude::*;
                bytes
                    .par_chunks_mut(READ_PIECE)
                    .enumerate()
                    .try_for_each(|(i, piece)| {
                        self.source
                            .read_exact_at(piece, record.data_offset + (i * READ_PIECE) as u64)
                    })
            }
            _ => self.source.read_exact_at(bytes, record.data_offset),
        }
        .at(&self.path)?;
        Ok(buffer)
    }

    /// Enumerates every record the way Core ML's `StorageReader::GetAllOffsets` does: the first at 64,
    /// each next at `align64(data_offset + size_in_bytes)`, `count` times. Each record is validated;
    /// since every data region lies past its record, offsets strictly increase and the loop ends at the
    /// file end even if `count` is garbage.
    pub fn records(&self) -> Result<Vec<BlobRecord>> {
        let max_records = self.size / RECORD_SIZE;
        let mut records =
            Vec::with_capacity(usize::try_from(u64::from(self.count).min(max_records)).unwrap_or(0));
        let mut offset = HEADER_SIZE;
        for index in 0..self.count {
            let record = self.record(offset).map_err(|e| match e {
                Error::Blob { path, offset, reason } => Error::Blob {
                    path,
                    offset,
                    reason: format!("record {index} of {}: {reason}", self.count),
                },
                other => other,
            })?;
            records.push(record);
            // data_end <= size was checked, so neither step overflows in practice.
            offset = record
                .data_end()
                .and_then(super::align64)
                .ok_or_else(|| self.error(offset, "next record offset overflows"))?;
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand assembly of files, independent of BlobWriter.

    fn header(count: u32, version: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[0..4].copy_from_slice(&count.to_le_bytes());
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        bytes
    }

    struct Rec {
        sentinel: u32,
        code: u32,
        size: u64,
        data_offset: u64,
        padding: u64,
        reserved: u64,
    }

    fn rec(code: u32, size: u64, data_offset: u64, padding: u64) -> Rec {
        Rec {
            sentinel: 0xDEAD_BEEF,
            code,
            size,
            data_offset,
            padding,
            reserved: 0,
        }
    }

    fn push_record(file: &mut Vec<u8>, r: &Rec) {
        file.extend_from_slice(&r.sentinel.to_le_bytes());
        file.extend_from_slice(&r.code.to_le_bytes());
        file.extend_from_slice(&r.size.to_le_bytes());
        file.extend_from_slice(&r.data_offset.to_le_bytes());
        file.extend_from_slice(&r.padding.to_le_bytes());
        for _ in 0..4 {
            file.extend_from_slice(&r.reserved.to_le_bytes());
        }
    }

    /// Header plus one record at 64 with `data` right after it.
    fn one_blob(r: Rec, data: &[u8]) -> Vec<u8> {
        let mut file = header(1, 2);
        push_record(&mut file, &r);
        file.extend_from_slice(data);
        file
    }

    fn reader(file: Vec<u8>) -> BlobReader<Vec<u8>> {
        BlobReader::new(file, PathBuf::from("w.bin")).expect("valid header")
    }

    /// The error's offset and message, asserting it is a Blob error for our path.
    fn blob_err<T: std::fmt::Debug>(result: Result<T>) -> (u64, String) {
        match result.expect_err("should fail") {
            Error::Blob { path, offset, reason } => {
                assert_eq!(path, PathBuf::from("w.bin"));
                (offset, reason)
            }
            other => panic!("expected a blob error, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_hand_built_fp32_blob() {
        let data: Vec<u8> = [1.0f32, -2.0, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let r = reader(one_blob(rec(2, 12, 128, 0), &data));
        assert_eq!(r.count(), 1);
        assert_eq!(r.path(), Path::new("w.bin"));
        let record = r.record(64).unwrap();
        assert_eq!(
            record,
            BlobRecord {
                offset: 64,
                dtype: ScalarType::Float32,
                data_offset: 128,
                size_in_bytes: 12,
                padding_bits: 0
            }
        );
        assert_eq!(record.element_count(), 3);
        assert_eq!(r.read(64, ScalarType::Float32, 3).unwrap(), data);
        assert_eq!(
            r.read_tensor(64, ScalarType::Float32, 3).unwrap(),
            TensorData::F32(vec![1.0, -2.0, 0.5])
        );
    }

    #[test]
    fn reserved_fields_are_not_validated() {
        let mut r = rec(3, 2, 128, 0);
        r.reserved = 0x1234_5678_9abc_def0;
        let mut file = one_blob(r, &[7, 9]);
        file[8..64].fill(0xAB); // header reserved fields too
        let r = reader(file);
        assert_eq!(r.read(64, ScalarType::UInt8, 2).unwrap(), vec![7, 9]);
    }

    #[test]
    fn data_may_start_after_the_record_gap() {
        // Not coremltools' layout, but the record says where its data is; honour it.
        let mut file = one_blob(rec(3, 2, 192, 0), &[0; 64]);
        file.extend_from_slice(&[5, 6]);
        assert_eq!(reader(file).read(64, ScalarType::UInt8, 2).unwrap(), vec![5, 6]);
    }

    #[test]
    fn header_shorter_than_64_bytes() {
        let err = BlobReader::new(vec![0u8; 63], PathBuf::from("w.bin"));
        let (offset, reason) = blob_err(err);
        assert_eq!(offset, 0);
        assert!(reason.contains("63 bytes"), "{reason}");
        assert!(blob_err(BlobReader::new(Vec::new(), PathBuf::from("w.bin")))
            .1
            .contains("0 bytes"));
    }

    #[test]
    fn version_must_be_2() {
        for version in [0, 1, 3] {
            let (offset, reason) = blob_err(BlobReader::new(header(0, version), PathBuf::from("w.bin")));
            assert_eq!(offset, 0);
            assert!(reason.contains(&format!("version {version}")), "{reason}");
        }
        assert_eq!(reader(header(0, 2)).records().unwrap(), vec![]);
    }

    #[test]
    fn record_past_end_of_file() {
        let r = reader(one_blob(rec(3, 0, 128, 0), &[]));
        assert!(r.record(64).is_ok());
        let (offset, reason) = blob_err(r.record(65));
        assert_eq!(offset, 65);
        assert!(reason.contains("does not fit in the 128-byte file"), "{reason}");
        // offset + 64 overflows u64.
        let (offset, _) = blob_err(r.record(u64::MAX - 10));
        assert_eq!(offset, u64::MAX - 10);
    }

    #[test]
    fn bad_sentinel_is_shown_in_hex() {
        let mut r = rec(3, 1, 128, 0);
        r.sentinel = 0xCAFE_F00D;
        let (offset, reason) = blob_err(reader(one_blob(r, &[0])).record(64));
        assert_eq!(offset, 64);
        assert!(
            reason.contains("0xcafef00d") && reason.contains("0xdeadbeef"),
            "{reason}"
        );
    }

    #[test]
    fn unknown_dtype_code() {
        for code in [0, 18, u32::MAX] {
            let (_, reason) = blob_err(reader(one_blob(rec(code, 1, 128, 0), &[0])).record(64));
            assert!(
                reason.contains(&format!("unknown blob dtype code {code}")),
                "{reason}"
            );
        }
    }

    #[test]
    fn dtype_mismatch_names_both_types_and_codes() {
        let r = reader(one_blob(rec(3, 4, 128, 0), &[0; 4]));
        let (offset, reason) = blob_err(r.read(64, ScalarType::Float16, 2));
        assert_eq!(offset, 64);
        assert_eq!(
            reason,
            "blob holds uint8 (blob dtype code 3, MIL.proto DataType 31), \
             but the tensor type is fp16 (blob dtype code 1, MIL.proto DataType 10)"
        );
        let (_, reason) = blob_err(r.read(64, ScalarType::Float64, 1));
        assert!(reason.contains("fp64 (no blob dtype code"), "{reason}");
    }

    #[test]
    fn data_before_or_inside_its_record() {
        for data_offset in [0, 64, 127] {
            let (_, reason) = blob_err(reader(one_blob(rec(3, 1, data_offset, 0), &[0])).record(64));
            assert!(
                reason.contains("overlaps its own record"),
                "{data_offset}: {reason}"
            );
        }
    }

    #[test]
    fn data_past_end_or_overflowing() {
        let (_, reason) = blob_err(reader(one_blob(rec(3, 3, 128, 0), &[0, 0])).record(64));
        assert!(
            reason.contains("3 data bytes at offset 128 run past the end of the 130-byte file"),
            "{reason}"
        );
        let (_, reason) = blob_err(reader(one_blob(rec(3, u64::MAX, 128, 0), &[0])).record(64));
        assert!(reason.contains("run past the end"), "{reason}");
        let (_, reason) = blob_err(reader(one_blob(rec(3, 1, u64::MAX, 0), &[0])).record(64));
        assert!(reason.contains("run past the end"), "{reason}");
    }

    #[test]
    fn huge_claimed_size_fails_before_allocating() {
        // A 100-byte file claiming 2^60 bytes of fp16: must be rejected by the bounds check.
        let mut file = one_blob(rec(1, 1 << 60, 128, 0), &[]);
        file.truncate(100);
        let r = BlobReader::new(file, PathBuf::from("w.bin")).unwrap();
        assert!(blob_err(r.record(64)).1.contains("does not fit"));
        let file = one_blob(rec(1, 1 << 60, 128, 0), &[0; 8]);
        let r = reader(file);
        let (_, reason) = blob_err(r.read(64, ScalarType::Float16, 1 << 59));
        assert!(reason.contains("run past the end"), "{reason}");
    }

    #[test]
    fn padding_rules() {
        let cases: [(u32, u64, u64, &str); 6] = [
            (9, 1, 8, "must be fewer than 8"),           // uint1, 8 bits of padding
            (9, 1, u64::MAX, "must be fewer than 8"),    // garbage
            (3, 1, 1, "only sub-byte types are padded"), // uint8 padded
            (11, 1, 2, "whole number of 4-bit uint4"),   // uint4 padding not a multiple of 4
            (12, 1, 1, "whole number of 3-bit uint3"),   // 7 bits left: not whole uint3s
            (9, 0, 1, "0 bytes with 1 padding bits"),    // more padding than data
        ];
        for (code, size, padding, expected) in cases {
            let r = reader(one_blob(rec(code, size, 128, padding), &[0; 1]));
            let (_, reason) = blob_err(r.record(64));
            assert!(
                reason.contains(expected),
                "code {code} padding {padding}: {reason}"
            );
        }
        // A byte type whose size is not a multiple of the element size.
        let (_, reason) = blob_err(reader(one_blob(rec(2, 3, 128, 0), &[0; 3])).record(64));
        assert!(reason.contains("whole number of 32-bit fp32"), "{reason}");
        // Legal: uint6 × 1 = 1 byte with 2 padding bits; uint3 × 2 = 1 byte with 2 padding bits.
        let r = reader(one_blob(rec(13, 1, 128, 2), &[0x3F]));
        assert_eq!(r.record(64).unwrap().element_count(), 1);
        let r = reader(one_blob(rec(12, 1, 128, 2), &[0x3F]));
        assert_eq!(
            r.read_tensor(64, ScalarType::UInt3, 2).unwrap(),
            TensorData::SubByte {
                dtype: ScalarType::UInt3,
                values: vec![7, 7]
            }
        );
    }

    #[test]
    fn element_count_must_match() {
        let r = reader(one_blob(rec(1, 6, 128, 0), &[0; 6]));
        let (offset, reason) = blob_err(r.read(64, ScalarType::Float16, 4));
        assert_eq!(offset, 64);
        assert_eq!(reason, "blob holds 3 fp16 elements (6 bytes), expected 4");
        // uint1 × 2193 in 275 bytes with padding 7 (spec example); 2192 is not the same blob.
        let r = reader(one_blob(rec(9, 275, 128, 7), &[0; 275]));
        assert_eq!(r.read(64, ScalarType::UInt1, 2193).unwrap().len(), 275);
        assert!(blob_err(r.read(64, ScalarType::UInt1, 2192)).1.contains("2193"));
    }

    #[test]
    fn records_walks_aligned_offsets() {
        let mut file = header(3, 2);
        push_record(&mut file, &rec(1, 6, 128, 0)); // data 128..134
        file.extend_from_slice(&[1; 6]);
        file.resize(192, 0);
        push_record(&mut file, &rec(9, 1, 256, 7)); // uint1 × 1 at 256
        file.push(1);
        file.resize(320, 0);
        push_record(&mut file, &rec(14, 4, 384, 0)); // int32 × 1, last blob, no trailing pad
        file.extend_from_slice(&(-5i32).to_le_bytes());
        let r = reader(file);
        let offsets: Vec<(u64, ScalarType, u64)> = r
            .records()
            .unwrap()
            .iter()
            .map(|rec| (rec.offset, rec.dtype, rec.element_count()))
            .collect();
        assert_eq!(
            offsets,
            vec![
                (64, ScalarType::Float16, 3),
                (192, ScalarType::UInt1, 1),
                (320, ScalarType::Int32, 1)
            ]
        );
        assert_eq!(
            r.read_tensor(320, ScalarType::Int32, 1).unwrap(),
            TensorData::I32(vec![-5])
        );
    }

    #[test]
    fn records_fails_cleanly_on_garbage() {
        // count claims more blobs than exist: the walk hits the file end.
        let mut file = one_blob(rec(3, 1, 128, 0), &[0]);
        file[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let (offset, reason) = blob_err(reader(file).records());
        assert_eq!(offset, 192);
        assert!(reason.starts_with("record 1 of 4294967295:"), "{reason}");
        // Garbage where the second record should be.
        let mut file = one_blob(rec(3, 1, 128, 0), &[0]);
        file[0] = 2;
        file.resize(256, 0xEE);
        let (offset, reason) = blob_err(reader(file).records());
        assert_eq!(offset, 192);
        assert!(reason.contains("bad sentinel 0xeeeeeeee"), "{reason}");
    }

    #[test]
    fn pool_reads_match_caller_reads_into_any_buffer() {
        // Larger than two read pieces and not a multiple of one: the pieces and the tail land in
        // place, whether the buffer is fresh, too small or reused.
        let n = 2 * READ_PIECE + 6;
        let data: Vec<u8> = (0..n).map(|i| (i * 131 % 251) as u8).collect();
        let r = reader(one_blob(rec(1, n as u64, 128, 0), &data));
        let count = (n / 2) as u64;
        let spares = [
            None,
            Some(TensorData::F16(vec![half::f16::ONE; 3])),
            Some(TensorData::F16(vec![half::f16::ONE; n])),
            Some(TensorData::U8(vec![1; 8])),
        ];
        for spare in spares {
            for threads in [ReadThreads::Caller, ReadThreads::Pool] {
                let got = r
                    .read_tensor_reusing(64, ScalarType::Float16, count, spare.clone(), threads)
                    .unwrap();
                // Compared as bytes: the data holds NaN patterns.
                assert!(got.as_le_bytes() == data.as_slice(), "{threads:?}");
            }
        }
    }

    #[test]
    fn slices_and_files_are_sources() {
        let file = one_blob(rec(4, 2, 128, 0), &[0xFF, 0x01]);
        let r = BlobReader::new(file.as_slice(), PathBuf::from("w.bin")).unwrap();
        assert_eq!(
            r.read_tensor(64, ScalarType::Int8, 2).unwrap(),
            TensorData::I8(vec![-1, 1])
        );
        let mut buf = [0u8; 4];
        assert!(file.as_slice().read_exact_at(&mut buf, 128).is_err());
        assert!(file.as_slice().read_exact_at(&mut buf, u64::MAX).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weight.bin");
        std::fs::write(&path, &file).unwrap();
        let r = BlobReader::open(&path).unwrap();
        assert_eq!(r.size(), 130);
        assert_eq!(r.read(64, ScalarType::Int8, 2).unwrap(), vec![0xFF, 0x01]);
        let missing = dir.path().join("missing.bin");
        assert!(matches!(BlobReader::open(&missing), Err(Error::Io { path, .. }) if path == missing));
    }
}
