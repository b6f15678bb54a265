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
//! bit-identical exactly when they have the same blob offset (or the same immediate bytes).
//! coremltools compares consts by value, `np.allclose(rtol=0, atol=6e-8 for fp16, 1e-12
//! otherwise)` among consts whose first 100 elements have the same bytes: [`all_close`] restates
//! that, and [`Deduplicator::near_duplicate`] applies it to a float const of the input before its
//! blob is copied (so a dropped const leaves no orphan blob). NaN is close to nothing: a large
//! value holding NaN is never a duplicate. Not restated (see README): parameters of new sparse ops
//! that `allclose` calls equal without being bit-identical, and small parameters that print alike
//! without being bit-identical (NaN payloads, fp32 values equal to numpy's 8 printed digits).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::access::OpPath;
use crate::mil::entries::Entries;
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

/// Reads stored blobs back (a chunk at a time) for the checks the rule makes.
pub trait StoredBlobs {
    fn blob_holds_nan(&mut self, offset: u64, dtype: ScalarType, count: u64) -> Result<bool>;
    /// Whether [`all_close`] holds between the blob at `offset` and `values` (as many bytes).
    fn blob_all_close(&mut self, offset: u64, dtype: ScalarType, values: &[u8]) -> Result<bool>;
    /// The first `len` data bytes of the blob at `offset`.
    fn blob_prefix(&mut self, offset: u64, len: usize) -> Result<Vec<u8>>;
}

/// What [`Deduplicator::near_duplicate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Near {
    /// No earlier const is close: copy the const and show it to [`Deduplicator::observe`].
    None,
    /// Remove the const without copying it; its readers read this earlier const.
    DuplicateOf(String),
    /// Close to an earlier const but returned by its block: copy it, and do not show it to
    /// `observe` (a duplicate never becomes the first of its values).
    Returned,
}

/// Elements whose raw bytes key coremltools' candidates (`LENGTH_OF_HASHKEY`).
const KEY_ELEMENTS: usize = 100;

/// The block an op is in: function, specialization and the steps to the block.
type BlockKey = (Arc<str>, Arc<str>, Vec<usize>);

/// A block path or a printed type, by its number in [`Interner`].
type Id = u32;

/// Where coremltools looks for a const's equal: block, declared type, bytes of the first
/// [`KEY_ELEMENTS`] elements.
type CloseKey = (Id, Id, Vec<u8>);

/// Block paths and texts (printed value types, op types, parameter names), each stored once: a key
/// refers to them by number, so the keys of a model of many tensors cost a few words each instead
/// of a path and several strings each.
#[derive(Debug, Default)]
struct Interner {
    blocks: HashMap<BlockKey, Id>,
    texts: HashMap<String, Id>,
}

impl Interner {
    /// The block holding the op at `path`.
    fn block(&mut self, path: &OpPath) -> Id {
        let key = (
            path.function.clone(),
            path.specialization.clone(),
            path.steps[..path.steps.len().saturating_sub(1)].to_vec(),
        );
        let next = self.blocks.len() as Id;
        *self.blocks.entry(key).or_insert(next)
    }

