//! Typed tensor element storage, decoded from (and encoded back to) the little-endian byte layout that
//! `weight.bin` blobs and immediate `TensorValue.bytes` share. Decoding is explicit little-endian, so
//! the result does not depend on the host byte order.

use half::f16;

use crate::blob::subbyte;
use crate::dtype::ScalarType;

/// Elements of one tensor, flat in row-major order. Sub-byte types are held unpacked, one element per
/// byte; types mlprune never does arithmetic on are carried as opaque bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    /// int4, each element sign-extended into an `i8`.
    I4(Vec<i8>),
    /// uint1/2/3/4/6, one element per byte. Bits above the type's width are dropped when encoding.
    SubByte {
        dtype: ScalarType,
        values: Vec<u8>,
    },
    /// bf16 and fp8: `count` elements carried as their storage bytes, not interpreted.
    Opaque {
        dtype: ScalarType,
        count: u64,
        bytes: Vec<u8>,
    },
}

/// Splits `bytes` into `N`-byte little-endian elements (the caller has checked the length).
fn le_chunks<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut array = [0u8; N];
            array.copy_from_slice(chunk);
            from(array)
        })
        .collect()
}

/// Concatenates each element's little-endian bytes.
fn le_bytes<const N: usize, T: Copy>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for &value in values {
        out.extend_from_slice(&to(value));
    }
    out
}

/// Sign-extends the low nibble of `nibble` (two's complement int4).
fn sign_extend_int4(nibble: u8) -> i8 {
    ((nibble << 4) as i8) >> 4
}

