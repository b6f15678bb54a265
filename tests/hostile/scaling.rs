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

/// The scratch stores that bound memory (the plan, the shared-blob table, the graph index, the
/// deduplication and store-once tables) keep a few KiB in memory and the rest in files. Driven
/// through their files from the first entries on (`MLPRUNE_SCRATCH_BYTES=64`), a run of a
/// multifunction model whose functions share every blob writes exactly what a run holding them
/// in memory writes, with the same report and the same `inspect`, for a per-tensor and a global
/// config. That the small limit takes effect shows in a run whose scratch folder is unusable.
#[test]
fn scratch_stores_on_disk_give_the_same_bytes_as_in_memory() {
    let case = Case::linear();
    let input = many_tensors(&case, 150);
    crate::multifunction::add_second_function(&input, &[]);
    let run = |name: &str, scratch: Option<&str>, flags: &[&str]| {
        let output = case.tmp.path().join(format!("{name}.mlpackage"));
        let report = case.tmp.path().join(format!("{name}.json"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_mlprune"));
        command
            .arg("prune")
            .arg(&input)
            .arg(&output)
            .args(flags)
            .arg("--report")
            .arg(&report);
        if let Some(bytes) = scratch {
            command.env("MLPRUNE_SCRATCH_BYTES", bytes);
        }
        let o = command.output().unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        for tensor in report.as_array_mut().unwrap() {
            tensor.as_object_mut().unwrap().remove("millis");
        }
        (snapshot(&output), report)
    };
    let per_tensor = ["--sparsity", "0.5", "--weight-threshold", "0"];
    let global = [
        "--global-sparsity",
        "0.4",
        "--weight-threshold",
        "0",
        "--exclude",
        "layer3_weight",
    ];
    for (name, flags) in [("per_tensor", &per_tensor[..]), ("global", &global[..])] {
        let (held, held_report) = run(&format!("{name}_held"), None, flags);
        let (spilled, spilled_report) = run(&format!("{name}_spilled"), Some("64"), flags);
        // Compared whole, reported briefly: a report of 600 entries.
        assert!(held_report == spilled_report, "{name}: the reports differ");
        assert!(held == spilled, "{name}: the outputs differ");
        let tensors = held_report.as_array().unwrap();
        assert_eq!(
            tensors.len(),
            2 * 300,
            "{name}: both functions' weights and biases"
        );
        assert!(tensors.iter().any(|t| t["pruned"] == true), "{name}");
    }
    let inspect = |scratch: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mlprune"));
        command.arg("inspect").arg(&input);
        if let Some(bytes) = scratch {
            command.env("MLPRUNE_SCRATCH_BYTES", bytes);
        }
        command.output().unwrap()
    };
    let (held, spilled) = (inspect(None), inspect(Some("64")));
    assert!(held.status.success() && spilled.status.success());
    assert_eq!(held.stdout, spilled.stdout);

    // The small limit is used: `inspect`, whose tables go to the temporary folder, fails with
    // none usable, naming it, only when it is set.
    let missing = case.tmp.path().join("no such folder");
    let inspect_with_tmpdir = |scratch: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mlprune"));
        command.arg("inspect").arg(&input).env("TMPDIR", &missing);
        if let Some(bytes) = scratch {
            command.env("MLPRUNE_SCRATCH_BYTES", bytes);
        }
        command.output().unwrap()
    };
    assert_cli_error(&inspect_with_tmpdir(Some("64")), 1, &["no such folder"]);
    assert!(inspect_with_tmpdir(None).status.success());

    // `prune` keeps every table next to OUTPUT, none in the temporary folder, which may be memory
    // (a tmpfs): with none usable it still writes the same bytes, and leaves nothing next to it.
    let output = case.tmp.path().join("no_tmpdir.mlpackage");
    let o = Command::new(env!("CARGO_BIN_EXE_mlprune"))
        .arg("prune")
        .arg(&input)
        .arg(&output)
        .args(per_tensor)
        .env("TMPDIR", &missing)
        .env("MLPRUNE_SCRATCH_BYTES", "64")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (held, _) = run("per_tensor_again", None, &per_tensor);
    assert!(snapshot(&output) == held, "the outputs differ");
    let left = names_with(&case, "mlprune-");
    assert!(left.is_empty(), "{left:?}");
}

