//! Reading and storing the ops of a program by path.
//!
//! Ops are stored encoded (`crate::mil::ops`): reading one decodes it, and so does every op its
//! path runs through (the op owning a nested block holds that block's ops in its bytes); storing
//! one encodes those again. A walk over many ops inside one nested block should read them through
//! [`crate::mil::GraphView::op`] and store them with [`set_ops_at`], which touch the owning op
//! once.

use std::sync::Arc;

use prost::bytes::Bytes;
use smallvec::SmallVec;

use super::ops::{decode_op, encode_op};
use crate::error::Error;
use crate::proto::mil::{Block, Operation, Program};

/// Where an op lives: function, block specialization, then op index, and for ops inside nested
/// blocks alternating (block index, op index) steps. The names are shared with the index, so a
/// path costs no allocation for a top-level op.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpPath {
    pub function: Arc<str>,
    pub specialization: Arc<str>,
    /// `[op]` for a top-level op, `[op, block, op]` one level down, and so on.
    pub steps: SmallVec<[usize; 1]>,
}

/// The op at `path`, decoded, if it exists.
pub fn op_at(program: &Program, path: &OpPath) -> Option<Operation> {
    decode_op(&op_bytes_at(program, path)?).ok()
}

/// The stored bytes of the op at `path` (a cheap handle on the buffer they live in), if it exists.
/// The ops its path runs through are decoded on the way.
pub fn op_bytes_at(program: &Program, path: &OpPath) -> Option<Bytes> {
    let block = program
        .functions
        .get(&*path.function)?
        .block_specializations
        .get(&*path.specialization)?;
    let (&first, rest) = path.steps.split_first()?;
    let mut bytes = block.operations.get(first)?.clone();
    for pair in rest.chunks(2) {
        let [b, o] = pair else { return None };
        bytes = decode_op(&bytes)
            .ok()?
            .blocks
            .get(*b)?
            .operations
            .get(*o)?
            .clone();
    }
    Some(bytes)
}

/// Visits every op of every function in program order (an op before the ops of its nested blocks),
/// each decoded in turn.
pub fn for_each_op<E: From<Error>>(
    program: &Program,
    mut f: impl FnMut(&Operation) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    fn walk<E: From<Error>>(
        block: &Block,
        f: &mut impl FnMut(&Operation) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for bytes in &block.operations {
            let op = decode_op(bytes).map_err(Error::from)?;
            f(&op)?;
            for nested in &op.blocks {
                walk(nested, f)?;
            }
        }
        Ok(())
    }
    for function in program.functions.values() {
        for block in function.block_specializations.values() {
            walk(block, &mut f)?;
        }
    }
    Ok(())
}

/// Mutable twin of [`for_each_op`], same order: each op is encoded again after `f`.
pub fn for_each_op_mut<E: From<Error>>(
    program: &mut Program,
    mut f: impl FnMut(&mut Operation) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    fn walk<E: From<Error>>(
        block: &mut Block,
        f: &mut impl FnMut(&mut Operation) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for slot in &mut block.operations {
            let mut op = decode_op(slot).map_err(Error::from)?;
            f(&mut op)?;
            for nested in &mut op.blocks {
                walk(nested, f)?;
            }
            *slot = encode_op(&op);
        }
        Ok(())
    }
    for function in program.functions.values_mut() {
        for block in function.block_specializations.values_mut() {
            walk(block, &mut f)?;
        }
    }
    Ok(())
}

/// Edits the op at `path` in place with `f`: the op (and each op its path runs through) is
/// decoded, and encoded again afterwards. `None` if there is no op at `path`.
pub fn with_op_mut<R>(
    program: &mut Program,
    path: &OpPath,
    f: impl FnOnce(&mut Operation) -> R,
) -> Option<R> {
    with_slot(program, path, |slot| {
        let mut op = decode_op(slot).ok()?;
        let result = f(&mut op);
        *slot = encode_op(&op);
        Some(result)
    })
}

/// Replaces the op at `path` by `op`. `None` if there is no op at `path`.
pub fn set_op_at(program: &mut Program, path: &OpPath, op: &Operation) -> Option<()> {
    with_slot(program, path, |slot| {
        *slot = encode_op(op);
        Some(())
    })
}

