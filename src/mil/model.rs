//! Decoding `model.mlmodel` without silently losing data.
//!
//! prost drops fields its schema does not know. Re-encoding a decoded model and comparing lengths
//! catches that: protobuf writers emit canonical encodings, so any byte difference means content our
//! schema does not cover (a newer Core ML field, or a non-canonical writer). We refuse rather than
//! write a model that lost it. The file is read as a stream, its ops left in it
//! ([`super::split`]); [`decode_model`] reads a buffer the same way and holds the ops.

use std::fs::File;
use std::hash::RandomState;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::bytes::Bytes;
use prost::Message;

use super::split::{split_model, BodyPlaces, SplitModel};
use crate::error::{Error, IoContext, Result};
use crate::open_file::{open_regular_or_err, Links};
use crate::proto::mil::Program;
use crate::proto::spec::{model, Model};

/// How much of the file is read at a time.
const READ_BUFFER: usize = 256 << 10;

/// A decoded ML Program model. The program is held apart from the rest of the `Model` so that no
/// code path has to re-check the `Type` oneof.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub path: PathBuf,
    /// Everything but the program (its `Type` oneof is `None` while loaded).
    pub shell: Model,
    /// Its function bodies hold no ops when they are in [`LoadedModel::ops_in_file`].
    pub program: Program,
    /// Where the ops lie, for a model read by [`LoadedModel::read`], until the graph index takes
    /// them ([`crate::mil::GraphView::of_model`]).
    pub ops_in_file: Option<OpsInFile>,
    /// What the user should know about how it was read (bodies left out, as coremltools leaves
    /// them out).
    pub notices: Vec<String>,
}

/// The file a model was read from, still open, and where each function body's ops lie in it.
#[derive(Debug, Clone)]
pub struct OpsInFile {
    pub file: Arc<File>,
    pub bodies: Vec<BodyPlaces>,
    /// What made the places' checks.
    pub hasher: RandomState,
}

impl LoadedModel {
    /// Reads and decodes the file at `path`, leaving its ops there; errors name `label`, the path
    /// the user knows (it differs for a zipped package). See [`decode_model`] for what is refused.
    pub fn read(path: &Path, label: &Path) -> Result<Self> {
        // Never blocking on a FIFO swapped in for the model, and only a regular file read.
        let file = open_regular_or_err(path, Links::Follow).at(label)?;
        let len = file.metadata().at(label)?.len();
        let SplitModel {
            model,
            bodies,
            hasher,
        } = split_model(BufReader::with_capacity(READ_BUFFER, &file), len, label)?;
        let (shell, program, notices) = into_program(model, label)?;
        let bodies = bodies
            .into_iter()
            .filter(|b| {
                let function = program.functions.get(&b.function);
                function.is_some_and(|f| f.block_specializations.contains_key(&b.specialization))
            })
            .collect();
        Ok(LoadedModel {
            path: label.to_owned(),
            shell,
            program,
            ops_in_file: Some(OpsInFile {
                file: Arc::new(file),
                bodies,
                hasher,
            }),
            notices,
        })
    }

