//! Helper traits and constructors for MIL values, tensor types and operations.
//!
//! They encode coremltools' serialization conventions (spec §2.5): scalars are rank-0 tensors, op
//! names live in `attributes["name"]`, and each dtype has one `TensorValue` field for immediates.

use super::entries::Entries;
use crate::dtype::ScalarType;
use crate::proto::mil::{
    dimension, tensor_value, value, value_type, DataType, Dimension, NamedValueType, Operation, TensorType,
    TensorValue, Value, ValueType,
};
use crate::tensor::TensorData;

/// Accessors on a tensor type.
pub trait TensorTypeExt {
    /// The element type, or `None` for strings and unknown enum values.
    fn scalar_type(&self) -> Option<ScalarType>;
    /// The fully known shape, or `None` if any dimension is symbolic or the rank is unknown.
    fn shape(&self) -> Option<Vec<u64>>;
}

impl TensorTypeExt for TensorType {
    fn scalar_type(&self) -> Option<ScalarType> {
        ScalarType::from_proto(self.data_type)
    }

    fn shape(&self) -> Option<Vec<u64>> {
        if self.rank < 0 || usize::try_from(self.rank).ok()? != self.dimensions.len() {
            return None;
        }
        self.dimensions
            .iter()
            .map(|d| match &d.dimension {
                Some(dimension::Dimension::Constant(c)) => Some(c.size),
                _ => None,
            })
            .collect()
    }
}

/// Element count of a shape, `None` on overflow.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Accessors on a `Value`.
pub trait ValueExt {
    fn tensor_type(&self) -> Option<&TensorType>;
    /// The blob record offset if the value lives in `weight.bin`.
    fn blob_offset(&self) -> Option<u64>;
    fn immediate_tensor(&self) -> Option<&TensorValue>;
    /// A string scalar's text (used for op names).
    fn as_str(&self) -> Option<&str>;
}

impl ValueExt for Value {
    fn tensor_type(&self) -> Option<&TensorType> {
        match self.r#type.as_ref()?.r#type.as_ref()? {
            value_type::Type::TensorType(t) => Some(t),
            _ => None,
        }
    }

    fn blob_offset(&self) -> Option<u64> {
        match self.value.as_ref()? {
            value::Value::BlobFileValue(b) => Some(b.offset),
            _ => None,
        }
    }

    fn immediate_tensor(&self) -> Option<&TensorValue> {
        match self.value.as_ref()? {
            value::Value::ImmediateValue(v) => match v.value.as_ref()? {
                value::immediate_value::Value::Tensor(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self.immediate_tensor()?.value.as_ref()? {
            tensor_value::Value::Strings(s) if s.values.len() == 1 => Some(&s.values[0]),
            _ => None,
        }
    }
}

/// Accessors on an operation.
pub trait OperationExt {
    /// The op's name: its `name` attribute, which coremltools uses for configs (spec pitfall 16).
    fn name(&self) -> Option<&str>;
    /// The `val` attribute of a `const` op.
    fn const_value(&self) -> Option<&Value>;
    /// [`Self::const_value`], taken out of an op decoded for it (`crate::mil::access::op_at`).
    fn into_const_value(self) -> Option<Value>;
    fn is_const(&self) -> bool;
    /// True for the constexpr family (`constexpr_sparse_to_dense`, `constexpr_lut_to_dense`, ...).
    fn is_constexpr(&self) -> bool;
}

impl OperationExt for Operation {
    fn name(&self) -> Option<&str> {
        self.attributes.lookup("name")?.as_str()
    }

    fn const_value(&self) -> Option<&Value> {
        if self.is_const() {
            self.attributes.lookup("val")
        } else {
            None
        }
    }

    fn into_const_value(mut self) -> Option<Value> {
        if self.is_const() {
            self.attributes.take("val")
        } else {
            None
        }
    }

    fn is_const(&self) -> bool {
        self.r#type == "const"
    }

    fn is_constexpr(&self) -> bool {
        is_constexpr_type(&self.r#type)
    }
}

pub fn is_constexpr_type(op_type: &str) -> bool {
    op_type.starts_with("constexpr_")
}

/// `ValueType` of a tensor with a fully known shape.
pub fn tensor_value_type(dtype: ScalarType, shape: &[u64]) -> ValueType {
    raw_tensor_value_type(dtype.to_proto() as i32, shape)
}

fn raw_tensor_value_type(data_type: i32, shape: &[u64]) -> ValueType {
    ValueType {
        r#type: Some(value_type::Type::TensorType(TensorType {
            data_type,
            rank: shape.len() as i64,
            dimensions: shape
                .iter()
                .map(|&size| Dimension {
                    dimension: Some(dimension::Dimension::Constant(dimension::ConstantDimension {
                        size,
                    })),
                })
                .collect(),
            attributes: Default::default(),
        })),
    }
}