    fn text(&mut self, text: &str) -> Id {
        if let Some(&id) = self.texts.get(text) {
            return id;
        }
        let id = self.texts.len() as Id;
        self.texts.insert(text.to_owned(), id);
        id
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Const {
        block: Id,
        /// The declared type, printed: dtype and shape.
        value_type: Id,
        identity: Identity,
    },
    Constexpr {
        block: Id,
        op_type: Id,
        /// `(parameter, declared type, identity)`, ordered by parameter.
        params: Vec<(Id, Id, Identity)>,
    },
}

impl Key {
    /// The key as the table stores it: one allocation of its fields, each length given, so two
    /// keys have equal bytes exactly when they are equal. A model of many tensors keeps a key per
    /// pruned weight (issue 18); as a `Key` it took a vector of parameters, each as large as the
    /// largest identity, beside the table's slot.
    fn to_bytes(&self) -> Box<[u8]> {
        let mut out = Vec::new();
        match self {
            Key::Const {
                block,
                value_type,
                identity,
            } => {
                out.push(0);
                out.extend_from_slice(&block.to_le_bytes());
                out.extend_from_slice(&value_type.to_le_bytes());
                identity.write_to(&mut out);
            }
            Key::Constexpr {
                block,
                op_type,
                params,
            } => {
                out.push(1);
                out.extend_from_slice(&block.to_le_bytes());
                out.extend_from_slice(&op_type.to_le_bytes());
                out.extend_from_slice(&(params.len() as u64).to_le_bytes());
                for (name, value_type, identity) in params {
                    out.extend_from_slice(&name.to_le_bytes());
                    out.extend_from_slice(&value_type.to_le_bytes());
                    identity.write_to(&mut out);
                }
            }
        }
        out.into_boxed_slice()
    }
}

impl Identity {
    fn write_to(&self, out: &mut Vec<u8>) {
        let (tag, bytes): (u8, &[u8]) = match self {
            Identity::Blob(offset) => {
                out.push(0);
                out.extend_from_slice(&offset.to_le_bytes());
                return;
            }
            Identity::Unique(n) => {
                out.push(1);
                out.extend_from_slice(&(*n as u64).to_le_bytes());
                return;
            }
            Identity::Immediate(bytes) => (2, bytes),
            Identity::Output(name) => (3, name.as_bytes()),
        };
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
}

/// Keys in their stored form ([`Key::to_bytes`]), each with the output of the first op that had
/// it: key and name in one allocation, found through a table of their indices. A model of many
/// tensors keeps one per pruned weight (issue 18); a map of boxed keys to boxed names took two
/// allocations and a 32-byte slot each.
#[derive(Debug, Default)]
struct Firsts {
    /// The key's length (4 bytes, little-endian), the key, then the name.
    entries: Vec<Box<[u8]>>,
    by_key: HashTable<u32>,
    hasher: RandomState,
}

impl Firsts {
    fn key_of(entry: &[u8]) -> &[u8] {
        let len = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        &entry[4..4 + len]
    }

    fn get(&self, key: &[u8]) -> Option<&str> {
        let i = self.by_key.find(self.hasher.hash_one(key), |&i| {
            Self::key_of(&self.entries[i as usize]) == key
        })?;
        let entry = &self.entries[*i as usize];
        // Stored from a `&str` by `insert`.
        std::str::from_utf8(&entry[4 + Self::key_of(entry).len()..]).ok()
    }

