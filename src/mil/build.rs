//! Constructors for operations in coremltools' conventions (spec §2.5).

use std::collections::BTreeMap;

use crate::proto::mil::{
    argument, Argument, Block, Function, NamedValueType, Operation, Program, Value, ValueType,
};

use super::entries::entries_from;
use super::value::string_value;

/// An input argument bound to a named value.
pub fn bind_name(name: &str) -> Argument {
    Argument {
        arguments: vec![argument::Binding {
            binding: Some(argument::binding::Binding::Name(name.to_owned())),
        }],
    }
}

/// An input argument holding a value inline.
pub fn bind_value(value: Value) -> Argument {
    Argument {
        arguments: vec![argument::Binding {
            binding: Some(argument::binding::Binding::Value(value)),
        }],
    }
}

/// An op with a `name` attribute plus the given attributes, inputs and outputs.
pub fn op(
    op_type: &str,
    name: &str,
    inputs: BTreeMap<String, Argument>,
    mut attributes: BTreeMap<String, Value>,
    outputs: Vec<(String, ValueType)>,
) -> Operation {
    attributes.insert("name".to_owned(), string_value(name));
    Operation {
        r#type: op_type.to_owned(),
        inputs: entries_from(inputs),
        outputs: outputs
            .into_iter()
            .map(|(name, ty)| NamedValueType {
                name,
                r#type: Some(ty),
            })
            .collect(),
        blocks: vec![],
        attributes: entries_from(attributes),
    }
}

/// A `const` op whose single output is named like the op, as coremltools writes it.
pub fn const_op(name: &str, value: Value) -> Operation {
    let ty = value.r#type.clone().unwrap_or_default();
    let mut attributes = BTreeMap::new();
    attributes.insert("val".to_owned(), value);
    op(
        "const",
        name,
        BTreeMap::new(),
        attributes,
        vec![(name.to_owned(), ty)],
    )
}

/// A program of one function, `main`, with `inputs` and one block specialization `opset` (also its
/// opset), as coremltools writes a single-function model.
pub fn main_program(inputs: Vec<NamedValueType>, opset: &str, block: Block) -> Program {
    let function = Function {
        inputs,
        opset: opset.to_owned(),
        block_specializations: BTreeMap::from([(opset.to_owned(), block)]),
        ..Default::default()
    };
    Program {
        version: 1,
        functions: BTreeMap::from([("main".to_owned(), function)]),
        ..Default::default()
    }
}

/// Every field around the ones written here set, maps of several entries, and the empty or
/// default keys and values prost skips: for tests of the readers and writers of whole models.
#[cfg(test)]
pub fn busy_program() -> Program {
    use crate::dtype::ScalarType;
    use crate::mil::ops::encode_ops;
    use crate::mil::value::{blob_value, tensor_value_type};
    let t = tensor_value_type(ScalarType::Float16, &[4, 4]);
    let weight = const_op("w", blob_value(ScalarType::Float16, &[4, 4], 64));
    let mut cond = op(
        "cond",
        "branch",
        BTreeMap::from([("x".into(), bind_name("x"))]),
        BTreeMap::new(),
        vec![("c".into(), t.clone())],
    );
    cond.blocks.push(Block {
        outputs: vec!["w".into()],
        operations: encode_ops([weight.clone()]),
        ..Default::default()
    });
    let attributes = BTreeMap::from([
        ("note".to_owned(), string_value("kept")),
        (String::new(), string_value("empty key")),
        ("empty".to_owned(), Default::default()),
    ]);
    let block = Block {
        inputs: vec![NamedValueType {
            name: "x".into(),
            r#type: Some(t.clone()),
        }],
        outputs: vec!["w".into(), "c".into()],
        operations: encode_ops([weight, cond]),
        attributes: attributes.clone(),
    };
    let function = Function {
        inputs: block.inputs.clone(),
        opset: "CoreML7".into(),
        block_specializations: BTreeMap::from([
            ("CoreML7".to_owned(), block.clone()),
            ("CoreML8".to_owned(), block.clone()),
            ("default_block".to_owned(), Block::default()),
            (String::new(), block.clone()),
        ]),
        attributes: attributes.clone(),
    };
    Program {
        version: 1,
        functions: BTreeMap::from([
            ("main".to_owned(), function.clone()),
            ("second".to_owned(), function),
            ("empty".to_owned(), Function::default()),
        ]),
        doc_string: "a program with everything".into(),
        attributes,
    }
}