/// A string scalar, the form of every op's `name` attribute.
pub fn string_value(s: &str) -> Value {
    Value {
        doc_string: String::new(),
        r#type: Some(raw_tensor_value_type(DataType::String as i32, &[])),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            value: Some(value::immediate_value::Value::Tensor(TensorValue {
                value: Some(tensor_value::Value::Strings(tensor_value::RepeatedStrings {
                    values: vec![s.to_owned()],
                })),
            })),
        })),
    }
}

/// A value stored in `weight.bin` at the given record offset.
pub fn blob_value(dtype: ScalarType, shape: &[u64], offset: u64) -> Value {
    Value {
        doc_string: String::new(),
        r#type: Some(tensor_value_type(dtype, shape)),
        value: Some(value::Value::BlobFileValue(value::BlobFileValue {
            file_name: WEIGHT_FILE_REF.to_owned(),
            offset,
        })),
    }
}

/// How coremltools references the weight file from a `BlobFileValue`.
pub const WEIGHT_FILE_REF: &str = "@model_path/weights/weight.bin";

/// An immediate tensor value, placed in the `TensorValue` field coremltools uses for its dtype.
pub fn immediate_value(data: &TensorData, shape: &[u64]) -> Value {
    use tensor_value::Value as Tv;
    let dtype = data.dtype();
    let field = match data {
        TensorData::F32(v) => Tv::Floats(tensor_value::RepeatedFloats { values: v.clone() }),
        TensorData::F64(v) => Tv::Doubles(tensor_value::RepeatedDoubles { values: v.clone() }),
        TensorData::I32(v) => Tv::Ints(tensor_value::RepeatedInts { values: v.clone() }),
        TensorData::I16(v) => Tv::Ints(tensor_value::RepeatedInts {
            values: v.iter().map(|&x| i32::from(x)).collect(),
        }),
        TensorData::U16(v) => Tv::Ints(tensor_value::RepeatedInts {
            values: v.iter().map(|&x| i32::from(x)).collect(),
        }),
        TensorData::I64(v) => Tv::LongInts(tensor_value::RepeatedLongInts { values: v.clone() }),
        TensorData::U64(v) => Tv::LongInts(tensor_value::RepeatedLongInts {
            // Two's-complement reinterpretation, as protobuf-python stores uint64 in int64 fields.
            values: v.iter().map(|&x| x as i64).collect(),
        }),
        TensorData::Bool(v) => Tv::Bools(tensor_value::RepeatedBools { values: v.clone() }),
        _ => Tv::Bytes(tensor_value::RepeatedBytes {
            values: data.to_le_bytes(),
        }),
    };
    Value {
        doc_string: String::new(),
        r#type: Some(tensor_value_type(dtype, shape)),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            value: Some(value::immediate_value::Value::Tensor(TensorValue {
                value: Some(field),
            })),
        })),
    }
}

