//! Decoding `model.mlmodel` without silently losing data.
//!
//! prost drops fields its schema does not know. Re-encoding a decoded model and comparing lengths
//! catches that: protobuf writers emit canonical encodings, so any byte difference means content our
//! schema does not cover (a newer Core ML field, or a non-canonical writer). We refuse rather than
//! write a model that lost it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::bytes::Bytes;
use prost::Message;

use super::decode_budget;
use super::ops::{check_block, OpDecodeError};
use crate::error::{Error, IoContext, Result};
use crate::proto::mil::Program;
use crate::proto::spec::{model, Model};

/// A decoded ML Program model. The program is held apart from the rest of the `Model` so that no
/// code path has to re-check the `Type` oneof.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub path: PathBuf,
    /// Everything but the program (its `Type` oneof is `None` while loaded).
    pub shell: Model,
    pub program: Program,
    /// The file it was read from, still open, and the bytes read: the program's ops are slices of
    /// them until they move to the file ([`crate::mil::GraphView::move_ops_to_file`]).
    pub source: Option<(Arc<File>, Bytes)>,
}

impl LoadedModel {
    /// Reads and decodes the file at `path`; errors name `label`, the path the user knows (it
    /// differs for a zipped package). See [`decode_model`] for what is refused.
    pub fn read(path: &Path, label: &Path) -> Result<Self> {
        let mut file = File::open(path).at(label)?;
        let mut read = Vec::new();
        file.read_to_end(&mut read).at(label)?;
        let bytes = Bytes::from(read);
        let mut shell = decode_model(bytes.clone(), label)?;
        let program = match shell.r#type.take() {
            Some(model::Type::MlProgram(p)) => p,
            // decode_model only returns ML Programs; keep the error path rather than panic.
            _ => {
                return Err(Error::Model {
                    path: label.to_owned(),
                    reason: "is not an ML Program".into(),
                })
            }
        };
        Ok(LoadedModel {
            path: label.to_owned(),
            shell,
            program,
            source: Some((Arc::new(file), bytes)),
        })
    }

    pub fn spec_version(&self) -> i32 {
        self.shell.specification_version
    }

    /// Writes the full model to `path`, each function body's ops taken from `ops`: the bytes
    /// [`encode_model`] gives for the model holding them, without holding them (see
    /// [`super::stream`]).
    pub fn write_with(&self, path: &Path, ops: &impl super::stream::OpLists) -> Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).at(path)?);
        super::stream::write_model(&self.shell, &self.program, ops, &mut out).at(path)?;
        std::io::Write::flush(&mut out).at(path)
    }
}

/// Decodes a `Model`, checks the re-encode is lossless, and requires an ML Program. Every op is
/// decoded once to be checked the same way (see `crate::mil::ops`); the program keeps them as
/// slices of `bytes`.
pub fn decode_model(bytes: Bytes, path: &Path) -> Result<Model> {
    let err = |reason: String| Error::Model {
        path: path.to_owned(),
        reason,
    };
    if let Some(size) = decode_budget::decoded_size(&bytes) {
        let (estimate, budget) = (size.estimate(), decode_budget::budget(bytes.len() as u64));
        if estimate > budget {
            return Err(err(format!(
                "would take about {} MiB of memory once decoded ({} messages in {} bytes), more than \
                 the budget of {} MiB ({}× the file size plus {} MiB); refusing to decode it",
                estimate >> 20,
                size.messages,
                bytes.len(),
                budget >> 20,
                decode_budget::BUDGET_FACTOR,
                decode_budget::BUDGET_FLOOR >> 20
            )));
        }
    }
    let read = bytes.len();
    let model = Model::decode(bytes).map_err(|e| err(format!("not a valid Core ML model protobuf: {e}")))?;
    let understood = model.encoded_len();
    if understood != read {
        return Err(err(lossy(read, understood)));
    }
    match &model.r#type {
        Some(model::Type::MlProgram(program)) => {
            if program.version != 1 {
                return Err(err(format!(
                    "ML Program version {} is not supported (expected 1)",
                    program.version
                )));
            }
            for function in program.functions.values() {
                for block in function.block_specializations.values() {
                    check_block(block).map_err(|e| err(op_refusal(e)))?;
                }
            }
            Ok(model)
        }
        Some(model::Type::SerializedModel(_)) => Err(err("is a serialized model, not an ML Program".into())),
        None => Err(err(
            "is not an ML Program (neural network, pipeline and classic models are not supported)".into(),
        )),
    }
}

/// Why a message whose `read` bytes re-encode to `understood` is refused: prost dropped what it did
/// not know.
fn lossy(read: usize, understood: usize) -> String {
    format!(
        "holds {} bytes that mlprune's schema does not cover (unknown fields or a non-canonical \
         encoding: {read} bytes read, {understood} bytes understood); refusing to rewrite it and lose \
         data",
        read.abs_diff(understood)
    )
}

/// What is wrong with an op, in the words used for the whole model.
fn op_refusal(e: OpDecodeError) -> String {
    match e {
        OpDecodeError::Invalid(e) => format!("not a valid Core ML model protobuf: {e}"),
        OpDecodeError::Lossy { read, understood } => format!("an operation {}", lossy(read, understood)),
        other @ (OpDecodeError::DuplicateKey(_) | OpDecodeError::TooDeep) => other.to_string(),
    }
}

