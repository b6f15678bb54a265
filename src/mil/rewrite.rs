//! Structural edits of a program: replacing an op and rebinding every use of a value.

use crate::error::{Error, Result};
use crate::proto::mil::{argument::binding::Binding, Block, Operation, Program};

use super::graph::OpPath;

/// Replaces the op at `path` with `replacement` (one or more ops, in order) and returns the old op.
pub fn replace_op(program: &mut Program, path: &OpPath, replacement: Vec<Operation>) -> Result<Operation> {
    let missing = || Error::Graph(format!("no op at {path:?}"));
    let block = program
        .functions
        .get_mut(&path.function)
        .and_then(|f| f.block_specializations.get_mut(&path.specialization))
        .ok_or_else(missing)?;
    let (&last, parents) = path.steps.split_last().ok_or_else(missing)?;
    let mut block: &mut Block = block;
    let mut iter = parents.chunks(2);
    for pair in &mut iter {
        let [o, b] = pair else { return Err(missing()) };
        block = block.operations.get_mut(*o).and_then(|op| op.blocks.get_mut(*b)).ok_or_else(missing)?;
    }
    if last >= block.operations.len() {
        return Err(missing());
    }
    let old = block.operations.splice(last..=last, replacement).next().ok_or_else(missing)?;
    Ok(old)
}

/// Rebinds every use of `old` in `function` to `new`: op inputs at any depth and block outputs.
/// Value names are unique within a function (SSA), so a plain rename is exact.
pub fn rename_uses(program: &mut Program, function: &str, old: &str, new: &str) -> Result<usize> {
    fn walk(block: &mut Block, old: &str, new: &str) -> usize {
        let mut n = 0;
        for op in &mut block.operations {
            for arg in op.inputs.values_mut() {
                for binding in &mut arg.arguments {
                    if let Some(Binding::Name(name)) = &mut binding.binding {
                        if name == old {
                            *name = new.to_owned();
                            n += 1;
                        }
                    }
                }
            }
            for nested in &mut op.blocks {
                n += walk(nested, old, new);
            }
        }
        for out in &mut block.outputs {
            if out == old {
                *out = new.to_owned();
                n += 1;
            }
        }
        n
    }
    let f = program
        .functions
        .get_mut(function)
        .ok_or_else(|| Error::Graph(format!("no function '{function}'")))?;
    Ok(f.block_specializations.values_mut().map(|b| walk(b, old, new)).sum())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dtype::ScalarType;
    use crate::mil::build::{bind_name, const_op, op};
    use crate::mil::graph::{op_at, GraphView, UseSite};
    use crate::mil::value::{blob_value, tensor_value_type, OperationExt};
    use crate::proto::mil::{Block, Function, NamedValueType};

    /// main(x): w = const; y = linear(x, w); cond-like op with a nested block that also uses w;
    /// the function returns y and w.
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
        let mut outer = op("cond", "branch", BTreeMap::new(), BTreeMap::new(), vec![("c".into(), t.clone())]);
        outer.blocks.push(Block { outputs: vec!["z".into()], operations: vec![inner], ..Default::default() });
        let block = Block { outputs: vec!["y".into(), "w".into()], operations: vec![w, lin, outer], ..Default::default() };
        let function = Function {
            inputs: vec![NamedValueType { name: "x".into(), r#type: Some(t) }],
            opset: "CoreML6".into(),
            block_specializations: BTreeMap::from([("CoreML6".into(), block)]),
            ..Default::default()
        };
        Program { version: 1, functions: BTreeMap::from([("main".into(), function)]), ..Default::default() }
    }

    #[test]
    fn graph_lists_uses_in_every_place() {
        let p = sample();
        let g = GraphView::build(&p).unwrap();
        let names: Vec<_> = g.ops.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["w", "lin", "branch", "inner_add"]);
        assert_eq!(g.ops[3].path.steps, vec![2, 0, 0]);
        let uses = g.uses("main", "w");
        assert_eq!(
            uses,
            &[
                UseSite::Input { op: 1, param: "weight".into() },
                UseSite::Input { op: 3, param: "y".into() },
                UseSite::BlockOutput { owner: None },
            ]
        );
        assert_eq!(g.consumers(0), vec![(1, "weight"), (3, "y")]);
        assert_eq!(g.producer("main", "y"), Some(1));
        assert_eq!(op_at(&p, &g.ops[3].path).and_then(|o| o.name()), Some("inner_add"));
    }

    #[test]
    fn graph_rejects_dangling_and_cyclic_names() {
        let mut p = sample();
        // Make `lin` use `z`, which is only defined later inside a nested block: a dangling use.
        let block = p.functions.get_mut("main").unwrap().block_specializations.get_mut("CoreML6").unwrap();
        block.operations[1].inputs.insert("bias".into(), bind_name("c"));
        let e = GraphView::build(&p).unwrap_err().to_string();
        assert!(e.contains("op 'lin' (linear) input 'bias' refers to 'c'"), "{e}");

        let mut p = sample();
        let block = p.functions.get_mut("main").unwrap().block_specializations.get_mut("CoreML6").unwrap();
        block.outputs.push("nowhere".into());
        let e = GraphView::build(&p).unwrap_err().to_string();
        assert!(e.contains("block output 'nowhere'"), "{e}");

        let mut p = sample();
        let block = p.functions.get_mut("main").unwrap().block_specializations.get_mut("CoreML6").unwrap();
        let dup = block.operations[0].clone();
        block.operations.insert(1, dup);
        let e = GraphView::build(&p).unwrap_err().to_string();
        assert!(e.contains("'w' is defined twice"), "{e}");
    }

    #[test]
    fn nested_names_do_not_leak_out_of_their_block() {
        let mut p = sample();
        let block = p.functions.get_mut("main").unwrap().block_specializations.get_mut("CoreML6").unwrap();
        block.outputs.push("z".into());
        assert!(GraphView::build(&p).is_err());
    }

    #[test]
    fn replace_and_rename_rewire_every_use() {
        let mut p = sample();
        let g = GraphView::build(&p).unwrap();
        let new = const_op("w_sparsified", blob_value(ScalarType::Float32, &[4, 4], 128));
        let old = replace_op(&mut p, &g.ops[0].path, vec![new]).unwrap();
        assert_eq!(old.name(), Some("w"));
        assert_eq!(rename_uses(&mut p, "main", "w", "w_sparsified").unwrap(), 3);
        let g = GraphView::build(&p).expect("graph still valid after rewiring");
        assert!(g.uses("main", "w").is_empty());
        assert_eq!(g.uses("main", "w_sparsified").len(), 3);
    }

    #[test]
    fn replace_inside_nested_block_and_bad_paths() {
        let mut p = sample();
        let g = GraphView::build(&p).unwrap();
        let path = g.ops[3].path.clone();
        let repl = op("identity", "ident", BTreeMap::new(), BTreeMap::new(), vec![]);
        assert_eq!(replace_op(&mut p, &path, vec![repl]).unwrap().name(), Some("inner_add"));
        assert_eq!(op_at(&p, &path).and_then(|o| o.name()), Some("ident"));
        let mut bad = path.clone();
        bad.steps = vec![9];
        assert!(replace_op(&mut p, &bad, vec![]).is_err());
        bad.steps = vec![2, 5, 0];
        assert!(replace_op(&mut p, &bad, vec![]).is_err());
        assert!(rename_uses(&mut p, "nope", "a", "b").is_err());
    }
}
