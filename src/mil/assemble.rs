//! The output's function bodies, assembled op by op into a scratch file.
//!
//! Each op of the output is an op of the input (read back from the model file, see
//! [`super::op_file`]), or one the walk stored again ([`SpilledOps`], in program order), or what a
//! joint-compression edit puts in its place; the walk's renames apply to all of them. Applied to the
//! program, these needed its whole description in memory again at the end of a run (issue 18: the
//! end phase held every op once more, the peak of a model of many small tensors). Here each
//! top-level op is made final on its own, in program order, and written with its frame to an
//! unlinked scratch file; [`Assembled`] then hands each body's bytes to
//! [`super::stream::write_model`]. An op that nothing changes is copied as it was read, undecoded.
//!
//! The changes to one top-level op (itself, ops in its nested blocks, edits, renames) are applied
//! with the same functions as on a whole program ([`set_ops_at`], [`replace_ops`],
//! [`rename_in_block`]), on a program holding that op alone: they only ever touch the op their
//! path leads into, so the result is the same.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use prost::bytes::Bytes;

use super::access::{set_ops_at, OpPath};
use super::op_file::OpFile;
use super::renames::RenameMap;
use super::rewrite::{rename_in_block, renamed_functions, replace_ops};
use super::spill::SpilledOps;
use super::stream::{op_head, OpLists};
use crate::blob::ReadAt;
use crate::error::{Error, IoContext, Result};
use crate::proto::mil::{Block, Function, Operation, Program};

/// The input's top-level ops, body by body in program order.
pub trait TopOps {
    /// Each function body that has ops: function, specialization and how many.
    fn bodies(&self) -> Vec<(Arc<str>, Arc<str>, usize)>;
    /// Op `k` of body `body`, as it was read.
    fn read(&mut self, body: usize, k: usize) -> Result<Bytes>;
}

impl TopOps for OpFile {
    fn bodies(&self) -> Vec<(Arc<str>, Arc<str>, usize)> {
        self.body_ops()
            .iter()
            .map(|b| (b.function.clone(), b.specialization.clone(), b.ops.len()))
            .collect()
    }

    fn read(&mut self, body: usize, k: usize) -> Result<Bytes> {
        self.read_top(body, k)
    }
}

/// The ops a program's bodies held, taken out of it (a model that was not read from a file).
pub struct HeldOps(Vec<(Arc<str>, Arc<str>, Vec<Bytes>)>);

impl HeldOps {
    pub fn take_from(program: &mut Program) -> Self {
        let mut bodies = Vec::new();
        for (function, f) in &mut program.functions {
            for (specialization, block) in &mut f.block_specializations {
                if !block.operations.is_empty() {
                    let ops = std::mem::take(&mut block.operations);
                    bodies.push((
                        Arc::from(function.as_str()),
                        Arc::from(specialization.as_str()),
                        ops,
                    ));
                }
            }
        }
        HeldOps(bodies)
    }
}

impl TopOps for HeldOps {
    fn bodies(&self) -> Vec<(Arc<str>, Arc<str>, usize)> {
        self.0
            .iter()
            .map(|(f, s, ops)| (f.clone(), s.clone(), ops.len()))
            .collect()
    }

    fn read(&mut self, body: usize, k: usize) -> Result<Bytes> {
        self.0
            .get_mut(body)
            .and_then(|(_, _, ops)| ops.get_mut(k))
            .map(std::mem::take)
            .ok_or_else(|| Error::Graph(format!("no op {k} in body {body}")))
    }
}

/// The assembled bodies: each one's `operations` field, framed, in an unlinked scratch file.
pub struct Assembled {
    file: File,
    /// `(function, specialization)` → where its field lies in `file`.
    bodies: HashMap<(String, String), (u64, u64)>,
}

/// Bytes copied at a time from the scratch file to the model.
const COPY_CHUNK: usize = 256 << 10;

impl Assembled {
    /// Follows a body moved to another specialization key, as the program's map does it: the key
    /// `to` now holds what `from` held, if anything, and `from` holds nothing.
    pub fn move_specialization(&mut self, function: &str, from: &str, to: &str) {
        let moved = self.bodies.remove(&(function.to_owned(), from.to_owned()));
        self.bodies.remove(&(function.to_owned(), to.to_owned()));
        if let Some(range) = moved {
            self.bodies.insert((function.to_owned(), to.to_owned()), range);
        }
    }

    fn range(&self, function: &str, specialization: &str) -> (u64, u64) {
        self.bodies
            .get(&(function.to_owned(), specialization.to_owned()))
            .copied()
            .unwrap_or((0, 0))
    }
}

impl OpLists for Assembled {
    fn encoded_len(&self, function: &str, specialization: &str, _: &Block) -> usize {
        self.range(function, specialization).1 as usize
    }

