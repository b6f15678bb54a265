//! Structural edits of a program: replacing ops and rebinding every use of values.

use std::sync::Arc;

use super::entries::Entries;
use crate::error::{Error, Result};
use crate::proto::mil::{argument::binding::Binding, Block, Operation, Program};

use super::access::{with_block_mut, OpPath};
use super::ops::{decode_op, encode_op, encode_ops};
use super::renames::{FunctionRenames, RenameMap};

/// Replaces many ops at once, each by zero or more ops: every block holding an edit is rebuilt
/// once, so the cost is that of the blocks' lengths plus the edits, not of one splice per edit
/// (which moves the rest of the block each time an op becomes two or none).
///
/// Paths are those of the program before any edit. Blocks nested inside an op are rebuilt before
/// the block holding that op (their paths run through the op's original index); an edit of an op
/// whose nested block was edited too replaces the edited op. An op edited twice, or a path that
/// leads nowhere, is an error and leaves the program partly edited (callers drop it then).
///
/// Returns the number of ops moved or put in, the length of the edited blocks after the edits: the
/// work done, which a test can hold against the program's size.
pub fn replace_ops(program: &mut Program, mut edits: Vec<(OpPath, Vec<Operation>)>) -> Result<usize> {
    let mut moved = 0;
    // Deepest blocks first (a block's key extends its parent's, so it sorts after it), and within
    // a block by op index.
    edits.sort_by(|(a, _), (b, _)| {
        block_key(b)
            .cmp(&block_key(a))
            .then_with(|| a.steps.last().cmp(&b.steps.last()))
    });
    let mut edits = edits.into_iter().peekable();
    while let Some((first_path, first_ops)) = edits.next() {
        let missing = |path: &OpPath| Error::Graph(format!("no op at {path:?}"));
        let Some(&first_index) = first_path.steps.last() else {
            return Err(missing(&first_path));
        };
        let mut group = vec![(first_index, first_path.clone(), first_ops)];
        while let Some((path, ops)) = edits.next_if(|(p, _)| same_block(p, &first_path)) {
            let index = *path.steps.last().ok_or_else(|| missing(&path))?;
            if index == group.last().map_or(usize::MAX, |g| g.0) {
                return Err(Error::Graph(format!("op at {path:?} replaced twice")));
            }
            group.push((index, path, ops));
        }
        let rebuild = |block: &mut Block| -> Result<usize> {
            if let Some((_, path, _)) = group.iter().find(|(i, _, _)| *i >= block.operations.len()) {
                return Err(missing(path));
            }
            let added: usize = group.iter().map(|(_, _, ops)| ops.len()).sum();
            let old = std::mem::take(&mut block.operations);
            let mut rebuilt = Vec::with_capacity(old.len() - group.len() + added);
            let mut group = group.into_iter().peekable();
            for (i, op) in old.into_iter().enumerate() {
                match group.next_if(|(index, _, _)| *index == i) {
                    Some((_, _, replacement)) => rebuilt.extend(encode_ops(replacement)),
                    None => rebuilt.push(op),
                }
            }
            block.operations = rebuilt;
            Ok(block.operations.len())
        };
        moved += with_block_mut(program, &first_path, rebuild).ok_or_else(|| missing(&first_path))??;
    }
    Ok(moved)
}

/// The block holding the op at `path`: function, specialization, steps.
fn block_key(path: &OpPath) -> (&str, &str, &[usize]) {
    (&path.function, &path.specialization, parent_steps(path))
}

/// The steps of the block holding the op at `path`.
fn parent_steps(path: &OpPath) -> &[usize] {
    &path.steps[..path.steps.len().saturating_sub(1)]
}

fn same_block(a: &OpPath, b: &OpPath) -> bool {
    block_key(a) == block_key(b)
}

/// What [`rename_with`] did.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    /// Places rebound (op inputs and block outputs).
    pub rebound: usize,
    /// Ops looked at: the work done, once per op of each function with a rename.
    pub ops_visited: usize,
}

/// [`rename_with`] for renames given as `(function, old, new)` tuples (tests write them so).
#[cfg(test)]
pub fn rename_all<F: AsRef<str>, T: AsRef<str>>(
    program: &mut Program,
    renames: &[(F, T, T)],
) -> Result<Renamed> {
    let mut map = RenameMap::new();
    for (function, old, new) in renames {
        map.insert(function.as_ref(), old.as_ref(), new.as_ref())?;
    }
    rename_with(program, &map)
}

/// [`rename_in_block`] over every block of every function `renames` renames in, on a program
/// holding its ops: what a run does op by op (`crate::mil::assemble`), and the reference its tests
/// compare with.
#[cfg(test)]
pub fn rename_with(program: &mut Program, renames: &RenameMap) -> Result<Renamed> {
    let mut done = Renamed {
        rebound: 0,
        ops_visited: 0,
    };
    for function in renamed_functions(program, renames)? {
        let Some(map) = renames.of_function(&function) else {
            continue;
        };
        let Some(f) = program.functions.get_mut(&*function) else {
            continue;
        };
        for block in f.block_specializations.values_mut() {
            done.rebound += rename_in_block(block, map, &mut done.ops_visited)?;
        }
    }
    Ok(done)
}

