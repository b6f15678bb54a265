//! coremltools' `const_deduplication` pass, restated on the output program as it is written.
//!
//! coremltools re-exports a pruned program through its default MIL pipeline, whose
//! `common::const_deduplication` pass works block by block (nested blocks separately, each only
//! with itself):
//! 1. a `const` of at least [`CONST_THRESHOLD`] elements whose dtype, shape and values equal an
//!    earlier one's is removed and its readers read the earlier one;
//! 2. then a `constexpr_*` op whose op type and parameters equal an earlier one's is removed the
//!    same way. A parameter of at least [`CONST_THRESHOLD`] elements compares by identity of its
//!    (already deduplicated) value, a smaller one by its printed value, a parameter bound to
//!    another op's output by that output.
//!
//! A duplicate that its block returns stays. Here both steps use the stored content: the writer
//! stores identical content once (`crate::blob`), so two values of the same dtype and shape are
//! equal exactly when they have the same blob offset (or the same immediate bytes). Values are
//! compared by value in coremltools with `np.allclose(rtol=0, atol=6e-8 for fp16, 1e-12 otherwise)`,
//! which NaN never passes: a large value holding NaN is never a duplicate. What this does not
//! restate (see README): values that `allclose` calls equal without being bit-identical (fp16
//! values one subnormal step apart, +0/-0 past the first 100 elements, fp32 values within 1e-12),
//! and small parameters that print alike without being bit-identical (NaN payloads, fp32 values
//! equal to numpy's 8 printed digits).

use std::collections::HashMap;

use crate::dtype::ScalarType;
use crate::error::Result;
use crate::mil::graph::OpPath;
use crate::mil::value::{decode_immediate, ValueExt};
use crate::proto::mil::{argument::binding::Binding, Operation, Value};
use crate::weights::source::TensorMeta;

/// Values with fewer elements are never deduplicated as consts (coremltools' `_const_threshold`).
pub const CONST_THRESHOLD: u64 = 100;

/// What the caller must do with an op it showed to [`Deduplicator::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Remove the op; its readers read this output of an earlier op instead.
    DuplicateOf(String),
}

/// Reads a stored blob back for the NaN check: `blob_holds_nan(offset, dtype, count)`.
pub trait StoredBlobs {
    fn blob_holds_nan(&mut self, offset: u64, dtype: ScalarType, count: u64) -> Result<bool>;
}

/// The block an op is in: function, specialization and the steps to the block.
type BlockKey = (String, String, Vec<usize>);

/// How a value takes part in a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Identity {
    Blob(u64),
    Immediate(Vec<u8>),
    /// Bound to another op's output (after earlier duplicates were resolved).
    Output(String),
    /// Equal to nothing else (a large value holding NaN, a value this rule cannot read).
    Unique(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Const {
        block: BlockKey,
        /// The declared type, printed: dtype and shape.
        value_type: String,
        identity: Identity,
    },
    Constexpr {
        block: BlockKey,
        op_type: String,
        /// `(parameter, declared type, identity)`, by parameter name.
        params: Vec<(String, String, Identity)>,
    },
}

/// The first op seen for each key, and which outputs were found to be duplicates.
#[derive(Debug, Default)]
pub struct Deduplicator {
    first: HashMap<Key, String>,
    /// `(function, duplicate output)` → the output its readers read now.
    resolved: HashMap<(String, String), String>,
    uniques: usize,
}

