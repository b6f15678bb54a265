//! The protobuf wire format of the fields that lead from a `Model` to its ops, shared by the
//! reader that leaves the ops in the file ([`super::split`]) and the writer that streams them back
//! ([`super::stream`]).

/// Wire types.
pub const VARINT: u32 = 0;
pub const FIXED64: u32 = 1;
pub const LENGTH_DELIMITED: u32 = 2;
pub const FIXED32: u32 = 5;

/// `Model.mlProgram`, a member of the `Type` oneof.
pub const MODEL_ML_PROGRAM: u32 = 502;
pub const PROGRAM_FUNCTIONS: u32 = 2;
pub const FUNCTION_BLOCK_SPECIALIZATIONS: u32 = 3;
pub const BLOCK_OPERATIONS: u32 = 3;
/// The fields of a map entry.
pub const ENTRY_KEY: u32 = 1;
pub const ENTRY_VALUE: u32 = 2;

pub fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The bytes prost writes for `value`: the shortest encoding.
pub fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// The key and length of a length-delimited field `tag` of `len` bytes.
pub fn put_head(tag: u32, len: usize, out: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3 | LENGTH_DELIMITED), out);
    put_varint(len as u64, out);
}

/// The encoded size of a length-delimited field `tag` of `len` bytes.
pub fn field_len(tag: u32, len: usize) -> usize {
    varint_len(u64::from(tag << 3 | LENGTH_DELIMITED)) + varint_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_written_as_prost_writes_them() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(value, &mut out);
            assert_eq!(out.len(), varint_len(value), "{value}");
            let mut prost_out = Vec::new();
            prost::encoding::encode_varint(value, &mut prost_out);
            assert_eq!(out, prost_out, "{value}");
        }
    }
}
