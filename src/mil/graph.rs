//! A read-only index of a MIL program: every op in program order with its path, and for every
//! value the places that use it (op inputs and block outputs).
//!
//! Building the index also validates the graph: every name an op or block output refers to must be
//! defined earlier in an enclosing scope. MIL blocks are topologically sorted, so this one check
//! rules out both dangling names and cycles.
//!
//! The index lives through the whole prune and holds a record per op, value and use: a model of
//! tens of thousands of tensors has hundreds of thousands of each (issue 18: memory bounded
//! whatever the tensor count). So records are small fixed-size rows of `u32`s, every name is one
//! range of a single text buffer, and a value's uses are a chain through one shared table; each
//! table stays in memory while it is small and past a MiB moves to an unlinked scratch file read
//! through a small cache ([`crate::spill_map::paged`]), and values are found by name through a
//! [`SpillMap`] of hashes. [`OpInfo`] is a view made on demand.
//!
//! A read of a scratch file that fails cannot be reported by the accessors that answer with plain
//! values (names, uses): it is kept as the index's [`Fault`], which the callers check before they
//! act on what they read (and which explains whatever failed after it).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::bytes::Bytes;
use smallvec::SmallVec;

use super::access::{op_bytes_at, OpPath};
use super::entries::Entries;
use super::fault::Fault;
use super::model::{LoadedModel, OpsInFile};
use super::names::NameList;
use super::op_file::{place_in, OpFile, OpPlace};
use super::ops::decode_op;
use crate::error::{Error, Result};
use crate::proto::mil::{argument::binding::Binding, Block, Operation, Program};
use crate::spill_map::paged::{PagedText, PagedVec, Record, Spill, TextSpan};
use crate::spill_map::SpillMap;

use super::value::{describe_type, same_declared_type, OperationExt};

/// One op of the program, as the index describes it (made on demand by [`GraphView::info`]).
/// Names are borrowed from the index while it holds them, and read back when it has moved them to
/// its scratch file.
#[derive(Debug, Clone)]
pub struct OpInfo<'g> {
    pub path: OpPath,
    /// The `name` attribute, or the first output's name when an op has none.
    pub name: Cow<'g, str>,
    pub op_type: &'g str,
    pub outputs: SmallVec<[Cow<'g, str>; 1]>,
}

/// A place that uses a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseSite {
    /// Input `param` of the op at index `op` of the index.
    Input { op: usize, param: Arc<str> },
    /// Returned by a block: the function body (`owner: None`) or a nested block of op `owner`.
    BlockOutput { owner: Option<usize> },
}

/// "No op" in the `u32` fields below.
const NONE: u32 = u32::MAX;

/// One op. `place` is the op's index in its function body, or [`NESTED`] plus where its path's
/// steps start in [`GraphView::nested_steps`] for an op inside a nested block.
#[derive(Debug, Clone, Copy, Default)]
struct OpRecord {
    name: TextSpan,
    op_type: u32,
    /// Index into [`GraphView::roots`]: the function and block specialization.
    root: u32,
    place: u32,
    /// The op's outputs: `outputs` entries of [`GraphView::op_outputs`] from `first_output`.
    first_output: u32,
    outputs: u32,
}

const NESTED: u32 = 1 << 31;

/// One value of a function. Values are numbered across functions, a function's values together
/// ([`FunctionValues`]).
#[derive(Debug, Clone, Copy)]
struct ValueRecord {
    name: TextSpan,
    /// The op defining it; [`NONE`] for a function input.
    producer: u32,
    /// While the index is built: the block that defined it last ([`Scope`]), [`NONE`] before.
    block: u32,
    /// The first and last of its uses in [`GraphView::uses`], [`NONE`] when unused.
    first_use: u32,
    last_use: u32,
}

/// What a value whose record could not be read answers (see [`Fault`]).
const NO_VALUE: ValueRecord = ValueRecord {
    name: TextSpan { start: 0, len: 0 },
    producer: NONE,
    block: NONE,
    first_use: NONE,
    last_use: NONE,
};

/// One use of a value, chained to the value's next use. `param` indexes
/// [`GraphView::texts`]; [`NONE`] marks a block output, whose `op` is the owner of the block
/// ([`NONE`] for the function body).
#[derive(Debug, Clone, Copy)]
struct UseRecord {
    op: u32,
    param: u32,
    next: u32,
}

/// Little-endian `u32`s, one per field.
fn put_u32s(out: &mut [u8], fields: &[u32]) {
    for (chunk, field) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&field.to_le_bytes());
    }
}

fn take_u32s<const N: usize>(bytes: &[u8]) -> [u32; N] {
    std::array::from_fn(|i| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes")))
}

impl Record for OpRecord {
    const SIZE: usize = 28;
    fn put(&self, out: &mut [u8]) {
        let r = self;
        let fields = [
            r.name.start,
            r.name.len,
            r.op_type,
            r.root,
            r.place,
            r.first_output,
            r.outputs,
        ];
        put_u32s(out, &fields);
    }
    fn take(bytes: &[u8]) -> Self {
        let [start, len, op_type, root, place, first_output, outputs] = take_u32s(bytes);
        OpRecord {
            name: TextSpan { start, len },
            op_type,
            root,
            place,
            first_output,
            outputs,
        }
    }
}

impl Record for ValueRecord {
    const SIZE: usize = 24;
    fn put(&self, out: &mut [u8]) {
        let r = self;
        let fields = [
            r.name.start,
            r.name.len,
            r.producer,
            r.block,
            r.first_use,
            r.last_use,
        ];
        put_u32s(out, &fields);
    }
    fn take(bytes: &[u8]) -> Self {
        let [start, len, producer, block, first_use, last_use] = take_u32s(bytes);
        ValueRecord {
            name: TextSpan { start, len },
            producer,
            block,
            first_use,
            last_use,
        }
    }
}

impl Record for UseRecord {
    const SIZE: usize = 12;
    fn put(&self, out: &mut [u8]) {
        put_u32s(out, &[self.op, self.param, self.next]);
    }
    fn take(bytes: &[u8]) -> Self {
        let [op, param, next] = take_u32s(bytes);
        UseRecord { op, param, next }
    }
}

/// The values of one function: `count` values numbered from `first`.
#[derive(Debug, Clone)]
struct FunctionValues {
    function: Arc<str>,
    first: u32,
    count: u32,
}

/// A function body: where its ops' paths start.
#[derive(Debug, Clone)]
struct Root {
    function: Arc<str>,
    specialization: Arc<str>,
}

/// Values found by name: the hash of a function's number and a name, seeded at random (so that
/// no input can choose collisions), gives a value number; a hit is confirmed by the name stored.
/// Two names of one hash are rare enough for the later one to wait in a plain map.
struct ByName {
    seed: u64,
    hashes: SpillMap<4>,
    collisions: HashMap<(u32, Box<str>), u32>,
    /// The hash bits kept: tests keep a few, so that most names collide.
    #[cfg(test)]
    key_mask: u64,
}

impl ByName {
    fn new(hashes: SpillMap<4>) -> Self {
        ByName {
            seed: RandomState::new().hash_one(0x0067_7261_7068_u64),
            hashes,
            collisions: HashMap::new(),
            #[cfg(test)]
            key_mask: u64::MAX,
        }
    }

    fn key(&self, table: u32, name: &str) -> u64 {
        let seed = self.seed ^ u64::from(table).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let key = xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), seed);
        #[cfg(test)]
        let key = key & self.key_mask;
        key
    }
}

