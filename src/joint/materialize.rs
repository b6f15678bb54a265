//! The dense value of an iOS18 `constexpr_blockwise_shift_scale` or `constexpr_lut_to_dense` op,
//! computed exactly like coremltools 9.0's `materialized_val_inference()` (spec §4.4, §5.9).
//!
//! Shift-scale follows numpy's arithmetic in `constexpr_blockwise_shift_scale.decompress`:
//! `data.astype(scale.dtype)`, then `data - offset` (numpy promotion: an integer offset keeps the
//! scale's float type, a float offset promotes to the wider float), then `scale * data`. numpy
//! evaluates each fp16 operation in fp32 and rounds the result to fp16 (round to nearest even), so
//! the same is done here, one operation at a time. The result dtype is therefore fp32 when the
//! scale or a float offset is fp32, else fp16 — possibly not the op's declared output dtype
//! (an fp16 scale with an fp32 offset materializes as fp32, verified with coremltools).
//!
//! LUT ops index `lut[block][index][v]` where the block of a dense position is its position divided
//! by the block size per dimension (`optimize_utils.lut_to_dense`); the result has the LUT's dtype.

use half::f16;

use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::entries::Entries;
use crate::mil::graph::GraphView;
use crate::mil::value::{element_count, TensorTypeExt};
use crate::proto::mil::{argument::binding::Binding, Argument, Operation, Program, Value};
use crate::tensor::TensorData;
use crate::weights::{TensorMeta, WeightSource};

use super::{LUT_TO_DENSE, SHIFT_SCALE};

/// How deep chains of constexpr ops feeding `data` or `scale` are followed.
const MAX_CHAIN: usize = 4;

/// A materialized constexpr op plus what joint encoding needs from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Materialized {
    /// The dense values, as coremltools computes them (dtype included).
    pub dense: TensorData,
    /// The dense shape (the op's output shape).
    pub shape: Vec<u64>,
    pub kind: JointKind,
}

/// The compressed form of the op: its original data or indices and the parameters the sparse op
/// takes over unchanged, as the argument bindings of the original op.
#[derive(Debug, Clone, PartialEq)]
pub enum JointKind {
    ShiftScale {
        /// The quantized values (int4/uint4/int8/uint8, or fp16/fp32), dense shape.
        data: TensorData,
        scale: Argument,
        offset: Option<Argument>,
    },
    Lut {
        /// The palette indices (uint1..uint8), with the indices' shape.
        indices: TensorData,
        lut: Argument,
        vector_axis: Option<Argument>,
        /// `VECTOR_SIZE`, the LUT's last dimension; 1 for scalar palettization.
        vector_size: u64,
    },
}

/// Where an input's value comes from.
enum InputSource {
    /// Bound inline, or by name to a `const` op (taken out of the op decoded for it).
    Value(Value),
    /// Bound by name to the output of another constexpr op (an op index of the [`GraphView`]).
    Constexpr(usize),
}

/// Read access to one program's ops and, for materializing, its weights.
pub struct Context<'a> {
    program: &'a Program,
    graph: &'a GraphView,
    source: Option<&'a WeightSource>,
}

impl<'a> Context<'a> {
    pub fn new(program: &'a Program, graph: &'a GraphView, source: &'a WeightSource) -> Self {
        Context {
            program,
            graph,
            source: Some(source),
        }
    }

    /// A context that can answer type questions ([`dense_dtype`]) but not read values.
    pub fn types_only(program: &'a Program, graph: &'a GraphView) -> Self {
        Context {
            program,
            graph,
            source: None,
        }
    }

    fn op(&self, index: usize) -> Result<Operation> {
        let info = self
            .graph
            .get(index)
            .ok_or_else(|| Error::Graph(format!("no op with index {index}")))?;
        self.graph
            .op(self.program, index)
            .ok_or_else(|| Error::Graph(format!("op '{}' not found", info.name)))
    }

