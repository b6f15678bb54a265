//! The two ops that replace a pruned constexpr op, as coremltools' `prune_weights._create_constexpr_var`
//! builds them in joint mode (spec §4.4, §5.9):
//!
//! - shift-scale → `constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset?)`
//! - LUT → `constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut, vector_axis?)`
//!
//! each followed by `constexpr_sparse_to_dense(nonzero_data = <sparse>_1, mask = <sparse>_0)` named
//! `<original op name>_sparsified`. The mask is the kernel's keep-mask of the pruned dense values
//! (`dense != 0`, so a quantized value that dequantizes to 0 is dropped too); the nonzero data are
//! the original quantized values / palette indices at kept positions (`op.data.val[mask != 0]`),
//! in their original dtype (int4 stays int4, uint3 stays uint3). scale/offset/lut/vector_axis are
//! carried over unchanged, bound by value (blobs copied) unless a constexpr op produces them.
//!
//! Blobs are written in coremltools' order: the sparse op's parameters in declaration order
//! (mask, nonzero data, then the carried-over parameters), and the dense op has none.

use std::collections::BTreeMap;

use crate::blob::TensorSink;
use crate::dtype::ScalarType;
use crate::encode::stored_value;
use crate::error::{Error, Result};
use crate::mil::build::{bind_name, bind_value, op};
use crate::mil::entries::Entries;
use crate::mil::value::tensor_value_type;
use crate::proto::mil::{Argument, Operation, ValueType};
use crate::tensor::TensorData;
use crate::weights::{WeightFileBuilder, WeightSource};

use super::materialize::{JointKind, Materialized};

/// coremltools only emits joint ops for iOS18+ programs, so values follow the spec-9 storage rule.
const SPEC_IOS18: i32 = 9;

/// Names of the two new ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JointNames {
    /// The auto-named sparse op, e.g. `constexpr_sparse_blockwise_shift_scale_0`; its outputs are
    /// `<sparse>_0` (mask) and `<sparse>_1` (values).
    pub sparse: String,
    /// `<original op name>_sparsified`: the dense op and its output.
    pub dense: String,
}

/// The replacement of one constexpr op.
#[derive(Debug, Clone, PartialEq)]
pub struct JointOps {
    /// The sparse op then `constexpr_sparse_to_dense`, to stand where the original op stood.
    pub ops: Vec<Operation>,
    /// The value every use of the original op's output must be rebound to (`names.dense`).
    pub output: String,
    /// How many values were kept.
    pub kept: u64,
}

/// Builds the replacement ops for `original` (the constexpr op materialized as `m`) from the
/// kernel's packed LSB-first keep-mask, appending new blobs to `weights` and copying carried-over
/// ones from `source`. `op_name` names errors.
pub fn joint_ops<W: TensorSink>(
    original: &Operation,
    op_name: &str,
    m: &Materialized,
    mask: &[u8],
    names: &JointNames,
    source: &WeightSource,
    weights: &mut WeightFileBuilder<W>,
) -> Result<JointOps> {
    let n = m.dense.len();
    if mask.len() != n.div_ceil(8) {
        return Err(Error::tensor(
            op_name,
            format!("mask has {} bytes for {n} elements", mask.len()),
        ));
    }
    let output = original
        .outputs
        .first()
        .ok_or_else(|| Error::tensor(op_name, "constexpr op without an output"))?;
    let output_type = output.r#type.clone().unwrap_or_default();
    let values_dtype = declared_dtype(&output_type)
        .ok_or_else(|| Error::tensor(op_name, "output is not a numeric tensor"))?;
    let bits = crate::blob::unpack(mask, 1, n);
    let (original_data, sparse_type, params) = match &m.kind {
        JointKind::ShiftScale { data, .. } => (
            data,
            "constexpr_sparse_blockwise_shift_scale",
            [("data_mask", "nonzero_data"), ("scale", "offset")],
        ),
        JointKind::Lut {
            indices, vector_size, ..
        } if *vector_size > 1 => {
            // coremltools indexes the indices (shape without the vector expansion) with the dense
            // mask and fails; there is no joint form to reproduce.
            return Err(Error::Unsupported(format!(
                "op '{op_name}': vector palettization (VECTOR_SIZE {vector_size}) cannot be joint-pruned; \
                 coremltools 9.0 fails with \"IndexError: boolean index did not match indexed array\" \
                 ({} indices, {n} dense values)",
                indices.len()
            )));
        }
        JointKind::Lut { indices, .. } => (
            indices,
            "constexpr_lut_to_sparse",
            [("indices_mask", "indices_nonzero_data"), ("lut", "vector_axis")],
        ),
    };
    if original_data.len() != n {
        return Err(Error::tensor(
            op_name,
            format!("{} compressed values for {n} dense values", original_data.len()),
        ));
    }
    let nonzero = gather(original_data, &bits).map_err(|r| Error::tensor(op_name, r))?;
    let kept = nonzero.len() as u64;

    let [(mask_param, nonzero_param), (first_carried, second_carried)] = params;
    let mask_data = TensorData::SubByte {
        dtype: ScalarType::UInt1,
        values: bits,
    };
    let mask_value = stored_value(mask_data, &m.shape, SPEC_IOS18, weights)?;
    let nonzero_value = stored_value(nonzero, &[kept], SPEC_IOS18, weights)?;
    let carried = carried_inputs(
        sparse_type,
        &m.kind,
        [first_carried, second_carried],
        op_name,
        source,
        weights,
    )?;

    let mut inputs = BTreeMap::from([
        (mask_param.to_owned(), bind_value(mask_value)),
        (nonzero_param.to_owned(), bind_value(nonzero_value)),
    ]);
    inputs.extend(carried);
    let mask_out = format!("{}_0", names.sparse);
    let values_out = format!("{}_1", names.sparse);
    let sparse = op(
        sparse_type,
        &names.sparse,
        inputs,
        BTreeMap::new(),
        vec![
            (mask_out.clone(), tensor_value_type(ScalarType::UInt1, &m.shape)),
            (values_out.clone(), tensor_value_type(values_dtype, &[kept])),
        ],
    );
    let dense = op(
        "constexpr_sparse_to_dense",
        &names.dense,
        BTreeMap::from([
            ("nonzero_data".to_owned(), bind_name(&values_out)),
            ("mask".to_owned(), bind_name(&mask_out)),
        ]),
        BTreeMap::new(),
        vec![(names.dense.clone(), output_type)],
    );
    Ok(JointOps {
        ops: vec![sparse, dense],
        output: names.dense.clone(),
        kept,
    })
}