pub struct GraphView {
    ops: PagedVec<OpRecord>,
    roots: Vec<Root>,
    /// The steps of each nested op's path (see [`OpPath::steps`]).
    /// For each nested op, where its record's `place` says: how many steps, then the steps.
    nested_steps: PagedVec<u32>,
    /// Per function: its values.
    values: Vec<FunctionValues>,
    /// Each function's number in `values`.
    tables: NameList,
    /// Every value, function after function.
    value_records: PagedVec<ValueRecord>,
    by_name: ByName,
    uses: PagedVec<UseRecord>,
    /// The outputs of every op, as value numbers.
    op_outputs: PagedVec<u32>,
    /// Every value name, and op names that are no output's.
    names: PagedText,
    /// Op types and parameter names, each once.
    texts: Vec<Arc<str>>,
    /// The stored bytes of every op inside a nested block, by op index, as read (slices of the
    /// file, no copy). Reaching one through the program decodes the op owning its block, whose
    /// bytes hold all of them: once per nested op, that made the work quadratic in a block's size.
    nested: HashMap<u32, Bytes>,
    /// Once [`GraphView::move_ops_to_file`] ran: where every op is read from.
    op_file: Option<OpFile>,
    fault: Fault,
    /// Where its tables, and those built from it, put their scratch files.
    scratch: Option<PathBuf>,
}

impl std::fmt::Debug for GraphView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphView")
            .field("ops", &self.ops.len())
            .field("values", &self.value_records.len())
            .field("uses", &self.uses.len())
            .finish_non_exhaustive()
    }
}

/// The state of one build: where each short text is, and the values in scope.
#[derive(Default)]
struct Builder {
    text_ids: HashMap<Arc<str>, u32>,
    scope: Scope,
}

/// An (op, parameter text) pair as one set key.
fn pair_key(op: u32, param: u32) -> u64 {
    u64::from(op) << 32 | u64::from(param)
}

fn too_many(what: &str) -> Error {
    Error::Graph(format!("the program has too many {what} to index"))
}

/// Where the ops of a block being indexed come from.
#[derive(Clone, Copy)]
enum BlockOps<'a> {
    /// Held: a nested block, or a body of a program built in memory. With `origin`, the ops are
    /// slices of a body's op read from the file at that offset.
    Held {
        ops: &'a [Bytes],
        origin: Option<(&'a Bytes, u64)>,
    },
    /// A body's own ops, still in the file ([`LoadedModel::read`]).
    InFile(&'a [OpPlace]),
}

impl BlockOps<'_> {
    fn len(&self) -> usize {
        match self {
            BlockOps::Held { ops, .. } => ops.len(),
            BlockOps::InFile(places) => places.len(),
        }
    }
}

impl GraphView {
    fn empty(spill: &Spill, by_name: ByName) -> Self {
        GraphView {
            ops: PagedVec::new(spill.clone()),
            roots: Vec::new(),
            nested_steps: PagedVec::new(spill.clone()),
            values: Vec::new(),
            tables: NameList::default(),
            value_records: PagedVec::new(spill.clone()),
            by_name,
            uses: PagedVec::new(spill.clone()),
            op_outputs: PagedVec::new(spill.clone()),
            names: PagedText::new(spill.clone()),
            texts: Vec::new(),
            nested: HashMap::new(),
            op_file: None,
            fault: Fault::default(),
            scratch: spill.dir.clone(),
        }
    }

    /// The index of a program whose ops it holds.
    pub fn build(program: &Program) -> Result<Self> {
        Self::build_with(program, None, None)
    }

    /// The index of a loaded model. The ops of a model read with [`LoadedModel::read`] are read
    /// from its file as they are indexed and stay there ([`GraphView::op_file`]); a model holding
    /// them is indexed as [`GraphView::build`] does.
    /// Its tables' scratch files go to `scratch` (the system temporary folder when `None`), as do
    /// those of the tables built from it ([`GraphView::scratch_dir`]).
    pub fn of_model(model: &mut LoadedModel, scratch: Option<&Path>) -> Result<Self> {
        let in_file = model.ops_in_file.take().map(|ops| (ops, model.path.clone()));
        Self::build_with(&model.program, in_file, scratch)
    }

    fn build_with(
        program: &Program,
        in_file: Option<(OpsInFile, PathBuf)>,
        scratch: Option<&Path>,
    ) -> Result<Self> {
        let by_name = ByName::new(SpillMap::new_in(scratch));
        Self::build_spilling(program, in_file, &Spill::in_dir(scratch), by_name)
    }

    /// Where the run's tables put their scratch files (the system temporary folder when `None`):
    /// a folder next to OUTPUT for `prune`, so that a temporary folder in memory (tmpfs) does not
    /// hold them.
    pub fn scratch_dir(&self) -> Option<&Path> {
        self.scratch.as_deref()
    }

    /// [`GraphView::build_with`], its tables moving to scratch files as `spill` says and its names
    /// found through `by_name` (tests make both tiny).
    fn build_spilling(
        program: &Program,
        in_file: Option<(OpsInFile, PathBuf)>,
        spill: &Spill,
        by_name: ByName,
    ) -> Result<Self> {
        let mut view = GraphView::empty(spill, by_name);
        let mut builder = Builder::default();
        let mut places = HashMap::new();
        if let Some((ops, label)) = in_file {
            let fault = view.fault.clone();
            view.op_file = Some(OpFile::open(ops.file, label, ops.hasher, fault, spill));
            places = ops
                .bodies
                .into_iter()
                .map(|b| ((b.function, b.specialization), b.ops))
                .collect();
        }
        for (fname, function) in &program.functions {
            let function_name: Arc<str> = Arc::from(fname.as_str());
            view.values.push(FunctionValues {
                function: function_name.clone(),
                first: view.value_records.len() as u32,
                count: 0,
            });
            let table = view.values.len() - 1;
            view.tables.number(&function_name);
            for (spec, block) in &function.block_specializations {
                // Nothing of another specialization is visible.
                builder.scope.open.clear();
                builder.scope.enter()?;
                for input in &function.inputs {
                    let id = view.intern(table, &input.name)?;
                    view.define(&builder, id, &input.name, fname, None)?;
                }
                let specialization = view.text(&mut builder, spec)?;
                view.roots.push(Root {
                    function: function_name.clone(),
                    specialization: view.texts[specialization as usize].clone(),
                });
                let root = u32::try_from(view.roots.len() - 1).map_err(|_| too_many("functions"))?;
                let in_file: Vec<OpPlace>;
                let ops = if view.op_file.is_some() {
                    // A body with no ops has no places.
                    in_file = places.remove(&(fname.clone(), spec.clone())).unwrap_or_default();
                    BlockOps::InFile(&in_file)
                } else {
                    BlockOps::Held {
                        ops: &block.operations,
                        origin: None,
                    }
                };
                view.walk_block(block, ops, (root, &[]), table, None, &mut builder)?;
            }
        }
        if let Some(file) = &mut view.op_file {
            file.shrink_to_fit();
        }
        view.ops.shrink_to_fit();
        view.uses.shrink_to_fit();
        view.op_outputs.shrink_to_fit();
        view.names.shrink_to_fit();
        view.nested_steps.shrink_to_fit();
        view.value_records.shrink_to_fit();
        Ok(view)
    }

    /// The id of a short text, entered if new.
    fn text(&mut self, builder: &mut Builder, text: &str) -> Result<u32> {
        if let Some(&id) = builder.text_ids.get(text) {
            return Ok(id);
        }
        let id = u32::try_from(self.texts.len())
            .ok()
            .filter(|&id| id != NONE)
            .ok_or_else(|| too_many("op types and parameter names"))?;
        let text: Arc<str> = Arc::from(text);
        self.texts.push(text.clone());
        builder.text_ids.insert(text, id);
        Ok(id)
    }