    fn input_source(&self, index: usize, param: &str) -> Result<Option<InputSource>> {
        let mut op = self.op(index)?;
        let info = self.graph.info(index);
        let Some(mut arg) = op.inputs.take(param) else {
            return Ok(None);
        };
        let tensor = format!("{}.{param}", info.name);
        match arg.arguments.as_mut_slice() {
            [binding] => match binding.binding.take() {
                Some(Binding::Value(v)) => Ok(Some(InputSource::Value(v))),
                Some(Binding::Name(name)) => {
                    let producer = self.graph.producer(&info.path.function, &name).ok_or_else(|| {
                        Error::tensor(&tensor, format!("is bound to '{name}', which no op produces"))
                    })?;
                    let mut producer_op = self.op(producer)?;
                    let is_const = producer_op.r#type == "const";
                    if let Some(v) = producer_op.attributes.take("val").filter(|_| is_const) {
                        Ok(Some(InputSource::Value(v)))
                    } else if producer_op.r#type.starts_with("constexpr_") {
                        Ok(Some(InputSource::Constexpr(producer)))
                    } else {
                        Err(Error::tensor(
                            &tensor,
                            format!(
                                "is bound to '{name}', the output of a {} op, not a constant",
                                producer_op.r#type
                            ),
                        ))
                    }
                }
                None => Err(Error::tensor(&tensor, "has an empty binding")),
            },
            other => Err(Error::tensor(
                &tensor,
                format!("has {} bindings, expected one", other.len()),
            )),
        }
    }

    /// The declared type of an input, without reading data.
    fn input_meta(&self, index: usize, param: &str) -> Result<Option<TensorMeta>> {
        let tensor = || format!("{}.{param}", self.graph.name(index));
        let meta = match self.input_source(index, param)? {
            None => return Ok(None),
            Some(InputSource::Value(v)) => TensorMeta::of(&v),
            Some(InputSource::Constexpr(p)) => {
                let producer = self.op(p)?;
                let ty = producer.outputs.first().and_then(|o| o.r#type.as_ref());
                ty.and_then(|t| match t.r#type.as_ref()? {
                    crate::proto::mil::value_type::Type::TensorType(t) => {
                        let dtype = t.scalar_type()?;
                        let shape = t.shape()?;
                        let count = element_count(&shape)?;
                        Some(TensorMeta { dtype, shape, count })
                    }
                    _ => None,
                })
            }
        };
        meta.map(Some)
            .ok_or_else(|| Error::tensor(tensor(), "is not a numeric tensor with a known shape"))
    }

    /// The values of an input. `follow` allows a constexpr producer (coremltools materializes one
    /// for `data` and `scale` of shift-scale ops only; everywhere else it needs a constant).
    fn input_data(&self, index: usize, param: &str, follow: usize) -> Result<Option<(Vec<u64>, TensorData)>> {
        let tensor = format!("{}.{param}", self.graph.name(index));
        match self.input_source(index, param)? {
            None => Ok(None),
            Some(InputSource::Value(v)) => {
                let source = self.source.ok_or_else(|| Error::tensor(&tensor, "values were not loaded"))?;
                let (meta, data) = source.read(&tensor, &v)?;
                Ok(Some((meta.shape, data)))
            }
            Some(InputSource::Constexpr(p)) if follow > 0 => {
                let m = materialize_at(self, p, follow - 1)?;
                Ok(Some((m.shape, m.dense)))
            }
            Some(InputSource::Constexpr(p)) => Err(Error::Unsupported(format!(
                "tensor '{tensor}' is produced by constexpr op '{}' ({}); coremltools cannot materialize it there",
                self.graph.name(p), self.graph.op_type(p)
            ))),
        }
    }

    /// The input's binding as the sparse op must carry it: inline values and `const` ops become
    /// value bindings (coremltools' iOS18 serializer inlines every non-constexpr constexpr input),
    /// constexpr producers stay name bindings.
    fn passthrough(&self, index: usize, param: &str) -> Result<Option<Argument>> {
        let op = self.op(index)?;
        Ok(match self.input_source(index, param)? {
            None => None,
            Some(InputSource::Value(v)) => Some(crate::mil::build::bind_value(v)),
            Some(InputSource::Constexpr(_)) => op.inputs.lookup(param).cloned(),
        })
    }
}

/// Materializes the `constexpr_blockwise_shift_scale` or `constexpr_lut_to_dense` op at
/// `op_index` of `graph`. Any other op type is an error.
pub fn materialize(ctx: &Context, op_index: usize) -> Result<Materialized> {
    materialize_at(ctx, op_index, MAX_CHAIN)
}