/// A sparse file inside the declared `weights/` folder is copied with its holes kept: 1 GiB that
/// takes a few KiB of disk was written out whole (11 s and 1 GiB of the output's disk; `cp -r`
/// keeps it sparse). A zip OUTPUT deflates it (stored, its holes were written out whole: 2 GiB
/// taking 40 KB made a 2 GiB zip).
#[test]
fn a_sparse_file_in_a_declared_folder_stays_sparse_in_the_output() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    const LEN: u64 = 256 << 20;
    let case = Case::linear();
    let extra = case.input.join(CORE_ML).join("weights/extra.bin");
    let file = std::fs::File::create(&extra).unwrap();
    file.write_all_at(b"start", 0).unwrap();
    file.write_all_at(b"end", LEN - 3).unwrap();
    drop(file);
    let source_blocks = std::fs::metadata(&extra).unwrap().blocks();
    let o = cli_prune(&case.input, &case.output(), &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let copy = case.output().join(CORE_ML).join("weights/extra.bin");
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), LEN);
    assert!(
        meta.blocks() <= source_blocks + 64,
        "{} blocks of 512 bytes for a source of {source_blocks}",
        meta.blocks()
    );
    let copy = std::fs::File::open(&copy).unwrap();
    let mut bytes = [0; 5];
    copy.read_exact_at(&mut bytes, 0).unwrap();
    assert_eq!(&bytes, b"start");
    copy.read_exact_at(&mut bytes[..3], LEN - 3).unwrap();
    assert_eq!(&bytes[..3], b"end");
    copy.read_exact_at(&mut bytes, LEN / 2).unwrap();
    assert_eq!(bytes, [0; 5]);

    let zip = case.tmp.path().join("out.zip");
    let o = cli_prune(&case.input, &zip, &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let zip_len = std::fs::metadata(&zip).unwrap().len();
    assert!(zip_len < LEN / 100, "a zip of {zip_len} bytes");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip).unwrap()).unwrap();
    let mut sizes = Vec::new();
    for i in 0..archive.len() {
        let entry = archive.by_index(i).unwrap();
        if entry.name().unwrap().ends_with("weights/extra.bin") {
            sizes.push(entry.size());
        }
    }
    assert_eq!(sizes, [LEN]);
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

/// A `model.mlmodel` (spec 7) of one function `main` whose `CoreML5` body is `ops`, the encoded
/// `Block.operations` fields, built on the wire: decoding or building it with prost is what costs
/// the memory the tests below measure.
fn model_of_body(ops: &[u8]) -> Vec<u8> {
    let block_entry = [field(1, b"CoreML5"), field(2, ops)].concat();
    let function = [field(2, b"CoreML5"), field(3, &block_entry)].concat();
    let function_entry = [field(1, b"main"), field(2, &function)].concat();
    let program = [&b"\x08\x01"[..], &field(2, &function_entry)].concat();
    [&b"\x08\x07"[..], &field(502, &program)].concat()
}

