//! Writing `model.mlmodel` without holding its encoding.
//!
//! The output description is about as large as the input's, and the bytes of
//! [`super::model::encode_model`] sat in memory beside the whole program while they were written
//! (issue 18). This writes the same bytes as they are made: prost's encoding, field for field.
//! prost writes a message's fields in the order the schema declares them (ascending tags here,
//! with `Model`'s `Type` oneof last), a map entry as key then value, each skipped when it equals
//! its default, and a `bytes` field as its length and contents. So every message above the ops is
//! written as the encoding of its fields before the one that holds the ops, then that field's
//! entries, then the encoding of the fields after it; each body's ops come framed from an
//! [`OpLists`]. A test compares the result with `encode_model` byte for byte.

use std::io::{self, Write};

use prost::Message;

use crate::proto::mil::{Block, Function, Program};
use crate::proto::spec::Model;

use super::wire::{
    field_len, put_head, BLOCK_OPERATIONS, ENTRY_KEY, ENTRY_VALUE, FUNCTION_BLOCK_SPECIALIZATIONS,
    MODEL_ML_PROGRAM, PROGRAM_FUNCTIONS,
};

/// Where the ops of each function body come from when a model is written: the blocks themselves
/// (`InBlocks`, in tests), or a scratch file the ops were assembled into (`crate::mil::assemble`). Nested
/// blocks are always inside their op's bytes.
pub trait OpLists {
    /// The encoded size of the `operations` field of body `specialization` of `function`: every
    /// op with its key and length.
    fn encoded_len(&self, function: &str, specialization: &str, block: &Block) -> usize;
    /// Writes that field.
    fn write(
        &self,
        function: &str,
        specialization: &str,
        block: &Block,
        out: &mut dyn Write,
    ) -> io::Result<()>;
}

/// The ops each block holds: the in-memory form tests compare the streamed one with.
#[cfg(test)]
pub struct InBlocks;

#[cfg(test)]
impl OpLists for InBlocks {
    fn encoded_len(&self, _: &str, _: &str, block: &Block) -> usize {
        ops_field_len(block)
    }

    fn write(&self, _: &str, _: &str, block: &Block, out: &mut dyn Write) -> io::Result<()> {
        let mut head = Vec::with_capacity(16);
        for op in &block.operations {
            head.clear();
            put_head(BLOCK_OPERATIONS, op.len(), &mut head);
            out.write_all(&head)?;
            out.write_all(op)?;
        }
        Ok(())
    }
}

/// The encoded size of the ops `block` holds (its `operations` field).
fn ops_field_len(block: &Block) -> usize {
    block
        .operations
        .iter()
        .map(|op| field_len(BLOCK_OPERATIONS, op.len()))
        .sum()
}

/// The frame of one op in a block's `operations` field, for an op of `len` bytes.
pub fn op_head(len: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(16);
    put_head(BLOCK_OPERATIONS, len, &mut head);
    head
}

