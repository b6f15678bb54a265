//! Scalar element types and the tables that relate their three encodings: the MIL.proto `DataType`
//! enum, the blob-file `mil_dtype` code (a different numbering, spec §3.2), and the bit width.

use crate::proto::mil::DataType;

/// Element types mlprune can hold as tensor data. Sub-byte types are stored unpacked, one element per
/// byte (`Int4` sign-extended into an `i8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScalarType {
    Bool,
    Float16,
    Float32,
    Float64,
    BFloat16,
    Int4,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt1,
    UInt2,
    UInt3,
    UInt4,
    UInt6,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float8E4M3FN,
    Float8E5M2,
}

impl ScalarType {
    pub const ALL: [ScalarType; 21] = [
        ScalarType::Bool,
        ScalarType::Float16,
        ScalarType::Float32,
        ScalarType::Float64,
        ScalarType::BFloat16,
        ScalarType::Int4,
        ScalarType::Int8,
        ScalarType::Int16,
        ScalarType::Int32,
        ScalarType::Int64,
        ScalarType::UInt1,
        ScalarType::UInt2,
        ScalarType::UInt3,
        ScalarType::UInt4,
        ScalarType::UInt6,
        ScalarType::UInt8,
        ScalarType::UInt16,
        ScalarType::UInt32,
        ScalarType::UInt64,
        ScalarType::Float8E4M3FN,
        ScalarType::Float8E5M2,
    ];

    /// The MIL.proto enum value.
    pub fn to_proto(self) -> DataType {
        use ScalarType::*;
        match self {
            Bool => DataType::Bool,
            Float16 => DataType::Float16,
            Float32 => DataType::Float32,
            Float64 => DataType::Float64,
            BFloat16 => DataType::Bfloat16,
            Int4 => DataType::Int4,
            Int8 => DataType::Int8,
            Int16 => DataType::Int16,
            Int32 => DataType::Int32,
            Int64 => DataType::Int64,
            UInt1 => DataType::Uint1,
            UInt2 => DataType::Uint2,
            UInt3 => DataType::Uint3,
            UInt4 => DataType::Uint4,
            UInt6 => DataType::Uint6,
            UInt8 => DataType::Uint8,
            UInt16 => DataType::Uint16,
            UInt32 => DataType::Uint32,
            UInt64 => DataType::Uint64,
            Float8E4M3FN => DataType::Float8e4m3fn,
            Float8E5M2 => DataType::Float8e5m2,
        }
    }

    /// From the raw MIL.proto enum value; `None` for `UNUSED_TYPE`, `STRING` and unknown numbers.
    pub fn from_proto(raw: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.to_proto() as i32 == raw)
    }

    /// The blob-file `mil_dtype` code (spec §3.2), or `None` for types that never live in a blob.
    pub fn blob_code(self) -> Option<u32> {
        use ScalarType::*;
        Some(match self {
            Float16 => 1,
            Float32 => 2,
            UInt8 => 3,
            Int8 => 4,
            BFloat16 => 5,
            Int16 => 6,
            UInt16 => 7,
            Int4 => 8,
            UInt1 => 9,
            UInt2 => 10,
            UInt4 => 11,
            UInt3 => 12,
            UInt6 => 13,
            Int32 => 14,
            UInt32 => 15,
            Float8E4M3FN => 16,
            Float8E5M2 => 17,
            Bool | Float64 | Int64 | UInt64 => return None,
        })
    }

    pub fn from_blob_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.blob_code() == Some(code))
    }

    /// Bits per element as stored (sub-byte types are bit-packed).
    pub fn bits(self) -> u32 {
        use ScalarType::*;
        match self {
            UInt1 => 1,
            UInt2 => 2,
            UInt3 => 3,
            Int4 | UInt4 => 4,
            UInt6 => 6,
            Bool | Int8 | UInt8 | Float8E4M3FN | Float8E5M2 => 8,
            Float16 | BFloat16 | Int16 | UInt16 => 16,
            Float32 | Int32 | UInt32 => 32,
            Float64 | Int64 | UInt64 => 64,
        }
    }

    /// True for the bit-packed types (uint1/2/3/4/6, int4).
    pub fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }

    pub fn is_float(self) -> bool {
        use ScalarType::*;
        matches!(
            self,
            Float16 | Float32 | Float64 | BFloat16 | Float8E4M3FN | Float8E5M2
        )
    }

    /// Lower-case name as coremltools and numpy spell it (`fp16` style is used only for display).
    pub fn name(self) -> &'static str {
        use ScalarType::*;
        match self {
            Bool => "bool",
            Float16 => "fp16",
            Float32 => "fp32",
            Float64 => "fp64",
            BFloat16 => "bf16",
            Int4 => "int4",
            Int8 => "int8",
            Int16 => "int16",
            Int32 => "int32",
            Int64 => "int64",
            UInt1 => "uint1",
            UInt2 => "uint2",
            UInt3 => "uint3",
            UInt4 => "uint4",
            UInt6 => "uint6",
            UInt8 => "uint8",
            UInt16 => "uint16",
            UInt32 => "uint32",
            UInt64 => "uint64",
            Float8E4M3FN => "fp8e4m3fn",
            Float8E5M2 => "fp8e5m2",
        }
    }

    /// Bytes needed to store `count` elements, bit-packed for sub-byte types. `None` on overflow.
    pub fn storage_bytes(self, count: u64) -> Option<u64> {
        let bits = count.checked_mul(u64::from(self.bits()))?;
        Some(bits.div_ceil(8))
    }
}

impl std::fmt::Display for ScalarType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_and_blob_codes_round_trip() {
        for t in ScalarType::ALL {
            assert_eq!(ScalarType::from_proto(t.to_proto() as i32), Some(t));
            if let Some(code) = t.blob_code() {
                assert_eq!(ScalarType::from_blob_code(code), Some(t));
            }
        }
        assert_eq!(ScalarType::from_proto(DataType::String as i32), None);
        assert_eq!(ScalarType::from_blob_code(0), None);
        assert_eq!(ScalarType::from_blob_code(18), None);
    }

    #[test]
    fn spec_codes_match_the_table() {
        // Spec §3.2 and §8 pitfall 2: FLOAT16 is 10 in the proto but 1 in a blob.
        assert_eq!(ScalarType::Float16.to_proto() as i32, 10);
        assert_eq!(ScalarType::Float16.blob_code(), Some(1));
        assert_eq!(ScalarType::UInt1.to_proto() as i32, 37);
        assert_eq!(ScalarType::UInt1.blob_code(), Some(9));
        assert_eq!(ScalarType::UInt3.blob_code(), Some(12));
    }

    #[test]
    fn storage_bytes_packs_sub_byte_types() {
        assert_eq!(ScalarType::UInt1.storage_bytes(2193), Some(275));
        assert_eq!(ScalarType::Int4.storage_bytes(1535), Some(768));
        assert_eq!(ScalarType::UInt3.storage_bytes(1104), Some(414));
        assert_eq!(ScalarType::Float32.storage_bytes(u64::MAX), None);
    }
}