/// An 8 MB `model.mlmodel` of 4 million empty operations decoded to 1.85 GB before. Its decoded
/// size is now estimated from the wire bytes as they are read, op by op, and it is refused once
/// the estimate passes the budget, before the rest is read: under a 1 GiB address-space limit
/// both commands still fail with one clean line.
#[cfg(unix)]
#[test]
fn millions_of_empty_operations_are_refused_before_decoding() {
    let case = Case::linear();
    let ops = b"\x1a\x00".repeat(4_000_000);
    let model = model_of_body(&ops);
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

/// One `concat` whose `inputs` map had 3,000,000 entries (a 50 MB file, one 8 KiB weight) decoded
/// to 2.2 GB: an op is decoded whole wherever it is read, and the file-wide budget allowed 48× the
/// file. One op may decode to at most 64 MiB of messages now; this one is refused as it is read.
#[cfg(unix)]
#[test]
fn an_op_of_a_million_inputs_is_refused_before_decoding() {
    let case = Case::linear();
    let input = |k: usize| {
        let binding = field(1, b"w");
        field(
            2,
            &[
                field(1, format!("{k:x}").as_bytes()),
                field(2, &field(1, &binding)),
            ]
            .concat(),
        )
    };
    let op = [field(1, b"concat"), (0..400_000).flat_map(input).collect()].concat();
    let model = model_of_body(&field(3, &op));
    assert!(model.len() < 8 << 20);
    std::fs::write(case.file("model.mlmodel"), &model).unwrap();
    assert_refused(
        &case,
        Refused::Both,
        |e| matches!(e, Error::Model { reason, .. } if reason.contains("one op may decode to at once")),
        &[
            "model.mlmodel",
            "holds 1200001 protobuf messages",
            "refusing to decode it",
        ],
    );
    for o in both_commands_under_1_gib(&case) {
        assert_cli_error(&o, 1, &["model.mlmodel", "one op may decode to at once"]);
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

/// Builders for constexpr chains put in front of the linear fixture's ops (nothing else reads
/// them): the shapes of model the walks along such chains are measured on.
mod chains {
    use std::collections::BTreeMap;

    use mlprune::dtype::ScalarType;
    use mlprune::mil::build::{bind_name, const_op, op};
    use mlprune::mil::value::{immediate_value, tensor_value_type};
    use mlprune::proto::mil::{Argument, Operation};
    use mlprune::tensor::TensorData;

    #[allow(unused_imports)]
    use crate::*;

    /// A 4×4 fp16 const of ones (32 bytes stored).
    pub fn ones(name: &str) -> Operation {
        let ones = TensorData::F16(vec![half::f16::ONE; 16]);
        const_op(name, immediate_value(&ones, &[4, 4]))
    }

    /// A `constexpr_sparse_to_dense` named `name` (as its output) reading `inputs`, each bound to
    /// its list of names.
    pub fn sparse(name: &str, inputs: &[(&str, Vec<String>)]) -> Operation {
        let inputs = inputs
            .iter()
            .map(|(param, names)| {
                let arguments = names.iter().flat_map(|n| bind_name(n).arguments).collect();
                (param.to_string(), Argument { arguments })
            })
            .collect();
        let ty = tensor_value_type(ScalarType::Float16, &[4, 4]);
        op(
            "constexpr_sparse_to_dense",
            name,
            inputs,
            BTreeMap::new(),
            vec![(name.to_owned(), ty)],
        )
    }

    /// `c0` and the chain `c1..=c<depth>`, each `c<i>` reading `c<i-1>` as `x` (and `k<i>` as `y`
    /// where `with_consts` adds those consts).
    pub fn chain(depth: usize, with_consts: bool) -> Vec<Operation> {
        let mut ops = vec![ones("c0")];
        for i in 1..=depth {
            let mut inputs = vec![("x", vec![format!("c{}", i - 1)])];
            if with_consts {
                ops.push(ones(&format!("k{i}")));
                inputs.push(("y", vec![format!("k{i}")]));
            }
            ops.push(sparse(&format!("c{i}"), &inputs));
        }
        ops
    }

    /// The linear fixture with `ops` in front of its main function's ops.
    pub fn in_front(ops: Vec<Operation>) -> Case {
        let case = Case::linear();
        case.edit_program(|p| {
            let function = p.functions.get_mut("main").unwrap();
            let block = function.block_specializations.get_mut(&function.opset).unwrap();
            let ops = mlprune::mil::ops::encode_ops(ops);
            block.operations.splice(0..0, ops);
        });
        case
    }

    /// The program of the case's input.
    pub fn program(case: &Case) -> Program {
        let bytes = std::fs::read(case.file("model.mlmodel")).unwrap();
        match Model::decode(bytes.as_slice()).unwrap().r#type {
            Some(Type::MlProgram(program)) => program,
            _ => panic!("an ML Program"),
        }
    }
}

/// A chain of 20,000 `constexpr_sparse_to_dense` ops, each reading the one before: inspect walked
/// it recursively, one stack frame per op, and aborted ("has overflowed its stack", exit 134). The
/// walk is a loop now, and the chain is one row.
#[test]
fn inspect_walks_a_chain_of_20000_constexpr_ops() {
    const DEPTH: usize = 20_000;
    let case = chains::in_front(chains::chain(DEPTH, false));
    let o = cli_inspect(&case.input);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {stderr}", o.status);
    let report = mlprune::inspect::inspect(&case.input).unwrap();
    let row = report.weights.iter().find(|w| w.name == "c20000").unwrap();
    assert_eq!(row.chain.len(), DEPTH);
    assert_eq!(row.bytes, 32, "c0 is the only tensor stored");
    assert_eq!(report.chain_reads, DEPTH as u64 + 1);
}

/// K constexpr rows all reading the end of one chain of D constexpr ops: every row walked the
/// whole chain again, decoding each op and scanning a list of the ops it had visited (D = K =
/// 2,000 took 33 s). Each op is read once for all rows now, and a walk steps once into each op it
/// reaches. One constexpr op reading N consts through one list input is one step per const.
#[test]
fn inspect_reads_each_chain_op_once_for_all_rows() {
    const DEPTH: usize = 300;
    const ROWS: usize = 300;
    let mut ops = chains::chain(DEPTH, false);
    let end = format!("c{DEPTH}");
    ops.extend((0..ROWS).map(|r| chains::sparse(&format!("r{r}"), &[("x", vec![end.clone()])])));
    let report = mlprune::inspect::inspect(&chains::in_front(ops).input).unwrap();
    let rows: Vec<_> = report
        .weights
        .iter()
        .filter(|w| w.name.starts_with('r'))
        .collect();
    assert_eq!(rows.len(), ROWS);
    assert!(rows.iter().all(|w| w.chain.len() == DEPTH + 1 && w.bytes == 32));
    // Each row, in the first pass and again when it is made for the report: itself, the D chain
    // ops and c0.
    assert_eq!(report.chain_steps, (2 * ROWS * (DEPTH + 2)) as u64);
    assert_eq!(report.chain_reads, (ROWS + DEPTH + 1) as u64);

    const FAN_IN: usize = 20_000;
    let names: Vec<String> = (0..FAN_IN).map(|i| format!("f{i}")).collect();
    let mut ops: Vec<_> = names.iter().map(|n| chains::ones(n)).collect();
    ops.push(chains::sparse("top", &[("x", names)]));
    let report = mlprune::inspect::inspect(&chains::in_front(ops).input).unwrap();
    let top = report.weights.iter().find(|w| w.name == "top").unwrap();
    assert_eq!(top.bytes, 32 * FAN_IN as u64);
    assert_eq!(report.chain_steps, 2 * (FAN_IN as u64 + 1));
}

/// One const read by one op through 3,000 distinct inputs (one of them binding it twice): the
/// table lists the first consumer and counts the others, without holding them (2,000,000 such
/// pairs held 389 MB); every other listing has them all, each once.
#[test]
fn the_table_counts_the_consumers_of_a_row_it_does_not_list() {
    use mlprune::inspect::{Consumers, Inspection};
    use mlprune::mil::build::{bind_name, op};
    use std::collections::BTreeMap;
    const READERS: usize = 3_000;
    let mut inputs = BTreeMap::new();
    for i in 0..READERS {
        let mut argument = bind_name("w");
        if i == 0 {
            argument.arguments.extend(bind_name("w").arguments);
        }
        inputs.insert(format!("k{i:04}"), argument);
    }
    let ty = mlprune::mil::value::tensor_value_type(mlprune::dtype::ScalarType::Float16, &[4, 4]);
    let reader = op(
        "custom_reader",
        "reader",
        inputs,
        BTreeMap::new(),
        vec![("reader".into(), ty)],
    );
    let case = chains::in_front(vec![chains::ones("w"), reader]);

    let inspection = Inspection::open(&case.input).unwrap();
    let first: Vec<_> = inspection
        .rows_listing(Consumers::First)
        .map(Result::unwrap)
        .collect();
    let w = first.iter().find(|r| r.name == "w").unwrap();
    assert_eq!((w.consumers.len(), w.other_consumers), (1, READERS - 1));
    assert_eq!(w.consumers[0].input, "k0000");
    let all: Vec<_> = inspection.rows().map(Result::unwrap).collect();
    let w = all.iter().find(|r| r.name == "w").unwrap();
    assert_eq!((w.consumers.len(), w.other_consumers), (READERS, 0));
    let inputs: Vec<_> = w.consumers.iter().map(|c| c.input.as_str()).collect();
    let expected: Vec<_> = (0..READERS).map(|i| format!("k{i:04}")).collect();
    assert_eq!(inputs, expected);

    let o = cli_inspect(&case.input);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    let line = table.lines().find(|l| l.starts_with("w ")).unwrap();
    assert!(
        line.contains(&format!("reader (custom_reader.k0000) +{}", READERS - 1)),
        "{line}"
    );
}

/// A chain of D constexpr ops where each op `c<i>` also reads its own const `k<i>`: resolving each
/// `k<i>`'s config followed the chain from `c<i>` to its end, D²/2 steps (D = 20,000 took 74 s).
/// Where each op's chain ends is remembered, so each chain op is resolved once; the decisions and
/// the output are those of a prune that stops resolving nowhere.
#[test]
fn planning_resolves_each_chain_op_once() {
    const DEPTH: usize = 2_000;
    let case = chains::in_front(chains::chain(DEPTH, true));
    let program = chains::program(&case);
    let graph = mlprune::mil::GraphView::build(&program).unwrap();
    let config = prune_job(&case.input, &case.output(), false).config;
    let (planned, steps) = mlprune::plan::plan_counted(&program, &graph, &config).unwrap();
    assert!(
        steps <= DEPTH as u64,
        "{steps} chain steps for a chain of {DEPTH}"
    );
    let feeding: Vec<_> = planned
        .iter()
        .map(Result::unwrap)
        .filter(|p| graph.name(p.op_index).starts_with(['c', 'k']))
        .collect();
    assert_eq!(feeding.len(), DEPTH + 1, "c0 and every k<i>");
    // The chain's last op has no consumer: every lookup ends there, as for a block output.
    assert!(
        feeding.iter().all(|p| matches!(&p.decision,
        mlprune::plan::Decision::Skip(r) if r.contains("block output"))),
        "{:?}",
        feeding[0].decision
    );
    let o = cli_prune(&case.input, &case.output(), &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `inspect` makes its rows twice (a first pass, then again as it writes them), reading the ops
/// back from `model.mlmodel` each time. A file changed in place between the passes stopped the
/// second with "op N is no longer a weight row"; it names the file and what happened now, as
/// `prune` does. (What was written before it stays written: the rows are streamed.)
#[cfg(unix)]
#[test]
fn inspect_names_a_model_changed_between_its_passes() {
    use std::os::unix::fs::FileExt;
    let case = Case::linear();
    // Far larger than what the op reader keeps of the file (two windows of 256 KiB at its end).
    let input = many_tensors(&case, 4000);
    let inspection = mlprune::inspect::Inspection::open(&input).unwrap();
    let model = input.join("Data/com.apple.CoreML/model.mlmodel");
    let file = std::fs::OpenOptions::new().write(true).open(&model).unwrap();
    let mut byte = [0u8];
    std::fs::File::open(&model)
        .unwrap()
        .read_exact_at(&mut byte, 4096)
        .unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], 4096).unwrap();
    let err = mlprune::inspect::render_json(&inspection).unwrap_err();
    let line = err.to_string();
    assert!(
        line.contains("model.mlmodel") && line.contains("changed while mlprune was reading"),
        "{line}"
    );
}
