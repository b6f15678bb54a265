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
use std::io::{Seek, Write};

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

/// A tensor value, in `weight.bin` or immediate according to [`goes_to_weight_file`].
pub fn stored_value<W: Write + Seek>(
    data: &TensorData,
    shape: &[u64],
    spec_version: i32,
    weights: &mut WeightFileBuilder<W>,
) -> Result<Value> {
    let count = data.len() as u64;
    if goes_to_weight_file(data.dtype(), count, spec_version) {
        let offset = weights.append(data)?;
        Ok(blob_value(data.dtype(), shape, offset))
    } else {
        Ok(immediate_value(data, shape))
    }
}

/// The name coremltools gives the new op and its output.
pub fn sparsified_name(const_name: &str) -> String {
    format!("{const_name}_sparsified")
}

/// Builds the replacement op; `mask` holds `ceil(N/8)` packed LSB-first bytes (bit set = kept) and
/// `nonzero` the kept values in row-major order.
pub fn sparse_to_dense_op<W: Write + Seek>(
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
        return Err(Error::tensor(const_name, format!("mask has {} bytes for {n} elements", mask.len())));
    }
    let kept: u64 = mask.iter().map(|b| u64::from(b.count_ones())).sum();
    if kept != nonzero.len() as u64 {
        return Err(Error::tensor(const_name, format!("mask keeps {kept} values but {} were given", nonzero.len())));
    }
    let name = sparsified_name(const_name);
    let nonzero_shape = [nonzero.len() as u64];
    let nonzero_value = stored_value(&nonzero, &nonzero_shape, spec_version, weights)?;
    let outputs = vec![(name.clone(), output_type)];
    match SparseForm::for_spec(spec_version) {
        SparseForm::Ios16 => {
            let mask_value = stored_value(&TensorData::U8(mask), &[n.div_ceil(8)], spec_version, weights)?;
            let dims: Vec<u32> = shape
                .iter()
                .map(|&d| u32::try_from(d).map_err(|_| Error::tensor(const_name, format!("dimension {d} exceeds uint32"))))
                .collect::<Result<_>>()?;
            let shape_value = immediate_value(&TensorData::U32(dims), &[shape.len() as u64]);
            let attributes = BTreeMap::from([
                ("nonzero_data".to_owned(), nonzero_value),
                ("mask".to_owned(), mask_value),
                ("shape".to_owned(), shape_value),
            ]);
            Ok(op("constexpr_sparse_to_dense", &name, BTreeMap::new(), attributes, outputs))
        }
        SparseForm::Ios18 => {
            let bits = crate::blob::unpack(&mask, 1, n as usize);
            let mask_data = TensorData::SubByte { dtype: ScalarType::UInt1, values: bits };
            let mask_value = stored_value(&mask_data, shape, spec_version, weights)?;
            let inputs = BTreeMap::from([
                ("nonzero_data".to_owned(), bind_value(nonzero_value)),
                ("mask".to_owned(), bind_value(mask_value)),
            ]);
            Ok(op("constexpr_sparse_to_dense", &name, inputs, BTreeMap::new(), outputs))
        }
    }
}