impl TensorData {
    /// The values borrowed, for the dtypes a [`super::TensorView`] holds (fp16 and fp32).
    pub fn as_view(&self) -> Option<super::TensorView<'_>> {
        match self {
            TensorData::F16(v) => Some(super::TensorView::F16(v)),
            TensorData::F32(v) => Some(super::TensorView::F32(v)),
            _ => None,
        }
    }

    pub fn dtype(&self) -> ScalarType {
        use ScalarType as S;
        match self {
            TensorData::F16(_) => S::Float16,
            TensorData::F32(_) => S::Float32,
            TensorData::F64(_) => S::Float64,
            TensorData::I8(_) => S::Int8,
            TensorData::U8(_) => S::UInt8,
            TensorData::I16(_) => S::Int16,
            TensorData::U16(_) => S::UInt16,
            TensorData::I32(_) => S::Int32,
            TensorData::U32(_) => S::UInt32,
            TensorData::I64(_) => S::Int64,
            TensorData::U64(_) => S::UInt64,
            TensorData::Bool(_) => S::Bool,
            TensorData::I4(_) => S::Int4,
            TensorData::SubByte { dtype, .. } | TensorData::Opaque { dtype, .. } => *dtype,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F16(v) => v.len(),
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I8(v) | TensorData::I4(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::I16(v) => v.len(),
            TensorData::U16(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::U64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
            TensorData::SubByte { values, .. } => values.len(),
            // `count` was checked against the byte length when decoded, so it fits in memory.
            TensorData::Opaque { count, .. } => usize::try_from(*count).unwrap_or(usize::MAX),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes `count` elements of `dtype` from their little-endian storage bytes (bit-packed for
    /// sub-byte types, one byte per `bool`, nonzero meaning true). Fails with a one-line reason when
    /// the byte length is not exactly what `count` elements need; nothing is allocated before that.
    pub fn from_le_bytes(dtype: ScalarType, bytes: &[u8], count: u64) -> Result<Self, String> {
        let expected = dtype
            .storage_bytes(count)
            .ok_or_else(|| format!("{count} elements of {dtype} overflow the addressable size"))?;
        if bytes.len() as u64 != expected {
            return Err(format!(
                "{} bytes do not hold {count} elements of {dtype} (expected {expected} bytes)",
                bytes.len()
            ));
        }
        // Equal to bytes.len() or smaller, so it fits in usize.
        let n = usize::try_from(count).map_err(|_| format!("{count} elements do not fit in memory"))?;
        use ScalarType as S;
        Ok(match dtype {
            S::Float16 => TensorData::F16(le_chunks(bytes, f16::from_le_bytes)),
            S::Float32 => TensorData::F32(le_chunks(bytes, f32::from_le_bytes)),
            S::Float64 => TensorData::F64(le_chunks(bytes, f64::from_le_bytes)),
            S::Int8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
            S::UInt8 => TensorData::U8(bytes.to_vec()),
            S::Int16 => TensorData::I16(le_chunks(bytes, i16::from_le_bytes)),
            S::UInt16 => TensorData::U16(le_chunks(bytes, u16::from_le_bytes)),
            S::Int32 => TensorData::I32(le_chunks(bytes, i32::from_le_bytes)),
            S::UInt32 => TensorData::U32(le_chunks(bytes, u32::from_le_bytes)),
            S::Int64 => TensorData::I64(le_chunks(bytes, i64::from_le_bytes)),
            S::UInt64 => TensorData::U64(le_chunks(bytes, u64::from_le_bytes)),
            S::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            S::Int4 => TensorData::I4(
                subbyte::unpack(bytes, 4, n)
                    .into_iter()
                    .map(sign_extend_int4)
                    .collect(),
            ),
            S::UInt1 | S::UInt2 | S::UInt3 | S::UInt4 | S::UInt6 => TensorData::SubByte {
                dtype,
                values: subbyte::unpack(bytes, dtype.bits(), n),
            },
            S::BFloat16 | S::Float8E4M3FN | S::Float8E5M2 => TensorData::Opaque {
                dtype,
                count,
                bytes: bytes.to_vec(),
            },
        })
    }

    /// The storage bytes without copying where the in-memory layout already is the storage layout
    /// (byte-aligned numeric types on little-endian machines); otherwise [`TensorData::to_le_bytes`].
    pub fn as_le_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        if cfg!(target_endian = "little") {
            let borrowed: Option<&[u8]> = match self {
                TensorData::F16(v) => Some(bytemuck::cast_slice(v)),
                TensorData::F32(v) => Some(bytemuck::cast_slice(v)),
                TensorData::F64(v) => Some(bytemuck::cast_slice(v)),
                TensorData::I8(v) => Some(bytemuck::cast_slice(v)),
                TensorData::U8(v) => Some(v),
                TensorData::I16(v) => Some(bytemuck::cast_slice(v)),
                TensorData::U16(v) => Some(bytemuck::cast_slice(v)),
                TensorData::I32(v) => Some(bytemuck::cast_slice(v)),
                TensorData::U32(v) => Some(bytemuck::cast_slice(v)),
                TensorData::I64(v) => Some(bytemuck::cast_slice(v)),
                TensorData::U64(v) => Some(bytemuck::cast_slice(v)),
                TensorData::Opaque { bytes, .. } => Some(bytes),
                _ => None,
            };
            if let Some(b) = borrowed {
                return Cow::Borrowed(b);
            }
        }
        Cow::Owned(self.to_le_bytes())
    }

    /// Encodes to little-endian storage bytes, the inverse of [`TensorData::from_le_bytes`]
    /// (sub-byte types bit-packed with zero padding bits, `bool` as 0/1).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::F16(v) => le_bytes(v, f16::to_le_bytes),
            TensorData::F32(v) => le_bytes(v, f32::to_le_bytes),
            TensorData::F64(v) => le_bytes(v, f64::to_le_bytes),
            TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::I16(v) => le_bytes(v, i16::to_le_bytes),
            TensorData::U16(v) => le_bytes(v, u16::to_le_bytes),
            TensorData::I32(v) => le_bytes(v, i32::to_le_bytes),
            TensorData::U32(v) => le_bytes(v, u32::to_le_bytes),
            TensorData::I64(v) => le_bytes(v, i64::to_le_bytes),
            TensorData::U64(v) => le_bytes(v, u64::to_le_bytes),
            TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            TensorData::I4(v) => {
                let nibbles: Vec<u8> = v.iter().map(|&x| x as u8).collect();
                subbyte::pack(&nibbles, 4)
            }
            TensorData::SubByte { dtype, values } => subbyte::pack(values, dtype.bits()),
            TensorData::Opaque { bytes, .. } => bytes.clone(),
        }
    }

    /// Number of elements equal to zero. For floats -0.0 counts as zero and NaN does not; this holds
    /// for the opaque float types too (their sign bit is ignored, as for the others).
    pub fn count_zeros(&self) -> u64 {
        fn zeros<T>(values: &[T], is_zero: impl Fn(&T) -> bool) -> u64 {
            values.iter().filter(|v| is_zero(v)).count() as u64
        }
        match self {
            TensorData::F16(v) => zeros(v, |x| x.to_bits() & 0x7fff == 0),
            TensorData::F32(v) => zeros(v, |x| *x == 0.0),
            TensorData::F64(v) => zeros(v, |x| *x == 0.0),
            TensorData::I8(v) | TensorData::I4(v) => zeros(v, |x| *x == 0),
            TensorData::U8(v) => zeros(v, |x| *x == 0),
            TensorData::I16(v) => zeros(v, |x| *x == 0),
            TensorData::U16(v) => zeros(v, |x| *x == 0),
            TensorData::I32(v) => zeros(v, |x| *x == 0),
            TensorData::U32(v) => zeros(v, |x| *x == 0),
            TensorData::I64(v) => zeros(v, |x| *x == 0),
            TensorData::U64(v) => zeros(v, |x| *x == 0),
            TensorData::Bool(v) => zeros(v, |x| !*x),
            // Bits above the type's width are not part of the element.
            TensorData::SubByte { dtype, values } => {
                let mask = ((1u16 << dtype.bits().min(8)) - 1) as u8;
                zeros(values, |x| *x & mask == 0)
            }
            TensorData::Opaque { dtype, bytes, .. } => match dtype {
                ScalarType::BFloat16 => zeros(&le_chunks(bytes, u16::from_le_bytes), |x| x & 0x7fff == 0),
                // fp8: one byte each; magnitude bits zero means ±0 (NaN encodings are nonzero).
                _ => zeros(bytes, |x| x & 0x7f == 0),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: TensorData) {
        let bytes = data.to_le_bytes();
        let decoded =
            TensorData::from_le_bytes(data.dtype(), &bytes, data.len() as u64).expect("length matches");
        // Compare bytes too: NaN payloads make `PartialEq` useless for floats.
        assert_eq!(decoded.to_le_bytes(), bytes);
        assert_eq!((decoded.dtype(), decoded.len()), (data.dtype(), data.len()));
        let has_nan = matches!(&data, TensorData::F16(v) if v.iter().any(|x| x.is_nan()));
        if !has_nan {
            assert_eq!(decoded, data);
        }
    }

    #[test]
    fn every_type_round_trips_through_bytes() {
        round_trip(TensorData::F16(vec![
            f16::from_f32(1.5),
            f16::from_f32(-0.0),
            f16::NAN,
        ]));
        round_trip(TensorData::F32(vec![1.0, -2.5, f32::INFINITY]));
        round_trip(TensorData::F64(vec![1.0e300, -0.0]));
        round_trip(TensorData::I8(vec![-128, 0, 127]));
        round_trip(TensorData::U8(vec![0, 255]));
        round_trip(TensorData::I16(vec![i16::MIN, 1]));
        round_trip(TensorData::U16(vec![u16::MAX]));
        round_trip(TensorData::I32(vec![i32::MIN, -1, 7]));
        round_trip(TensorData::U32(vec![u32::MAX, 3]));
        round_trip(TensorData::I64(vec![i64::MIN]));
        round_trip(TensorData::U64(vec![u64::MAX, 0]));
        round_trip(TensorData::Bool(vec![true, false, true]));
        round_trip(TensorData::I4(vec![-8, -1, 0, 7, 3]));
        for dtype in [
            ScalarType::UInt1,
            ScalarType::UInt2,
            ScalarType::UInt3,
            ScalarType::UInt4,
            ScalarType::UInt6,
        ] {
            let max = ((1u16 << dtype.bits()) - 1) as u8;
            round_trip(TensorData::SubByte {
                dtype,
                values: vec![max, 0, 1, max, 0, 0, 1, max, 1],
            });
        }
        round_trip(TensorData::Opaque {
            dtype: ScalarType::BFloat16,
            count: 2,
            bytes: vec![0x80, 0x3f, 0, 0x80],
        });
        round_trip(TensorData::Opaque {
            dtype: ScalarType::Float8E5M2,
            count: 1,
            bytes: vec![0x3c],
        });
    }

    #[test]
    fn decodes_little_endian() {
        let data = TensorData::from_le_bytes(ScalarType::Float16, &[0x00, 0x3c, 0x00, 0xc0], 2).unwrap();
        assert_eq!(
            data,
            TensorData::F16(vec![f16::from_f32(1.0), f16::from_f32(-2.0)])
        );
        let data = TensorData::from_le_bytes(ScalarType::UInt32, &[1, 2, 0, 0], 1).unwrap();
        assert_eq!(data, TensorData::U32(vec![0x0201]));
        assert_eq!(data.dtype(), ScalarType::UInt32);
    }

    #[test]
    fn int4_is_sign_extended() {
        // Nibbles low first: 0xF (-1), 0x8 (-8), 0x7 (7), padding.
        let data = TensorData::from_le_bytes(ScalarType::Int4, &[0x8F, 0x07], 3).unwrap();
        assert_eq!(data, TensorData::I4(vec![-1, -8, 7]));
    }

    #[test]
    fn wrong_length_is_rejected() {
        let err = TensorData::from_le_bytes(ScalarType::Float32, &[0; 7], 2).unwrap_err();
        assert!(
            err.contains("7 bytes") && err.contains("expected 8 bytes"),
            "{err}"
        );
        // uint1 × 9 needs 2 bytes.
        assert!(TensorData::from_le_bytes(ScalarType::UInt1, &[0], 9).is_err());
        assert!(TensorData::from_le_bytes(ScalarType::Float32, &[], u64::MAX)
            .unwrap_err()
            .contains("overflow"));
    }

    #[test]
    fn count_zeros_treats_negative_zero_as_zero_and_nan_as_nonzero() {
        let f16s = TensorData::F16(vec![f16::from_f32(0.0), f16::from_f32(-0.0), f16::NAN, f16::ONE]);
        assert_eq!(f16s.count_zeros(), 2);
        assert_eq!(TensorData::F32(vec![-0.0, 0.0, f32::NAN, 1.0]).count_zeros(), 2);
        assert_eq!(TensorData::F64(vec![-0.0, f64::NAN]).count_zeros(), 1);
        assert_eq!(TensorData::I4(vec![0, -1, 0]).count_zeros(), 2);
        assert_eq!(TensorData::Bool(vec![false, true]).count_zeros(), 1);
        let bf16 = TensorData::Opaque {
            dtype: ScalarType::BFloat16,
            count: 3,
            bytes: vec![0, 0x80, 0xc0, 0x7f, 0, 0],
        };
        assert_eq!(bf16.count_zeros(), 2);
        let fp8 = TensorData::Opaque {
            dtype: ScalarType::Float8E4M3FN,
            count: 3,
            bytes: vec![0x80, 0x7f, 0x01],
        };
        assert_eq!(fp8.count_zeros(), 1);
        let mask = TensorData::SubByte {
            dtype: ScalarType::UInt1,
            values: vec![0, 1, 0, 2],
        };
        assert_eq!(mask.count_zeros(), 3);
    }

    #[test]
    fn len_and_empty() {
        assert!(TensorData::U8(vec![]).is_empty());
        let opaque = TensorData::Opaque {
            dtype: ScalarType::Float8E5M2,
            count: 4,
            bytes: vec![0; 4],
        };
        assert_eq!(opaque.len(), 4);
        assert_eq!(opaque.dtype(), ScalarType::Float8E5M2);
    }
}
