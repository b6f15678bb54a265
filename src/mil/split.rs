//! Reading `model.mlmodel` without holding its ops.
//!
//! The file was read whole and kept until the graph index was built: at 80,000 tensors the file
//! and the list of its ops were 46 of the 79 MB peak (issue 18). This reads it as a stream
//! instead. Every field on the way to the ops (the model, its program, the functions' map
//! entries, each function, the bodies' map entries, each body's block) is walked here; every other
//! field is copied as read into a skeleton, the model with its bodies' op lists left out. Each op
//! is read alone, charged to the decode budget ([`super::decode_budget`]) and checked
//! ([`super::ops::check_op`]); only its place in the file is kept ([`OpPlace`]). The graph index
//! reads the ops back from there ([`crate::mil::GraphView::of_model`]).
//!
//! The lossless check covers the same bytes as before. prost decodes the skeleton, which must
//! re-encode to its own length; the ops are checked one by one; and the framing walked here
//! (keys and lengths) must be as short as prost writes it. A field given twice, a map key given
//! twice, a value before its key: each is copied or walked as read, and prost's re-encoding of
//! the skeleton is shorter for all of them, so they are refused as before.

use std::hash::RandomState;
use std::io::BufRead;
use std::path::Path;

use prost::bytes::Bytes;
use prost::Message;

use super::decode_budget::{self, DecodedSize};
use super::op_file::{op_check, OpPlace};
use super::ops::{check_op, OpDecodeError};
use super::wire::{
    put_head, put_varint, varint_len, BLOCK_OPERATIONS, ENTRY_KEY, ENTRY_VALUE, FIXED32, FIXED64,
    FUNCTION_BLOCK_SPECIALIZATIONS, LENGTH_DELIMITED, MODEL_ML_PROGRAM, PROGRAM_FUNCTIONS, VARINT,
};
use crate::error::{Error, IoContext, Result};
use crate::proto::spec::Model;

/// The places of one function body's own ops, in order.
#[derive(Debug, Clone, Default)]
pub struct BodyPlaces {
    pub function: String,
    pub specialization: String,
    pub ops: Vec<OpPlace>,
}

/// A model read by [`split_model`].
#[derive(Debug)]
pub struct SplitModel {
    /// The model with every function body's op list empty.
    pub model: Model,
    /// Where each body's ops lie, bodies in file order.
    pub bodies: Vec<BodyPlaces>,
    /// What made the places' checks.
    pub hasher: RandomState,
}

/// The messages walked on the way to the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Model,
    Program,
    FunctionEntry,
    Function,
    BodyEntry,
    Block,
}

impl Level {
    /// The field of this message that holds the next level down, and that level.
    fn inner(self) -> Option<(u32, Level)> {
        match self {
            Level::Model => Some((MODEL_ML_PROGRAM, Level::Program)),
            Level::Program => Some((PROGRAM_FUNCTIONS, Level::FunctionEntry)),
            Level::FunctionEntry => Some((ENTRY_VALUE, Level::Function)),
            Level::Function => Some((FUNCTION_BLOCK_SPECIALIZATIONS, Level::BodyEntry)),
            Level::BodyEntry => Some((ENTRY_VALUE, Level::Block)),
            Level::Block => None,
        }
    }
}