impl Deduplicator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides about `op`, final except for renames (its blobs written), at `path`. `returned` says
    /// whether its enclosing block returns its output. Ops seen earlier in the same block are the
    /// candidates: call this in program order.
    pub fn observe(
        &mut self,
        path: &OpPath,
        op: &Operation,
        returned: bool,
        stored: &mut impl StoredBlobs,
    ) -> Result<Verdict> {
        let [output] = op.outputs.as_slice() else {
            return Ok(Verdict::Keep);
        };
        let block = (
            path.function.clone(),
            path.specialization.clone(),
            path.steps[..path.steps.len().saturating_sub(1)].to_vec(),
        );
        let key = if op.r#type == "const" {
            let Some(value) = op.attributes.get("val") else {
                return Ok(Verdict::Keep);
            };
            let Some(meta) = TensorMeta::of(value) else {
                return Ok(Verdict::Keep);
            };
            if meta.count < CONST_THRESHOLD {
                return Ok(Verdict::Keep);
            }
            Key::Const {
                block,
                value_type: format!("{:?}", value.r#type),
                identity: self.identity(value, stored)?,
            }
        } else if op.r#type.starts_with("constexpr_") {
            let mut params = Vec::new();
            for (name, value) in op.attributes.iter().filter(|(n, _)| *n != "name") {
                let identity = self.identity(value, stored)?;
                params.push((name.clone(), format!("{:?}", value.r#type), identity));
            }
            for (name, argument) in &op.inputs {
                let [binding] = argument.arguments.as_slice() else {
                    return Ok(Verdict::Keep);
                };
                let (value_type, identity) = match &binding.binding {
                    Some(Binding::Value(value)) => {
                        (format!("{:?}", value.r#type), self.identity(value, stored)?)
                    }
                    Some(Binding::Name(bound)) => (
                        String::new(),
                        Identity::Output(self.resolve(&path.function, bound)),
                    ),
                    None => return Ok(Verdict::Keep),
                };
                params.push((name.clone(), value_type, identity));
            }
            params.sort_by(|a, b| a.0.cmp(&b.0));
            Key::Constexpr {
                block,
                op_type: op.r#type.clone(),
                params,
            }
        } else {
            return Ok(Verdict::Keep);
        };
        match self.first.get(&key) {
            Some(first) if !returned => {
                let first = first.clone();
                self.resolved
                    .insert((path.function.clone(), output.name.clone()), first.clone());
                Ok(Verdict::DuplicateOf(first))
            }
            Some(_) => Ok(Verdict::Keep),
            None => {
                self.first.insert(key, output.name.clone());
                Ok(Verdict::Keep)
            }
        }
    }

    fn resolve(&self, function: &str, name: &str) -> String {
        self.resolved
            .get(&(function.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }

    fn unique(&mut self) -> Identity {
        self.uniques += 1;
        Identity::Unique(self.uniques)
    }

    /// A value's identity: its stored content, unless it is large and holds NaN (which
    /// `allclose` never calls equal, so such a value is only ever itself).
    fn identity(&mut self, value: &Value, stored: &mut impl StoredBlobs) -> Result<Identity> {
        let Some(meta) = TensorMeta::of(value) else {
            return Ok(self.unique());
        };
        let large = meta.count >= CONST_THRESHOLD;
        if let Some(offset) = value.blob_offset() {
            if large && stored.blob_holds_nan(offset, meta.dtype, meta.count)? {
                return Ok(self.unique());
            }
            return Ok(Identity::Blob(offset));
        }
        let Some(tensor) = value.immediate_tensor() else {
            return Ok(self.unique());
        };
        match decode_immediate(tensor, meta.dtype, meta.count) {
            Ok(data) => {
                let bytes = data.as_le_bytes();
                if large && holds_nan(meta.dtype, &bytes) {
                    return Ok(self.unique());
                }
                Ok(Identity::Immediate(bytes.into_owned()))
            }
            Err(_) => Ok(self.unique()),
        }
    }
}

/// Whether little-endian `bytes` of `dtype` hold a NaN (only float types can). `bytes` must hold
/// whole elements.
pub fn holds_nan(dtype: ScalarType, bytes: &[u8]) -> bool {
    match dtype {
        ScalarType::Float16 => bytes
            .chunks_exact(2)
            .any(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7fff > 0x7c00),
        ScalarType::Float32 => bytes
            .chunks_exact(4)
            .any(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff > 0x7f80_0000),
        ScalarType::Float64 => bytes.chunks_exact(8).any(|b| {
            let bits = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            bits & 0x7fff_ffff_ffff_ffff > 0x7ff0_0000_0000_0000
        }),
        _ => false,
    }
}