/// Stores many ops at once, each `(path, bytes)` replacing the op at `path` by an encoded op. An
/// op whose nested blocks hold several of them is decoded and encoded once for all, so the work is
/// the size of the ops touched, not that times the number of updates. `None` if a path leads
/// nowhere (the program is then partly updated).
pub fn set_ops_at(program: &mut Program, mut updates: Vec<(OpPath, Bytes)>) -> Option<()> {
    updates.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rest = updates.as_slice();
    while let Some((first, _)) = rest.first() {
        let same_block = rest
            .iter()
            .take_while(|(p, _)| p.function == first.function && p.specialization == first.specialization)
            .count();
        let (group, later) = rest.split_at(same_block);
        let block = function_block_mut(program, first)?;
        let steps: Vec<(&[usize], &Bytes)> = group.iter().map(|(p, op)| (&p.steps[..], op)).collect();
        store_in_block(block, &steps)?;
        rest = later;
    }
    Some(())
}

/// [`set_ops_at`] within one block: `updates` sorted by their steps, which start in this block.
fn store_in_block(block: &mut Block, updates: &[(&[usize], &Bytes)]) -> Option<()> {
    let mut rest = updates;
    while let Some((steps, _)) = rest.first() {
        let first = *steps.first()?;
        let count = rest.iter().take_while(|(s, _)| s.first() == Some(&first)).count();
        let (group, later) = rest.split_at(count);
        let slot = block.operations.get_mut(first)?;
        // The op itself, if it is replaced (it sorts first: its steps are a prefix of the others').
        let (own, nested) = match group.split_first() {
            Some(((s, op), nested)) if s.len() == 1 => (Some(*op), nested),
            _ => (None, group),
        };
        if nested.is_empty() {
            *slot = own?.clone();
        } else {
            let mut op = decode_op(own.unwrap_or(slot)).ok()?;
            let mut inner = nested;
            while let Some((s, _)) = inner.first() {
                let b = *s.get(1)?;
                let count = inner.iter().take_while(|(s, _)| s.get(1) == Some(&b)).count();
                let (same, after) = inner.split_at(count);
                let deeper: Vec<(&[usize], &Bytes)> = same.iter().map(|(s, op)| (&s[2..], *op)).collect();
                store_in_block(op.blocks.get_mut(b)?, &deeper)?;
                inner = after;
            }
            *slot = encode_op(&op);
        }
        rest = later;
    }
    Some(())
}

/// Runs `f` on the stored bytes of the op at `path`; the ops its path runs through are decoded
/// and encoded again around it.
fn with_slot<R>(program: &mut Program, path: &OpPath, f: impl FnOnce(&mut Bytes) -> Option<R>) -> Option<R> {
    fn descend<R>(slot: &mut Bytes, rest: &[usize], f: impl FnOnce(&mut Bytes) -> Option<R>) -> Option<R> {
        let [b, o, deeper @ ..] = rest else {
            return if rest.is_empty() { f(slot) } else { None };
        };
        let mut op = decode_op(slot).ok()?;
        let result = descend(op.blocks.get_mut(*b)?.operations.get_mut(*o)?, deeper, f)?;
        *slot = encode_op(&op);
        Some(result)
    }
    let (&first, rest) = path.steps.split_first()?;
    descend(
        function_block_mut(program, path)?.operations.get_mut(first)?,
        rest,
        f,
    )
}

/// Runs `f` on the block holding the op at `path` (the block must exist, the op need not); the
/// ops its path runs through are decoded and encoded again around it.
pub fn with_block_mut<R>(program: &mut Program, path: &OpPath, f: impl FnOnce(&mut Block) -> R) -> Option<R> {
    // `[op, block, op, …, block, op]`: the block holding the last op is `block` of the op before.
    let parents = &path.steps[..path.steps.len().saturating_sub(1)];
    match parents.split_last() {
        None => Some(f(function_block_mut(program, path)?)),
        Some((&block, owner)) => {
            let owner = OpPath {
                steps: owner.into(),
                ..path.clone()
            };
            with_op_mut(program, &owner, |op| op.blocks.get_mut(block).map(f)).flatten()
        }
    }
}

/// The function body (specialization) that `path` starts in.
fn function_block_mut<'p>(program: &'p mut Program, path: &OpPath) -> Option<&'p mut Block> {
    program
        .functions
        .get_mut(&*path.function)?
        .block_specializations
        .get_mut(&*path.specialization)
}