/// Writes `shell` (a model whose `Type` is unset) with `program` as its ML Program: the bytes
/// `encode_model` gives for the two together, each body's ops taken from `ops`.
pub fn write_model(
    shell: &Model,
    program: &Program,
    ops: &impl OpLists,
    out: &mut impl Write,
) -> io::Result<()> {
    debug_assert!(shell.r#type.is_none(), "the program is written apart");
    let mut head = shell.encode_to_vec();
    put_head(MODEL_ML_PROGRAM, program_len(program, ops), &mut head);
    out.write_all(&head)?;
    write_program(program, ops, out)
}

// The encoded sizes below are prost's for the message as held, with the ops the bodies hold
// exchanged for those `ops` gives: a message's size is the sum of its fields'.

fn block_len(function: &str, specialization: &str, block: &Block, ops: &impl OpLists) -> usize {
    block.encoded_len() - ops_field_len(block) + ops.encoded_len(function, specialization, block)
}

fn function_len(name: &str, function: &Function, ops: &impl OpLists) -> usize {
    let mut len = function.encoded_len();
    for (specialization, block) in &function.block_specializations {
        len -= entry_len(
            FUNCTION_BLOCK_SPECIALIZATIONS,
            specialization,
            block.encoded_len(),
        );
        len += entry_len(
            FUNCTION_BLOCK_SPECIALIZATIONS,
            specialization,
            block_len(name, specialization, block, ops),
        );
    }
    len
}

fn program_len(program: &Program, ops: &impl OpLists) -> usize {
    let mut len = program.encoded_len();
    for (name, function) in &program.functions {
        len -= entry_len(PROGRAM_FUNCTIONS, name, function.encoded_len());
        len += entry_len(PROGRAM_FUNCTIONS, name, function_len(name, function, ops));
    }
    len
}

fn write_program(program: &Program, ops: &impl OpLists, out: &mut impl Write) -> io::Result<()> {
    let before = Program {
        version: program.version,
        ..Default::default()
    };
    out.write_all(&before.encode_to_vec())?;
    for (name, function) in &program.functions {
        write_entry(PROGRAM_FUNCTIONS, name, function_len(name, function, ops), out)?;
        write_function(name, function, ops, out)?;
    }
    let after = Program {
        doc_string: program.doc_string.clone(),
        attributes: program.attributes.clone(),
        ..Default::default()
    };
    out.write_all(&after.encode_to_vec())
}

fn write_function(
    name: &str,
    function: &Function,
    ops: &impl OpLists,
    out: &mut impl Write,
) -> io::Result<()> {
    if function_len(name, function, ops) == 0 {
        return Ok(());
    }
    let before = Function {
        inputs: function.inputs.clone(),
        opset: function.opset.clone(),
        ..Default::default()
    };
    out.write_all(&before.encode_to_vec())?;
    for (specialization, block) in &function.block_specializations {
        let len = block_len(name, specialization, block, ops);
        write_entry(FUNCTION_BLOCK_SPECIALIZATIONS, specialization, len, out)?;
        if len > 0 {
            write_block(name, specialization, block, ops, out)?;
        }
    }
    let after = Function {
        attributes: function.attributes.clone(),
        ..Default::default()
    };
    out.write_all(&after.encode_to_vec())
}

fn write_block(
    function: &str,
    specialization: &str,
    block: &Block,
    ops: &impl OpLists,
    out: &mut impl Write,
) -> io::Result<()> {
    let before = Block {
        inputs: block.inputs.clone(),
        outputs: block.outputs.clone(),
        ..Default::default()
    };
    out.write_all(&before.encode_to_vec())?;
    ops.write(function, specialization, block, out)?;
    let after = Block {
        attributes: block.attributes.clone(),
        ..Default::default()
    };
    out.write_all(&after.encode_to_vec())
}

/// The encoded size of one entry `name → value` of the map field `tag`, for a value of `value_len`
/// bytes. prost leaves out an empty key, and a value equal to its default, which is exactly a
/// value that encodes to nothing.
fn entry_len(tag: u32, name: &str, value_len: usize) -> usize {
    field_len(tag, entry_body_len(name, value_len))
}

fn entry_body_len(name: &str, value_len: usize) -> usize {
    let key_len = if name.is_empty() {
        0
    } else {
        field_len(ENTRY_KEY, name.len())
    };
    key_len
        + if value_len == 0 {
            0
        } else {
            field_len(ENTRY_VALUE, value_len)
        }
}

/// The head of one entry `name → value` of the map field `tag`, up to the value's bytes, which the
/// caller writes (none when `value_len` is 0).
fn write_entry(tag: u32, name: &str, value_len: usize, out: &mut impl Write) -> io::Result<()> {
    let mut head = Vec::with_capacity(32 + name.len());
    put_head(tag, entry_body_len(name, value_len), &mut head);
    if !name.is_empty() {
        put_head(ENTRY_KEY, name.len(), &mut head);
        head.extend_from_slice(name.as_bytes());
    }
    if value_len > 0 {
        put_head(ENTRY_VALUE, value_len, &mut head);
    }
    out.write_all(&head)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::mil::build::busy_program;
    use crate::mil::model::{decode_model, encode_model};
    use crate::proto::spec::model;

    /// What `write_model` writes for `model`, split as the engine holds it.
    fn streamed(model: &Model) -> Vec<u8> {
        let mut shell = model.clone();
        let Some(model::Type::MlProgram(program)) = shell.r#type.take() else {
            panic!("not an ML Program")
        };
        let mut out = Vec::new();
        write_model(&shell, &program, &InBlocks, &mut out).unwrap();
        out
    }

    fn assert_same_bytes(model: &Model) {
        assert_eq!(streamed(model), encode_model(model));
    }

    #[test]
    fn writes_what_encode_model_returns() {
        let full = Model {
            specification_version: 9,
            description: Some(Default::default()),
            is_updatable: true,
            r#type: Some(model::Type::MlProgram(busy_program())),
        };
        assert_same_bytes(&full);
        assert_same_bytes(&Model {
            r#type: Some(model::Type::MlProgram(Program::default())),
            ..Default::default()
        });
        let mut bare = busy_program();
        bare.doc_string.clear();
        bare.attributes.clear();
        bare.version = 0;
        assert_same_bytes(&Model {
            specification_version: 7,
            r#type: Some(model::Type::MlProgram(bare)),
            ..Default::default()
        });
    }

    #[test]
    fn writes_every_fixture_as_encode_model_does() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut checked = 0;
        for entry in std::fs::read_dir(&fixtures).unwrap() {
            let path = entry.unwrap().path().join("Data/com.apple.CoreML/model.mlmodel");
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let model = decode_model(bytes.into(), &path).unwrap();
            assert_eq!(streamed(&model), encode_model(&model), "{}", path.display());
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} fixtures found");
    }
}
