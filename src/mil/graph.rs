//! A read-only index of a MIL program: every op in program order with its path, and for every
//! value the places that use it (op inputs and block outputs).
//!
//! Building the index also validates the graph: every name an op or block output refers to must be
//! defined earlier in an enclosing scope. MIL blocks are topologically sorted, so this one check
//! rules out both dangling names and cycles.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;
use prost::bytes::Bytes;
use smallvec::SmallVec;

use super::access::{op_bytes_at, OpPath};
use super::entries::Entries;
use super::ops::decode_op;
use crate::error::{Error, Result};
use crate::proto::mil::{argument::binding::Binding, Block, Operation, Program};

use super::value::{describe_type, same_declared_type, OperationExt};

/// One op of the program, in program order.
#[derive(Debug, Clone)]
pub struct OpInfo {
    pub path: OpPath,
    /// The `name` attribute, or the first output's name when an op has none.
    pub name: Arc<str>,
    pub op_type: Arc<str>,
    pub outputs: SmallVec<[Arc<str>; 1]>,
}

/// A place that uses a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseSite {
    /// Input `param` of the op at index `op` of [`GraphView::ops`].
    Input { op: usize, param: Arc<str> },
    /// Returned by a block: the function body (`owner: None`) or a nested block of op `owner`.
    BlockOutput { owner: Option<usize> },
}

/// What the index knows of one value of a function.
#[derive(Debug, Clone)]
struct ValueEntry {
    name: Arc<str>,
    /// The op defining it; `None` for a function input.
    producer: Option<u32>,
    uses: SmallVec<[UseSite; 1]>,
}

/// The values of one function: entries in the order they came into scope, found by name through
/// a table of their indices. A model of tens of thousands of tensors has over a hundred thousand
/// values; a table of `u32`s beside a packed vector is a third of a map holding the entries
/// (issue 18).
#[derive(Debug, Clone, Default)]
struct FunctionValues {
    function: Arc<str>,
    entries: Vec<ValueEntry>,
    by_name: HashTable<u32>,
    hasher: RandomState,
}

impl FunctionValues {
    fn new(function: Arc<str>) -> Self {
        FunctionValues {
            function,
            ..Default::default()
        }
    }

    fn index_of(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.by_name
            .find(hash, |&i| &*self.entries[i as usize].name == name)
            .copied()
    }

    fn get(&self, name: &str) -> Option<&ValueEntry> {
        Some(&self.entries[self.index_of(name)? as usize])
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut ValueEntry> {
        let i = self.index_of(name)?;
        Some(&mut self.entries[i as usize])
    }

    /// The shared copy of `name`, entered with no producer or uses if new.
    fn intern(&mut self, name: &str) -> Result<Arc<str>> {
        if let Some(i) = self.index_of(name) {
            return Ok(self.entries[i as usize].name.clone());
        }
        let index = u32::try_from(self.entries.len())
            .map_err(|_| Error::Graph(format!("function '{}' has too many values", self.function)))?;
        let name: Arc<str> = Arc::from(name);
        self.entries.push(ValueEntry {
            name: name.clone(),
            producer: None,
            uses: SmallVec::new(),
        });
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.by_name.insert_unique(hasher.hash_one(&*name), index, |&i| {
            hasher.hash_one(&*entries[i as usize].name)
        });
        Ok(name)
    }

    fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.by_name
            .shrink_to_fit(|&i| hasher.hash_one(&*entries[i as usize].name));
    }
}

/// The index holds tens of thousands of ops in large models (issue 18: memory in proportion to
/// the model). Every name is stored once, as an `Arc<str>` that the op records, use sites and the
/// value table share; a value's producer and uses live in one entry of its function's table.
#[derive(Debug, Clone, Default)]
pub struct GraphView {
    pub ops: Vec<OpInfo>,
    /// Per function: its values.
    values: Vec<FunctionValues>,
    /// The stored bytes of every op inside a nested block, by index into `ops`, as read (slices of
    /// the file, no copy). Reaching one through the program decodes the op owning its block, whose
    /// bytes hold all of them: once per nested op, that made the work quadratic in a block's size.
    nested: HashMap<u32, Bytes>,
}

/// Hands out one shared copy of each distinct short text (op types, parameter names).
#[derive(Default)]
struct Texts(HashSet<Arc<str>>);

impl Texts {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(t) = self.0.get(text) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(text);
        self.0.insert(t.clone());
        t
    }
}

/// The state of one build: the shared texts and the names in scope.
struct Builder {
    texts: Texts,
    scope: Scope,
}

impl GraphView {
    pub fn build(program: &Program) -> Result<Self> {
        let mut view = GraphView::default();
        let mut builder = Builder {
            texts: Texts::default(),
            scope: Scope::default(),
        };
        for (fname, function) in &program.functions {
            let function_name: Arc<str> = Arc::from(fname.as_str());
            view.values.push(FunctionValues::new(function_name.clone()));
            let table = view.values.len() - 1;
            for (spec, block) in &function.block_specializations {
                builder.scope = Scope::default();
                for input in &function.inputs {
                    let name = view.values[table].intern(&input.name)?;
                    builder.scope.define(name, fname)?;
                }
                let base = OpPath {
                    function: function_name.clone(),
                    specialization: builder.texts.get(spec),
                    steps: SmallVec::new(),
                };
                view.walk_block(block, &base, table, None, &mut builder)?;
            }
        }
        view.ops.shrink_to_fit();
        for values in &mut view.values {
            values.shrink_to_fit();
        }
        Ok(view)
    }

