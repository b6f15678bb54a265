//! Operations kept encoded, decoded one at a time when used.
//!
//! `Block.operations` is declared `repeated bytes` (see `proto/MIL.proto`): the wire format of a
//! message field and a bytes field is the same, so each operation stays as its encoded bytes, a
//! slice of the file read (`Bytes` shares the one buffer). A decoded operation takes about ten
//! times its encoding in small allocations; holding every op of a model of tens of thousands of
//! tensors decoded for the whole run put peak memory in proportion to the tensor count (issue 18).
//!
//! [`decode_op`] is the one way in: it refuses bytes that do not re-encode to the same length
//! (content our schema does not cover) and gives the op's entries the map form
//! (`crate::mil::entries`). [`crate::mil::decode_model`] runs it over every op once at load, so
//! later decodes of the same bytes cannot fail. An op that is not changed is written back as the
//! bytes it was read as.

use prost::bytes::Bytes;
use prost::Message;

use super::entries::{normalize_op, DuplicateKey};
use crate::error::Error;
use crate::proto::mil::{Block, Operation};

/// Why an op's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpDecodeError {
    /// Not an `Operation` protobuf.
    Invalid(String),
    /// Decodes, but re-encodes to `understood` of its `read` bytes: fields our schema lacks.
    Lossy { read: usize, understood: usize },
    /// A key given twice in its inputs or attributes.
    DuplicateKey(DuplicateKey),
    /// Blocks nested deeper than [`MAX_BLOCK_DEPTH`].
    TooDeep,
}

/// How deep blocks may nest in ops (a `cond` in a `while_loop` in a `cond` is three). Real models
/// nest a few levels; a file of thousands of levels overflowed the stack of every reader and, below
/// that, took memory quadratic in its depth (issue 18). It also keeps every op within the nesting
/// the decode budget walks (`crate::mil::decode_budget`).
pub const MAX_BLOCK_DEPTH: usize = 32;

impl std::fmt::Display for OpDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpDecodeError::Invalid(e) => write!(f, "not a valid operation protobuf: {e}"),
            OpDecodeError::Lossy { read, understood } => {
                write!(
                    f,
                    "{read} bytes read, {understood} understood by mlprune's schema"
                )
            }
            OpDecodeError::DuplicateKey(d) => {
                write!(f, "operation '{}' has two {}s named '{}'", d.op, d.field, d.key)
            }
            OpDecodeError::TooDeep => write!(f, "blocks nested more than {MAX_BLOCK_DEPTH} levels deep"),
        }
    }
}

/// Past the check at load (`crate::mil::decode_model`) an op that does not decode is a broken
/// program built in memory, not bad input: a graph error.
impl From<OpDecodeError> for Error {
    fn from(e: OpDecodeError) -> Self {
        Error::Graph(format!("an op does not decode: {e}"))
    }
}

/// Decodes one op, checked as described in the module docs. Its nested blocks' ops stay encoded.
pub fn decode_op(bytes: &Bytes) -> Result<Operation, OpDecodeError> {
    let mut op = Operation::decode(bytes.clone()).map_err(|e| OpDecodeError::Invalid(e.to_string()))?;
    let understood = op.encoded_len();
    if understood != bytes.len() {
        return Err(OpDecodeError::Lossy {
            read: bytes.len(),
            understood,
        });
    }
    normalize_op(&mut op).map_err(OpDecodeError::DuplicateKey)?;
    Ok(op)
}

/// The bytes a block stores for `op`.
pub fn encode_op(op: &Operation) -> Bytes {
    Bytes::from(op.encode_to_vec())
}

/// The stored form of a list of ops, for building blocks.
pub fn encode_ops(ops: impl IntoIterator<Item = Operation>) -> Vec<Bytes> {
    ops.into_iter().map(|op| encode_op(&op)).collect()
}

/// A block holding `ops`, everything else empty.
pub fn block_of(ops: impl IntoIterator<Item = Operation>) -> Block {
    Block {
        operations: encode_ops(ops),
        ..Default::default()
    }
}

