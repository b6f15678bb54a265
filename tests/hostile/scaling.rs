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
/// size is now estimated from the wire bytes first, and it is refused at once, before prost
/// allocates: under a 1 GiB address-space limit both commands still fail with one clean line.
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
        &["model.mlmodel", "4000006 messages", "refusing to decode it"],
    );
    for o in both_commands_under_1_gib(&case) {
        assert_cli_error(&o, 1, &["model.mlmodel", "refusing to decode it"]);
    }
    assert_nothing_left(&case, &["in.mlpackage"]);
}