    /// Reads the whole file and holds every op in the program: for tests and tools that walk the
    /// program itself.
    pub fn read_held(path: &Path, label: &Path) -> Result<Self> {
        let mut bytes = Vec::new();
        open_regular_or_err(path, Links::Follow)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .at(label)?;
        let (shell, program, notices) = into_program(decode_model(bytes.into(), label)?, label)?;
        Ok(LoadedModel {
            path: label.to_owned(),
            shell,
            program,
            ops_in_file: None,
            notices,
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

/// Leaves each function with the one body coremltools reads, the block specialization of its
/// opset, and refuses a function without one, as coremltools does (`milproto/load.py`): it never
/// reads the others and leaves them out of what it writes. Returns a notice per body left out.
fn keep_opset_bodies(program: &mut Program, label: &Path) -> Result<Vec<String>> {
    let mut notices = Vec::new();
    for (name, function) in &mut program.functions {
        if !function.block_specializations.contains_key(&function.opset) {
            return Err(Error::Model {
                path: label.to_owned(),
                reason: format!(
                    "function '{name}' has no block specialization for its opset '{}' \
                     (coremltools refuses it too)",
                    function.opset
                ),
            });
        }
        let opset = &function.opset;
        for other in function.block_specializations.keys().filter(|k| *k != opset) {
            notices.push(format!(
                "{}: function '{name}': block specialization '{other}' is not for its opset \
                 '{opset}' and is left out, as coremltools leaves it out",
                label.display(),
            ));
        }
        let opset = opset.clone();
        function.block_specializations.retain(|k, _| *k == opset);
    }
    Ok(notices)
}

/// Checks a model ([`check_program`]) and splits it into its shell and its program, each function
/// left with the one body coremltools reads ([`keep_opset_bodies`]); with a notice per body left
/// out.
fn into_program(mut model: Model, label: &Path) -> Result<(Model, Program, Vec<String>)> {
    check_program(&model, label)?;
    let Some(model::Type::MlProgram(mut program)) = model.r#type.take() else {
        // `check_program` lets only ML Programs through; keep the error path rather than panic.
        return Err(Error::Model {
            path: label.to_owned(),
            reason: "is not an ML Program".into(),
        });
    };
    let notices = keep_opset_bodies(&mut program, label)?;
    Ok((model, program, notices))
}

/// Decodes a `Model`, checks the re-encode is lossless, and requires an ML Program. Every op is
/// decoded once to be checked the same way (see `crate::mil::ops`); the program keeps them as
/// slices of `bytes`. A model past the decode budget (`crate::mil::decode_budget`) is refused
/// before it is decoded.
pub fn decode_model(bytes: Bytes, path: &Path) -> Result<Model> {
    let SplitModel {
        mut model, bodies, ..
    } = split_model(&bytes[..], bytes.len() as u64, path)?;
    check_program(&model, path)?;
    if let Some(model::Type::MlProgram(program)) = &mut model.r#type {
        for body in bodies {
            let block = program
                .functions
                .get_mut(&body.function)
                .and_then(|f| f.block_specializations.get_mut(&body.specialization))
                .ok_or_else(|| Error::Graph(format!("no body '{}' read", body.function)))?;
            block.operations = body
                .ops
                .iter()
                .map(|p| bytes.slice(p.offset as usize..p.offset as usize + p.len as usize))
                .collect();
        }
    }
    Ok(model)
}

/// The newest specification version coremltools 9.0 knows (iOS26).
const NEWEST_SPEC_VERSION: i32 = 10;

/// Refuses what is not an ML Program of version 1, or is of a specification version newer than
/// coremltools knows.
fn check_program(model: &Model, path: &Path) -> Result<()> {
    let err = |reason: String| Error::Model {
        path: path.to_owned(),
        reason,
    };
    if model.specification_version > NEWEST_SPEC_VERSION {
        // coremltools 9.0 refuses it too ("11 is not a valid AvailableTarget"): its rules for a
        // newer version are unknown. Older ones (even below 6) it reads, and writes as 7 once
        // pruned, as mlprune does.
        return Err(err(format!(
            "specification version {} is newer than {NEWEST_SPEC_VERSION} (iOS26), the newest \
             coremltools 9.0 knows",
            model.specification_version
        )));
    }
    match &model.r#type {
        Some(model::Type::MlProgram(program)) if program.version != 1 => Err(err(format!(
            "ML Program version {} is not supported (expected 1)",
            program.version
        ))),
        Some(model::Type::MlProgram(_)) => Ok(()),
        Some(model::Type::SerializedModel(_)) => Err(err("is a serialized model, not an ML Program".into())),
        None => Err(err(
            "is not an ML Program (neural network, pipeline and classic models are not supported)".into(),
        )),
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

    /// coremltools 9.0 refuses a version newer than it knows and reads older ones, even below 6
    /// (it writes them as 7 once pruned).
    #[test]
    fn refuses_specification_versions_newer_than_coremltools_knows() {
        for (version, known) in [(-1, true), (5, true), (10, true), (11, false), (i32::MAX, false)] {
            let mut model = program_model();
            model.specification_version = version;
            let read = decode_model(model.encode_to_vec().into(), Path::new("m"));
            match read {
                Ok(_) => assert!(known, "{version} read"),
                Err(e) => {
                    assert!(!known, "{version}: {e}");
                    assert!(e.to_string().contains("newer than 10 (iOS26)"), "{e}");
                }
            }
        }
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
