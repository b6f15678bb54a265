//! Time and memory in the number of tensors and operations.

#[allow(unused_imports)]
use crate::*;

/// `mlprune generate OUT --layers N --shape 32x32`: N small fp16 weights, each with its `linear`.
fn many_tensors(case: &Case, layers: usize) -> PathBuf {
    let path = case.tmp.path().join(format!("many{layers}.mlpackage"));
    let layers = layers.to_string();
    let o = cli(&[
        "generate".as_ref(),
        path.as_os_str(),
        "--layers".as_ref(),
        layers.as_ref(),
        "--shape".as_ref(),
        "32x32".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    path
}

/// Before, every pruned tensor walked the whole function to rebind its uses and spliced its
/// replacement into the block: 4,000 tensors took 1.5 s, 16,000 took 17.8 s. The rewrite now
/// counts the ops it steps through; that count must stay a small multiple of the op count, for
/// every tensor count. (Timing is the bench's job: `benches/many_tensors.sh`.)
#[test]
fn rewrite_work_is_linear_in_the_tensor_count() {
    let case = Case::linear();
    for layers in [500, 4000] {
        let input = many_tensors(&case, layers);
        let output = case.tmp.path().join(format!("out{layers}.mlpackage"));
        let summary = engine::prune(&prune_job(&input, &output, false)).unwrap();
        assert_eq!(summary.tensors.iter().filter(|t| t.pruned).count(), layers);
        let ops = mlprune::inspect::inspect(&output).unwrap().weights.len();
        assert!(ops >= layers, "{ops} weights");
        // Each const and each linear is visited once while rebinding: 2 per layer, plus a few.
        assert!(
            summary.rewrite_steps <= 3 * layers + 16,
            "{layers} tensors: {} rewrite steps",
            summary.rewrite_steps
        );
        assert!(summary.rewrite_steps >= layers, "the counter counts");
    }
}

/// One length-delimited protobuf field.
fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::with_capacity(bytes.len() + 12);
    varint(number << 3 | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// An 8 MB `model.mlmodel` of 4 million empty operations decoded to 1.85 GB before. Its decoded
/// size is now estimated from the wire bytes as they are read, op by op, and it is refused once
/// the estimate passes the budget, before the rest is read: under a 1 GiB address-space limit
/// both commands still fail with one clean line.
#[cfg(unix)]
#[test]
fn millions_of_empty_operations_are_refused_before_decoding() {
    let case = Case::linear();
    // Built on the wire: decoding or building it with prost is what costs the memory.
    let ops = b"\x1a\x00".repeat(4_000_000);
    let block_entry = [field(1, b"CoreML5"), field(2, &ops)].concat();
    let function = [field(2, b"CoreML5"), field(3, &block_entry)].concat();
    let function_entry = [field(1, b"main"), field(2, &function)].concat();
    let program = [&b"\x08\x01"[..], &field(2, &function_entry)].concat();
    let model = [&b"\x08\x07"[..], &field(502, &program)].concat();
    assert!(model.len() < 9 << 20);
    std::fs::write(case.file("model.mlmodel"), &model).unwrap();
    assert_refused(
        &case,
        Refused::Both,
        |e| matches!(e, Error::Model { path, reason } if path.ends_with("model.mlmodel") && reason.contains("once decoded")),
        &[
            "model.mlmodel",
            "3398115 messages in its first 6796284 of 8000054 bytes",
            "refusing to decode it",
        ],
    );
    for o in both_commands_under_1_gib(&case) {
        assert_cli_error(&o, 1, &["model.mlmodel", "refusing to decode it"]);
    }
    assert_nothing_left(&case, &["in.mlpackage"]);
}

/// Moves every op of the generated model's main block into the nested block of one op (a `cond`
/// without its predicate: the graph index does not check op semantics), which returns the last
/// output; the function returns that op's output.
fn nest_in_one_op(package: &Path) {
    use mlprune::mil::{decode_op, encode_op};
    use mlprune::proto::mil::{Block, NamedValueType, Operation};
    let path = package.join(CORE_ML).join("model.mlmodel");
    let mut model = Model::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let Some(Type::MlProgram(program)) = model.r#type.as_mut() else {
        panic!("an ML Program")
    };
    let function = program.functions.values_mut().next().unwrap();
    let block = function.block_specializations.values_mut().next().unwrap();
    let last = block.outputs[0].clone();
    let last_type = block
        .operations
        .iter()
        .map(|b| decode_op(b).unwrap())
        .find_map(|op| op.outputs.into_iter().find(|o| o.name == last))
        .unwrap()
        .r#type;
    let inner = Block {
        outputs: vec![last],
        operations: std::mem::take(&mut block.operations),
        ..Default::default()
    };
    let mut outer = Operation {
        r#type: "cond".into(),
        outputs: vec![NamedValueType {
            name: "nested_out".into(),
            r#type: last_type,
        }],
        blocks: vec![inner],
        ..Default::default()
    };
    outer
        .attributes
        .set("name".into(), mlprune::mil::value::string_value("nested"));
    block.operations = vec![encode_op(&outer)];
    block.outputs = vec!["nested_out".into()];
    let description = model.description.as_mut().unwrap();
    description.output[0].name = "nested_out".into();
    std::fs::write(&path, model.encode_to_vec()).unwrap();
}

/// Weights inside a nested block are pruned exactly as the same weights at the top level: the same
/// `weight.bin` byte for byte, and the nested block holds the ops the flat model's function holds.
/// Each such op used to be reached by decoding the op owning the block, and stored by encoding it
/// again, so 4,000 nested tensors took 17 s against 0.6 s flat; the graph keeps the nested ops'
/// bytes and the walk stores them together at the end (`benches/many_tensors.sh --nested` times it).
#[test]
fn weights_in_a_nested_block_are_pruned_like_top_level_ones() {
    let case = Case::linear();
    let flat = many_tensors(&case, 300);
    let nested = case.tmp.path().join("nested.mlpackage");
    copy_dir(&flat, &nested);
    nest_in_one_op(&nested);
    let flat_out = case.tmp.path().join("flat_out.mlpackage");
    let nested_out = case.tmp.path().join("nested_out.mlpackage");
    let flat_summary = engine::prune(&prune_job(&flat, &flat_out, false)).unwrap();
    let nested_summary = engine::prune(&prune_job(&nested, &nested_out, false)).unwrap();
    assert_eq!(flat_summary.pruned, 300);
    assert_eq!(nested_summary.pruned, 300);
    let weights = |p: &Path| std::fs::read(p.join(CORE_ML).join("weights/weight.bin")).unwrap();
    assert!(weights(&flat_out) == weights(&nested_out), "weight.bin differs");
    let ops = |p: &Path| {
        let model = Model::decode(
            std::fs::read(p.join(CORE_ML).join("model.mlmodel"))
                .unwrap()
                .as_slice(),
        )
        .unwrap();
        let Some(Type::MlProgram(program)) = model.r#type else {
            panic!("an ML Program")
        };
        let block = program
            .functions
            .into_values()
            .next()
            .unwrap()
            .block_specializations
            .into_values()
            .next()
            .unwrap();
        block
            .operations
            .iter()
            .map(|b| mlprune::mil::decode_op(b).unwrap())
            .collect::<Vec<_>>()
    };
    let [outer] = ops(&nested_out)
        .try_into()
        .unwrap_or_else(|v: Vec<_>| panic!("{} top-level ops", v.len()));
    let inner: Vec<_> = outer.blocks[0]
        .operations
        .iter()
        .map(|b| mlprune::mil::decode_op(b).unwrap())
        .collect();
    assert_eq!(inner, ops(&flat_out));
}