fn materialize_at(ctx: &Context, index: usize, follow: usize) -> Result<Materialized> {
    let info = ctx
        .graph
        .get(index)
        .ok_or_else(|| Error::Graph(format!("no op with index {index}")))?;
    let m = match info.op_type {
        SHIFT_SCALE => shift_scale(ctx, index, follow)?,
        LUT_TO_DENSE => lut(ctx, index)?,
        other => {
            return Err(Error::Unsupported(format!(
                "op '{}': materializing {other} ops is not supported",
                info.name
            )))
        }
    };
    let declared = ctx
        .op(index)?
        .outputs
        .first()
        .and_then(|o| o.r#type.as_ref())
        .and_then(|t| match t.r#type.as_ref()? {
            crate::proto::mil::value_type::Type::TensorType(t) => t.shape(),
            _ => None,
        });
    if declared.as_deref() != Some(m.shape.as_slice()) {
        return Err(Error::tensor(
            info.name,
            format!(
                "declared output shape {declared:?} differs from the materialized shape {:?}",
                m.shape
            ),
        ));
    }
    Ok(m)
}

/// Fails where coremltools' `materialized_val_inference()` raises for the op at `op_index`, from
/// bindings only. Joint compression calls it on every candidate op before any config is looked at
/// (`prune_weights.is_valid_op`), so one such op makes every joint prune of the model fail, even
/// one whose config selects nothing. A LUT op reads `indices.val` and `lut.val`, which are None
/// when a constexpr op produces them (AttributeError: this is what per-channel-scale palettization
/// and a LUT quantized with `joint_compression=True` write: a shift-scale op feeding `lut`); a
/// shift-scale op first materializes constexpr producers of `data` and `scale`, so their failures
/// propagate. (An `offset` from a constexpr op is read as None by coremltools, i.e. dropped, not
/// an error; [`materialize`] refuses it.)
pub fn check_materializable(ctx: &Context, op_index: usize) -> Result<()> {
    check_at(ctx, op_index, MAX_CHAIN)
}

fn check_at(ctx: &Context, index: usize, follow: usize) -> Result<()> {
    let info = ctx
        .graph
        .get(index)
        .ok_or_else(|| Error::Graph(format!("no op with index {index}")))?;
    let (params, lut_op): (&[&str], bool) = match info.op_type {
        LUT_TO_DENSE => (&["indices", "lut"], true),
        SHIFT_SCALE => (&["data", "scale"], false),
        // coremltools materializes other constexpr producers; whether mlprune can is decided
        // when a value is actually needed.
        _ => return Ok(()),
    };
    for param in params {
        let Some(InputSource::Constexpr(producer)) = ctx.input_source(index, param)? else {
            continue;
        };
        if lut_op {
            let p = ctx.graph.info(producer);
            return Err(Error::Unsupported(format!(
                "op '{}': its {param} is the output of constexpr op '{}' ({}), which coremltools 9.0 \
                 cannot materialize (AttributeError: 'NoneType' object has no attribute 'shape'), so \
                 joint compression fails on this model",
                info.name, p.name, p.op_type
            )));
        }
        if follow > 0 {
            check_at(ctx, producer, follow - 1)?;
        }
    }
    Ok(())
}

/// The dtype [`materialize`] will return for the op at `op_index`, from declared types only.
pub fn dense_dtype(ctx: &Context, op_index: usize) -> Result<ScalarType> {
    let info = ctx.graph.info(op_index);
    let need = |param: &str| {
        ctx.input_meta(op_index, param)?
            .ok_or_else(|| Error::tensor(&info.name, format!("has no '{param}' input")))
    };
    match info.op_type {
        SHIFT_SCALE => {
            let scale = need("scale")?.dtype;
            let offset = ctx.input_meta(op_index, "offset")?.map(|m| m.dtype);
            result_float(&info.name, scale, offset)
        }
        LUT_TO_DENSE => Ok(need("lut")?.dtype),
        other => Err(Error::Unsupported(format!(
            "op '{}': {other} is not a joint-compression op",
            info.name
        ))),
    }
}

/// numpy's result dtype of `scale * (data.astype(scale.dtype) - offset)`.
fn result_float(name: &str, scale: ScalarType, offset: Option<ScalarType>) -> Result<ScalarType> {
    use ScalarType::*;
    if !matches!(scale, Float16 | Float32) {
        return Err(Error::tensor(
            name,
            format!("scale has dtype {scale}; fp16 or fp32 expected"),
        ));
    }
    Ok(match offset {
        Some(Float32) => Float32,
        Some(Float16) | Some(Int4 | Int8 | UInt4 | UInt8) | None => scale,
        Some(other) => {
            return Err(Error::tensor(
                name,
                format!("offset has unsupported dtype {other}"),
            ))
        }
    })
}