/// Encodes a model deterministically (maps are ordered).
pub fn encode_model(model: &Model) -> Vec<u8> {
    model.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mil::Program;

    fn program_model() -> Model {
        Model {
            specification_version: 7,
            r#type: Some(model::Type::MlProgram(Program {
                version: 1,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_a_program() {
        let bytes = program_model().encode_to_vec();
        let m = decode_model(bytes.into(), Path::new("m")).expect("decodes");
        assert_eq!(m, program_model());
    }

    /// The program holds each op as a slice of the buffer read, not a copy and not decoded (issue
    /// 18: decoded ops took about ten times their file size), and a model nothing changed encodes
    /// back to the bytes read.
    #[test]
    fn ops_stay_slices_of_the_file_read() {
        use crate::dtype::ScalarType;
        use crate::mil::build::const_op;
        use crate::mil::ops::block_of;
        use crate::mil::value::blob_value;
        use crate::proto::mil::Function;
        let ops =
            (0..100).map(|i| const_op(&format!("w{i}"), blob_value(ScalarType::Float16, &[4, 4], 64 * i)));
        let function = Function {
            opset: "CoreML7".into(),
            block_specializations: [("CoreML7".to_owned(), block_of(ops))].into(),
            ..Default::default()
        };
        let mut model = program_model();
        let Some(model::Type::MlProgram(p)) = model.r#type.as_mut() else {
            unreachable!()
        };
        p.functions.insert("main".into(), function);
        let bytes = Bytes::from(model.encode_to_vec());
        let file = bytes.as_ptr_range();
        let decoded = decode_model(bytes.clone(), Path::new("m")).unwrap();
        let Some(model::Type::MlProgram(p)) = &decoded.r#type else {
            unreachable!()
        };
        let ops = &p.functions["main"].block_specializations["CoreML7"].operations;
        assert_eq!(ops.len(), 100);
        for op in ops {
            let range = op.as_ptr_range();
            assert!(
                file.start <= range.start && range.end <= file.end,
                "an op was copied"
            );
        }
        assert_eq!(encode_model(&decoded), bytes);
    }

    #[test]
    fn refuses_an_op_with_unknown_fields_or_a_key_twice() {
        use crate::mil::build::{bind_name, op};
        use crate::mil::ops::encode_op;
        use crate::proto::mil::{operation::InputEntry, Block, Function};
        let with_op = |op_bytes: Bytes| {
            let mut model = program_model();
            let Some(model::Type::MlProgram(p)) = model.r#type.as_mut() else {
                unreachable!()
            };
            let block = Block {
                operations: vec![op_bytes],
                ..Default::default()
            };
            p.functions.insert(
                "main".into(),
                Function {
                    block_specializations: [("CoreML7".to_owned(), block)].into(),
                    ..Default::default()
                },
            );
            decode_model(model.encode_to_vec().into(), Path::new("m"))
                .unwrap_err()
                .to_string()
        };
        let relu = op("relu", "r", Default::default(), Default::default(), vec![]);
        let mut unknown = encode_op(&relu).to_vec();
        unknown.extend_from_slice(&[0xe8, 0x04, 0x05]);
        let e = with_op(unknown.into());
        assert!(
            e.starts_with("m: an operation holds 3 bytes that mlprune's schema does not cover"),
            "{e}"
        );
        let mut twice = relu.clone();
        for name in ["a", "b"] {
            twice.inputs.push(InputEntry {
                key: "x".into(),
                value: Some(bind_name(name)),
            });
        }
        assert_eq!(
            with_op(encode_op(&twice)),
            "m: operation 'r' has two inputs named 'x'"
        );
        let e = with_op(Bytes::from_static(&[0xff, 0xff]));
        assert!(e.contains("not a valid Core ML model protobuf"), "{e}");
    }

    #[test]
    fn refuses_unknown_fields() {
        let mut bytes = program_model().encode_to_vec();
        // Field 77 (varint 5): unknown to our schema, so prost would drop it.
        bytes.extend_from_slice(&[0xe8, 0x04, 0x05]);
        let e = decode_model(bytes.into(), Path::new("x/model.mlmodel")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("x/model.mlmodel: holds 3 bytes"), "{msg}");
    }

    #[test]
    fn refuses_non_program_models() {
        // Field 500 (neuralNetwork) with an empty message.
        let bytes = [0x08, 0x04, 0xa2, 0x1f, 0x00];
        let e = decode_model(Bytes::copy_from_slice(&bytes), Path::new("m"))
            .unwrap_err()
            .to_string();
        // The unknown field is caught first: either way the model is refused.
        assert!(e.contains("schema does not cover"), "{e}");
        let bytes = Model {
            specification_version: 4,
            ..Default::default()
        }
        .encode_to_vec();
        let e = decode_model(bytes.into(), Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an ML Program"), "{e}");
    }

    #[test]
    fn refuses_garbage() {
        let e = decode_model(Bytes::from_static(&[0xff, 0xff, 0xff]), Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid Core ML model protobuf"), "{e}");
    }

    #[test]
    fn refuses_other_program_versions() {
        let m = Model {
            r#type: Some(model::Type::MlProgram(Program {
                version: 2,
                ..Default::default()
            })),
            ..Default::default()
        };
        let e = decode_model(m.encode_to_vec().into(), Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
    }
}