    fn walk_block(
        &mut self,
        block: &Block,
        base: &OpPath,
        table: usize,
        owner: Option<usize>,
        builder: &mut Builder,
    ) -> Result<()> {
        let function = &*base.function;
        let mark = builder.scope.mark();
        for input in &block.inputs {
            let name = self.values[table].intern(&input.name)?;
            builder.scope.define(name, function)?;
        }
        for (i, bytes) in block.operations.iter().enumerate() {
            // Checked at load (`decode_model`); decoded here for the index, then dropped.
            let op = decode_op(bytes).map_err(|e| {
                Error::Graph(format!(
                    "op {i} of a block of function '{function}' does not decode: {e}"
                ))
            })?;
            let op = &op;
            let mut path = base.clone();
            path.steps.push(i);
            let index = self.ops.len();
            // The index as the value table and the nested-op table store it.
            let op_id = u32::try_from(index)
                .map_err(|_| Error::Graph(format!("function '{function}' has too many ops")))?;
            if owner.is_some() {
                self.nested.insert(op_id, bytes.clone());
            }
            let outputs = op
                .outputs
                .iter()
                .map(|o| self.values[table].intern(&o.name))
                .collect::<Result<SmallVec<[Arc<str>; 1]>>>()?;
            let name = match op.name() {
                Some(n) => match outputs.iter().find(|o| &***o == n) {
                    Some(shared) => shared.clone(),
                    None => Arc::from(n),
                },
                None => outputs.first().cloned().unwrap_or_else(|| Arc::from("")),
            };
            check_op(op, &name, function)?;
            for (param, arg) in op.inputs.pairs() {
                for binding in &arg.arguments {
                    if let Some(Binding::Name(value)) = &binding.binding {
                        if !builder.scope.contains(value) {
                            return Err(Error::Graph(format!(
                                "op '{name}' ({}) input '{param}' refers to '{value}', which is not \
                                 defined before it in function '{function}'",
                                op.r#type
                            )));
                        }
                        let site = UseSite::Input {
                            op: index,
                            param: builder.texts.get(param),
                        };
                        self.add_use(table, value, site);
                    }
                }
            }
            self.ops.push(OpInfo {
                path: path.clone(),
                name,
                op_type: builder.texts.get(&op.r#type),
                outputs: outputs.clone(),
            });
            for (b, nested) in op.blocks.iter().enumerate() {
                let mut nested_base = path.clone();
                nested_base.steps.push(b);
                self.walk_block(nested, &nested_base, table, Some(index), builder)?;
            }
            for out in outputs {
                builder.scope.define(out.clone(), function)?;
                if let Some(entry) = self.values[table].get_mut(&out) {
                    entry.producer = Some(op_id);
                }
            }
        }
        for out in &block.outputs {
            if !builder.scope.contains(out) {
                return Err(Error::Graph(format!(
                    "block output '{out}' in function '{function}' is not defined"
                )));
            }
            self.add_use(table, out, UseSite::BlockOutput { owner });
        }
        builder.scope.reset(mark);
        Ok(())
    }

    fn add_use(&mut self, table: usize, value: &str, site: UseSite) {
        // Only names in scope are used, and `intern` entered each of them when it came into scope:
        // one lookup, no new entry.
        if let Some(entry) = self.values[table].get_mut(value) {
            entry.uses.push(site);
        }
    }

    fn value(&self, function: &str, value: &str) -> Option<&ValueEntry> {
        self.values.iter().find(|v| &*v.function == function)?.get(value)
    }

    /// Every use of `value` in `function`, in program order.
    pub fn uses(&self, function: &str, value: &str) -> &[UseSite] {
        self.value(function, value).map_or(&[], |v| v.uses.as_slice())
    }

    /// The ops that take the output(s) of op `index` as an input, in program order, without repeats.
    pub fn consumers(&self, index: usize) -> Vec<(usize, &str)> {
        let info = &self.ops[index];
        let mut out: Vec<(usize, &str)> = Vec::new();
        for value in &info.outputs {
            for site in self.uses(&info.path.function, value) {
                if let UseSite::Input { op, param } = site {
                    if !out.iter().any(|(o, p)| o == op && *p == &**param) {
                        out.push((*op, param));
                    }
                }
            }
        }
        out
    }

    /// The index of the op producing `value` in `function`.
    pub fn producer(&self, function: &str, value: &str) -> Option<usize> {
        self.value(function, value)?.producer.map(|p| p as usize)
    }

    /// The stored bytes of op `index` (a cheap handle). A top-level op is read from `program`; an
    /// op inside a nested block as it was when the index was built (reaching it through `program`
    /// would decode the op owning its block). The same thing while the program is unchanged: the
    /// engine's walk stores the ops it changes only at the end (`crate::mil::spill`), so every op
    /// it reads, earlier ones included, is the op as read.
    pub fn op_bytes(&self, program: &Program, index: usize) -> Option<Bytes> {
        let info = self.ops.get(index)?;
        if info.path.steps.len() > 1 {
            return self.nested.get(&u32::try_from(index).ok()?).cloned();
        }
        op_bytes_at(program, &info.path)
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

/// Names visible at a point of a function, with marks to drop a nested block's names on exit.
#[derive(Default)]
struct Scope {
    visible: HashSet<Arc<str>>,
    order: Vec<Arc<str>>,
}

impl Scope {
    fn define(&mut self, name: Arc<str>, function: &str) -> Result<()> {
        if !self.visible.insert(name.clone()) {
            return Err(Error::Graph(format!(
                "value '{name}' is defined twice in function '{function}'"
            )));
        }
        self.order.push(name);
        Ok(())
    }

    fn contains(&self, name: &str) -> bool {
        self.visible.contains(name)
    }

    fn mark(&self) -> usize {
        self.order.len()
    }

    fn reset(&mut self, mark: usize) {
        for name in self.order.drain(mark..) {
            self.visible.remove(&name);
        }
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