fn shift_scale(ctx: &Context, index: usize, follow: usize) -> Result<Materialized> {
    let name = &ctx.graph.name(index);
    let need = |param: &str, follow: usize| {
        ctx.input_data(index, param, follow)?
            .ok_or_else(|| Error::tensor(name, format!("has no '{param}' input")))
    };
    let (shape, data) = need("data", follow)?;
    let (scale_shape, scale) = need("scale", follow)?;
    let offset = ctx.input_data(index, "offset", 0)?;
    if shape.is_empty() || scale_shape.len() != shape.len() {
        return Err(Error::tensor(
            name,
            format!(
                "data has rank {} and scale rank {}; they must be equal and at least 1",
                shape.len(),
                scale_shape.len()
            ),
        ));
    }
    let blocks =
        BlockMap::new(&shape, &scale_shape).map_err(|r| Error::tensor(name, format!("scale: {r}")))?;
    if let Some((offset_shape, offset_data)) = &offset {
        if *offset_shape != scale_shape {
            return Err(Error::tensor(
                name,
                format!("offset shape {offset_shape:?} differs from scale shape {scale_shape:?}"),
            ));
        }
        let od = offset_data.dtype();
        if !od.is_float() && od != data.dtype() {
            return Err(Error::tensor(
                name,
                format!(
                    "offset dtype {od} must be a float or the data dtype {}",
                    data.dtype()
                ),
            ));
        }
    }
    let result = result_float(name, scale.dtype(), offset.as_ref().map(|o| o.1.dtype()))?;
    // `data.astype(scale.dtype)`: values in the scale's type, carried as f32 (exact for fp16).
    let data_in_scale = as_float(&data, scale.dtype()).ok_or_else(|| {
        Error::tensor(
            name,
            format!(
                "data dtype {} is not one of int4/uint4/int8/uint8/fp16/fp32",
                data.dtype()
            ),
        )
    })?;
    let scale_f = as_float(&scale, scale.dtype()).unwrap_or_default();
    let offset_f = match &offset {
        Some((_, o)) => Some(
            as_float(o, o.dtype())
                .ok_or_else(|| Error::tensor(name, format!("offset dtype {} is not supported", o.dtype())))?,
        ),
        None => None,
    };
    let round = |x: f32| {
        if result == ScalarType::Float16 {
            f16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let mut out = Vec::with_capacity(data_in_scale.len());
    for (i, b) in blocks.iter().enumerate() {
        let mut x = data_in_scale[i];
        if let Some(o) = &offset_f {
            x = round(x - o[b]);
        }
        out.push(round(scale_f[b] * x));
    }
    let dense = match result {
        ScalarType::Float16 => TensorData::F16(out.into_iter().map(f16::from_f32).collect()),
        _ => TensorData::F32(out),
    };
    let kind = JointKind::ShiftScale {
        data,
        scale: ctx.passthrough(index, "scale")?.unwrap_or_default(),
        offset: ctx.passthrough(index, "offset")?,
    };
    Ok(Materialized { dense, shape, kind })
}

/// Values converted to `target` (fp16 or fp32) as numpy's `astype` does, returned as f32.
/// Integers up to 8 bits are exact in both; fp32 → fp16 rounds to nearest even.
fn as_float(data: &TensorData, target: ScalarType) -> Option<Vec<f32>> {
    let to_target = |x: f32| {
        if target == ScalarType::Float16 {
            f16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    Some(match data {
        TensorData::I8(v) | TensorData::I4(v) => v.iter().map(|&x| f32::from(x)).collect(),
        TensorData::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
        TensorData::SubByte {
            dtype: ScalarType::UInt4,
            values,
        } => values.iter().map(|&x| f32::from(x)).collect(),
        TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        TensorData::F32(v) => v.iter().map(|&x| to_target(x)).collect(),
        _ => return None,
    })
}

fn lut(ctx: &Context, index: usize) -> Result<Materialized> {
    let name = &ctx.graph.name(index);
    let need = |param: &str| {
        ctx.input_data(index, param, 0)?
            .ok_or_else(|| Error::tensor(name, format!("has no '{param}' input")))
    };
    let (indices_shape, indices) = need("indices")?;
    let (lut_shape, lut) = need("lut")?;
    let rank = indices_shape.len();
    if rank == 0 || lut_shape.len() != rank + 2 {
        return Err(Error::tensor(
            name,
            format!(
                "lut has rank {} for rank-{rank} indices; it must be 2 more (and indices at least 1)",
                lut_shape.len()
            ),
        ));
    }
    let palettes = lut_shape[rank];
    let vector_size = lut_shape[rank + 1];
    let index_values: Vec<u8> = match &indices {
        TensorData::SubByte { dtype, values } if dtype.bits() < 8 && !matches!(dtype, ScalarType::Int4) => {
            values.clone()
        }
        TensorData::U8(v) => v.clone(),
        other => {
            return Err(Error::tensor(
                name,
                format!("indices have dtype {}; uint1..uint8 expected", other.dtype()),
            ))
        }
    };
    let nbits = indices.dtype().bits();
    if palettes != 1u64 << nbits {
        return Err(Error::tensor(
            name,
            format!(
                "lut has {palettes} palettes but {} indices need {}",
                indices.dtype(),
                1u64 << nbits
            ),
        ));
    }
    if vector_size == 0 {
        return Err(Error::tensor(name, "lut has VECTOR_SIZE 0"));
    }
    let vector_axis = match ctx.input_data(index, "vector_axis", 0)? {
        Some((s, TensorData::I32(v))) if s.is_empty() && v.len() == 1 => {
            let r = rank as i64;
            let axis = i64::from(v[0]);
            if !(-r..r).contains(&axis) {
                return Err(Error::tensor(
                    name,
                    format!("vector_axis {axis} is out of range for rank {rank}"),
                ));
            }
            Some(axis.rem_euclid(r) as usize)
        }
        Some(_) => return Err(Error::tensor(name, "vector_axis must be an int32 scalar")),
        None if vector_size > 1 => {
            return Err(Error::tensor(
                name,
                format!("VECTOR_SIZE is {vector_size} but there is no vector_axis"),
            ))
        }
        None => None,
    };
    let blocks = BlockMap::new(&indices_shape, &lut_shape[..rank])
        .map_err(|r| Error::tensor(name, format!("lut: {r}")))?;
    let table = palettes
        .checked_mul(vector_size)
        .ok_or_else(|| Error::tensor(name, "lut is too large"))?;
    let lookup = LutLookup {
        blocks: &blocks,
        indices: &index_values,
        table,
        vector_size,
        vector_axis,
        shape: &indices_shape,
    };
    let bad = |r: String| Error::tensor(name, r);
    let dense = match &lut {
        TensorData::F16(v) => TensorData::F16(lookup.gather(v).map_err(bad)?),
        TensorData::F32(v) => TensorData::F32(lookup.gather(v).map_err(bad)?),
        TensorData::I8(v) => TensorData::I8(lookup.gather(v).map_err(bad)?),
        TensorData::U8(v) => TensorData::U8(lookup.gather(v).map_err(bad)?),
        other => {
            return Err(Error::tensor(
                name,
                format!("lut dtype {} is not int8/uint8/fp16/fp32", other.dtype()),
            ))
        }
    };
    let mut shape = indices_shape.clone();
    if let Some(axis) = vector_axis.filter(|_| vector_size > 1) {
        shape[axis] = shape[axis]
            .checked_mul(vector_size)
            .ok_or_else(|| Error::tensor(name, "output shape overflows"))?;
    }
    let kind = JointKind::Lut {
        indices,
        lut: ctx.passthrough(index, "lut")?.unwrap_or_default(),
        vector_axis: ctx.passthrough(index, "vector_axis")?,
        vector_size,
    };
    Ok(Materialized { dense, shape, kind })
}

struct LutLookup<'a> {
    blocks: &'a BlockMap,
    indices: &'a [u8],
    /// Elements per LUT block: palettes × VECTOR_SIZE.
    table: u64,
    vector_size: u64,
    vector_axis: Option<usize>,
    shape: &'a [u64],
}

impl LutLookup<'_> {
    /// `lut[block(q)][indices[q]][v]` for every output position, row-major.
    fn gather<T: Copy>(&self, lut: &[T]) -> std::result::Result<Vec<T>, String> {
        let at = |block: usize, q: usize, v: u64| -> std::result::Result<T, String> {
            let idx = u64::from(
                *self
                    .indices
                    .get(q)
                    .ok_or("indices are shorter than their shape")?,
            );
            let pos = (block as u64 * self.table + idx * self.vector_size + v) as usize;
            lut.get(pos)
                .copied()
                .ok_or_else(|| "lut is shorter than its shape".to_string())
        };
        let blocks: Vec<usize> = self.blocks.iter().collect();
        let Some(axis) = self.vector_axis.filter(|_| self.vector_size > 1) else {
            return blocks.iter().enumerate().map(|(q, &b)| at(b, q, 0)).collect();
        };
        // Vector palettization: output index p maps to indices position q (p with p[axis] / V)
        // and vector element p[axis] % V. Walk the indices in row-major order and expand along axis.
        let outer: u64 = self.shape[..axis].iter().product();
        let dim = self.shape[axis];
        let inner: u64 = self.shape[axis + 1..].iter().product();
        let mut out = Vec::with_capacity(blocks.len().saturating_mul(self.vector_size as usize));
        for o in 0..outer {
            for a in 0..dim {
                for v in 0..self.vector_size {
                    for i in 0..inner {
                        let q = ((o * dim + a) * inner + i) as usize;
                        let block = *blocks.get(q).ok_or("indices are shorter than their shape")?;
                        out.push(at(block, q, v)?);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// For every element of a dense tensor (row-major), the flat index of its block in a per-block
/// parameter (scale, offset, LUT) whose leading dimensions divide the dense ones.
struct BlockMap {
    shape: Vec<u64>,
    block: Vec<u64>,
    param: Vec<u64>,
}

impl BlockMap {
    fn new(shape: &[u64], param: &[u64]) -> std::result::Result<Self, String> {
        let mut block = Vec::with_capacity(shape.len());
        for (axis, (&d, &p)) in shape.iter().zip(param).enumerate() {
            if p == 0 || d % p != 0 {
                return Err(format!(
                    "dimension {axis} has size {p}, which does not divide the weight's {d}"
                ));
            }
            block.push(d / p);
        }
        element_count(shape)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("shape {shape:?} is too large"))?;
        Ok(BlockMap {
            shape: shape.to_vec(),
            block,
            param: param.to_vec(),
        })
    }

    /// Odometer over the dense positions; yields the block's flat index for each.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let n = element_count(&self.shape).unwrap_or(0);
        let mut pos = vec![0u64; self.shape.len()];
        (0..n).map(move |k| {
            if k > 0 {
                for axis in (0..pos.len()).rev() {
                    pos[axis] += 1;
                    if pos[axis] < self.shape[axis] {
                        break;
                    }
                    pos[axis] = 0;
                }
            }
            let mut flat = 0u64;
            for ((&p, &param), &block) in pos.iter().zip(&self.param).zip(&self.block) {
                flat = flat * param + p / block;
            }
            flat as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_map_repeats_parameters_blockwise() {
        let m = BlockMap::new(&[4, 6], &[2, 3]).unwrap();
        let got: Vec<usize> = m.iter().collect();
        assert_eq!(
            got,
            [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 3, 3, 4, 4, 5, 5]
        );
        assert!(BlockMap::new(&[4, 6], &[3, 3]).is_err());
        assert!(BlockMap::new(&[4, 6], &[0, 3]).is_err());
    }

    #[test]
    fn numpy_promotion_of_shift_scale_results() {
        use ScalarType::*;
        assert_eq!(result_float("w", Float16, Some(Int8)).unwrap(), Float16);
        assert_eq!(result_float("w", Float16, Some(Float32)).unwrap(), Float32);
        assert_eq!(result_float("w", Float32, Some(Float16)).unwrap(), Float32);
        assert_eq!(result_float("w", Float16, None).unwrap(), Float16);
        assert!(result_float("w", Int8, None).is_err());
    }

    #[test]
    fn vector_lookup_expands_along_the_axis() {
        // indices [2, 2] uint1, one LUT block with two 2-vectors a=(1,2), b=(3,4), axis 0.
        let blocks = BlockMap::new(&[2, 2], &[1, 1]).unwrap();
        let lookup = LutLookup {
            blocks: &blocks,
            indices: &[0, 1, 1, 0],
            table: 4,
            vector_size: 2,
            vector_axis: Some(0),
            shape: &[2, 2],
        };
        let out = lookup.gather(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(out, [1.0, 3.0, 2.0, 4.0, 3.0, 1.0, 4.0, 2.0]);
    }
}