    fn write(&self, function: &str, specialization: &str, _: &Block, out: &mut dyn Write) -> io::Result<()> {
        let (mut at, len) = self.range(function, specialization);
        let end = at + len;
        let mut chunk = vec![0u8; COPY_CHUNK.min(len as usize)];
        while at < end {
            let n = COPY_CHUNK.min((end - at) as usize);
            ReadAt::read_exact_at(&self.file, &mut chunk[..n], at)?;
            out.write_all(&chunk[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Where a change applies: function, specialization, and the top-level op it lies in.
type TopKey = (Arc<str>, Arc<str>, usize);

fn top_key(path: &OpPath) -> Option<TopKey> {
    Some((
        path.function.clone(),
        path.specialization.clone(),
        *path.steps.first()?,
    ))
}

/// Assembles every body of `program` from `top`, the walk's `changed` ops, its `edits` and
/// `renames`, into a scratch file in `scratch_dir`. `program`'s bodies must hold no ops (`top` has
/// them); their outputs are renamed in place. Returns the bodies and the work done: ops looked at
/// for renames plus ops that edits moved or put in.
pub fn assemble(
    program: &mut Program,
    top: &mut dyn TopOps,
    changed: SpilledOps,
    edits: Vec<(OpPath, Vec<Operation>)>,
    renames: &RenameMap,
    scratch_dir: &Path,
) -> Result<(Assembled, usize)> {
    let mut work = 0;
    for function in renamed_functions(program, renames)? {
        let (Some(map), Some(f)) = (
            renames.of_function(&function),
            program.functions.get_mut(&*function),
        ) else {
            continue;
        };
        for block in f.block_specializations.values_mut() {
            debug_assert!(block.operations.is_empty(), "the ops come from `top`");
            rename_in_block(block, map, &mut work)?;
        }
    }
    let mut edits_of: BTreeMap<TopKey, Vec<(OpPath, Vec<Operation>)>> = BTreeMap::new();
    for (path, ops) in edits {
        let key = top_key(&path).ok_or_else(|| Error::Graph(format!("no op at {path:?}")))?;
        edits_of.entry(key).or_default().push((path, ops));
    }
    let mut changes = changed.records()?.peekable();
    let scratch = tempfile::tempfile_in(scratch_dir).at(scratch_dir)?;
    let mut out = BufWriter::with_capacity(COPY_CHUNK, scratch);
    let mut position = 0u64;
    let mut bodies = HashMap::new();
    for (body, (function, specialization, count)) in top.bodies().into_iter().enumerate() {
        let start = position;
        let map = renames.of_function(&function);
        for k in 0..count {
            let key: TopKey = (function.clone(), specialization.clone(), k);
            let mut own = None;
            let mut nested = Vec::new();
            while let Some(change) =
                changes.next_if(|c| c.as_ref().map_or(true, |(p, _)| top_key(p) == Some(key.clone())))
            {
                let (path, op) = change?;
                if path.steps.len() == 1 {
                    own = Some(op);
                } else {
                    nested.push((path, op));
                }
            }
            let op = match own {
                Some(op) => op,
                None => top.read(body, k)?,
            };
            let edits = edits_of.remove(&key);
            let finals: Vec<Bytes> = if nested.is_empty() && edits.is_none() && map.is_none() {
                vec![op]
            } else {
                let mut alone = alone_in_program(&function, &specialization, op);
                if !nested.is_empty() {
                    set_ops_at(&mut alone, rebased(nested))
                        .ok_or_else(|| Error::Graph("an op disappeared during rewrite".into()))?;
                }
                if let Some(edits) = edits {
                    work += replace_ops(&mut alone, rebased(edits))?;
                }
                let block = body_of(&mut alone, &function, &specialization)
                    .ok_or_else(|| Error::Graph("an op disappeared during rewrite".into()))?;
                if let Some(map) = map {
                    rename_in_block(block, map, &mut work)?;
                }
                std::mem::take(&mut block.operations)
            };
            for op in finals {
                let head = op_head(op.len());
                out.write_all(&head).at(scratch_dir)?;
                out.write_all(&op).at(scratch_dir)?;
                position += (head.len() + op.len()) as u64;
            }
        }
        bodies.insert(
            (function.to_string(), specialization.to_string()),
            (start, position - start),
        );
    }
    if let Some(change) = changes.next() {
        let (path, _) = change?;
        return Err(Error::Graph(format!(
            "a changed op at {path:?} lies in no function body"
        )));
    }
    if let Some((path, _)) = edits_of.into_values().flatten().next() {
        return Err(Error::Graph(format!("no op at {path:?}")));
    }
    let file = out.into_inner().map_err(|e| e.into_error()).at(scratch_dir)?;
    Ok((Assembled { file, bodies }, work))
}

/// A program whose only op is `op`, at index 0 of the body `specialization` of `function`.
fn alone_in_program(function: &str, specialization: &str, op: Bytes) -> Program {
    let block = Block {
        operations: vec![op],
        ..Default::default()
    };
    let f = Function {
        block_specializations: [(specialization.to_owned(), block)].into_iter().collect(),
        ..Default::default()
    };
    Program {
        functions: [(function.to_owned(), f)].into_iter().collect(),
        ..Default::default()
    }
}

fn body_of<'p>(program: &'p mut Program, function: &str, specialization: &str) -> Option<&'p mut Block> {
    program
        .functions
        .get_mut(function)
        .and_then(|f| f.block_specializations.get_mut(specialization))
}

/// Paths into one top-level op, moved to index 0 as in [`alone_in_program`].
fn rebased<T>(changes: Vec<(OpPath, T)>) -> Vec<(OpPath, T)> {
    changes
        .into_iter()
        .map(|(mut path, t)| {
            if let Some(first) = path.steps.first_mut() {
                *first = 0;
            }
            (path, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dtype::ScalarType;
    use crate::mil::build::{bind_name, main_program, op};
    use crate::mil::ops::encode_ops;
    use crate::mil::rewrite::rename_with;
    use crate::mil::stream::{write_model, InBlocks};
    use crate::mil::value::tensor_value_type;
    use crate::proto::spec::Model;

    fn unary(op_type: &str, name: &str, input: &str) -> Operation {
        let t = tensor_value_type(ScalarType::Float32, &[2]);
        op(
            op_type,
            name,
            BTreeMap::from([("x".into(), bind_name(input))]),
            BTreeMap::new(),
            vec![(name.to_owned(), t)],
        )
    }

    fn path(function: &str, steps: &[usize]) -> OpPath {
        OpPath {
            function: function.into(),
            specialization: "CoreML7".into(),
            steps: steps.iter().copied().collect(),
        }
    }

    /// main: `w`, a `cond` owning a block of `nested` ops that read `w`, `tanh(w)`; `second`: the
    /// same without the `cond`.
    fn program(nested: usize) -> Program {
        let mut cond = unary("cond", "c", "x");
        cond.blocks.push(Block {
            outputs: vec!["n0".into()],
            operations: encode_ops((0..nested).map(|i| unary("relu", &format!("n{i}"), "w"))),
            ..Default::default()
        });
        let body = |with_cond: bool| Block {
            outputs: vec!["t".into(), "w".into()],
            operations: encode_ops(
                [
                    Some(unary("relu", "w", "x")),
                    with_cond.then(|| cond.clone()),
                    Some(unary("tanh", "t", "w")),
                ]
                .into_iter()
                .flatten(),
            ),
            ..Default::default()
        };
        let mut p = main_program(vec![], "CoreML7", body(true));
        let second = main_program(vec![], "CoreML7", body(false));
        p.functions
            .insert("second".into(), second.functions["main"].clone());
        p
    }

    fn written(program: &Program, ops: &impl OpLists) -> Vec<u8> {
        let mut out = Vec::new();
        write_model(&Model::default(), program, ops, &mut out).unwrap();
        out
    }

    /// The output assembled op by op is the output of the changes applied to the whole program.
    #[test]
    fn assembles_what_applying_the_changes_to_the_whole_program_gives() {
        // Thousands of changes inside the `cond`.
        let nested = 5000;
        let mut changes = vec![(path("main", &[0]), unary("sigmoid", "w", "x"))];
        changes.extend(
            (0..nested)
                .step_by(2)
                .map(|i| (path("main", &[1, 0, i]), unary("abs", &format!("n{i}"), "w"))),
        );
        changes.push((path("second", &[1]), unary("exp", "t", "w")));
        let edits = vec![(
            path("second", &[0]),
            vec![unary("relu", "w0", "x"), unary("relu", "w", "w0")],
        )];
        let mut renames = RenameMap::new();
        renames.insert("main", "w", "w_sparsified").unwrap();

        let mut expected = program(nested);
        let updates = changes
            .iter()
            .map(|(p, o)| (p.clone(), crate::mil::encode_op(o)))
            .collect();
        set_ops_at(&mut expected, updates).unwrap();
        replace_ops(&mut expected, edits.clone()).unwrap();
        rename_with(&mut expected, &renames).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut spilled = SpilledOps::create_in(dir.path()).unwrap();
        for (p, o) in &changes {
            spilled.push(p, o).unwrap();
        }
        let mut ours = program(nested);
        let mut held = HeldOps::take_from(&mut ours);
        let (assembled, _) = assemble(&mut ours, &mut held, spilled, edits, &renames, dir.path()).unwrap();
        assert_eq!(written(&ours, &assembled), written(&expected, &InBlocks));
    }

    #[test]
    fn a_change_that_lies_in_no_body_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spilled = SpilledOps::create_in(dir.path()).unwrap();
        spilled
            .push(&path("main", &[9]), &unary("abs", "z", "x"))
            .unwrap();
        let mut p = program(1);
        let mut held = HeldOps::take_from(&mut p);
        let err = assemble(&mut p, &mut held, spilled, vec![], &RenameMap::new(), dir.path())
            .err()
            .unwrap();
        assert!(err.to_string().contains("lies in no function body"), "{err}");
    }
}
