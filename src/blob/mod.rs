//! The MIL blob storage file `weight.bin` (spec §3): a 64-byte header, then per blob a 64-byte-aligned
//! metadata record followed by its data. `reader` validates and reads it, `writer` produces a compact
//! file the way coremltools does, `subbyte` packs the bit-packed element types (§3.4). The layout
//! constants and the record type both sides share live here.

mod reader;
pub mod subbyte;
mod writer;

pub use reader::{BlobReader, ReadAt, ReadThreads};
pub use subbyte::{count_ones, count_zero_elements, pack, padding_bits, unpack};
pub use writer::{BlobWriter, EarlierWriteFailed, TensorSink};

use crate::dtype::ScalarType;

/// Size of the storage header at offset 0 (§3.1).
pub const HEADER_SIZE: u64 = 64;
/// Size of each blob metadata record (§3.2).
pub const RECORD_SIZE: u64 = 64;
/// Records (and so their data) start on multiples of this.
pub const ALIGNMENT: u64 = 64;
/// The only storage format version Core ML reads.
pub const STORAGE_VERSION: u32 = 2;
/// First field of every metadata record (bytes `ef be ad de`).
pub const BLOB_SENTINEL: u32 = 0xDEAD_BEEF;

/// Rounds up to the next multiple of 64; `None` on overflow.
pub fn align64(value: u64) -> Option<u64> {
    value.checked_next_multiple_of(ALIGNMENT)
}

/// One blob's metadata record, as validated by the reader. Reserved fields are not kept: old files
/// hold garbage there and a writer emits zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRecord {
    /// File offset of the record itself: what `BlobFileValue.offset` stores.
    pub offset: u64,
    pub dtype: ScalarType,
    /// File offset of the data (normally `offset + 64`).
    pub data_offset: u64,
    /// Stored byte length, including the padding bits of sub-byte types.
    pub size_in_bytes: u64,
    /// Unused bits at the end of sub-byte data; 0 for byte-sized types.
    pub padding_bits: u64,
}

impl BlobRecord {
    /// Elements stored: `(size_in_bytes*8 - padding_bits) / bits`.
    pub fn element_count(&self) -> u64 {
        // Saturating only matters for hand-built records; the reader has validated its own.
        self.size_in_bytes
            .saturating_mul(8)
            .saturating_sub(self.padding_bits)
            / u64::from(self.dtype.bits())
    }

    /// End of the data, where the next record's alignment starts from.
    pub fn data_end(&self) -> Option<u64> {
        self.data_offset.checked_add(self.size_in_bytes)
    }
}

/// Describes a type with both of its codes, since a blob and MIL.proto number types differently
/// (spec §8 pitfall 2), e.g. `fp16 (blob dtype code 1, MIL.proto DataType 10)`.
pub(crate) fn describe_dtype(dtype: ScalarType) -> String {
    let proto = dtype.to_proto() as i32;
    match dtype.blob_code() {
        Some(code) => format!("{dtype} (blob dtype code {code}, MIL.proto DataType {proto})"),
        None => format!("{dtype} (no blob dtype code, MIL.proto DataType {proto})"),
    }
}
