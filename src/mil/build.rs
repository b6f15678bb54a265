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
