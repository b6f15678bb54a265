//! Building the `constexpr_sparse_to_dense` op that replaces a pruned const (spec §4.1–§4.3, §5.10).
//!
//! - spec 7–8 (iOS16 form): parameters are attributes; the mask is a flat uint8 array of
//!   `ceil(N/8)` packed bytes and `shape` is an immediate uint32 tensor.
//! - spec ≥ 9 (iOS18 form): parameters are inputs; the mask is uint1 with the dense shape (the same
//!   packed bytes) and there is no `shape`.
//!
//! Values go to `weight.bin` exactly when coremltools would put them there (§2.5), written in
//! parameter order: `nonzero_data`, then `mask`.

use std::collections::BTreeMap;

use crate::blob::TensorSink;
use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::build::{bind_value, op};
use crate::mil::value::{blob_value, immediate_value};
use crate::proto::mil::{Operation, Value, ValueType};
use crate::tensor::TensorData;
use crate::weights::WeightFileBuilder;

/// The two serializations of `constexpr_sparse_to_dense`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseForm {
    Ios16,
    Ios18,
}

impl SparseForm {
    /// The form coremltools emits for a program of this specification version (after the 6 → 7 bump).
    pub fn for_spec(spec_version: i32) -> Self {
        if spec_version >= 9 {
            SparseForm::Ios18
        } else {
            SparseForm::Ios16
        }
    }
}

/// coremltools' `should_use_weight_file`: at least 10 elements of a dtype the blob file may hold.
pub fn goes_to_weight_file(dtype: ScalarType, count: u64, spec_version: i32) -> bool {
    use ScalarType::*;
    let storable = match dtype {
        Float16 | Float32 | UInt8 | Int8 => true,
        // Sub-byte types have uint8/int8 numpy storage in coremltools.
        t if t.is_sub_byte() => true,
        UInt16 | Int16 | Int32 | UInt32 => spec_version >= 9,
        _ => false,
    };
    storable && count >= 10
}

/// A tensor value, in `weight.bin` or immediate according to [`goes_to_weight_file`]. `data` is
/// handed to the writer rather than copied (see [`TensorSink`]).
pub fn stored_value<W: TensorSink>(
    data: TensorData,
    shape: &[u64],
    spec_version: i32,
    weights: &mut WeightFileBuilder<W>,
) -> Result<Value> {
    let count = data.len() as u64;
    let dtype = data.dtype();
    if goes_to_weight_file(dtype, count, spec_version) {
        let offset = weights.append_owned(data)?;
        Ok(blob_value(dtype, shape, offset))
    } else {
        Ok(immediate_value(&data, shape))
    }
}

/// An iOS16 mask (flat uint8), placed like [`stored_value`] but copied into the writer's buffer
/// instead of handed over: it is an eighth of an element per element, so the copy is cheap, while a
/// hand-over would wait for the writer thread to finish the values before it, which is exactly the
/// write that pruning the next tensor should overlap.
fn stored_mask<W: TensorSink>(
    mask: Vec<u8>,
    spec_version: i32,
    weights: &mut WeightFileBuilder<W>,
) -> Result<Value> {
    let count = mask.len() as u64;
    if goes_to_weight_file(ScalarType::UInt8, count, spec_version) {
        Ok(blob_value(
            ScalarType::UInt8,
            &[count],
            weights.append_raw(ScalarType::UInt8, &mask, count)?,
        ))
    } else {
        Ok(immediate_value(&TensorData::U8(mask), &[count]))
    }
}

/// The name coremltools gives the new op and its output.
pub fn sparsified_name(const_name: &str) -> String {
    format!("{const_name}_sparsified")
}