/// Checks every op of `block` and of the blocks nested in its ops with [`decode_op`], and that
/// they nest at most [`MAX_BLOCK_DEPTH`] deep.
pub fn check_block(block: &Block) -> Result<(), OpDecodeError> {
    check_block_at(block, 0)
}

/// Checks one op of a function body and the ops nested in it, as [`check_block`] does.
pub fn check_op(bytes: &Bytes) -> Result<(), OpDecodeError> {
    check_op_at(bytes, 0)
}

fn check_block_at(block: &Block, depth: usize) -> Result<(), OpDecodeError> {
    block
        .operations
        .iter()
        .try_for_each(|bytes| check_op_at(bytes, depth))
}

fn check_op_at(bytes: &Bytes, depth: usize) -> Result<(), OpDecodeError> {
    let op = decode_op(bytes)?;
    if !op.blocks.is_empty() && depth >= MAX_BLOCK_DEPTH {
        return Err(OpDecodeError::TooDeep);
    }
    op.blocks
        .iter()
        .try_for_each(|nested| check_block_at(nested, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::build::{bind_name, op};
    use crate::mil::entries::Entries;
    use crate::proto::mil::operation::InputEntry;

    fn relu() -> Operation {
        let mut r = op("relu", "r", Default::default(), Default::default(), vec![]);
        r.inputs.set("x".into(), bind_name("a"));
        r
    }

    #[test]
    fn blocks_nest_at_most_the_limit() {
        let nested = |levels: usize| {
            let mut block = block_of([relu()]);
            for _ in 0..levels {
                let mut owner = relu();
                owner.blocks.push(block);
                block = block_of([owner]);
            }
            block
        };
        assert_eq!(check_block(&nested(MAX_BLOCK_DEPTH)), Ok(()));
        assert_eq!(
            check_block(&nested(MAX_BLOCK_DEPTH + 1)),
            Err(OpDecodeError::TooDeep)
        );
        // Far past it, refused without going deeper.
        assert_eq!(
            check_block(&nested(5 * MAX_BLOCK_DEPTH)),
            Err(OpDecodeError::TooDeep)
        );
    }

    #[test]
    fn round_trips_and_keeps_nested_ops_encoded() {
        let mut outer = relu();
        outer.blocks.push(block_of([relu()]));
        let bytes = encode_op(&outer);
        let decoded = decode_op(&bytes).unwrap();
        assert_eq!(decoded, outer);
        assert_eq!(decode_op(&decoded.blocks[0].operations[0]).unwrap(), relu());
    }

    #[test]
    fn refuses_garbage_unknown_fields_and_duplicate_keys() {
        assert!(matches!(
            decode_op(&Bytes::from_static(&[0xff, 0xff])),
            Err(OpDecodeError::Invalid(_))
        ));
        let mut unknown = relu().encode_to_vec();
        // Field 77, varint 5: not in our schema.
        unknown.extend_from_slice(&[0xe8, 0x04, 0x05]);
        let read = unknown.len();
        assert_eq!(
            decode_op(&Bytes::from(unknown)),
            Err(OpDecodeError::Lossy {
                read,
                understood: read - 3
            })
        );
        let mut twice = relu();
        twice.inputs.push(InputEntry {
            key: "x".into(),
            value: Some(bind_name("b")),
        });
        assert!(matches!(
            decode_op(&encode_op(&twice)),
            Err(OpDecodeError::DuplicateKey(d)) if d.key == "x" && d.field == "input"
        ));
    }

    #[test]
    fn check_block_reaches_ops_in_nested_blocks() {
        let nest = |inner: Operation| {
            let mut outer = relu();
            outer.r#type = "cond".into();
            outer.blocks.push(block_of([inner]));
            block_of([outer, relu()])
        };
        check_block(&nest(relu())).unwrap();
        let mut twice = relu();
        twice.inputs.push(InputEntry {
            key: "x".into(),
            value: Some(bind_name("b")),
        });
        assert!(matches!(
            check_block(&nest(twice)),
            Err(OpDecodeError::DuplicateKey(d)) if d.key == "x"
        ));
    }
}