    /// Records `name` as the first output of `key` (a key not recorded yet).
    fn insert(&mut self, key: &[u8], name: &str) -> Result<()> {
        let too_many = || Error::Graph("too many distinct ops to deduplicate".into());
        let index = u32::try_from(self.entries.len()).map_err(|_| too_many())?;
        let key_len = u32::try_from(key.len()).map_err(|_| too_many())?;
        let mut entry = Vec::with_capacity(4 + key.len() + name.len());
        entry.extend_from_slice(&key_len.to_le_bytes());
        entry.extend_from_slice(key);
        entry.extend_from_slice(name.as_bytes());
        self.entries.push(entry.into_boxed_slice());
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.by_key.insert_unique(hasher.hash_one(key), index, |&i| {
            hasher.hash_one(Self::key_of(&entries[i as usize]))
        });
        Ok(())
    }
}

/// The first op seen for each key, and which outputs were found to be duplicates.
#[derive(Debug, Default)]
pub struct Deduplicator {
    /// The first output of each key.
    first: Firsts,
    /// Float consts that are the first of their values, by (block, declared type, bytes of the
    /// first [`KEY_ELEMENTS`] elements): `(blob offset, output)` in program order.
    close_candidates: HashMap<CloseKey, Vec<(u64, String)>>,
    /// The (block, declared type) pairs of `close_candidates`, so that a const with none is
    /// passed over without reading its values.
    close_types: HashSet<(Id, Id)>,
    /// `(function, duplicate output)` → the output its readers read now.
    resolved: HashMap<(String, String), String>,
    uniques: usize,
    names: Interner,
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
        let block = self.names.block(path);
        let key = if op.r#type == "const" {
            let Some(value) = op.attributes.lookup("val") else {
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
                value_type: self.names.text(&format!("{:?}", value.r#type)),
                identity: self.identity(value, stored)?,
            }
        } else if op.r#type.starts_with("constexpr_") {
            let mut params = Vec::new();
            for (name, value) in op.attributes.pairs().filter(|(n, _)| *n != "name") {
                let identity = self.identity(value, stored)?;
                let param = (
                    self.names.text(name),
                    self.names.text(&format!("{:?}", value.r#type)),
                );
                params.push((param.0, param.1, identity));
            }
            for (name, argument) in op.inputs.pairs() {
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
                params.push((self.names.text(name), self.names.text(&value_type), identity));
            }
            params.sort_by_key(|p| p.0);
            Key::Constexpr {
                block,
                op_type: self.names.text(&op.r#type),
                params,
            }
        } else {
            return Ok(Verdict::Keep);
        };
        let stored_key = key.to_bytes();
        match self.first.get(&stored_key) {
            Some(first) if !returned => {
                let first = first.to_string();
                self.resolved
                    .insert((path.function.to_string(), output.name.clone()), first.clone());
                Ok(Verdict::DuplicateOf(first))
            }
            Some(_) => Ok(Verdict::Keep),
            None => {
                if let Key::Const {
                    block,
                    value_type,
                    identity: Identity::Blob(offset),
                } = &key
                {
                    if let Some(len) = close_prefix_len(op) {
                        let prefix = stored.blob_prefix(*offset, len)?;
                        self.close_types.insert((*block, *value_type));
                        self.close_candidates
                            .entry((*block, *value_type, prefix))
                            .or_default()
                            .push((*offset, output.name.clone()));
                    }
                }
                self.first.insert(&stored_key, &output.name)?;
                Ok(Verdict::Keep)
            }
        }
    }

    /// coremltools' comparison of a float `const` (before it is copied: `values` are its stored
    /// bytes, from the input) with the earlier firsts of its block: same declared type and the
    /// same bytes in the first 100 elements, then [`all_close`] over all of them; the first such
    /// const wins. Exact equality is the special case; this adds the values `allclose` calls
    /// equal without being bit-identical. Call it before [`Deduplicator::observe`] for a const.
    pub fn near_duplicate(
        &mut self,
        path: &OpPath,
        op: &Operation,
        returned: bool,
        values: impl FnOnce() -> Result<Vec<u8>>,
        stored: &mut impl StoredBlobs,
    ) -> Result<Near> {
        let (Some(len), [output]) = (close_prefix_len(op), op.outputs.as_slice()) else {
            return Ok(Near::None);
        };
        let Some(value) = op.attributes.lookup("val") else {
            return Ok(Near::None);
        };
        let block = self.names.block(path);
        let value_type = self.names.text(&format!("{:?}", value.r#type));
        // Read the values only where some const of the same block and type could match.
        if !self.close_types.contains(&(block, value_type)) {
            return Ok(Near::None);
        }
        let Some(meta) = TensorMeta::of(value) else {
            return Ok(Near::None);
        };
        let values = values()?;
        if values.len() < len || holds_nan(meta.dtype, &values) {
            return Ok(Near::None);
        }
        let key = (block, value_type, values[..len].to_vec());
        let candidates = self.close_candidates.get(&key).cloned().unwrap_or_default();
        for (offset, first) in candidates {
            if stored.blob_all_close(offset, meta.dtype, &values)? {
                if returned {
                    return Ok(Near::Returned);
                }
                self.resolved
                    .insert((path.function.to_string(), output.name.clone()), first.clone());
                return Ok(Near::DuplicateOf(first));
            }
        }
        Ok(Near::None)
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

/// For a blob-backed fp16 or fp32 `const` of at least [`CONST_THRESHOLD`] elements (where
/// `allclose` is more than equality), the byte length of its first [`KEY_ELEMENTS`] elements.
fn close_prefix_len(op: &Operation) -> Option<usize> {
    let value = op.attributes.lookup("val").filter(|_| op.r#type == "const")?;
    value.blob_offset()?;
    let meta = TensorMeta::of(value)?;
    let size = match meta.dtype {
        ScalarType::Float16 => 2,
        ScalarType::Float32 => 4,
        _ => return None,
    };
    (meta.count >= CONST_THRESHOLD).then(|| size * KEY_ELEMENTS.min(meta.count as usize))
}

/// numpy's `allclose(a, b, rtol=0, atol)` as coremltools calls it (atol 6e-8 for fp16, 1e-12
/// otherwise) on little-endian `a` and `b` of `dtype`, computed the way numpy 2 computes it: in
/// the arrays' own float type (`|a - b| <= atol` with atol cast to it, so 2^-24 for fp16), or
/// `a == b`, and never where `b` is not finite unless equal. NaN is close to nothing. Other
/// dtypes compare exactly (numpy goes through float64, where integers differ by at least 1).
pub fn all_close(dtype: ScalarType, a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match dtype {
        ScalarType::Float16 => {
            let atol = half::f16::from_f64(6e-8).to_f32();
            a.chunks_exact(2).zip(b.chunks_exact(2)).all(|(x, y)| {
                let x = half::f16::from_le_bytes([x[0], x[1]]);
                let y = half::f16::from_le_bytes([y[0], y[1]]);
                // numpy subtracts halves in float32 and rounds the difference back to half.
                let diff = half::f16::from_f32(x.to_f32() - y.to_f32()).to_f32();
                x == y || (y.is_finite() && diff.abs() <= atol)
            })
        }
        ScalarType::Float32 => {
            let atol = 1e-12f32;
            a.chunks_exact(4).zip(b.chunks_exact(4)).all(|(x, y)| {
                let x = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                let y = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
                x == y || (y.is_finite() && (x - y).abs() <= atol)
            })
        }
        _ => a == b,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Cursor;

    use half::f16;

    use super::*;
    use crate::mil::build::{bind_name, bind_value, const_op, op};
    use crate::mil::value::{blob_value, immediate_value, tensor_value_type};
    use crate::tensor::TensorData;
    use crate::weights::WeightFileBuilder;

    type Weights = WeightFileBuilder<Cursor<Vec<u8>>>;

    #[test]
    fn firsts_give_back_the_name_of_each_key() {
        let mut firsts = Firsts::default();
        let keys: [&[u8]; 4] = [b"", b"a", b"ab", &[0xff; 300]];
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(firsts.get(key), None);
            firsts.insert(key, &format!("out_{i}_é")).unwrap();
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(firsts.get(key), Some(format!("out_{i}_é").as_str()));
        }
        // A key that is a prefix of another's key and name together is its own key.
        assert_eq!(firsts.get(b"abo"), None);
        assert_eq!(firsts.get(b"b"), None);
    }

    fn weights() -> Weights {
        WeightFileBuilder::new(Cursor::new(Vec::new()), "w.bin".into()).unwrap()
    }

    /// A top-level op path (`steps = [index]`) or, with `nested`, one inside op 0's first block.
    fn at(index: usize, nested: bool) -> OpPath {
        OpPath {
            function: "main".into(),
            specialization: "CoreML8".into(),
            steps: if nested {
                [0, 0, index][..].into()
            } else {
                [index][..].into()
            },
        }
    }

    /// A const of `data` with `shape`, stored like the engine stores it (the writer keeps one copy).
    fn stored_const(w: &mut Weights, name: &str, data: &TensorData, shape: &[u64]) -> Operation {
        let offset = w.append(data).unwrap();
        const_op(name, blob_value(data.dtype(), shape, offset))
    }

    fn fp16(values: impl IntoIterator<Item = f32>) -> TensorData {
        TensorData::F16(values.into_iter().map(f16::from_f32).collect())
    }

    fn seen(d: &mut Deduplicator, w: &mut Weights, path: OpPath, op: &Operation, returned: bool) -> Verdict {
        d.observe(&path, op, returned, w).unwrap()
    }

    #[test]
    fn stored_keys_are_equal_exactly_when_the_keys_are() {
        let constexpr = |params: Vec<(Id, Id, Identity)>| Key::Constexpr {
            block: 0,
            op_type: 1,
            params,
        };
        let keys = [
            Key::Const {
                block: 0,
                value_type: 1,
                identity: Identity::Blob(64),
            },
            Key::Const {
                block: 1,
                value_type: 0,
                identity: Identity::Blob(64),
            },
            Key::Const {
                block: 0,
                value_type: 1,
                identity: Identity::Unique(64),
            },
            constexpr(vec![]),
            constexpr(vec![(2, 3, Identity::Blob(64))]),
            constexpr(vec![(2, 3, Identity::Immediate(vec![1, 2]))]),
            constexpr(vec![(2, 3, Identity::Output("\u{1}\u{2}".into()))]),
            constexpr(vec![
                (2, 3, Identity::Immediate(vec![1])),
                (2, 3, Identity::Immediate(vec![2])),
            ]),
            constexpr(vec![(
                2,
                3,
                Identity::Immediate(vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]),
            )]),
        ];
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(a.to_bytes() == b.to_bytes(), i == j, "{a:?} / {b:?}");
            }
            assert_eq!(a.to_bytes(), a.clone().to_bytes());
        }
    }

    #[test]
    fn a_large_const_equal_to_an_earlier_one_in_its_block_is_a_duplicate() {
        let (mut d, mut w) = (Deduplicator::new(), weights());
        let data = fp16((0..100).map(|i| i as f32));
        let a = stored_const(&mut w, "a", &data, &[10, 10]);
        let b = stored_const(&mut w, "b", &data, &[10, 10]);
        let reshaped = stored_const(&mut w, "reshaped", &data, &[100]);
        let mut other = data.clone();
        if let TensorData::F16(v) = &mut other {
            v[99] = f16::from_f32(-1.0);
        }
        let c = stored_const(&mut w, "c", &other, &[10, 10]);
        let nested = stored_const(&mut w, "nested", &data, &[10, 10]);
        assert_eq!(seen(&mut d, &mut w, at(0, false), &a, false), Verdict::Keep);
        assert_eq!(
            seen(&mut d, &mut w, at(1, false), &b, false),
            Verdict::DuplicateOf("a".into())
        );
        // Same bytes in another shape, other values, another block: not merged.
        assert_eq!(
            seen(&mut d, &mut w, at(2, false), &reshaped, false),
            Verdict::Keep
        );
        assert_eq!(seen(&mut d, &mut w, at(3, false), &c, false), Verdict::Keep);
        assert_eq!(seen(&mut d, &mut w, at(0, true), &nested, false), Verdict::Keep);
        // The nested one is the first of its own block.
        let nested_twin = stored_const(&mut w, "nested_twin", &data, &[10, 10]);
        assert_eq!(
            seen(&mut d, &mut w, at(1, true), &nested_twin, false),
            Verdict::DuplicateOf("nested".into())
        );
    }

    #[test]
    fn small_consts_and_returned_duplicates_stay() {
        let (mut d, mut w) = (Deduplicator::new(), weights());
        let small = fp16((0..99).map(|i| i as f32));
        let s1 = stored_const(&mut w, "s1", &small, &[99]);
        let s2 = stored_const(&mut w, "s2", &small, &[99]);
        assert_eq!(seen(&mut d, &mut w, at(0, false), &s1, false), Verdict::Keep);
        assert_eq!(seen(&mut d, &mut w, at(1, false), &s2, false), Verdict::Keep);
        let big = fp16((0..128).map(|i| i as f32));
        let first = stored_const(&mut w, "first", &big, &[128]);
        let returned = stored_const(&mut w, "returned", &big, &[128]);
        let third = stored_const(&mut w, "third", &big, &[128]);
        assert_eq!(seen(&mut d, &mut w, at(2, false), &first, false), Verdict::Keep);
        assert_eq!(seen(&mut d, &mut w, at(3, false), &returned, true), Verdict::Keep);
        // A later one still reads the first, not the returned duplicate.
        assert_eq!(
            seen(&mut d, &mut w, at(4, false), &third, false),
            Verdict::DuplicateOf("first".into())
        );
    }

    #[test]
    fn a_large_value_holding_nan_equals_nothing() {
        // np.allclose is False wherever NaN is, so coremltools never merges such a const.
        let (mut d, mut w) = (Deduplicator::new(), weights());
        let mut values: Vec<f32> = (0..100).map(|i| i as f32).collect();
        values[57] = f32::NAN;
        let data = TensorData::F32(values);
        let a = stored_const(&mut w, "a", &data, &[100]);
        let b = stored_const(&mut w, "b", &data, &[100]);
        assert_eq!(seen(&mut d, &mut w, at(0, false), &a, false), Verdict::Keep);
        assert_eq!(seen(&mut d, &mut w, at(1, false), &b, false), Verdict::Keep);
        // Immediate values are checked the same way.
        let imm = const_op("imm", immediate_value(&data, &[100]));
        let imm2 = const_op("imm2", immediate_value(&data, &[100]));
        assert_eq!(seen(&mut d, &mut w, at(2, false), &imm, false), Verdict::Keep);
        assert_eq!(seen(&mut d, &mut w, at(3, false), &imm2, false), Verdict::Keep);
    }

    /// An iOS16-form sparse op: `nonzero_data` and `mask` stored, `shape` immediate.
    fn sparse16(w: &mut Weights, name: &str, nonzero: &TensorData, mask: &[u8], shape: &[u32]) -> Operation {
        let dense: Vec<u64> = shape.iter().map(|&d| u64::from(d)).collect();
        let mut attributes = BTreeMap::new();
        let value = |w: &mut Weights, data: &TensorData| {
            let offset = w.append(data).unwrap();
            blob_value(data.dtype(), &[data.len() as u64], offset)
        };
        attributes.insert("nonzero_data".to_owned(), value(w, nonzero));
        attributes.insert("mask".to_owned(), value(w, &TensorData::U8(mask.to_vec())));
        attributes.insert(
            "shape".to_owned(),
            immediate_value(&TensorData::U32(shape.to_vec()), &[shape.len() as u64]),
        );
        let ty = tensor_value_type(nonzero.dtype(), &dense);
        op(
            "constexpr_sparse_to_dense",
            name,
            BTreeMap::new(),
            attributes,
            vec![(format!("{name}_out"), ty)],
        )
    }

    #[test]
    fn equal_constexpr_ops_merge_and_any_other_parameter_keeps_them_apart() {
        let (mut d, mut w) = (Deduplicator::new(), weights());
        let data = fp16((1..=12).map(|i| i as f32));
        let mask = [0xffu8, 0x0f];
        let a = sparse16(&mut w, "a", &data, &mask, &[3, 4]);
        let b = sparse16(&mut w, "b", &data, &mask, &[3, 4]);
        // The same mask and values for another dense shape: the `shape` parameter differs.
        let c = sparse16(&mut w, "c", &data, &mask, &[4, 3]);
        let e = sparse16(&mut w, "e", &fp16((2..=13).map(|i| i as f32)), &mask, &[3, 4]);
        assert_eq!(seen(&mut d, &mut w, at(0, false), &a, false), Verdict::Keep);
        assert_eq!(
            seen(&mut d, &mut w, at(1, false), &b, false),
            Verdict::DuplicateOf("a_out".into())
        );
        assert_eq!(seen(&mut d, &mut w, at(2, false), &c, false), Verdict::Keep);
        assert_eq!(seen(&mut d, &mut w, at(3, false), &e, false), Verdict::Keep);
        // A returned duplicate stays.
        let f = sparse16(&mut w, "f", &data, &mask, &[3, 4]);
        assert_eq!(seen(&mut d, &mut w, at(4, false), &f, true), Verdict::Keep);
        // Another op type with the same parameters is not a duplicate.
        let mut g = sparse16(&mut w, "g", &data, &mask, &[3, 4]);
        g.r#type = "constexpr_other".into();
        assert_eq!(seen(&mut d, &mut w, at(5, false), &g, false), Verdict::Keep);
    }

    #[test]
    fn inputs_bound_to_duplicates_compare_as_the_op_they_were_merged_into() {
        let (mut d, mut w) = (Deduplicator::new(), weights());
        let data = fp16((0..200).map(|i| i as f32 / 8.0));
        let a = stored_const(&mut w, "a", &data, &[200]);
        let b = stored_const(&mut w, "b", &data, &[200]);
        let reader = |name: &str, bound: &str| {
            let mut inputs = BTreeMap::new();
            inputs.insert("x".to_owned(), bind_name(bound));
            inputs.insert(
                "scale".to_owned(),
                bind_value(immediate_value(&fp16([0.5]), &[1])),
            );
            op(
                "constexpr_cast",
                name,
                inputs,
                BTreeMap::new(),
                vec![(name.to_owned(), tensor_value_type(ScalarType::Float16, &[200]))],
            )
        };
        assert_eq!(seen(&mut d, &mut w, at(0, false), &a, false), Verdict::Keep);
        assert_eq!(
            seen(&mut d, &mut w, at(1, false), &b, false),
            Verdict::DuplicateOf("a".into())
        );
        assert_eq!(
            seen(&mut d, &mut w, at(2, false), &reader("ra", "a"), false),
            Verdict::Keep
        );
        assert_eq!(
            seen(&mut d, &mut w, at(3, false), &reader("rb", "b"), false),
            Verdict::DuplicateOf("ra".into())
        );
    }

    #[test]
    fn all_close_is_numpys_allclose_in_the_arrays_own_type() {
        // Expected verdicts printed by numpy 2.4: np.isclose(a, b, rtol=0, atol=6e-8 / 1e-12).
        let h = |v: f64| half::f16::from_f64(v).to_le_bytes().to_vec();
        let sub = 2f64.powi(-24);
        let f16_cases = [
            (0.0, sub, true),
            (sub, 2.0 * sub, true),
            (2f64.powi(-14), 2f64.powi(-14) + sub, true),
            (-0.0, 0.0, true),
            (-sub, sub, false),
            (f64::INFINITY, f64::INFINITY, true),
            (f64::INFINITY, f64::NEG_INFINITY, false),
            (1.0, f64::INFINITY, false),
            (f64::NAN, f64::NAN, false),
            (2f64.powi(-13), 2f64.powi(-13) + 2.0 * sub, false),
            (65504.0, -65504.0, false),
        ];
        for (a, b, close) in f16_cases {
            assert_eq!(
                all_close(ScalarType::Float16, &h(a), &h(b)),
                close,
                "fp16 {a} {b}"
            );
        }
        let f = |v: f32| v.to_le_bytes().to_vec();
        let f32_cases = [
            (1e-13, 2e-13, true),
            (0.0, -0.0, true),
            (1.0, 1.000_000_1, false),
            (3e38, -3e38, false),
            (0.0, 1e-12, true),
            (0.0, 1.1e-12, false),
            (f32::INFINITY, f32::INFINITY, true),
        ];
        for (a, b, close) in f32_cases {
            assert_eq!(
                all_close(ScalarType::Float32, &f(a), &f(b)),
                close,
                "fp32 {a} {b}"
            );
        }
        // Every element must be close; integers compare exactly.
        let both = [h(0.0), h(1.0)].concat();
        assert!(!all_close(ScalarType::Float16, &both, &[h(0.0), h(1.5)].concat()));
        assert!(all_close(ScalarType::Float16, &both, &[h(sub), h(1.0)].concat()));
        assert!(!all_close(ScalarType::UInt8, &[1, 2], &[1, 3]));
        assert!(all_close(ScalarType::Int8, &[1, 2], &[1, 2]));
    }

    #[test]
    fn a_const_close_past_its_first_100_elements_is_a_duplicate_of_the_first_such() {
        let (mut d, mut w) = (Deduplicator::new(), weights());
        let sub = f16::from_bits(1).to_f32();
        let base: Vec<f32> = (0..200).map(|i| (i % 7) as f32).collect();
        let with = |changes: &[(usize, f32)]| {
            let mut v = base.clone();
            for &(i, x) in changes {
                v[i] = x;
            }
            fp16(v)
        };
        let first = with(&[(150, 0.0)]);
        let a = stored_const(&mut w, "a", &first, &[200]);
        assert_eq!(seen(&mut d, &mut w, at(0, false), &a, false), Verdict::Keep);
        let near = |d: &mut Deduplicator, w: &mut Weights, step: usize, data: &TensorData, returned: bool| {
            let op = const_op("x", blob_value(data.dtype(), &[200], 0));
            let bytes = data.as_le_bytes().into_owned();
            d.near_duplicate(&at(step, false), &op, returned, || Ok(bytes), w)
                .unwrap()
        };
        // One subnormal step, or -0 for +0, past element 100: close. The first such const wins.
        assert_eq!(
            near(&mut d, &mut w, 1, &with(&[(150, sub)]), false),
            Near::DuplicateOf("a".into())
        );
        assert_eq!(
            near(&mut d, &mut w, 2, &with(&[(150, -0.0)]), false),
            Near::DuplicateOf("a".into())
        );
        assert_eq!(
            near(&mut d, &mut w, 3, &with(&[(150, sub)]), true),
            Near::Returned
        );
        // Two steps, or any change within the first 100 elements (another candidate key): not.
        assert_eq!(
            near(&mut d, &mut w, 4, &with(&[(150, 2.0 * sub)]), false),
            Near::None
        );
        assert_eq!(
            near(&mut d, &mut w, 5, &with(&[(150, 0.0), (3, -0.0)]), false),
            Near::None
        );
        // NaN is close to nothing; another block has no candidates.
        assert_eq!(
            near(&mut d, &mut w, 6, &with(&[(150, f32::NAN)]), false),
            Near::None
        );
        let op = const_op("x", blob_value(ScalarType::Float16, &[200], 0));
        let bytes = first.as_le_bytes().into_owned();
        assert_eq!(
            d.near_duplicate(&at(0, true), &op, false, || Ok(bytes), &mut w)
                .unwrap(),
            Near::None
        );
        // Another declared shape is another key.
        let op = const_op("x", blob_value(ScalarType::Float16, &[2, 100], 0));
        let bytes = first.as_le_bytes().into_owned();
        assert_eq!(
            d.near_duplicate(&at(7, false), &op, false, || Ok(bytes), &mut w)
                .unwrap(),
            Near::None
        );
    }

    #[test]
    fn nan_is_found_in_every_float_type_and_inf_is_not_nan() {
        let f16_bytes = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert!(!holds_nan(
            ScalarType::Float16,
            &f16_bytes(&[0x7c00, 0xfc00, 0x0001, 0x8000])
        ));
        assert!(holds_nan(ScalarType::Float16, &f16_bytes(&[0x3c00, 0x7c01])));
        assert!(holds_nan(ScalarType::Float16, &f16_bytes(&[0xfe00])));
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert!(!holds_nan(
            ScalarType::Float32,
            &f32_bytes(&[f32::INFINITY, f32::NEG_INFINITY, -0.0])
        ));
        assert!(holds_nan(ScalarType::Float32, &f32_bytes(&[1.0, -f32::NAN])));
        assert!(holds_nan(ScalarType::Float64, &f64::NAN.to_le_bytes()));
        // Integer bytes that would be NaN as floats are just integers.
        assert!(!holds_nan(ScalarType::UInt8, &[0xff; 8]));
        assert!(!holds_nan(ScalarType::Int32, &f32_bytes(&[f32::NAN])));
    }
}