/// Builds the replacement op; `mask` holds `ceil(N/8)` packed LSB-first bytes (bit set = kept) and
/// `nonzero` the kept values in row-major order.
pub fn sparse_to_dense_op<W: TensorSink>(
    const_name: &str,
    output_type: ValueType,
    shape: &[u64],
    nonzero: TensorData,
    mask: Vec<u8>,
    spec_version: i32,
    weights: &mut WeightFileBuilder<W>,
) -> Result<Operation> {
    let n: u64 = shape.iter().product();
    if mask.len() as u64 != n.div_ceil(8) {
        return Err(Error::tensor(
            const_name,
            format!("mask has {} bytes for {n} elements", mask.len()),
        ));
    }
    let kept = crate::blob::count_ones(&mask);
    if kept != nonzero.len() as u64 {
        return Err(Error::tensor(
            const_name,
            format!("mask keeps {kept} values but {} were given", nonzero.len()),
        ));
    }
    let name = sparsified_name(const_name);
    let nonzero_shape = [nonzero.len() as u64];
    let nonzero_value = stored_value(nonzero, &nonzero_shape, spec_version, weights)?;
    let outputs = vec![(name.clone(), output_type)];
    match SparseForm::for_spec(spec_version) {
        SparseForm::Ios16 => {
            let mask_value = stored_mask(mask, spec_version, weights)?;
            let dims: Vec<u32> = shape
                .iter()
                .map(|&d| {
                    u32::try_from(d)
                        .map_err(|_| Error::tensor(const_name, format!("dimension {d} exceeds uint32")))
                })
                .collect::<Result<_>>()?;
            let shape_value = immediate_value(&TensorData::U32(dims), &[shape.len() as u64]);
            let attributes = BTreeMap::from([
                ("nonzero_data".to_owned(), nonzero_value),
                ("mask".to_owned(), mask_value),
                ("shape".to_owned(), shape_value),
            ]);
            Ok(op(
                "constexpr_sparse_to_dense",
                &name,
                BTreeMap::new(),
                attributes,
                outputs,
            ))
        }
        SparseForm::Ios18 => {
            // The packed iOS16 mask bytes are already the uint1 blob's bytes.
            let mask_value = if goes_to_weight_file(ScalarType::UInt1, n, spec_version) {
                blob_value(
                    ScalarType::UInt1,
                    shape,
                    weights.append_raw(ScalarType::UInt1, &mask, n)?,
                )
            } else {
                let bits = crate::blob::unpack(&mask, 1, n as usize);
                immediate_value(
                    &TensorData::SubByte {
                        dtype: ScalarType::UInt1,
                        values: bits,
                    },
                    shape,
                )
            };
            let inputs = BTreeMap::from([
                ("nonzero_data".to_owned(), bind_value(nonzero_value)),
                ("mask".to_owned(), bind_value(mask_value)),
            ]);
            Ok(op(
                "constexpr_sparse_to_dense",
                &name,
                inputs,
                BTreeMap::new(),
                outputs,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::blob::BlobReader;
    use crate::mil::entries::Entries;
    use crate::mil::value::{tensor_value_type, OperationExt, ValueExt};
    use crate::proto::mil::{argument::binding::Binding, tensor_value};

    fn builder() -> WeightFileBuilder<Cursor<Vec<u8>>> {
        WeightFileBuilder::new(Cursor::new(Vec::new()), "w.bin".into()).unwrap()
    }

    fn input_value<'a>(op: &'a Operation, name: &str) -> &'a Value {
        match op.inputs.lookup(name).unwrap().arguments[0].binding.as_ref() {
            Some(Binding::Value(v)) => v,
            other => panic!("{name} bound to {other:?}"),
        }
    }

    /// 4x4 fp32 weight keeping 11 values (blob) with mask bytes [0xff, 0x07].
    fn sample() -> (Vec<u64>, TensorData, Vec<u8>) {
        let kept: Vec<f32> = (1..=11).map(|i| i as f32).collect();
        (vec![4, 4], TensorData::F32(kept), vec![0xff, 0x07])
    }

    #[test]
    fn ios16_form_uses_attributes_uint8_mask_and_uint32_shape() {
        let (shape, nonzero, mask) = sample();
        let mut w = builder();
        let ty = tensor_value_type(ScalarType::Float32, &shape);
        let op = sparse_to_dense_op(
            "lin_w",
            ty.clone(),
            &shape,
            nonzero.clone(),
            mask.clone(),
            7,
            &mut w,
        )
        .unwrap();
        assert_eq!(op.r#type, "constexpr_sparse_to_dense");
        assert_eq!(op.name(), Some("lin_w_sparsified"));
        assert!(op.inputs.is_empty());
        assert_eq!(op.outputs[0].name, "lin_w_sparsified");
        assert_eq!(op.outputs[0].r#type.as_ref(), Some(&ty));
        let nz = op.attributes.lookup("nonzero_data").unwrap();
        assert_eq!(
            nz.blob_offset(),
            Some(64),
            "11 fp32 values go to weight.bin first"
        );
        // The 2-byte mask is below the 10-element rule: immediate bytes.
        let m = op.attributes.lookup("mask").unwrap();
        assert_eq!(m.blob_offset(), None);
        assert!(
            matches!(&m.immediate_tensor().unwrap().value, Some(tensor_value::Value::Bytes(b)) if b.values == mask)
        );
        let s = op.attributes.lookup("shape").unwrap();
        assert!(matches!(&s.immediate_tensor().unwrap().value,
            Some(tensor_value::Value::Bytes(b)) if b.values == [4, 0, 0, 0, 4, 0, 0, 0]));
        let file = w.finish().unwrap().into_inner();
        let r = BlobReader::new(file, "w.bin".into()).unwrap();
        assert_eq!(r.read_tensor(64, ScalarType::Float32, 11).unwrap(), nonzero);
    }

    #[test]
    fn ios18_form_uses_inputs_and_a_uint1_mask_of_the_dense_shape() {
        let (shape, nonzero, mask) = sample();
        let mut w = builder();
        let ty = tensor_value_type(ScalarType::Float32, &shape);
        let op = sparse_to_dense_op("c", ty, &shape, nonzero.clone(), mask.clone(), 9, &mut w).unwrap();
        assert_eq!(op.attributes.keys().collect::<Vec<_>>(), ["name"]);
        let m = input_value(&op, "mask");
        let mt = m.tensor_type().unwrap();
        assert_eq!(mt.data_type, ScalarType::UInt1.to_proto() as i32);
        assert_eq!(crate::mil::value::TensorTypeExt::shape(mt), Some(vec![4, 4]));
        let offset = m.blob_offset().expect("16 uint1 elements go to weight.bin");
        let nz_offset = input_value(&op, "nonzero_data").blob_offset().unwrap();
        assert!(nz_offset < offset, "nonzero_data is written before mask");
        let file = w.finish().unwrap().into_inner();
        let r = BlobReader::new(file, "w.bin".into()).unwrap();
        assert_eq!(
            r.read(offset, ScalarType::UInt1, 16).unwrap(),
            mask,
            "same packed bytes as iOS16"
        );
    }

    #[test]
    fn empty_and_small_nonzero_data_stay_immediate() {
        let mut w = builder();
        let shape = [4u64, 4];
        let ty = tensor_value_type(ScalarType::Float16, &shape);
        let op = sparse_to_dense_op(
            "z",
            ty.clone(),
            &shape,
            TensorData::F16(vec![]),
            vec![0, 0],
            7,
            &mut w,
        )
        .unwrap();
        let nz = op.attributes.lookup("nonzero_data").unwrap();
        assert!(
            matches!(&nz.immediate_tensor().unwrap().value, Some(tensor_value::Value::Bytes(b)) if b.values.is_empty())
        );
        let one = vec![half::f16::from_f32(2.0)];
        let op = sparse_to_dense_op("o", ty, &shape, TensorData::F16(one), vec![1, 0], 9, &mut w).unwrap();
        assert_eq!(input_value(&op, "nonzero_data").blob_offset(), None);
        assert_eq!(
            w.blob_count(),
            1,
            "only the iOS18 uint1 mask (16 elements) was a blob"
        );
    }

    #[test]
    fn inconsistent_masks_are_errors() {
        let mut w = builder();
        let ty = tensor_value_type(ScalarType::Float32, &[4, 4]);
        let e = sparse_to_dense_op(
            "t",
            ty.clone(),
            &[4, 4],
            TensorData::F32(vec![1.0]),
            vec![3, 0],
            7,
            &mut w,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("mask keeps 2 values but 1 were given"));
        let e = sparse_to_dense_op("t", ty, &[4, 4], TensorData::F32(vec![]), vec![0], 7, &mut w);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("mask has 1 bytes for 16 elements"));
    }

    #[test]
    fn weight_file_rule_follows_spec_version() {
        assert!(goes_to_weight_file(ScalarType::Float16, 10, 7));
        assert!(!goes_to_weight_file(ScalarType::Float16, 9, 7));
        assert!(!goes_to_weight_file(ScalarType::Int32, 10, 8));
        assert!(goes_to_weight_file(ScalarType::Int32, 10, 9));
        assert!(goes_to_weight_file(ScalarType::UInt1, 10, 9));
        assert!(!goes_to_weight_file(ScalarType::Bool, 100, 10));
    }
}