/// The carried-over parameters, blobs copied into `weights` in the sparse op's parameter order.
fn carried_inputs<W: TensorSink>(
    sparse_type: &str,
    kind: &JointKind,
    params: [&str; 2],
    op_name: &str,
    source: &WeightSource,
    weights: &mut WeightFileBuilder<W>,
) -> Result<BTreeMap<String, Argument>> {
    let (first, second) = match kind {
        JointKind::ShiftScale { scale, offset, .. } => (scale, offset.as_ref()),
        JointKind::Lut { lut, vector_axis, .. } => (lut, vector_axis.as_ref()),
    };
    let mut carrier = Operation {
        r#type: sparse_type.to_owned(),
        ..Default::default()
    };
    carrier.inputs.set(params[0].to_owned(), first.clone());
    if let Some(arg) = second {
        carrier.inputs.set(params[1].to_owned(), arg.clone());
    }
    // A carrier op holding only these inputs lets the builder copy their blobs (once per original
    // offset) in the op type's parameter order, after the mask and nonzero data written above.
    weights.copy_op_blobs(&mut carrier, op_name, source.blob_reader())?;
    Ok(carrier
        .inputs
        .into_iter()
        .filter_map(|e| Some((e.key, e.value?)))
        .collect())
}

fn declared_dtype(ty: &ValueType) -> Option<ScalarType> {
    use crate::mil::value::TensorTypeExt;
    match ty.r#type.as_ref()? {
        crate::proto::mil::value_type::Type::TensorType(t) => t.scalar_type(),
        _ => None,
    }
}

/// The elements of `data` whose mask bit is set, in row-major order, same dtype.
fn gather(data: &TensorData, bits: &[u8]) -> std::result::Result<TensorData, String> {
    fn keep<T: Copy>(v: &[T], bits: &[u8]) -> Vec<T> {
        v.iter()
            .zip(bits)
            .filter(|(_, &b)| b != 0)
            .map(|(&x, _)| x)
            .collect()
    }
    Ok(match data {
        TensorData::I4(v) => TensorData::I4(keep(v, bits)),
        TensorData::I8(v) => TensorData::I8(keep(v, bits)),
        TensorData::U8(v) => TensorData::U8(keep(v, bits)),
        TensorData::F16(v) => TensorData::F16(keep(v, bits)),
        TensorData::F32(v) => TensorData::F32(keep(v, bits)),
        TensorData::SubByte { dtype, values } => TensorData::SubByte {
            dtype: *dtype,
            values: keep(values, bits),
        },
        other => {
            return Err(format!(
                "compressed values of dtype {} cannot be kept sparsely",
                other.dtype()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_keeps_masked_positions_in_order_and_dtype() {
        let data = TensorData::SubByte {
            dtype: ScalarType::UInt3,
            values: vec![1, 7, 0, 5, 2],
        };
        let kept = gather(&data, &[1, 0, 1, 1, 0]).unwrap();
        assert_eq!(
            kept,
            TensorData::SubByte {
                dtype: ScalarType::UInt3,
                values: vec![1, 0, 5]
            }
        );
        let kept = gather(&TensorData::I4(vec![-8, 7, 3]), &[0, 1, 1]).unwrap();
        assert_eq!(kept, TensorData::I4(vec![7, 3]));
        assert!(gather(&TensorData::Bool(vec![true]), &[1]).is_err());
    }
}
