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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::Path;

use crate::dtype::ScalarType;
use crate::error::{Error, Result};
use crate::mil::access::OpPath;
use crate::mil::entries::Entries;
use crate::mil::value::{decode_immediate, ValueExt};
use crate::proto::mil::{argument::binding::Binding, Operation, Value};
use crate::spill_map::{Numbering, SpillDict};
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

/// A block path or a printed type, by its number in [`Interner`].
type Id = u32;

/// Where coremltools looks for a const's equal: block, declared type, bytes of the first
/// [`KEY_ELEMENTS`] elements.
type CloseKey = (Id, Id, Vec<u8>);

/// Block paths and texts (printed value types, op types, parameter names), each stored once: a key
/// refers to them by number, so the keys of a model of many tensors cost a few words each instead
/// of a path and several strings each.
#[derive(Default)]
struct Interner {
    blocks: Numbering,
    texts: Numbering,
}

impl Interner {
    fn new_in(dir: Option<&Path>) -> Self {
        Interner {
            blocks: Numbering::new_in(dir),
            texts: Numbering::new_in(dir),
        }
    }

    /// The block holding the op at `path`.
    fn block(&mut self, path: &OpPath) -> Result<Id> {
        let mut key = Vec::new();
        for part in [&path.function, &path.specialization] {
            key.extend_from_slice(&(part.len() as u64).to_le_bytes());
            key.extend_from_slice(part.as_bytes());
        }
        for &step in &path.steps[..path.steps.len().saturating_sub(1)] {
            key.extend_from_slice(&(step as u64).to_le_bytes());
        }
        self.blocks.number(&key)
    }