/// The functions `renames` renames in, sorted, once checked: each exists in `program`, and no new
/// name is another rename's old name in its function. Renames apply together, not one after the
/// other, which is the same only because new names are fresh; a chain would make them depend on
/// their order, and is refused (an old name renamed twice is refused by the [`RenameMap`] as it is
/// filled).
pub fn renamed_functions(program: &Program, renames: &RenameMap) -> Result<Vec<Arc<str>>> {
    let mut functions: Vec<Arc<str>> = renames.functions().cloned().collect();
    functions.sort_unstable();
    if let Some((function, chained)) = renames.first_chained() {
        return Err(Error::Graph(format!(
            "value '{chained}' in function '{function}' is both renamed and the new name of another value"
        )));
    }
    for function in &functions {
        if !program.functions.contains_key(&**function) {
            return Err(Error::Graph(format!("no function '{function}'")));
        }
    }
    Ok(functions)
}

/// Rebinds every use of a renamed value in `block` of a function, whose renames are `map`: op
/// inputs at any depth and the block's outputs now read the new names. Value names are unique
/// within a function (SSA), so a plain rename is exact; check the renames with
/// [`renamed_functions`] first. Returns the places rebound; `visited` counts the ops looked at.
pub fn rename_in_block(block: &mut Block, map: FunctionRenames<'_>, visited: &mut usize) -> Result<usize> {
    let mut n = 0;
    for slot in &mut block.operations {
        *visited += 1;
        let mut op = decode_op(slot)?;
        let before = n;
        for arg in op.inputs.values_mut() {
            for binding in &mut arg.arguments {
                if let Some(Binding::Name(name)) = &mut binding.binding {
                    if let Some(new) = map.get(name.as_str())? {
                        *name = new;
                        n += 1;
                    }
                }
            }
        }
        for nested in &mut op.blocks {
            n += rename_in_block(nested, map, visited)?;
        }
        // Only an op that changed is encoded again; the others keep the bytes they were read as.
        if n != before {
            *slot = encode_op(&op);
        }
    }
    for out in &mut block.outputs {
        if let Some(new) = map.get(out.as_str())? {
            *out = new;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dtype::ScalarType;
    use crate::mil::access::op_at;
    use crate::mil::build::{bind_name, const_op, main_program, op};
    use crate::mil::graph::{GraphView, UseSite};
    use crate::mil::value::{blob_value, tensor_value_type, OperationExt};
    use crate::proto::mil::{Block, NamedValueType};

    /// The `name` of the op at `path`.
    fn name_at(p: &Program, path: &OpPath) -> Option<String> {
        op_at(p, path)?.name().map(str::to_owned)
    }

    /// main(x): w = const; y = linear(x, w); cond-like op with a nested block that also uses w;
    /// the function returns y and w.
    /// The sample's top-level block.
    fn main_block(p: &mut Program) -> &mut Block {
        p.functions
            .get_mut("main")
            .unwrap()
            .block_specializations
            .get_mut("CoreML6")
            .unwrap()
    }

    fn sample() -> Program {
        let t = tensor_value_type(ScalarType::Float32, &[4, 4]);
        let w = const_op("w", blob_value(ScalarType::Float32, &[4, 4], 64));
        let lin = op(
            "linear",
            "lin",
            BTreeMap::from([("x".into(), bind_name("x")), ("weight".into(), bind_name("w"))]),
            BTreeMap::new(),
            vec![("y".into(), t.clone())],
        );
        let inner = op(
            "add",
            "inner_add",
            BTreeMap::from([("x".into(), bind_name("y")), ("y".into(), bind_name("w"))]),
            BTreeMap::new(),
            vec![("z".into(), t.clone())],
        );
        let mut outer = op(
            "cond",
            "branch",
            BTreeMap::new(),
            BTreeMap::new(),
            vec![("c".into(), t.clone())],
        );
        outer.blocks.push(Block {
            outputs: vec!["z".into()],
            operations: encode_ops([inner]),
            ..Default::default()
        });
        let block = Block {
            outputs: vec!["y".into(), "w".into()],
            operations: encode_ops([w, lin, outer]),
            ..Default::default()
        };
        let x = NamedValueType {
            name: "x".into(),
            r#type: Some(t),
        };
        main_program(vec![x], "CoreML6", block)
    }

    #[test]
    fn graph_lists_uses_in_every_place() {
        let p = sample();
        let g = GraphView::build(&p).unwrap();
        let names: Vec<_> = g.infos().map(|(_, o)| o.name).collect();
        assert_eq!(names, ["w", "lin", "branch", "inner_add"]);
        assert_eq!(g.path(3).steps.as_slice(), [2, 0, 0]);
        let uses = g.uses("main", "w");
        assert_eq!(
            uses,
            &[
                UseSite::Input {
                    op: 1,
                    param: "weight".into()
                },
                UseSite::Input {
                    op: 3,
                    param: "y".into()
                },
                UseSite::BlockOutput { owner: None },
            ]
        );
        assert_eq!(g.consumers(0), vec![(1, "weight"), (3, "y")]);
        assert_eq!(g.producer("main", "y"), Some(1));
        assert_eq!(name_at(&p, &g.path(3)).as_deref(), Some("inner_add"));
    }

    #[test]
    fn graph_rejects_dangling_and_cyclic_names() {
        let mut p = sample();
        // Make `lin` use `z`, which is only defined later inside a nested block: a dangling use.
        let block = main_block(&mut p);
        let mut lin = decode_op(&block.operations[1]).unwrap();
        lin.inputs.set("bias".into(), bind_name("c"));
        block.operations[1] = encode_op(&lin);
        let e = GraphView::build(&p).unwrap_err().to_string();
        assert!(e.contains("op 'lin' (linear) input 'bias' refers to 'c'"), "{e}");

        let mut p = sample();
        let block = main_block(&mut p);
        block.outputs.push("nowhere".into());
        let e = GraphView::build(&p).unwrap_err().to_string();
        assert!(e.contains("block output 'nowhere'"), "{e}");

        let mut p = sample();
        let block = main_block(&mut p);
        let dup = block.operations[0].clone();
        block.operations.insert(1, dup);
        let e = GraphView::build(&p).unwrap_err().to_string();
        assert!(e.contains("'w' is defined twice"), "{e}");
    }

    #[test]
    fn nested_names_do_not_leak_out_of_their_block() {
        let mut p = sample();
        let block = main_block(&mut p);
        block.outputs.push("z".into());
        assert!(GraphView::build(&p).is_err());
    }

    #[test]
    fn replace_and_rename_rewire_every_use() {
        let mut p = sample();
        let g = GraphView::build(&p).unwrap();
        assert_eq!(name_at(&p, &g.path(0)).as_deref(), Some("w"));
        let new = const_op("w_sparsified", blob_value(ScalarType::Float32, &[4, 4], 128));
        replace_ops(&mut p, vec![(g.path(0), vec![new])]).unwrap();
        assert_eq!(name_at(&p, &g.path(0)).as_deref(), Some("w_sparsified"));
        let rename = [("main".to_owned(), "w".to_owned(), "w_sparsified".to_owned())];
        assert_eq!(rename_all(&mut p, &rename).unwrap().rebound, 3);
        let g = GraphView::build(&p).expect("graph still valid after rewiring");
        assert!(g.uses("main", "w").is_empty());
        assert_eq!(g.uses("main", "w_sparsified").len(), 3);
    }

    #[test]
    fn set_ops_at_stores_top_level_and_nested_ops_together() {
        use crate::mil::access::set_ops_at;
        let mut p = sample();
        let g = GraphView::build(&p).unwrap();
        let (top, nested) = (g.path(0), g.path(3));
        assert_eq!(nested.steps.len(), 3);
        let renamed = |name: &str| op("identity", name, BTreeMap::new(), BTreeMap::new(), vec![]);
        let updates = vec![
            (nested.clone(), encode_op(&renamed("new_inner"))),
            (top.clone(), encode_op(&renamed("new_w"))),
        ];
        set_ops_at(&mut p, updates).unwrap();
        assert_eq!(name_at(&p, &top).as_deref(), Some("new_w"));
        assert_eq!(name_at(&p, &nested).as_deref(), Some("new_inner"));
        // The op owning the nested block is otherwise unchanged.
        assert_eq!(name_at(&p, &g.path(2)).as_deref(), Some("branch"));
        let mut nowhere = nested.clone();
        nowhere.steps = [2, 0, 7][..].into();
        assert!(set_ops_at(&mut p, vec![(nowhere, encode_op(&renamed("x")))]).is_none());
    }

    #[test]
    fn replace_inside_nested_block_and_bad_paths() {
        let mut p = sample();
        let g = GraphView::build(&p).unwrap();
        let path = g.path(3);
        assert_eq!(name_at(&p, &path).as_deref(), Some("inner_add"));
        let repl = op("identity", "ident", BTreeMap::new(), BTreeMap::new(), vec![]);
        replace_ops(&mut p, vec![(path.clone(), vec![repl])]).unwrap();
        assert_eq!(name_at(&p, &path).as_deref(), Some("ident"));
        let mut bad = path.clone();
        bad.steps = [9][..].into();
        assert!(replace_ops(&mut p, vec![(bad.clone(), vec![])]).is_err());
        bad.steps = [2, 5, 0][..].into();
        assert!(replace_ops(&mut p, vec![(bad, vec![])]).is_err());
        let rename = [("nope".to_owned(), "a".to_owned(), "b".to_owned())];
        assert!(rename_all(&mut p, &rename).is_err());
    }
}