/// Reads the `file_len` bytes of `source` as a `Model`: see the module docs. Errors name `path`.
/// The checks are those of [`super::model::decode_model`], which reads through here too.
pub fn split_model(source: impl BufRead, file_len: u64, path: &Path) -> Result<SplitModel> {
    let mut splitter = Splitter {
        source,
        pos: 0,
        path,
        file_len,
        excess: 0,
        size: DecodedSize::default(),
        budget: decode_budget::budget(file_len),
        hasher: RandomState::new(),
        bodies: Vec::new(),
    };
    let skeleton = splitter.message(Level::Model, file_len)?;
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = (splitter.bodies.iter()).find(|b| !names.insert((&b.function, &b.specialization))) {
        return Err(splitter.refusal(format!(
            "holds the body '{}' of function '{}' twice; refusing to rewrite it and lose data",
            twice.specialization, twice.function
        )));
    }
    drop(names);
    if let Some(size) = decode_budget::decoded_size(&skeleton) {
        let skeleton_budget = decode_budget::skeleton_budget(skeleton.len() as u64);
        if size.estimate() > skeleton_budget {
            return Err(splitter.refusal(format!(
                "would take more than {} MiB of memory once decoded, apart from its ops ({} \
                 messages in {} bytes of description, functions and attributes; the budget is {}× \
                 those bytes plus {} MiB); refusing to decode it",
                skeleton_budget >> 20,
                size.messages,
                skeleton.len(),
                decode_budget::SKELETON_FACTOR,
                decode_budget::SKELETON_FLOOR >> 20
            )));
        }
        splitter.charge(size)?;
    }
    let model = Model::decode(&skeleton[..])
        .map_err(|e| splitter.refusal(format!("not a valid Core ML model protobuf: {e}")))?;
    let (kept, re_encoded) = (skeleton.len() as i128, model.encoded_len() as i128);
    if splitter.excess > 0 || kept != re_encoded {
        let understood = i128::from(file_len) - i128::from(splitter.excess) - (kept - re_encoded);
        let understood = u64::try_from(understood.max(0)).unwrap_or(u64::MAX);
        return Err(splitter.refusal(lossy(file_len, understood)));
    }
    let Splitter { bodies, hasher, .. } = splitter;
    Ok(SplitModel {
        model,
        bodies,
        hasher,
    })
}

/// Why a message whose `read` bytes re-encode to `understood` is refused: prost dropped what it did
/// not know.
fn lossy(read: u64, understood: u64) -> String {
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
        OpDecodeError::Lossy { read, understood } => {
            format!("an operation {}", lossy(read as u64, understood as u64))
        }
        other @ (OpDecodeError::DuplicateKey(_) | OpDecodeError::TooDeep) => other.to_string(),
    }
}

struct Splitter<'p, R> {
    source: R,
    /// Bytes read so far.
    pos: u64,
    path: &'p Path,
    file_len: u64,
    /// Bytes of keys and lengths walked here beyond the shortest encoding, which prost would drop.
    excess: u64,
    size: DecodedSize,
    budget: u64,
    hasher: RandomState,
    bodies: Vec<BodyPlaces>,
}