    fn text(&mut self, text: &str) -> Result<Id> {
        self.texts.number(text.as_bytes())
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
/// it. A model of many tensors keeps one per weight (issue 18), so they are kept in memory up to a
/// bound, then on disk ([`SpillDict`]).
struct Firsts(SpillDict);

impl Firsts {
    fn get(&self, key: &[u8]) -> Result<Option<String>> {
        // Stored from a `&str` by `insert`.
        Ok(self.0.get(key)?.and_then(|name| String::from_utf8(name).ok()))
    }

    /// Records `name` as the first output of `key` (a key not recorded yet).
    fn insert(&mut self, key: &[u8], name: &str) -> Result<()> {
        self.0.insert_new(key, name.as_bytes())
    }
}

/// The float consts of a [`CloseKey`] while there is one: `(blob offset, output)`, found by
/// [`close_key_bytes`], on disk past a bound. Most consts have a key of their own, so a
/// [`CloseGroup`] is only made for a key's second const (issue 18: a group, its key's 100
/// elements and its index took about 600 bytes a const).
struct CloseSingles(SpillDict);

impl CloseSingles {
    fn get(&self, key: &CloseKey) -> Result<Option<(u64, String)>> {
        let Some(record) = self.0.get(&close_key_bytes(key))? else {
            return Ok(None);
        };
        let (offset, name) = record.split_at(8);
        let offset = u64::from_le_bytes(offset.try_into().expect("eight bytes"));
        // Stored from a `&str` by `insert`.
        Ok(Some((offset, String::from_utf8_lossy(name).into_owned())))
    }

    fn insert(&mut self, key: &CloseKey, offset: u64, name: &str) -> Result<()> {
        let record = [&offset.to_le_bytes()[..], name.as_bytes()].concat();
        self.0.insert_new(&close_key_bytes(key), &record)
    }
}

/// A [`CloseKey`] as one byte string: the two ids have a fixed width, so the prefix is the rest.
fn close_key_bytes((block, value_type, prefix): &CloseKey) -> Vec<u8> {
    [&block.to_le_bytes()[..], &value_type.to_le_bytes(), prefix].concat()
}

/// `(function, output)` as one byte string: the function's length, the function, the output.
fn output_key(function: &str, output: &str) -> Vec<u8> {
    [
        &(function.len() as u64).to_le_bytes()[..],
        function.as_bytes(),
        output.as_bytes(),
    ]
    .concat()
}

/// The float consts of one [`CloseKey`] that are the first of their values, and an index that
/// finds, for a new const, the few of them that can be close to it ([`summarize`]).
#[derive(Debug, Default)]
struct CloseGroup {
    /// `(blob offset, output)` in program order.
    members: Vec<(u64, String)>,
    /// Members not summarized yet: their blobs are read at the next query of the group.
    unindexed: Vec<u32>,
    /// `(shape, small sum, member)` of the summarized members.
    index: BTreeSet<(u64, i64, u32)>,
    /// The values of small members, while [`CACHE_BUDGET`] lasts, so that comparing with them
    /// reads nothing back.
    cached: HashMap<u32, Box<[u8]>>,
}

/// A const found close to nothing, summarized, that may become a candidate next.
#[derive(Debug)]
struct Pending {
    key: CloseKey,
    output: String,
    /// Computed where the const had a group to search.
    summary: Option<Summary>,
    /// Kept where small enough ([`CACHE_MAX_BYTES`]).
    values: Option<Box<[u8]>>,
}

/// Candidates of at most this many bytes keep their values in memory ...
const CACHE_MAX_BYTES: usize = 16 << 10;
/// ... up to this many bytes in all.
const CACHE_BUDGET: usize = 32 << 20;

/// The first op seen for each key, and which outputs were found to be duplicates.
pub struct Deduplicator {
    /// The first output of each key.
    first: Firsts,
    /// Float consts that are the first of their values, by (block, declared type, bytes of the
    /// first [`KEY_ELEMENTS`] elements): while a key has one, in `close_singles` (with its values
    /// in `single_values` while [`CACHE_BUDGET`] lasts), from its second on in a group here.
    close_candidates: HashMap<CloseKey, CloseGroup>,
    close_singles: CloseSingles,
    /// Values of consts in `close_singles`, by blob offset, to become a group's cached values.
    single_values: HashMap<u64, Box<[u8]>>,
    /// What [`Deduplicator::near_duplicate`] learnt of the const it found close to nothing, for
    /// [`Deduplicator::observe`] to keep if that const becomes a candidate.
    pending: Option<Pending>,
    /// Seed of the shape hash ([`summarize`]), random so that no input can aim at collisions.
    shape_seed: u64,
    /// Bytes of candidate values kept in memory ([`CACHE_BUDGET`]).
    cached_bytes: usize,
    /// Full comparisons ([`all_close`] of a candidate with a const) made so far.
    comparisons: u64,
    /// The (block, declared type) pairs of `close_candidates`, so that a const with none is
    /// passed over without reading its values.
    close_types: HashSet<(Id, Id)>,
    /// `(function, duplicate output)` ([`output_key`]) → the output its readers read now.
    resolved: SpillDict,
    uniques: usize,
    names: Interner,
}

impl Default for Deduplicator {
    fn default() -> Self {
        Self::new_in(None)
    }
}

impl Deduplicator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A deduplicator whose tables, past their bound in memory, go to unlinked files in `dir`
    /// (the system temporary folder for `None`).
    pub fn new_in(dir: Option<&Path>) -> Self {
        Self {
            first: Firsts(SpillDict::new_in(dir)),
            close_candidates: HashMap::new(),
            close_singles: CloseSingles(SpillDict::new_in(dir)),
            single_values: HashMap::new(),
            close_types: HashSet::new(),
            resolved: SpillDict::new_in(dir),
            uniques: 0,
            names: Interner::new_in(dir),
            pending: None,
            shape_seed: RandomState::new().hash_one(0u8),
            cached_bytes: 0,
            comparisons: 0,
        }
    }

    /// Full comparisons of a const with a candidate made so far (each reads all its elements).
    pub fn comparisons(&self) -> u64 {
        self.comparisons
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
        let block = self.names.block(path)?;
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
                value_type: self.names.text(&format!("{:?}", value.r#type))?,
                identity: self.identity(value, stored)?,
            }
        } else if op.r#type.starts_with("constexpr_") {
            let mut params = Vec::new();
            for (name, value) in op.attributes.pairs().filter(|(n, _)| *n != "name") {
                let identity = self.identity(value, stored)?;
                let param = (
                    self.names.text(name)?,
                    self.names.text(&format!("{:?}", value.r#type))?,
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
                        Identity::Output(self.resolve(&path.function, bound)?),
                    ),
                    None => return Ok(Verdict::Keep),
                };
                params.push((self.names.text(name)?, self.names.text(&value_type)?, identity));
            }
            params.sort_by_key(|p| p.0);
            Key::Constexpr {
                block,
                op_type: self.names.text(&op.r#type)?,
                params,
            }
        } else {
            return Ok(Verdict::Keep);
        };
        let stored_key = key.to_bytes();
        match self.first.get(&stored_key)? {
            Some(first) if !returned => {
                // Output names are unique in a function (the graph index refuses a second
                // definition), so each is resolved once.
                self.resolved
                    .insert_new(&output_key(&path.function, &output.name), first.as_bytes())?;
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
                        let close_key = (*block, *value_type, prefix);
                        // Summarized by `near_duplicate` from the values just copied here.
                        let pending = self
                            .pending
                            .take()
                            .filter(|p| p.key == close_key && p.output == output.name);
                        self.close_types.insert((*block, *value_type));
                        let (summary, values) = pending.map_or((None, None), |p| (p.summary, p.values));
                        if !self.grouped(&close_key)? {
                            self.close_singles.insert(&close_key, *offset, &output.name)?;
                            if let Some(values) = values {
                                if self.cached_bytes + values.len() <= CACHE_BUDGET {
                                    self.cached_bytes += values.len();
                                    self.single_values.insert(*offset, values);
                                }
                            }
                            self.first.insert(&stored_key, &output.name)?;
                            return Ok(Verdict::Keep);
                        }
                        let group = self.close_candidates.get_mut(&close_key).expect("grouped above");
                        let member = u32::try_from(group.members.len())
                            .map_err(|_| Error::Graph("too many consts to deduplicate".into()))?;
                        group.members.push((*offset, output.name.clone()));
                        match summary {
                            Some((shape, sum, _)) => {
                                group.index.insert((shape, sum, member));
                            }
                            None => group.unindexed.push(member),
                        }
                        if let Some(values) = values {
                            if self.cached_bytes + values.len() <= CACHE_BUDGET {
                                self.cached_bytes += values.len();
                                group.cached.insert(member, values);
                            }
                        }
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
    ///
    /// coremltools compares with every such earlier const, quadratic in their number; here an
    /// index of their summaries (`summarize`, a necessary condition of closeness) passes over
    /// those that cannot be close, and the rest are compared in program order: the same verdict.
    pub fn near_duplicate(
        &mut self,
        path: &OpPath,
        op: &Operation,
        returned: bool,
        values: impl FnOnce() -> Result<Vec<u8>>,
        stored: &mut impl StoredBlobs,
    ) -> Result<Near> {
        self.pending = None;
        let (Some(len), [output]) = (close_prefix_len(op), op.outputs.as_slice()) else {
            return Ok(Near::None);
        };
        let Some(value) = op.attributes.lookup("val") else {
            return Ok(Near::None);
        };
        let block = self.names.block(path)?;
        let value_type = self.names.text(&format!("{:?}", value.r#type))?;
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
        let mut summary = None;
        self.grouped(&key)?;
        let found = match self.close_candidates.get_mut(&key) {
            Some(group) => {
                let summarized = summarize(meta.dtype, &values[len..], self.shape_seed);
                summary = Some(summarized);
                let found = group.first_close(
                    meta.dtype,
                    (&values, len),
                    summarized,
                    self.shape_seed,
                    (&mut self.cached_bytes, &mut self.comparisons),
                    stored,
                )?;
                found.map(|i| group.members[i as usize].1.clone())
            }
            None => None,
        };
        let Some(first) = found else {
            let keep = values.len() <= CACHE_MAX_BYTES;
            self.pending = Some(Pending {
                key,
                output: output.name.clone(),
                summary,
                values: keep.then(|| values.into_boxed_slice()),
            });
            return Ok(Near::None);
        };
        if returned {
            return Ok(Near::Returned);
        }
        self.resolved
            .insert_new(&output_key(&path.function, &output.name), first.as_bytes())?;
        Ok(Near::DuplicateOf(first))
    }

    /// [`Deduplicator::near_duplicate`] as it was before the index: every member of the group
    /// compared in program order, each read back from `stored`. Changes nothing.
    #[cfg(test)]
    fn near_duplicate_reference(
        &mut self,
        path: &OpPath,
        op: &Operation,
        returned: bool,
        values: &[u8],
        stored: &mut impl StoredBlobs,
    ) -> Result<Near> {
        let (Some(len), [_]) = (close_prefix_len(op), op.outputs.as_slice()) else {
            return Ok(Near::None);
        };
        let Some(value) = op.attributes.lookup("val") else {
            return Ok(Near::None);
        };
        let block = self.names.block(path)?;
        let value_type = self.names.text(&format!("{:?}", value.r#type))?;
        let Some(meta) = TensorMeta::of(value) else {
            return Ok(Near::None);
        };
        if values.len() < len || holds_nan(meta.dtype, values) {
            return Ok(Near::None);
        }
        let key = (block, value_type, values[..len].to_vec());
        self.grouped(&key)?;
        let members = self
            .close_candidates
            .get(&key)
            .map(|g| g.members.clone())
            .unwrap_or_default();
        for (offset, first) in members {
            if stored.blob_all_close(offset, meta.dtype, values)? {
                return Ok(if returned {
                    Near::Returned
                } else {
                    Near::DuplicateOf(first)
                });
            }
        }
        Ok(Near::None)
    }

    fn resolve(&self, function: &str, name: &str) -> Result<String> {
        let resolved = self.resolved.get(&output_key(function, name))?;
        // Stored from a `&str`.
        Ok(resolved.map_or_else(|| name.to_owned(), |r| String::from_utf8_lossy(&r).into_owned()))
    }

    /// Whether `key` has a [`CloseGroup`], made here if the key has a single const so far: the
    /// group then holds that const, summarized at its first query.
    fn grouped(&mut self, key: &CloseKey) -> Result<bool> {
        if self.close_candidates.contains_key(key) {
            return Ok(true);
        }
        let Some((offset, name)) = self.close_singles.get(key)? else {
            return Ok(false);
        };
        let mut group = CloseGroup::default();
        group.members.push((offset, name));
        group.unindexed.push(0);
        if let Some(values) = self.single_values.remove(&offset) {
            group.cached.insert(0, values);
        }
        self.close_candidates.insert(key.clone(), group);
        Ok(true)
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

impl CloseGroup {
    /// The first member, in program order, that [`all_close`] calls close to `values` (a const of
    /// the group's declared type, without NaN, whose elements past the first `len` bytes are
    /// summarized as `summary`). Only the members whose summary can belong to a close const are
    /// compared ([`summarize`]), in program order, so the first close one is the first close
    /// member; members added since the last query are summarized first (their blobs read once,
    /// unless cached).
    fn first_close(
        &mut self,
        dtype: ScalarType,
        (values, len): (&[u8], usize),
        summary: Summary,
        seed: u64,
        (cached_bytes, comparisons): (&mut usize, &mut u64),
        stored: &mut impl StoredBlobs,
    ) -> Result<Option<u32>> {
        for member in std::mem::take(&mut self.unindexed) {
            let (shape, sum, _) = match self.cached.get(&member) {
                Some(bytes) => summarize(dtype, bytes.get(len..).unwrap_or_default(), seed),
                None => {
                    let offset = self.members[member as usize].0;
                    let bytes = stored.blob_prefix(offset, values.len())?;
                    let summary = summarize(dtype, bytes.get(len..).unwrap_or_default(), seed);
                    if bytes.len() <= CACHE_MAX_BYTES && *cached_bytes + bytes.len() <= CACHE_BUDGET {
                        *cached_bytes += bytes.len();
                        self.cached.insert(member, bytes.into_boxed_slice());
                    }
                    summary
                }
            };
            self.index.insert((shape, sum, member));
        }
        let (shape, sum, small) = summary;
        let reach = small.saturating_mul(small_step_bound(dtype));
        let range = (shape, sum.saturating_sub(reach), 0)..=(shape, sum.saturating_add(reach), u32::MAX);
        let mut survivors: Vec<u32> = self.index.range(range).map(|&(_, _, m)| m).collect();
        survivors.sort_unstable();
        for member in survivors {
            *comparisons += 1;
            let close = match self.cached.get(&member) {
                Some(candidate) => all_close(dtype, candidate, values),
                None => stored.blob_all_close(self.members[member as usize].0, dtype, values)?,
            };
            if close {
                return Ok(Some(member));
            }
        }
        Ok(None)
    }
}

/// What [`summarize`] keeps of a const's values: `(shape, small sum, small count)`.
type Summary = (u64, i64, i64);

/// A necessary condition of [`all_close`], computed from each side alone, for fp16 and fp32 (the
/// dtypes of candidates, [`close_prefix_len`]), for values without NaN:
///
/// - an element is *small* when `|x| <= 2^-13` (fp16) or `|x| <= 2^-15` (fp32), ±0 included;
/// - the *shape* hashes, element by element, the bits of each element that is not small, and 0
///   (the bits of +0, a small value, so no other element's bits) for each small one;
/// - the *small sum* adds `q(x)` over the small elements: `x * 2^24` for fp16 (an integer: every
///   fp16 value is a multiple of 2^-24, and a small one is at most 2^11 of them), `floor(x * 2^40)`
///   for fp32 (exact: a power-of-two scaling of a value of at most 2^-15, then a floor); the sum
///   of at most one `values` buffer's elements fits an i64 (|q| <= 2^25).
///
/// Claim: if `all_close(a, b)` then shape(a) = shape(b) and |sum(a) - sum(b)| <= s * small count
/// (the same count on both sides), with s = [`small_step_bound`]. Element by element, `x` of `a`
/// close to `y` of `b` means `x == y`, or `y` finite and `|x - y|`, rounded, at most atol:
///
/// - `x == y`: the same bits unless ±0 (both small, q = 0), so the same feature and the same q.
/// - fp16, `x != y`: both finite (an infinite one gives an infinite difference); the exact
///   difference is a non-zero multiple of 2^-24; if it is 2^-24 · k with k >= 2, its roundings
///   to f32 then f16 are at least 2^-23 (representable in both, rounding is monotonic), more than
///   atol = 2^-24: so |x - y| = 2^-24 exactly. Values above 2^-13 are 2^-23 apart from each other
///   and from 2^-13, so neither of `x`, `y` is above 2^-13 in magnitude: both small, and their
///   q differ by exactly 1 (s = 1).
/// - fp32, `x != y`: both finite; f32 subtraction rounds to nearest, so the exact difference is
///   at most atol + ulp(atol) / 2 < 1.0000001e-12 (atol = 1e-12f32 lies in [2^-40, 2^-39), ulp
///   2^-63). Values above 2^-15 in magnitude are at least 2^-38 (> 3.6e-12) from any other f32
///   (the spacing in [2^-15, 2^-14) is 2^-38), so both are small; |x·2^40 - y·2^40| < 1.1, so
///   their floors differ by at most 2 (s = 2).
///
/// So close elements have equal features (the shape hashes are then equal) and q at most s
/// apart; summing over the small elements gives the bound. Infinities are not small and compare
/// by bits, as `all_close` does. A hash collision only costs a comparison: the filter is used
/// only to skip candidates, never to accept one.
fn summarize(dtype: ScalarType, tail: &[u8], seed: u64) -> Summary {
    let mut features = Vec::with_capacity(tail.len().min(1 << 16));
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    let (mut sum, mut small) = (0i64, 0i64);
    let mut feed = |features: &mut Vec<u8>, bytes: &[u8], last: bool| {
        features.extend_from_slice(bytes);
        if last || features.len() >= 1 << 16 {
            hasher.update(features);
            features.clear();
        }
    };
    match dtype {
        ScalarType::Float16 => {
            for x in tail.chunks_exact(2) {
                let bits = u16::from_le_bytes([x[0], x[1]]);
                let magnitude = bits & 0x7fff;
                // 0x0800 is 2^-13; up to there the magnitude's bits count steps of 2^-24.
                let feature = if magnitude <= 0x0800 {
                    small += 1;
                    let q = i64::from(magnitude);
                    sum += if bits & 0x8000 != 0 { -q } else { q };
                    0
                } else {
                    bits
                };
                feed(&mut features, &feature.to_le_bytes(), false);
            }
        }
        ScalarType::Float32 => {
            for x in tail.chunks_exact(4) {
                let bits = u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                // 0x3800_0000 is 2^-15.
                let feature = if bits & 0x7fff_ffff <= 0x3800_0000 {
                    small += 1;
                    sum += (f64::from(f32::from_bits(bits)) * 2f64.powi(40)).floor() as i64;
                    0
                } else {
                    bits
                };
                feed(&mut features, &feature.to_le_bytes(), false);
            }
        }
        // Not a candidate's dtype: one shape, compared in full.
        _ => {}
    }
    feed(&mut features, &[], true);
    (hasher.digest(), sum, small)
}

/// How far apart `q` of two close small elements can be ([`summarize`]).
fn small_step_bound(dtype: ScalarType) -> i64 {
    match dtype {
        ScalarType::Float16 => 1,
        _ => 2,
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
    use proptest::prelude::*;

    use super::*;
    use crate::mil::build::{bind_name, bind_value, const_op, op};
    use crate::mil::value::{blob_value, immediate_value, tensor_value_type};
    use crate::tensor::TensorData;
    use crate::weights::WeightFileBuilder;

    type Weights = WeightFileBuilder<Cursor<Vec<u8>>>;

    #[test]
    fn firsts_give_back_the_name_of_each_key() {
        let mut firsts = Firsts(SpillDict::new_in(None));
        let keys: [&[u8]; 4] = [b"", b"a", b"ab", &[0xff; 300]];
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(firsts.get(key).unwrap(), None);
            firsts.insert(key, &format!("out_{i}_é")).unwrap();
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(firsts.get(key).unwrap(), Some(format!("out_{i}_é")));
        }
        // A key that is a prefix of another's key and name together is its own key.
        assert_eq!(firsts.get(b"abo").unwrap(), None);
        assert_eq!(firsts.get(b"b").unwrap(), None);
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

    /// One element's summary.
    fn element_summary(dtype: ScalarType, bytes: &[u8]) -> Summary {
        summarize(dtype, bytes, 7)
    }

    /// The claim of [`summarize`] for one pair of elements.
    fn check_pair(dtype: ScalarType, x: &[u8], y: &[u8]) {
        if all_close(dtype, x, y) {
            let (a, b) = (element_summary(dtype, x), element_summary(dtype, y));
            assert_eq!((a.0, a.2), (b.0, b.2), "{dtype:?} {x:?} {y:?}");
            assert!(
                (a.1 - b.1).abs() <= small_step_bound(dtype) * a.2,
                "{dtype:?} {x:?} {y:?}: {a:?} {b:?}"
            );
        }
    }

    #[test]
    fn close_fp16_elements_have_summaries_within_the_bound() {
        let bytes = |b: u16| b.to_le_bytes();
        // Every pair of values up to 2^-12 in magnitude (the small ones and past them), ...
        let near_zero: Vec<u16> = (0..=0x0c00u16).flat_map(|b| [b, b | 0x8000]).collect();
        for &x in &near_zero {
            for &y in &near_zero {
                check_pair(ScalarType::Float16, &bytes(x), &bytes(y));
            }
        }
        // ... and every value with its neighbours in bits, sign or both.
        for x in 0..=u16::MAX {
            for d in [0u16, 1, 2, 3] {
                for y in [
                    x.wrapping_add(d),
                    x.wrapping_sub(d),
                    (x ^ 0x8000).wrapping_add(d),
                    (x ^ 0x8000).wrapping_sub(d),
                ] {
                    check_pair(ScalarType::Float16, &bytes(x), &bytes(y));
                }
            }
        }
    }

    #[test]
    fn close_fp32_elements_have_summaries_within_the_bound() {
        let bytes = |b: u32| b.to_le_bytes();
        let edges = [
            0u32,
            1,
            0x3800_0000, // 2^-15
            (1e-12f32).to_bits(),
            (2e-12f32).to_bits(),
            0x2b80_0000, // 2^-40
            0x2c00_0000, // 2^-39
            0x0080_0000, // the least normal
            0x7f80_0000, // inf
            1f32.to_bits(),
        ];
        for &e in &edges {
            for dx in 0..64u32 {
                for x in [e.wrapping_add(dx), e.wrapping_sub(dx)] {
                    for dy in 0..64u32 {
                        for y in [
                            x.wrapping_add(dy),
                            x.wrapping_sub(dy),
                            (x ^ 0x8000_0000).wrapping_add(dy),
                        ] {
                            check_pair(ScalarType::Float32, &bytes(x), &bytes(y));
                        }
                    }
                }
            }
        }
        // Values 1e-12 apart everywhere below 2^-14.
        for i in 0..20_000u32 {
            let x = f32::from_bits(i.wrapping_mul(0x9e37_79b9) % 0x3880_0000);
            for y in [x + 1e-12, x - 1e-12, x + 1.0000001e-12, -x + 1e-12, x + 2e-12] {
                check_pair(ScalarType::Float32, &bytes(x.to_bits()), &bytes(y.to_bits()));
            }
        }
    }

    /// Element bits that make close and nearly close tails: ±0, steps of the tolerance, the edge
    /// of the small values, infinities, NaN, ordinary values.
    fn tricky_f16() -> impl Strategy<Value = u16> {
        prop_oneof![
            8 => prop::sample::select(vec![
                0x0000u16, 0x8000, 0x0001, 0x8001, 0x0002, 0x0003, 0x07ff, 0x0800, 0x0801, 0x8800,
                0x03ff, 0x0400, 0x7c00, 0xfc00, 0x3c00, 0x3c01,
            ]),
            1 => Just(0x7e00u16),
            1 => any::<u16>(),
        ]
    }

    fn tricky_f32() -> impl Strategy<Value = u32> {
        prop_oneof![
            8 => prop::sample::select(vec![
                0u32,
                0x8000_0000,
                1,
                (1e-12f32).to_bits(),
                (-1e-12f32).to_bits(),
                (2e-12f32).to_bits(),
                (1e-12f32).to_bits() + 1,
                0x2b80_0000,
                0x3800_0000,
                0x3800_0001,
                0x37ff_ffff,
                0x7f80_0000,
                0xff80_0000,
                1f32.to_bits(),
            ]),
            1 => Just(0x7fc0_0000u32),
            1 => any::<u32>(),
        ]
    }

    /// One const to show: its tail, whether its prefix differs, whether it goes through
    /// `near_duplicate` first (as the engine does) or only `observe`, whether it is returned.
    type Step = (Vec<u32>, bool, bool, bool);

    fn steps(fp16: bool) -> impl Strategy<Value = Vec<Step>> {
        let element = if fp16 {
            tricky_f16().prop_map(u32::from).boxed()
        } else {
            tricky_f32().boxed()
        };
        let step = (
            prop::collection::vec(element, 3),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.1),
        );
        prop::collection::vec(step, 1..60)
    }

    /// Shows the consts of `steps` in program order, comparing each verdict of `near_duplicate`
    /// with the reference's; returns the number of full comparisons.
    fn run_against_reference(fp16: bool, steps: &[Step]) -> u64 {
        let (mut d, mut w) = (Deduplicator::new(), weights());
        let shape = [100 + steps[0].0.len() as u64];
        for (i, (tail, other_prefix, near_first, returned)) in steps.iter().enumerate() {
            let data = if fp16 {
                let mut v = vec![f16::from_f32(0.5); 100];
                if *other_prefix {
                    v[0] = f16::from_f32(-0.0);
                }
                v.extend(tail.iter().map(|&b| f16::from_bits(b as u16)));
                TensorData::F16(v)
            } else {
                let mut v = vec![0.5f32; 100];
                if *other_prefix {
                    v[0] = -0.0;
                }
                v.extend(tail.iter().map(|&b| f32::from_bits(b)));
                TensorData::F32(v)
            };
            let path = at(i, false);
            let name = format!("c{i}");
            let bytes = data.as_le_bytes().into_owned();
            if *near_first {
                let probe = const_op(&name, blob_value(data.dtype(), &shape, 0));
                let expected = d
                    .near_duplicate_reference(&path, &probe, *returned, &bytes, &mut w)
                    .unwrap();
                let got = d
                    .near_duplicate(&path, &probe, *returned, || Ok(bytes.clone()), &mut w)
                    .unwrap();
                assert_eq!(got, expected, "step {i}");
                if got != Near::None {
                    continue;
                }
            }
            let op = stored_const(&mut w, &name, &data, &shape);
            d.observe(&path, &op, *returned, &mut w).unwrap();
        }
        d.comparisons()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// The indexed search gives the verdicts of comparing with every candidate in order.
        #[test]
        fn near_duplicate_verdicts_are_the_reference_ones_fp16(steps in steps(true)) {
            run_against_reference(true, &steps);
        }

        #[test]
        fn near_duplicate_verdicts_are_the_reference_ones_fp32(steps in steps(false)) {
            run_against_reference(false, &steps);
        }
    }

    #[test]
    fn near_duplicate_compares_a_const_with_few_of_many_candidates_of_one_key() {
        // A few thousand fp16 consts of one key (equal first 100 elements): random tails, tails
        // differing in the last element only, random small values, and repeats of earlier ones
        // within one step (close). Comparing with every candidate, as before, makes about
        // over a million comparisons here.
        let n = 3000usize;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut tails: Vec<Vec<u16>> = Vec::with_capacity(n);
        for i in 0..n {
            let tail: Vec<u16> = match i % 4 {
                0 => (0..28).map(|_| (next() % 0x7c00) as u16 | 0x0c00).collect(),
                1 => {
                    let mut t = vec![0x3c00u16; 28];
                    t[27] = (i as u16) | 0x4000;
                    t
                }
                // Small values (subnormals and the least normals, either sign): all in the
                // small sum, spread over thousands of tolerance steps.
                2 => (0..28)
                    .map(|_| (next() % 0x0801) as u16 | (next() as u16 & 0x8000))
                    .collect(),
                _ => {
                    let mut t = tails[(next() as usize) % i].clone();
                    let j = (next() % 28) as usize;
                    if t[j] & 0x7fff < 0x0800 {
                        t[j] += 1;
                    }
                    t
                }
            };
            tails.push(tail);
        }
        let steps: Vec<Step> = tails
            .into_iter()
            .map(|t| (t.into_iter().map(u32::from).collect(), false, true, false))
            .collect();
        let comparisons = run_against_reference(true, &steps);
        assert!(
            comparisons < 4 * n as u64,
            "{comparisons} comparisons for {n} consts"
        );
    }
}