    /// Appends `text` to the name buffer.
    fn store_name(&mut self, text: &str) -> Result<TextSpan> {
        self.names.push(text)?.ok_or_else(|| too_many("names"))
    }

    /// What `read` gave, or `otherwise` once the error it met is kept as the index's [`Fault`].
    fn or_fault<T>(&self, read: Result<T>, otherwise: T) -> T {
        read.unwrap_or_else(|e| {
            self.fault.record(e);
            otherwise
        })
    }

    fn name_of(&self, span: TextSpan) -> Cow<'_, str> {
        self.or_fault(self.names.get(span), Cow::Borrowed(""))
    }

    fn op_record(&self, index: usize) -> Option<OpRecord> {
        self.or_fault(self.ops.get(index), Some(OpRecord::default()))
    }

    fn value_record(&self, id: u32) -> ValueRecord {
        self.or_fault(self.value_records.get(id as usize), None)
            .unwrap_or(NO_VALUE)
    }

    /// The value `name` of function `table`, and whether its hash is taken (by it or another).
    fn lookup(&self, table: usize, name: &str) -> Result<(Option<u32>, bool)> {
        let key = self.by_name.key(table as u32, name);
        let Some(found) = self.by_name.hashes.get(key)? else {
            return Ok((None, false));
        };
        let id = u32::from_le_bytes(found);
        let values = &self.values[table];
        let in_table = id.checked_sub(values.first).is_some_and(|i| i < values.count);
        if in_table {
            let record = self.value_records.get(id as usize)?.unwrap_or(NO_VALUE);
            if self.names.get(record.name)? == name {
                return Ok((Some(id), true));
            }
        }
        let other = self.by_name.collisions.get(&(table as u32, Box::from(name)));
        Ok((other.copied(), true))
    }

    fn index_of(&self, table: usize, name: &str) -> Result<Option<u32>> {
        Ok(self.lookup(table, name)?.0)
    }

    /// The value `name` of function `table`, entered with no producer or uses if new. A name
    /// defined again in a sibling block shares the first entry.
    fn intern(&mut self, table: usize, name: &str) -> Result<u32> {
        let (found, taken) = self.lookup(table, name)?;
        if let Some(i) = found {
            return Ok(i);
        }
        let function = &self.values[table].function;
        let index = u32::try_from(self.value_records.len())
            .ok()
            .filter(|&i| i != NONE)
            .ok_or_else(|| Error::Graph(format!("function '{function}' has too many values")))?;
        let span = self.store_name(name)?;
        self.value_records.push(ValueRecord {
            name: span,
            ..NO_VALUE
        })?;
        self.values[table].count += 1;
        let key = self.by_name.key(table as u32, name);
        if taken {
            self.by_name
                .collisions
                .insert((table as u32, Box::from(name)), index);
        } else {
            self.by_name.hashes.insert_new(key, index.to_le_bytes())?;
        }
        Ok(index)
    }

    /// Indexes the ops of `block`, whose ops' paths start at `(root, prefix)` (no prefix in a
    /// function body).
    fn walk_block(
        &mut self,
        block: &Block,
        ops: BlockOps<'_>,
        (root, prefix): (u32, &[usize]),
        table: usize,
        owner: Option<u32>,
        builder: &mut Builder,
    ) -> Result<()> {
        let function = self.values[table].function.clone();
        let function = &*function;
        builder.scope.enter()?;
        for input in &block.inputs {
            let id = self.intern(table, &input.name)?;
            self.define(builder, id, &input.name, function, None)?;
        }
        for i in 0..ops.len() {
            let (bytes, place) = self.block_op(ops, i)?;
            let bytes = &bytes;
            // Checked at load (`decode_model`, `split_model`); decoded here for the index, then
            // dropped.
            let op = decode_op(bytes).map_err(|e| {
                Error::Graph(format!(
                    "op {i} of a block of function '{function}' does not decode: {e}"
                ))
            })?;
            let op = &op;
            let op_id = u32::try_from(self.ops.len())
                .ok()
                .filter(|&id| id != NONE)
                .ok_or_else(|| Error::Graph(format!("function '{function}' has too many ops")))?;
            let mut steps: SmallVec<[usize; 5]> = prefix.iter().copied().collect();
            steps.push(i);
            let in_place = if owner.is_some() {
                if self.op_file.is_none() {
                    self.nested.insert(op_id, bytes.clone());
                }
                let at = u32::try_from(self.nested_steps.len())
                    .ok()
                    .filter(|&at| at < NESTED)
                    .ok_or_else(|| too_many("nested ops"))?;
                let word = |n: usize| u32::try_from(n).map_err(|_| too_many("nested ops"));
                self.nested_steps.push(word(steps.len())?)?;
                for &step in &steps {
                    self.nested_steps.push(word(step)?)?;
                }
                NESTED | at
            } else {
                u32::try_from(i)
                    .ok()
                    .filter(|&i| i < NESTED)
                    .ok_or_else(|| too_many("ops"))?
            };
            let first_output = u32::try_from(self.op_outputs.len()).map_err(|_| too_many("outputs"))?;
            let mut output_ids: SmallVec<[(u32, TextSpan); 2]> = SmallVec::new();
            for output in &op.outputs {
                let id = self.intern(table, &output.name)?;
                self.op_outputs.push(id)?;
                let span = self.value_records.get(id as usize)?.unwrap_or(NO_VALUE).name;
                output_ids.push((id, span));
            }
            // An output's span holds the output's name.
            let name = match op.name() {
                Some(n) => match (output_ids.iter().zip(&op.outputs)).find(|(_, o)| o.name == n) {
                    Some((&(_, shared), _)) => shared,
                    None => self.store_name(n)?,
                },
                None => output_ids.first().map(|&(_, span)| span).unwrap_or_default(),
            };
            let op_name: &str = match op.name() {
                Some(n) => n,
                None => op.outputs.first().map_or("", |o| o.name.as_str()),
            };
            let outputs = u32::try_from(op.outputs.len()).map_err(|_| too_many("outputs"))?;
            check_op(op, op_name, function)?;
            for (param, arg) in op.inputs.pairs() {
                for binding in &arg.arguments {
                    if let Some(Binding::Name(value)) = &binding.binding {
                        let Some(id) = self.visible(builder, table, value)? else {
                            return Err(Error::Graph(format!(
                                "op '{op_name}' ({}) input '{param}' refers to '{value}', which is not \
                                 defined before it in function '{function}'",
                                op.r#type
                            )));
                        };
                        let param = self.text(builder, param)?;
                        self.add_use(id, op_id, param)?;
                    }
                }
            }
            let op_type = self.text(builder, &op.r#type)?;
            self.ops.push(OpRecord {
                name,
                op_type,
                root,
                place: in_place,
                first_output,
                outputs,
            })?;
            if let (Some(file), Some(place)) = (&mut self.op_file, place) {
                let root = &self.roots[root as usize];
                let body = owner.is_none().then_some((&root.function, &root.specialization));
                file.enter(place, body)?;
            }
            // Nested ops are slices of the body's op that holds them: where that op was read.
            let origin = match ops {
                BlockOps::InFile(_) => place.map(|p| (bytes, p.offset)),
                BlockOps::Held { origin, .. } => origin,
            };
            for (b, nested) in op.blocks.iter().enumerate() {
                let mut nested_prefix = steps.clone();
                nested_prefix.push(b);
                let ops = BlockOps::Held {
                    ops: &nested.operations,
                    origin,
                };
                self.walk_block(nested, ops, (root, &nested_prefix), table, Some(op_id), builder)?;
            }
            for (&(id, _), output) in output_ids.iter().zip(&op.outputs) {
                self.define(builder, id, &output.name, function, Some(op_id))?;
            }
        }
        for out in &block.outputs {
            let Some(id) = self.visible(builder, table, out)? else {
                return Err(Error::Graph(format!(
                    "block output '{out}' in function '{function}' is not defined"
                )));
            };
            self.add_use(id, owner.unwrap_or(NONE), NONE)?;
        }
        builder.scope.open.pop();
        Ok(())
    }

    /// The value `name` of function `table`, if it is defined in a block open in `builder`.
    fn visible(&self, builder: &Builder, table: usize, name: &str) -> Result<Option<u32>> {
        let Some(id) = self.index_of(table, name)? else {
            return Ok(None);
        };
        let record = self.value_records.get(id as usize)?.unwrap_or(NO_VALUE);
        Ok(builder.scope.is_open(record.block).then_some(id))
    }

    /// Defines value `id` (named `name`) in the innermost block open in `builder`, produced by op
    /// `producer` (none for an input); refused if it is visible there already.
    fn define(
        &mut self,
        builder: &Builder,
        id: u32,
        name: &str,
        function: &str,
        producer: Option<u32>,
    ) -> Result<()> {
        let mut record = self.value_records.get(id as usize)?.unwrap_or(NO_VALUE);
        if let Some(op) = producer {
            record.producer = op;
        }
        if builder.scope.is_open(record.block) {
            return Err(Error::Graph(format!(
                "value '{name}' is defined twice in function '{function}'"
            )));
        }
        record.block = builder.scope.innermost();
        self.value_records.set(id as usize, record)
    }

    /// Op `i` of `ops`, and its place in the file when it has one there.
    fn block_op(&self, ops: BlockOps<'_>, i: usize) -> Result<(Bytes, Option<OpPlace>)> {
        match ops {
            BlockOps::InFile(places) => {
                let file = (self.op_file.as_ref())
                    .ok_or_else(|| Error::Graph("ops in a file came without it".into()))?;
                let bytes = file.read_place(places[i]).ok_or_else(|| file.changed_error())?;
                Ok((bytes, Some(places[i])))
            }
            BlockOps::Held { ops, origin } => {
                let bytes = ops[i].clone();
                let place = match (origin, &self.op_file) {
                    (Some((outer, offset)), Some(file)) => {
                        let (at, len) = place_in(outer, &bytes)
                            .ok_or_else(|| Error::Graph("a nested op is not inside its owner".into()))?;
                        Some(OpPlace {
                            offset: offset + at,
                            len,
                            check: file.check(&bytes),
                        })
                    }
                    _ => None,
                };
                Ok((bytes, place))
            }
        }
    }

    /// Chains a use of value `id` after its last: by op `op` as input `param` (a text id), or,
    /// with `param` [`NONE`], as the output of a block owned by `op`.
    fn add_use(&mut self, id: u32, op: u32, param: u32) -> Result<()> {
        let index = u32::try_from(self.uses.len())
            .ok()
            .filter(|&i| i != NONE)
            .ok_or_else(|| too_many("uses of values"))?;
        self.uses.push(UseRecord {
            op,
            param,
            next: NONE,
        })?;
        let mut entry = self.value_records.get(id as usize)?.unwrap_or(NO_VALUE);
        match entry.last_use {
            NONE => entry.first_use = index,
            last => {
                let mut previous = (self.uses.get(last as usize)?)
                    .ok_or_else(|| Error::Graph("a use chain ends past the last use".into()))?;
                previous.next = index;
                self.uses.set(last as usize, previous)?;
            }
        }
        entry.last_use = index;
        self.value_records.set(id as usize, entry)
    }

    fn value(&self, function: &str, value: &str) -> Option<ValueRecord> {
        let table = self.tables.find(function)?;
        let id = self.or_fault(self.index_of(table, value), None)?;
        Some(self.value_record(id))
    }

    /// The number of ops, nested ones included.
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    /// Op `index` (see [`GraphView::get`]). Panics past the last op: indices come from the index.
    pub fn info(&self, index: usize) -> OpInfo<'_> {
        self.get(index).expect("an op index from this graph")
    }

    /// Op `index`: its path, name, type and outputs.
    pub fn get(&self, index: usize) -> Option<OpInfo<'_>> {
        let record = self.op_record(index)?;
        Some(OpInfo {
            path: self.path_of(&record),
            name: self.name_of(record.name),
            op_type: self.text_at(record.op_type),
            outputs: self.outputs_of(&record).collect(),
        })
    }

    /// Every op in program order, with its index.
    pub fn infos(&self) -> impl Iterator<Item = (usize, OpInfo<'_>)> + '_ {
        (0..self.ops.len()).map(|i| (i, self.info(i)))
    }

    /// The name of op `index` (see [`OpInfo::name`]).
    pub fn name(&self, index: usize) -> Cow<'_, str> {
        self.name_of(self.info_record(index).name)
    }

    /// The type of op `index`.
    pub fn op_type(&self, index: usize) -> &str {
        self.text_at(self.info_record(index).op_type)
    }

    /// The path of op `index`.
    pub fn path(&self, index: usize) -> OpPath {
        self.path_of(&self.info_record(index))
    }

    /// The function of op `index`.
    pub fn function(&self, index: usize) -> &Arc<str> {
        &self.roots[self.info_record(index).root as usize].function
    }

    /// The record of op `index`. Panics past the last op: indices come from the index.
    fn info_record(&self, index: usize) -> OpRecord {
        self.op_record(index).expect("an op index from this graph")
    }

    fn text_at(&self, id: u32) -> &str {
        self.texts.get(id as usize).map_or("", |t| t)
    }

    fn path_of(&self, record: &OpRecord) -> OpPath {
        let root = &self.roots[record.root as usize];
        let steps = if record.place & NESTED == 0 {
            SmallVec::from_elem(record.place as usize, 1)
        } else {
            let at = (record.place & !NESTED) as usize;
            let read = || -> Result<SmallVec<[usize; 1]>> {
                let len = self.nested_steps.get(at)?.unwrap_or(0) as usize;
                (at + 1..at + 1 + len)
                    .map(|k| Ok(self.nested_steps.get(k)?.unwrap_or(0) as usize))
                    .collect()
            };
            self.or_fault(read(), SmallVec::new())
        };
        OpPath {
            function: root.function.clone(),
            specialization: root.specialization.clone(),
            steps,
        }
    }

    /// The value numbers of `record`'s outputs.
    fn output_ids<'g>(&'g self, record: &OpRecord) -> impl Iterator<Item = u32> + 'g {
        let range = record.first_output as usize..(record.first_output + record.outputs) as usize;
        range.map_while(|o| self.or_fault(self.op_outputs.get(o), None))
    }

    fn outputs_of<'g>(&'g self, record: &OpRecord) -> impl Iterator<Item = Cow<'g, str>> + 'g {
        self.output_ids(record)
            .map(move |id| self.name_of(self.value_record(id).name))
    }

    /// Every use of `value` in `function`, in program order.
    pub fn uses(&self, function: &str, value: &str) -> Vec<UseSite> {
        match self.value(function, value) {
            Some(entry) => self.sites(&entry),
            None => Vec::new(),
        }
    }

    /// [`GraphView::uses`] of `value`, an output of op `index`, found among the op's outputs
    /// rather than by name: the walk asks this of every op, and the names of a large model are
    /// in a scratch file.
    pub fn output_uses(&self, index: usize, value: &str) -> Vec<UseSite> {
        let record = self.info_record(index);
        for id in self.output_ids(&record) {
            let entry = self.value_record(id);
            if self.name_of(entry.name) == value {
                return self.sites(&entry);
            }
        }
        self.uses(self.function(index), value)
    }

    fn sites(&self, entry: &ValueRecord) -> Vec<UseSite> {
        self.use_chain(entry)
            .map(|u| match u.param {
                NONE => UseSite::BlockOutput {
                    owner: (u.op != NONE).then_some(u.op as usize),
                },
                param => UseSite::Input {
                    op: u.op as usize,
                    param: self.texts[param as usize].clone(),
                },
            })
            .collect()
    }

    fn use_chain<'g>(&'g self, entry: &ValueRecord) -> impl Iterator<Item = UseRecord> + 'g {
        let mut next = entry.first_use;
        std::iter::from_fn(move || {
            let record = self.or_fault(self.uses.get(next as usize), None)?;
            next = record.next;
            Some(record)
        })
    }

    /// The ops that take the output(s) of op `index` as an input, without repeats: output by
    /// output, each in program order.
    pub fn consumers(&self, index: usize) -> Vec<(usize, &str)> {
        let mut out = Vec::new();
        self.for_each_consumer(index, |op, param| out.push((op, param)));
        out
    }

    /// Calls `each` with every pair of [`GraphView::consumers`], in its order, without collecting
    /// them: a weight read through millions of distinct inputs is walked (`inspect` held 389 MB
    /// of pairs for 2,000,000 of them). Repeats are found by a scan among the first few pairs, then
    /// by a set of (op, parameter) numbers bounded in memory.
    pub fn for_each_consumer<'g>(&'g self, index: usize, mut each: impl FnMut(usize, &'g str)) {
        // A scan of the first pairs finds repeats among a few consumers; a weight read by thousands
        // of ops made that quadratic (200,000 readers of one const: 13.7 s), so past a few, a set.
        const SCANNED: usize = 16;
        let mut first: Vec<(u32, u32)> = Vec::new();
        let mut seen: Option<SpillMap<1>> = None;
        for pair in self.input_uses(index) {
            let new = match &mut seen {
                None if first.len() < SCANNED => {
                    let new = !first.contains(&pair);
                    if new {
                        first.push(pair);
                    }
                    new
                }
                seen => {
                    let set = seen.get_or_insert_with(|| {
                        let mut set = SpillMap::new_in(self.scratch.as_deref());
                        for &(op, param) in &first {
                            self.or_fault(set.insert_new(pair_key(op, param), [1]), ());
                        }
                        set
                    });
                    // A failed read or write of the set's files is recorded: the caller's check
                    // of the fault fails the run.
                    self.or_fault(set.insert_if_new(pair_key(pair.0, pair.1), [1]), false)
                }
            };
            if new {
                each(pair.0 as usize, &self.texts[pair.1 as usize]);
            }
        }
    }

    /// Every use of op `index`'s outputs as an op input, `(op, param)`: output by output, each
    /// in program order, repeats included. Read as it goes: a weight read through a million
    /// distinct inputs is walked, not collected (a red-team model of 10 ops of 100,000 inputs
    /// each held 130 MB of pairs while planning one const).
    pub fn consumer_uses(&self, index: usize) -> impl Iterator<Item = (usize, &str)> + '_ {
        self.input_uses(index)
            .map(|(op, param)| (op as usize, &*self.texts[param as usize]))
    }

    /// [`GraphView::consumer_uses`] as (op, parameter text number) pairs.
    fn input_uses(&self, index: usize) -> impl Iterator<Item = (u32, u32)> + '_ {
        let record = self.info_record(index);
        self.output_ids(&record).flat_map(move |value| {
            self.use_chain(&self.value_record(value))
                .filter(|site| site.param != NONE)
                .map(|site| (site.op, site.param))
        })
    }

    /// The ops that take the output(s) of op `index` as an input, without repeats, in the order
    /// of [`GraphView::consumer_uses`]. An op's uses of a value are recorded together, so most
    /// repeats are the previous op; the set of those seen holds one word per op.
    pub fn consumer_ops(&self, index: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (op, _) in self.consumer_uses(index) {
            if out.last() != Some(&op) && seen.insert(op) {
                out.push(op);
            }
        }
        out
    }

    /// The index of the op producing `value` in `function`.
    pub fn producer(&self, function: &str, value: &str) -> Option<usize> {
        let entry = self.value(function, value)?;
        (entry.producer != NONE).then_some(entry.producer as usize)
    }

    /// The stored bytes of op `index` (a cheap handle). A top-level op is read from `program`; an
    /// op inside a nested block as it was when the index was built (reaching it through `program`
    /// would decode the op owning its block). The same thing while the program is unchanged: the
    /// engine's walk stores the ops it changes only at the end (`crate::mil::spill`), so every op
    /// it reads, earlier ones included, is the op as read.
    pub fn op_bytes(&self, program: &Program, index: usize) -> Option<Bytes> {
        if let Some(file) = &self.op_file {
            return file.read(index);
        }
        let record = self.op_record(index)?;
        if record.place & NESTED != 0 {
            return self.nested.get(&u32::try_from(index).ok()?).cloned();
        }
        op_bytes_at(program, &self.path_of(&record))
    }

    /// How many bytes op `index` is stored as, where that is known without reading it (ops read
    /// back from the model file); `None` otherwise.
    pub fn op_len(&self, index: usize) -> Option<usize> {
        Some(self.op_file.as_ref()?.len_of(index)? as usize)
    }

    /// The file the ops were moved to, taken out of the index (which then reads ops from the
    /// program again): the engine keeps it past the index to fill the program back.
    pub fn take_op_file(&mut self) -> Option<OpFile> {
        self.op_file.take()
    }

    /// The file the ops were moved to, if they were.
    pub fn op_file(&self) -> Option<&OpFile> {
        self.op_file.as_ref()
    }

    /// Where a failed read of the index's scratch files (or of the op file's places) is kept: an
    /// accessor that met one answered as if the op, value or use were empty, so callers check it
    /// before they act on what they read, and prefer it to whatever failed after it.
    pub fn fault(&self) -> Fault {
        self.fault.clone()
    }

    /// Whether every table is in memory (small models).
    #[cfg(test)]
    fn held_whole(&self) -> bool {
        let tables = [
            self.ops.on_disk(),
            self.uses.on_disk(),
            self.value_records.on_disk(),
        ];
        !tables.contains(&true) && !self.op_outputs.on_disk() && !self.names.on_disk()
    }

    /// Op `index`, decoded (see [`GraphView::op_bytes`]).
    pub fn op(&self, program: &Program, index: usize) -> Option<Operation> {
        decode_op(&self.op_bytes(program, index)?).ok()
    }
}