impl<R: BufRead> Splitter<'_, R> {
    fn refusal(&self, reason: String) -> Error {
        Error::Model {
            path: self.path.to_owned(),
            reason,
        }
    }

    fn invalid(&self, what: &str) -> Error {
        self.refusal(format!(
            "not a valid Core ML model protobuf: {what} at byte {}",
            self.pos
        ))
    }

    /// Adds to the decode budget's count, refusing the model once it is past the budget.
    fn charge(&mut self, size: DecodedSize) -> Result<()> {
        self.size += size;
        if self.size.estimate() <= self.budget {
            return Ok(());
        }
        Err(self.refusal(format!(
            "would take more than {} MiB of memory once decoded ({} messages in its first {} of {} \
             bytes), the budget ({}× the file size plus {} MiB); refusing to decode it",
            self.budget >> 20,
            self.size.messages,
            self.pos,
            self.file_len,
            decode_budget::BUDGET_FACTOR,
            decode_budget::BUDGET_FLOOR >> 20
        )))
    }

    fn byte(&mut self, end: u64) -> Result<u8> {
        if self.pos >= end {
            return Err(self.invalid("a field runs past the end of its message"));
        }
        let path = self.path;
        let buf = self.source.fill_buf().at(path)?;
        let Some(&byte) = buf.first() else {
            return Err(self.invalid("the file ends early"));
        };
        self.source.consume(1);
        self.pos += 1;
        Ok(byte)
    }

    /// One varint; bytes beyond its shortest encoding are counted in `excess`.
    fn varint(&mut self, end: u64) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.byte(end)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.excess += (i + 1 - varint_len(value)) as u64;
                return Ok(value);
            }
        }
        Err(self.invalid("a varint longer than 10 bytes"))
    }

    /// A field's key: its number and wire type.
    fn key(&mut self, end: u64) -> Result<(u32, u32)> {
        let key = self.varint(end)?;
        let tag = u32::try_from(key >> 3)
            .ok()
            .filter(|&t| t != 0)
            .ok_or_else(|| self.invalid("a field number out of range"))?;
        Ok((tag, (key & 7) as u32))
    }

    /// The length of a length-delimited field, which must end by `end`.
    fn length(&mut self, end: u64) -> Result<u64> {
        let len = self.varint(end)?;
        if len > end - self.pos {
            return Err(self.invalid("a field runs past the end of its message"));
        }
        Ok(len)
    }

    /// Appends the next `len` bytes to `out`.
    fn read_into(&mut self, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        // `len` is within the file, whose size was read.
        out.resize(start + len as usize, 0);
        let path = self.path;
        std::io::Read::read_exact(&mut self.source, &mut out[start..]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.invalid("the file ends early")
            } else {
                Error::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
        self.pos += len;
        Ok(())
    }

    /// Copies the rest of a field of key `(tag, wire)` to `out` as read, and returns where its
    /// value lies in `out`.
    fn copy_field(
        &mut self,
        (tag, wire): (u32, u32),
        end: u64,
        out: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        put_varint(u64::from(tag) << 3 | u64::from(wire), out);
        let len = match wire {
            VARINT => {
                let value = self.varint(end)?;
                put_varint(value, out);
                return Ok(out.len()..out.len());
            }
            FIXED64 => 8,
            FIXED32 => 4,
            LENGTH_DELIMITED => {
                let len = self.length(end)?;
                put_varint(len, out);
                len
            }
            _ => return Err(self.invalid("a field of a wire type the schema does not use")),
        };
        if len > end - self.pos {
            return Err(self.invalid("a field runs past the end of its message"));
        }
        let start = out.len();
        self.read_into(len, out)?;
        Ok(start..out.len())
    }

    /// Walks the message of `level` that ends at `end` and returns its skeleton.
    fn message(&mut self, level: Level, end: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let first_body = self.bodies.len();
        if level == Level::Block {
            self.bodies.push(BodyPlaces::default());
        }
        let mut key = None;
        let mut values = 0;
        while self.pos < end {
            let (tag, wire) = self.key(end)?;
            if wire == LENGTH_DELIMITED {
                if level == Level::Block && tag == BLOCK_OPERATIONS {
                    let len = self.length(end)?;
                    self.op(len)?;
                    continue;
                }
                if let Some((field, inner)) = level.inner().filter(|&(field, _)| field == tag) {
                    let map_value = matches!(inner, Level::Function | Level::Block);
                    values += 1;
                    if map_value && values > 1 {
                        // prost merges the two; a body's ops would be lost below.
                        return Err(self.refusal(format!(
                            "holds a map entry whose value is given twice (at byte {}); refusing \
                             to rewrite it and lose data",
                            self.pos
                        )));
                    }
                    let len = self.length(end)?;
                    let skeleton = self.message(inner, self.pos + len)?;
                    // prost leaves out a map's value that equals its default: a function or a
                    // body that held only ops does once they are left out. One that was empty in
                    // the file stays, so the check still refuses it as before.
                    if !(map_value && skeleton.is_empty() && len > 0) {
                        put_head(field, skeleton.len(), &mut out);
                        out.extend_from_slice(&skeleton);
                    }
                    continue;
                }
            }
            let value = self.copy_field((tag, wire), end, &mut out)?;
            let is_entry = matches!(level, Level::FunctionEntry | Level::BodyEntry);
            if is_entry && (tag, wire) == (ENTRY_KEY, LENGTH_DELIMITED) {
                // Not UTF-8: prost refuses the skeleton, so the name is never used.
                key = Some(String::from_utf8_lossy(&out[value]).into_owned());
            }
        }
        let key = key.unwrap_or_default();
        for body in &mut self.bodies[first_body..] {
            match level {
                Level::FunctionEntry => body.function.clone_from(&key),
                Level::BodyEntry => body.specialization.clone_from(&key),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Reads, charges and checks one op of the current body, and keeps its place.
    fn op(&mut self, len: u64) -> Result<()> {
        let offset = self.pos;
        let len32 = u32::try_from(len).map_err(|_| {
            self.refusal(format!(
                "the operation at byte {offset} is {len} bytes, more than mlprune reads as one"
            ))
        })?;
        let mut bytes = Vec::new();
        self.read_into(len, &mut bytes)?;
        let bytes = Bytes::from(bytes);
        // Malformed bytes are left to the check, which names what is wrong.
        if let Some(decode_budget::OpSizes { all, own }) = decode_budget::op_decoded_sizes(&bytes) {
            self.charge(all)?;
            let budget = decode_budget::op_budget(len);
            if own.estimate() > budget {
                return Err(self.refusal(format!(
                    "the operation at byte {offset} holds {} protobuf messages and {} bytes of \
                     values, about {} MiB once decoded, more than one op may decode to at once \
                     ({} MiB plus twice its {len} bytes); refusing to decode it",
                    own.messages,
                    own.payload,
                    own.estimate() >> 20,
                    decode_budget::OP_BUDGET >> 20,
                )));
            }
        }
        check_op(&bytes).map_err(|e| self.refusal(op_refusal(e)))?;
        let place = OpPlace {
            offset,
            len: len32,
            check: op_check(&self.hasher, &bytes),
        };
        if let Some(body) = self.bodies.last_mut() {
            body.ops.push(place);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::build::{bind_name, busy_program, op};
    use crate::mil::model::decode_model;
    use crate::mil::ops::{block_of, encode_op};
    use crate::proto::mil::{Function, Program};
    use crate::proto::spec::model;

    fn split(bytes: &[u8]) -> Result<SplitModel> {
        split_model(bytes, bytes.len() as u64, Path::new("m"))
    }

    fn refusal(bytes: &[u8]) -> String {
        split(bytes).unwrap_err().to_string()
    }

    /// What prost decodes from `bytes`, each op held as the bytes it was read as, is what
    /// `decode_model` gives; and each body's places are where prost found its ops.
    fn assert_read_as_prost_reads(bytes: &[u8], label: &str) {
        let prost = Model::decode(bytes).unwrap();
        let ours = decode_model(Bytes::copy_from_slice(bytes), Path::new(label)).unwrap();
        assert_eq!(ours, prost, "{label}");
        let Some(model::Type::MlProgram(program)) = &prost.r#type else {
            panic!("{label}: not a program")
        };
        let split = split(bytes).unwrap();
        let bodies: usize = program
            .functions
            .values()
            .map(|f| f.block_specializations.len())
            .sum();
        let with_ops = program
            .functions
            .values()
            .flat_map(|f| f.block_specializations.values())
            .filter(|b| !b.operations.is_empty())
            .count();
        assert!(
            split.bodies.len() >= with_ops && split.bodies.len() <= bodies,
            "{label}"
        );
        for body in &split.bodies {
            let held = &program.functions[&body.function].block_specializations[&body.specialization];
            assert_eq!(held.operations.len(), body.ops.len(), "{label}");
            for (place, op) in body.ops.iter().zip(&held.operations) {
                let at = place.offset as usize;
                assert_eq!(&bytes[at..at + place.len as usize], &op[..], "{label}");
                assert_eq!(place.check, op_check(&split.hasher, op));
            }
        }
    }

    fn program_model(program: Program) -> Model {
        Model {
            specification_version: 8,
            description: Some(Default::default()),
            r#type: Some(model::Type::MlProgram(program)),
            ..Default::default()
        }
    }

    fn relu(name: &str) -> crate::proto::mil::Operation {
        let mut r = op("relu", name, Default::default(), Default::default(), vec![]);
        crate::mil::Entries::set(&mut r.inputs, "x".into(), bind_name("a"));
        r
    }

    #[test]
    fn models_read_as_prost_reads_them_with_every_op_in_place() {
        let mut busy = busy_program();
        // Bodies and a function that hold nothing but ops, so hold nothing once they are left
        // out; and a function under the empty name.
        busy.functions
            .get_mut("second")
            .unwrap()
            .block_specializations
            .insert("only_ops".into(), block_of([relu("r1"), relu("r2")]));
        busy.functions.insert(
            String::new(),
            Function {
                block_specializations: [(String::new(), block_of([relu("r3")]))].into(),
                ..Default::default()
            },
        );
        assert_read_as_prost_reads(&program_model(busy).encode_to_vec(), "busy");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut checked = 0;
        for entry in std::fs::read_dir(&fixtures).unwrap() {
            let path = entry.unwrap().path().join("Data/com.apple.CoreML/model.mlmodel");
            if let Ok(bytes) = std::fs::read(&path) {
                assert_read_as_prost_reads(&bytes, &path.display().to_string());
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} fixtures found");
    }

    /// A length-delimited field `tag` holding `body`, its length padded to `pad` more bytes than
    /// prost writes.
    fn field(tag: u32, body: &[u8], pad: usize) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(u64::from(tag << 3 | LENGTH_DELIMITED), &mut out);
        let mut len = body.len() as u64;
        for _ in 0..pad {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        put_varint(len, &mut out);
        out.extend_from_slice(body);
        out
    }

    /// A model of one function `main` with one body `CoreML7` of one op, written by hand: `pad`
    /// pads the length at one level (0: the op, 5: the program), `twice` gives that level's
    /// field twice, `value_first` writes the entries' values before their keys.
    fn hand_written(pad: Option<usize>, twice: Option<usize>, value_first: bool) -> Vec<u8> {
        hand_written_with(&encode_op(&relu("r")), pad, twice, value_first)
    }

    /// [`hand_written`] with the one op's bytes given (none: a body written empty).
    fn hand_written_with(op: &[u8], pad: Option<usize>, twice: Option<usize>, value_first: bool) -> Vec<u8> {
        let level = |n: usize, tag: u32, body: &[u8]| {
            let one = field(tag, body, usize::from(pad == Some(n)));
            if twice == Some(n) {
                [one.clone(), one].concat()
            } else {
                one
            }
        };
        let entry = |key: &str, value: Vec<u8>| {
            let key = field(ENTRY_KEY, key.as_bytes(), 0);
            if value_first {
                [value, key].concat()
            } else {
                [key, value].concat()
            }
        };
        let block = if op.is_empty() {
            Vec::new()
        } else {
            level(0, BLOCK_OPERATIONS, op)
        };
        let body_entry = entry("CoreML7", level(1, ENTRY_VALUE, &block));
        let function = level(2, FUNCTION_BLOCK_SPECIALIZATIONS, &body_entry);
        let function_entry = entry("main", level(3, ENTRY_VALUE, &function));
        let program = [vec![0x08, 0x01], level(4, PROGRAM_FUNCTIONS, &function_entry)].concat();
        [vec![0x08, 0x08], level(5, MODEL_ML_PROGRAM, &program)].concat()
    }

    #[test]
    fn hand_written_framing_reads_as_prost_writes_it() {
        let bytes = hand_written(None, None, false);
        let program = Program {
            version: 1,
            functions: [(
                "main".to_owned(),
                Function {
                    block_specializations: [("CoreML7".to_owned(), block_of([relu("r")]))].into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let prost = Model {
            specification_version: 8,
            r#type: Some(model::Type::MlProgram(program)),
            ..Default::default()
        };
        assert_eq!(bytes, prost.encode_to_vec());
        assert_read_as_prost_reads(&bytes, "hand written");
        // Values before keys: read under their names (prost writes them back key first).
        let split = split(&hand_written(None, None, true)).unwrap();
        assert_eq!(
            (&*split.bodies[0].function, &*split.bodies[0].specialization),
            ("main", "CoreML7")
        );
    }

    #[test]
    fn framing_longer_than_prost_writes_it_or_given_twice_is_refused() {
        for level in 0..6 {
            let e = refusal(&hand_written(Some(level), None, false));
            assert!(
                e.starts_with("m: holds 1 bytes that mlprune's schema does not cover"),
                "padded at {level}: {e}"
            );
            if level > 0 {
                // A function or body twice in its map entry: prost would merge the two.
                // A body entry, function entry or program twice: the body is read twice.
                let expected = match level {
                    1 | 3 => "a map entry whose value is given twice",
                    _ => "holds the body 'CoreML7' of function 'main' twice",
                };
                let e = refusal(&hand_written(None, Some(level), false));
                assert!(e.contains(expected), "twice at {level}: {e}");
            }
        }
    }

    #[test]
    fn a_body_empty_in_the_file_is_refused_as_before() {
        // prost writes no value for an empty body; one written as an empty field is dropped.
        let e = refusal(&hand_written_with(&[], None, None, false));
        assert!(
            e.contains("holds 2 bytes that mlprune's schema does not cover"),
            "{e}"
        );
    }

    #[test]
    fn a_body_given_twice_is_refused() {
        let e = refusal(&hand_written(None, Some(1), false));
        assert!(e.contains("a map entry whose value is given twice"), "{e}");
        // Two entries of one name, each of only ops.
        let entry = field(1, b"CoreML7", 0);
        let block = field(BLOCK_OPERATIONS, &encode_op(&relu("r")), 0);
        let body = [entry, field(ENTRY_VALUE, &block, 0)].concat();
        let bodies = [field(3, &body, 0), field(3, &body, 0)].concat();
        let function_entry = [field(1, b"main", 0), field(ENTRY_VALUE, &bodies, 0)].concat();
        let program = [vec![0x08, 0x01], field(2, &function_entry, 0)].concat();
        let bytes = [vec![0x08, 0x08], field(MODEL_ML_PROGRAM, &program, 0)].concat();
        let e = refusal(&bytes);
        assert!(
            e.contains("holds the body 'CoreML7' of function 'main' twice"),
            "{e}"
        );
    }

    #[test]
    fn cut_files_are_refused_with_the_byte() {
        let bytes = program_model(busy_program()).encode_to_vec();
        for cut in 0..bytes.len() {
            let e = decode_model(Bytes::copy_from_slice(&bytes[..cut]), Path::new("m"));
            assert!(e.is_err(), "cut at {cut}");
        }
        let e = refusal(&bytes[..bytes.len() - 1]);
        assert!(
            e.starts_with("m: not a valid Core ML model protobuf: a field runs past the end"),
            "{e}"
        );
        assert!(e.contains(" at byte "), "{e}");
    }

    /// A model description of many empty features: 12 MB of them took 362 MB (issue 18). The
    /// skeleton is decoded whole and held, so it has a budget of its own, far below the file's.
    #[test]
    fn a_skeleton_past_its_own_budget_is_refused() {
        let mut model = program_model(busy_program());
        let description = model.description.as_mut().unwrap();
        description.training_input = vec![Default::default(); 400_000];
        let bytes = model.encode_to_vec();
        let e = refusal(&bytes);
        assert!(e.contains("apart from its ops"), "{e}");
        assert!(e.contains("400"), "{e}");
        // Within the whole file's budget, which it alone would have passed.
        let size = crate::mil::decode_budget::decoded_size(&bytes).unwrap();
        assert!(size.estimate() < crate::mil::decode_budget::budget(bytes.len() as u64));
        // A few thousand features are nothing.
        model.description.as_mut().unwrap().training_input.truncate(5_000);
        split(&model.encode_to_vec()).unwrap();
    }

    #[test]
    fn ops_past_the_decode_budget_are_refused_before_the_rest_is_read() {
        // 4 million empty ops: 8 MB on the wire, 1.85 GB decoded when measured.
        let bytes = crate::mil::decode_budget::tests::model_with_ops(4_000_000).encode_to_vec();
        let e = refusal(&bytes);
        assert!(e.contains("once decoded"), "{e}");
        let first: u64 = e
            .split(" in its first ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(first < bytes.len() as u64, "{e}");
    }
}