/// Decodes an immediate tensor into typed data, checking it holds `count` elements of `dtype`.
pub fn decode_immediate(tensor: &TensorValue, dtype: ScalarType, count: u64) -> Result<TensorData, String> {
    use tensor_value::Value as Tv;
    let mismatch = |field: &str, len: usize| {
        format!("immediate {field} holds {len} values but the type {dtype} needs {count}")
    };
    let check = |field: &str, len: usize| {
        if len as u64 == count {
            Ok(())
        } else {
            Err(mismatch(field, len))
        }
    };
    let wrong_field = |field: &str| format!("immediate value of type {dtype} stored in `{field}`");
    match tensor.value.as_ref() {
        None => Err("immediate tensor has no value".into()),
        Some(Tv::Bytes(b)) => TensorData::from_le_bytes(dtype, &b.values, count),
        Some(Tv::Floats(f)) => match dtype {
            ScalarType::Float32 => check("floats", f.values.len()).map(|_| TensorData::F32(f.values.clone())),
            _ => Err(wrong_field("floats")),
        },
        Some(Tv::Doubles(f)) => match dtype {
            ScalarType::Float64 => {
                check("doubles", f.values.len()).map(|_| TensorData::F64(f.values.clone()))
            }
            _ => Err(wrong_field("doubles")),
        },
        Some(Tv::Ints(i)) => {
            check("ints", i.values.len())?;
            match dtype {
                ScalarType::Int32 => Ok(TensorData::I32(i.values.clone())),
                ScalarType::Int16 => i
                    .values
                    .iter()
                    .map(|&x| i16::try_from(x).map_err(|_| format!("int16 value {x} out of range")))
                    .collect::<Result<_, _>>()
                    .map(TensorData::I16),
                ScalarType::UInt16 => i
                    .values
                    .iter()
                    .map(|&x| u16::try_from(x).map_err(|_| format!("uint16 value {x} out of range")))
                    .collect::<Result<_, _>>()
                    .map(TensorData::U16),
                _ => Err(wrong_field("ints")),
            }
        }
        Some(Tv::LongInts(i)) => {
            check("longInts", i.values.len())?;
            match dtype {
                ScalarType::Int64 => Ok(TensorData::I64(i.values.clone())),
                ScalarType::UInt64 => Ok(TensorData::U64(i.values.iter().map(|&x| x as u64).collect())),
                _ => Err(wrong_field("longInts")),
            }
        }
        Some(Tv::Bools(b)) => match dtype {
            ScalarType::Bool => check("bools", b.values.len()).map(|_| TensorData::Bool(b.values.clone())),
            _ => Err(wrong_field("bools")),
        },
        Some(Tv::Strings(_)) => Err("string tensors are not numeric data".into()),
    }
}

/// A declared type as errors show it: `fp16 [64, 32]`, `string []`, `list`, or `no type`.
pub fn describe_type(ty: Option<&ValueType>) -> String {
    match ty.and_then(|t| t.r#type.as_ref()) {
        None => "no type".into(),
        Some(value_type::Type::TensorType(t)) => {
            let dtype = match (t.scalar_type(), DataType::try_from(t.data_type)) {
                (Some(s), _) => s.to_string(),
                (None, Ok(d)) => d.as_str_name().to_ascii_lowercase(),
                (None, Err(_)) => format!("data type {}", t.data_type),
            };
            let dims: Vec<String> = t
                .dimensions
                .iter()
                .map(|d| match &d.dimension {
                    Some(dimension::Dimension::Constant(c)) => c.size.to_string(),
                    _ => "?".into(),
                })
                .collect();
            let rank = if usize::try_from(t.rank).ok() == Some(dims.len()) {
                String::new()
            } else {
                format!(" (rank {})", t.rank)
            };
            format!("{dtype} [{}]{rank}", dims.join(", "))
        }
        Some(value_type::Type::ListType(_)) => "list".into(),
        Some(value_type::Type::TupleType(_)) => "tuple".into(),
        Some(value_type::Type::DictionaryType(_)) => "dictionary".into(),
        Some(value_type::Type::StateType(_)) => "state".into(),
    }
}

/// Whether a const's `val` type and its output type agree: for tensors the element type, rank and
/// dimensions (tensor attributes carry no type information); any other type must be identical.
pub fn same_declared_type(a: Option<&ValueType>, b: Option<&ValueType>) -> bool {
    fn tensor(t: Option<&ValueType>) -> Option<&TensorType> {
        match t?.r#type.as_ref()? {
            value_type::Type::TensorType(t) => Some(t),
            _ => None,
        }
    }
    match (tensor(a), tensor(b)) {
        (Some(x), Some(y)) => x.data_type == y.data_type && x.rank == y.rank && x.dimensions == y.dimensions,
        _ => a.is_some() && a == b,
    }
}

/// The single output of a const op as `(name, type)`.
pub fn single_output(op: &Operation) -> Option<&NamedValueType> {
    match op.outputs.as_slice() {
        [o] => Some(o),
        _ => None,
    }
}