/// What every reader of the program relies on and nothing else checks: every op has a type and
/// every output a declared type, and a `const` is one typed output holding its value in `val`, of
/// exactly that type. A const whose `val` disagrees with its output would be pruned (or listed)
/// under one type and consumed under the other; one without `val` has no data to carry over.
fn check_op(op: &Operation, name: &str, function: &str) -> Result<()> {
    if op.r#type.is_empty() {
        return Err(Error::Graph(format!(
            "op '{name}' in function '{function}' has no op type"
        )));
    }
    for out in &op.outputs {
        if out.r#type.as_ref().and_then(|t| t.r#type.as_ref()).is_none() {
            return Err(Error::Graph(format!(
                "op '{name}' ({}) in function '{function}': output '{}' has no declared type",
                op.r#type, out.name
            )));
        }
    }
    if !op.is_const() {
        return Ok(());
    }
    if let Some(param) = op.inputs.keys().next() {
        return Err(Error::tensor(
            name,
            format!("const op has an input ('{param}'); its value must be its 'val' attribute"),
        ));
    }
    let [out] = op.outputs.as_slice() else {
        return Err(Error::tensor(
            name,
            format!("const op has {} outputs, expected 1", op.outputs.len()),
        ));
    };
    let Some(val) = op.attributes.lookup("val") else {
        return Err(Error::tensor(name, "const op has no 'val' attribute"));
    };
    if val.value.is_none() {
        return Err(Error::tensor(
            name,
            "const 'val' holds neither an immediate value nor a weight.bin reference",
        ));
    }
    if !same_declared_type(val.r#type.as_ref(), out.r#type.as_ref()) {
        return Err(Error::tensor(
            name,
            format!(
                "const 'val' is {} but the op's output '{}' is declared {}",
                describe_type(val.r#type.as_ref()),
                out.name,
                describe_type(out.r#type.as_ref())
            ),
        ));
    }
    Ok(())
}

/// The blocks open at a point of a function, innermost last. Each block entered gets a new
/// number, and each value records the block that defined it ([`ValueRecord::block`]): a value is
/// visible where that block is still open. A set of the values in scope held every value of a
/// function body, in memory, while the index was built (issue 18).
#[derive(Default)]
struct Scope {
    /// Ascending: a block opens inside the one before it.
    open: Vec<u32>,
    next: u32,
}

impl Scope {
    fn enter(&mut self) -> Result<()> {
        let block = self.next;
        self.next = (block.checked_add(1))
            .filter(|&n| n != NONE)
            .ok_or_else(|| too_many("blocks"))?;
        self.open.push(block);
        Ok(())
    }

    fn is_open(&self, block: u32) -> bool {
        block != NONE && self.open.binary_search(&block).is_ok()
    }

    fn innermost(&self) -> u32 {
        self.open.last().copied().unwrap_or(NONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ScalarType;
    use crate::mil::build::const_op;
    use crate::mil::value::{blob_value, immediate_value, tensor_value_type};
    use crate::tensor::TensorData;

    fn refusal(op: &Operation) -> String {
        check_op(op, "w", "main").unwrap_err().to_string()
    }

    #[test]
    fn consts_must_hold_a_val_of_their_output_type() {
        let good = const_op("w", blob_value(ScalarType::Float16, &[2, 3], 64));
        check_op(&good, "w", "main").unwrap();
        let scalar = const_op("s", immediate_value(&TensorData::I32(vec![1]), &[]));
        check_op(&scalar, "s", "main").unwrap();

        let mut other_dtype = good.clone();
        other_dtype.outputs[0].r#type = Some(tensor_value_type(ScalarType::Float32, &[2, 3]));
        assert_eq!(
            refusal(&other_dtype),
            "tensor 'w': const 'val' is fp16 [2, 3] but the op's output 'w' is declared fp32 [2, 3]"
        );
        let mut other_shape = good.clone();
        other_shape.outputs[0].r#type = Some(tensor_value_type(ScalarType::Float16, &[3, 2]));
        assert!(refusal(&other_shape).ends_with("declared fp16 [3, 2]"));

        let mut no_val = good.clone();
        no_val.attributes.take("val");
        assert_eq!(refusal(&no_val), "tensor 'w': const op has no 'val' attribute");
        let mut empty_val = good.clone();
        empty_val.attributes.lookup_mut("val").unwrap().value = None;
        assert!(refusal(&empty_val).contains("neither an immediate value nor a weight.bin reference"));
        let mut untyped_val = good.clone();
        untyped_val.attributes.lookup_mut("val").unwrap().r#type = None;
        assert!(refusal(&untyped_val).contains("const 'val' is no type but"));
    }

    /// main(x): `split` names its op apart from its two outputs; `cond` holds two sibling blocks
    /// that each define `t` (and return it); `last` reads `b`, and the function returns `a`.
    fn sibling_blocks() -> Program {
        use crate::mil::build::{bind_name, main_program, op};
        use crate::mil::ops::encode_ops;
        use crate::proto::mil::NamedValueType;
        use std::collections::BTreeMap;
        let t = tensor_value_type(ScalarType::Float32, &[2]);
        let typed = |name: &str| (name.to_owned(), t.clone());
        let unary = |op_type: &str, name: &str, input: &str, out: &str| {
            op(
                op_type,
                name,
                BTreeMap::from([("x".into(), bind_name(input))]),
                BTreeMap::new(),
                vec![typed(out)],
            )
        };
        let split = op(
            "split",
            "splitter",
            BTreeMap::from([("x".into(), bind_name("x"))]),
            BTreeMap::new(),
            vec![typed("a"), typed("b")],
        );
        let branch = |op_type: &str| Block {
            outputs: vec!["t".into()],
            operations: encode_ops([unary(op_type, "t", "a", "t")]),
            ..Default::default()
        };
        let mut cond = unary("cond", "c", "b", "c");
        cond.blocks = vec![branch("relu"), branch("sigmoid")];
        let last = unary("tanh", "last", "b", "last");
        let block = Block {
            outputs: vec!["a".into()],
            operations: encode_ops([split, cond, last]),
            ..Default::default()
        };
        let x = NamedValueType {
            name: "x".into(),
            r#type: Some(t),
        };
        main_program(vec![x], "CoreML7", block)
    }

    /// main(x): `split` into `a` and `b`, then `n` ops each reading the previous one's output
    /// and `b` (every fifth also `x`); every hundredth holds two sibling blocks, each defining `t`.
    fn chain(n: usize) -> Program {
        use crate::mil::build::{bind_name, main_program, op};
        use crate::mil::ops::encode_ops;
        use crate::proto::mil::NamedValueType;
        use std::collections::BTreeMap;
        let t = tensor_value_type(ScalarType::Float32, &[2]);
        let mut ops = vec![op(
            "split",
            "s",
            BTreeMap::from([("x".into(), bind_name("x"))]),
            BTreeMap::new(),
            vec![("a".into(), t.clone()), ("b".into(), t.clone())],
        )];
        let mut previous = "a".to_owned();
        for i in 0..n {
            let mut inputs =
                BTreeMap::from([("x".into(), bind_name(&previous)), ("y".into(), bind_name("b"))]);
            if i % 5 == 0 {
                inputs.insert("z".into(), bind_name("x"));
            }
            let mut next = op(
                "add",
                &format!("op_{i}"),
                inputs,
                BTreeMap::new(),
                vec![(format!("v{i}"), t.clone())],
            );
            if i % 100 == 50 {
                let branch = |op_type: &str| Block {
                    outputs: vec!["t".into()],
                    operations: encode_ops([op(
                        op_type,
                        "t",
                        BTreeMap::from([("x".into(), bind_name(&previous))]),
                        BTreeMap::new(),
                        vec![("t".into(), t.clone())],
                    )]),
                    ..Default::default()
                };
                next.blocks = vec![branch("relu"), branch("sigmoid")];
            }
            ops.push(next);
            previous = format!("v{i}");
        }
        let block = Block {
            outputs: vec![previous],
            operations: encode_ops(ops),
            ..Default::default()
        };
        let x = NamedValueType {
            name: "x".into(),
            r#type: Some(t),
        };
        main_program(vec![x], "CoreML7", block)
    }

    /// Every answer of `spilled` is `held`'s.
    fn same_answers(held: &GraphView, spilled: &GraphView, program: &Program) {
        assert_eq!(held.op_count(), spilled.op_count());
        let mut names = vec!["x".to_owned(), "nothing".to_owned(), "t".to_owned()];
        for (i, info) in held.infos() {
            let other = spilled.info(i);
            assert_eq!(info.name, other.name, "op {i}");
            assert_eq!(info.op_type, other.op_type, "op {i}");
            assert_eq!(info.outputs, other.outputs, "op {i}");
            assert_eq!(info.path, other.path, "op {i}");
            assert_eq!(held.name(i), spilled.name(i));
            assert_eq!(held.function(i), spilled.function(i));
            assert_eq!(held.consumers(i), spilled.consumers(i), "op {i}");
            assert_eq!(held.op_bytes(program, i), spilled.op_bytes(program, i), "op {i}");
            assert_eq!(held.op_len(i), spilled.op_len(i), "op {i}");
            for output in &info.outputs {
                assert_eq!(spilled.output_uses(i, output), held.uses("main", output));
                names.push(output.to_string());
            }
        }
        for name in &names {
            assert_eq!(
                held.producer("main", name),
                spilled.producer("main", name),
                "{name}"
            );
            assert_eq!(held.uses("main", name), spilled.uses("main", name), "{name}");
        }
        assert!(spilled.get(held.op_count()).is_none());
        assert!(spilled.fault().take().is_none());
    }

    /// Tables of a few records in memory and a cache of two pages; names found through runs of
    /// four hashes.
    fn tiny() -> (Spill, ByName) {
        let spill = Spill {
            dir: None,
            memory_limit: 64,
            cache_pages: 2,
        };
        (spill, ByName::new(SpillMap::with_limit(None, 4)))
    }

    #[test]
    fn a_nested_block_cannot_define_a_value_visible_in_it_and_its_values_stay_in_it() {
        use crate::mil::ops::encode_op;
        let body = |p: &mut Program| {
            let main = p.functions.get_mut("main").unwrap();
            main.block_specializations.get_mut("CoreML7").unwrap().clone()
        };
        let set_body = |p: &mut Program, block: Block| {
            let main = p.functions.get_mut("main").unwrap();
            *main.block_specializations.get_mut("CoreML7").unwrap() = block;
        };
        let refusals = |p: &Program| {
            let held = GraphView::build(p).unwrap_err().to_string();
            let (spill, by_name) = tiny();
            let spilled = GraphView::build_spilling(p, None, &spill, by_name).unwrap_err();
            assert_eq!(held, spilled.to_string());
            held
        };
        // The first branch of `cond` defines `b`, which the body defined before it.
        let mut program = sibling_blocks();
        let mut block = body(&mut program);
        let mut cond = decode_op(&block.operations[1]).unwrap();
        let mut t = decode_op(&cond.blocks[0].operations[0]).unwrap();
        t.outputs[0].name = "b".into();
        cond.blocks[0].operations[0] = encode_op(&t);
        cond.blocks[0].outputs = vec!["b".into()];
        block.operations[1] = encode_op(&cond);
        set_body(&mut program, block);
        let e = refusals(&program);
        assert!(e.contains("value 'b' is defined twice in function 'main'"), "{e}");

        // `last` reads `t`, defined only inside the branches.
        let mut program = sibling_blocks();
        let mut block = body(&mut program);
        let mut last = decode_op(&block.operations[2]).unwrap();
        last.inputs.set("x".into(), crate::mil::build::bind_name("t"));
        block.operations[2] = encode_op(&last);
        set_body(&mut program, block);
        let e = refusals(&program);
        assert!(e.contains("refers to 't', which is not defined before it"), "{e}");
    }

    #[test]
    fn names_of_one_hash_are_told_apart() {
        let program = chain(500);
        let held = GraphView::build(&program).unwrap();
        for mask in [0, 0b111] {
            let (spill, mut by_name) = tiny();
            // One key, then eight, for every name: all but a few wait in the side map.
            by_name.key_mask = mask;
            let spilled = GraphView::build_spilling(&program, None, &spill, by_name).unwrap();
            assert!(spilled.by_name.collisions.len() > 400);
            same_answers(&held, &spilled, &program);
        }
    }

    #[test]
    fn an_index_in_scratch_files_answers_as_one_in_memory() {
        for program in [sibling_blocks(), chain(3000)] {
            let held = GraphView::build(&program).unwrap();
            let (spill, hashes) = tiny();
            let spilled = GraphView::build_spilling(&program, None, &spill, hashes).unwrap();
            assert!(spilled.ops.on_disk() && spilled.uses.on_disk());
            assert!(spilled.names.on_disk() || held.op_count() < 10);
            assert!(spilled.nested_steps.on_disk() || held.op_count() < 10);
            assert!(held.held_whole());
            same_answers(&held, &spilled, &program);
        }
        // Refusals are the same too.
        let mut dangling = chain(300);
        let body = dangling.functions.get_mut("main").unwrap();
        body.block_specializations
            .get_mut("CoreML7")
            .unwrap()
            .outputs
            .push("v300".into());
        let held = GraphView::build(&dangling).unwrap_err().to_string();
        let (spill, hashes) = tiny();
        let spilled = (GraphView::build_spilling(&dangling, None, &spill, hashes).unwrap_err()).to_string();
        assert_eq!(held, spilled);
        assert!(held.contains("block output 'v300'"), "{held}");
    }

    #[test]
    fn ops_left_in_the_file_read_back_through_spilled_places() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut loaded) = written(dir.path());
        let held = LoadedModel::read_held(&path, &path).unwrap();
        let from_held = GraphView::build(&held.program).unwrap();
        let (spill, hashes) = tiny();
        let in_file = loaded.ops_in_file.take().map(|ops| (ops, path.clone()));
        let g = GraphView::build_spilling(&loaded.program, in_file, &spill, hashes).unwrap();
        for i in 0..g.op_count() {
            let expected = from_held.op_bytes(&held.program, i);
            assert_eq!(g.op_bytes(&loaded.program, i), expected, "op {i}");
            assert_eq!(g.path(i), from_held.path(i), "op {i}");
        }
        assert_eq!(g.consumers(0), from_held.consumers(0));
        let file = g.op_file().unwrap();
        assert_eq!(
            file.read_top(0, 2).unwrap(),
            from_held.op_bytes(&held.program, 4).unwrap()
        );
    }

    #[test]
    fn consumers_are_listed_once_each_in_order_however_many() {
        use crate::mil::build::{bind_name, main_program, op};
        use crate::mil::ops::encode_ops;
        use crate::proto::mil::NamedValueType;
        use std::collections::BTreeMap;
        let t = tensor_value_type(ScalarType::Float32, &[2]);
        let mut ops = vec![op(
            "split",
            "s",
            BTreeMap::from([("x".into(), bind_name("x"))]),
            BTreeMap::new(),
            vec![("a".into(), t.clone()), ("b".into(), t.clone())],
        )];
        // 40 readers of `a` (past the scanned few), each also reading `b`, the same param twice
        // for every third one.
        let mut expected = Vec::new();
        for i in 0..40 {
            let mut both = bind_name("a");
            if i % 3 == 0 {
                both.arguments.extend(bind_name("a").arguments);
            }
            let inputs = BTreeMap::from([("x".into(), both), ("y".into(), bind_name("b"))]);
            ops.push(op(
                "add",
                &format!("r{i}"),
                inputs,
                BTreeMap::new(),
                vec![(format!("r{i}"), t.clone())],
            ));
            expected.push((i + 1, "x"));
        }
        expected.extend((1..=40).map(|i| (i, "y")));
        let block = Block {
            outputs: vec!["r39".into()],
            operations: encode_ops(ops),
            ..Default::default()
        };
        let x = NamedValueType {
            name: "x".into(),
            r#type: Some(t),
        };
        let g = GraphView::build(&main_program(vec![x], "CoreML7", block)).unwrap();
        assert_eq!(g.consumers(0), expected);
        // The uses as they are walked: the repeats too, in the same order.
        let mut uses = Vec::new();
        for i in 0..40 {
            uses.extend(std::iter::repeat_n((i + 1, "x"), if i % 3 == 0 { 2 } else { 1 }));
        }
        uses.extend((1..=40).map(|i| (i, "y")));
        assert_eq!(g.consumer_uses(0).collect::<Vec<_>>(), uses);
        // Each op once, though it reads both outputs.
        assert_eq!(g.consumer_ops(0), (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn the_index_answers_for_every_op_value_and_use() {
        let program = sibling_blocks();
        let g = GraphView::build(&program).unwrap();
        assert_eq!(g.op_count(), 5);
        let listed: Vec<_> = g
            .infos()
            .map(|(_, o)| {
                let outputs: Vec<String> = o.outputs.iter().map(|n| n.to_string()).collect();
                (o.name.into_owned(), o.op_type, outputs, o.path.steps.to_vec())
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("splitter", "split", vec!["a", "b"], vec![0]),
                ("c", "cond", vec!["c"], vec![1]),
                ("t", "relu", vec!["t"], vec![1, 0, 0]),
                ("t", "sigmoid", vec!["t"], vec![1, 1, 0]),
                ("last", "tanh", vec!["last"], vec![2]),
            ]
            .map(|(name, op_type, outputs, steps)| {
                let outputs: Vec<String> = outputs.into_iter().map(String::from).collect();
                (name.to_owned(), op_type, outputs, steps)
            })
        );
        assert_eq!(&**g.function(3), "main");
        assert_eq!(&*g.path(4).specialization, "CoreML7");
        // `t` of both blocks is one value: the later block's op produced it last.
        assert_eq!(g.producer("main", "t"), Some(3));
        assert_eq!(g.producer("main", "x"), None);
        assert_eq!(g.producer("main", "nothing"), None);
        let x = |op| UseSite::Input {
            op,
            param: Arc::from("x"),
        };
        assert_eq!(
            g.uses("main", "t"),
            [
                UseSite::BlockOutput { owner: Some(1) },
                UseSite::BlockOutput { owner: Some(1) }
            ]
        );
        assert_eq!(
            g.uses("main", "a"),
            [x(2), x(3), UseSite::BlockOutput { owner: None }]
        );
        assert_eq!(g.uses("main", "b"), [x(1), x(4)]);
        assert!(g.uses("main", "last").is_empty());
        assert!(g.uses("other", "a").is_empty());
        // Output by output, each in program order.
        assert_eq!(g.consumers(0), [(2, "x"), (3, "x"), (1, "x"), (4, "x")]);
        // Nested ops are read as indexed; top-level ones from the program.
        for (index, info) in g.infos() {
            let op = g.op(&program, index).unwrap();
            assert_eq!(op.outputs[0].name, info.outputs[0]);
        }
        assert!(g.get(5).is_none());
    }

    /// `sibling_blocks` written to a file, and that file read with its ops left in it.
    fn written(dir: &std::path::Path) -> (std::path::PathBuf, LoadedModel) {
        use crate::proto::spec::{model, Model};
        use prost::Message;
        let path = dir.join("model.mlmodel");
        let model = Model {
            specification_version: 8,
            r#type: Some(model::Type::MlProgram(sibling_blocks())),
            ..Default::default()
        };
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        let loaded = LoadedModel::read(&path, &path).unwrap();
        (path, loaded)
    }

    #[test]
    fn ops_left_in_the_file_read_back_as_held_and_fill_the_program_again() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut loaded) = written(dir.path());
        let held = LoadedModel::read_held(&path, &path).unwrap();
        assert_eq!(held.program, sibling_blocks());
        let body = &loaded.program.functions["main"].block_specializations["CoreML7"];
        assert!(body.operations.is_empty());
        let mut g = GraphView::of_model(&mut loaded, None).unwrap();
        assert!(loaded.ops_in_file.is_none() && g.op_file().is_some());
        let from_held = GraphView::build(&held.program).unwrap();
        assert_eq!(g.op_count(), from_held.op_count());
        let before: Vec<_> = (0..g.op_count())
            .map(|i| from_held.op_bytes(&held.program, i).unwrap())
            .collect();
        for (i, bytes) in before.iter().enumerate() {
            assert_eq!(g.op_bytes(&loaded.program, i).as_ref(), Some(bytes), "op {i}");
            assert_eq!(g.path(i), from_held.path(i), "op {i}");
        }
        assert_eq!(g.producer("main", "t"), Some(3));
        assert_eq!(g.consumers(0), from_held.consumers(0));
        let file = g.take_op_file().unwrap();
        // Op 1 (`cond`) is left for the caller to put back.
        file.restore(&mut loaded.program, |i| i == 1).unwrap();
        let body = &loaded.program.functions["main"].block_specializations["CoreML7"];
        assert_eq!(
            body.operations,
            [before[0].clone(), Bytes::new(), before[4].clone()]
        );
        assert!(file.watch().error_if_changed().is_none());
    }

    #[test]
    fn a_file_changed_after_it_was_read_is_refused_by_the_index_and_later() {
        let dir = tempfile::tempdir().unwrap();
        // A byte of the last op of the body.
        let change = |path: &std::path::Path, loaded: &LoadedModel| {
            let ops = &loaded.ops_in_file.as_ref().unwrap().bodies[0].ops;
            let last = ops.last().unwrap().offset as usize;
            let mut bytes = std::fs::read(path).unwrap();
            bytes[last] ^= 1;
            std::fs::write(path, &bytes).unwrap();
        };
        // Between the read and the index.
        let (path, mut loaded) = written(dir.path());
        change(&path, &loaded);
        let e = GraphView::of_model(&mut loaded, None).unwrap_err().to_string();
        assert!(e.contains("changed while mlprune was reading it"), "{e}");

        // After the index (past what it read ahead): the read fails and the watch says why.
        let (path, mut loaded) = written(dir.path());
        let unchanged = loaded.clone();
        let mut g = GraphView::of_model(&mut loaded, None).unwrap();
        let file = g.take_op_file().unwrap();
        file.forget_read_ahead();
        change(&path, &unchanged);
        let failed = file
            .restore(&mut loaded.program, |_| false)
            .unwrap_err()
            .to_string();
        assert!(
            failed.contains("changed while mlprune was reading it"),
            "{failed}"
        );
        let reported = file.watch().error_if_changed().unwrap().to_string();
        assert!(reported.contains("model.mlmodel"), "{reported}");
    }

    #[test]
    fn a_program_not_read_from_a_file_keeps_its_ops() {
        let program = sibling_blocks();
        let mut loaded = LoadedModel {
            path: "m".into(),
            shell: Default::default(),
            program: program.clone(),
            ops_in_file: None,
            notices: Vec::new(),
        };
        let g = GraphView::of_model(&mut loaded, None).unwrap();
        assert!(g.op_file().is_none());
        assert_eq!(loaded.program, program);
        assert!(g.op_bytes(&loaded.program, 4).is_some());
    }

    #[test]
    fn index_records_stay_small() {
        // A model of many small tensors holds one of each per op, value and use (issue 18).
        assert_eq!(std::mem::size_of::<OpRecord>(), 28);
        assert_eq!(std::mem::size_of::<ValueRecord>(), 24);
        assert_eq!(std::mem::size_of::<UseRecord>(), 12);
    }

    #[test]
    fn every_op_needs_a_type_and_typed_outputs() {
        let mut op = const_op("w", blob_value(ScalarType::Float16, &[2, 3], 64));
        op.r#type = "relu".into();
        check_op(&op, "w", "main").unwrap();
        op.outputs[0].r#type = Some(Default::default());
        assert_eq!(
            refusal(&op),
            "model graph: op 'w' (relu) in function 'main': output 'w' has no declared type"
        );
        op.r#type.clear();
        assert_eq!(
            refusal(&op),
            "model graph: op 'w' in function 'main' has no op type"
        );
    }
}
