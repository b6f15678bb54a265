//! Hostile input and safe output (issue 7). Three parts:
//! 1. the saved fuzz corpus (`tests/corpus/<target>/`) replayed through the fuzz targets' own entry
//!    points, so CI re-checks every crasher and interesting input without a fuzzer;
//! 2. hand-made hostile packages, each refused with the exact `mlprune::Error` variant by the library
//!    and with the right exit code and one stderr line by the CLI, leaving no output behind and the
//!    input byte for byte as it was;
//! 3. seeded bit flips and truncations of every fixture through `inspect` and `prune`.

#[allow(dead_code)]
#[path = "../../fuzz/src/entry.rs"]
mod entry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mlprune::config::{from_shortcuts, Shortcuts};
use mlprune::engine::{self, DevicePolicy, PruneJob};
use mlprune::mil::access::for_each_op_mut;
use mlprune::mil::entries::Entries;
use mlprune::proto::mil::argument::binding::Binding;
use mlprune::proto::mil::{dimension, value, Operation, Program};
use mlprune::proto::spec::{model::Type, Model};
use mlprune::Error;
use prost::Message;

const CORE_ML: &str = "Data/com.apple.CoreML";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// 1. Corpus replay

fn replay(target: &str, run: fn(&[u8])) {
    let dir = root().join("tests/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    let failed: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap();
            std::panic::catch_unwind(|| run(&bytes)).is_err()
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus inputs failed: {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn corpus_blob_reader() {
    replay("blob_reader", entry::blob_reader);
}

#[test]
fn corpus_model() {
    replay("model", entry::model);
}

#[test]
fn corpus_manifest() {
    replay("manifest", entry::manifest);
}

#[test]
fn corpus_zip_package() {
    replay("zip_package", entry::zip_package);
}

// ---------------------------------------------------------------------------------------------
// 2. Hand-made hostile packages

/// A private copy of a fixture (or any input) in its own temporary directory, next to which OUTPUT
/// is written, so that anything left behind shows up in the directory listing.
struct Case {
    tmp: tempfile::TempDir,
    input: PathBuf,
}

impl Case {
    fn fixture(name: &str) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.mlpackage");
        copy_dir(&root().join("tests/fixtures").join(name), &input);
        Case { tmp, input }
    }

    /// The fp16 linear model: weight.bin holds the weight (at 64) and the bias.
    fn linear() -> Case {
        Case::fixture("linear_fp16_ios18.mlpackage")
    }

    /// A package from `mlprune generate`: `layers` fp16 weights of `size × size`, each followed by
    /// its bias.
    fn generated(layers: u32, size: u64) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.mlpackage");
        let spec = mlprune::synth::SynthSpec {
            layers,
            rows: size,
            cols: size,
            dtype: mlprune::dtype::ScalarType::Float16,
            spec_version: 7,
            seed: 5,
        };
        mlprune::synth::generate(&spec, &input, false).unwrap();
        Case { tmp, input }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.input.join(CORE_ML).join(name)
    }

    fn weight_bin(&self) -> PathBuf {
        self.file("weights/weight.bin")
    }

    fn output(&self) -> PathBuf {
        self.tmp.path().join("out.mlpackage")
    }

    fn patch_weight_bin(&self, at: usize, bytes: &[u8]) {
        let mut w = std::fs::read(self.weight_bin()).unwrap();
        w[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(self.weight_bin(), w).unwrap();
    }

    fn edit_program(&self, edit: impl FnOnce(&mut Program)) {
        let path = self.file("model.mlmodel");
        let mut model = Model::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let Some(Type::MlProgram(program)) = model.r#type.as_mut() else {
            panic!("fixture is an ML Program")
        };
        edit(program);
        std::fs::write(&path, model.encode_to_vec()).unwrap();
    }

    /// Applies `edit` to the first op of type `op_type`.
    fn edit_op(&self, op_type: &str, edit: impl FnOnce(&mut Operation)) {
        self.edit_program(|p| {
            let mut edit = Some(edit);
            for_each_op_mut(p, |op| -> Result<(), mlprune::Error> {
                if op.r#type == op_type {
                    if let Some(edit) = edit.take() {
                        edit(op);
                    }
                }
                Ok(())
            })
            .unwrap();
            assert!(edit.is_none(), "no {op_type} op");
        });
    }

    fn edit_manifest(&self, edit: impl FnOnce(String) -> String) {
        let path = self.input.join("Manifest.json");
        std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in snapshot(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// Every file under `path` (or the file itself) by relative path; symlinks as their target path.
fn snapshot(path: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else if meta.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if path.is_dir() {
        walk(path, path, &mut out);
    } else {
        out.insert(PathBuf::new(), std::fs::read(path).unwrap());
    }
    out
}

fn prune_job(input: &Path, output: &Path, force: bool) -> PruneJob {
    PruneJob {
        input: input.to_owned(),
        output: output.to_owned(),
        config: from_shortcuts(&Shortcuts {
            sparsity: Some(0.5),
            weight_threshold: Some(0),
            ..Default::default()
        })
        .unwrap(),
        joint_compression: false,
        device: DevicePolicy::Cpu,
        gpu_min_elements: u64::MAX,
        force,
        report: None,
        keep_entries: true,
        config_file: None,
        progress: false,
        cancel: Default::default(),
    }
}

const PRUNE_ARGS: [&str; 4] = ["--sparsity", "0.5", "--weight-threshold", "0"];

fn cli(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlprune"))
        .args(args)
        .output()
        .unwrap()
}

fn cli_inspect(input: &Path) -> Output {
    cli(&["inspect".as_ref(), input.as_os_str()])
}

fn cli_prune(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["prune".as_ref(), input.as_os_str(), output.as_os_str()];
    args.extend(PRUNE_ARGS.iter().chain(extra).map(|a| std::ffi::OsStr::new(*a)));
    cli(&args)
}

/// The CLI failure contract: `code`, exactly one stderr line `mlprune: error: ...` naming every
/// string of `names`, never a panic.
fn assert_cli_error(o: &Output, code: i32, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("mlprune: error: "), "{stderr}");
    for name in names {
        assert!(stderr.contains(name), "stderr should name '{name}': {stderr}");
    }
}

/// The names in the case folder containing `part`.
fn names_with(case: &Case, part: &str) -> Vec<String> {
    std::fs::read_dir(case.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect()
}

/// Nothing but the input (and what the case put there) is left in the case directory.
fn assert_nothing_left(case: &Case, expected: &[&str]) {
    let mut left: Vec<String> = std::fs::read_dir(case.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(left, expected, "no OUTPUT, no temporary siblings");
}

/// Which commands must refuse the input.
#[derive(Clone, Copy, PartialEq)]
enum Refused {
    Both,
    PruneOnly,
    InspectOnly,
}

/// Checks that `inspect` and/or `prune` refuse `case.input` with an error `kind` accepts (library),
/// exit code and one line naming `names` (CLI), no output, and the input unchanged.
fn assert_refused(case: &Case, which: Refused, kind: impl Fn(&Error) -> bool, names: &[&str]) {
    let before = snapshot(&case.input);
    let input_name = case.input.file_name().unwrap().to_str().unwrap();
    if which != Refused::PruneOnly {
        let err = mlprune::inspect::inspect(&case.input).expect_err("inspect refuses it");
        assert!(kind(&err), "inspect: unexpected error {err:?}");
        assert_cli_error(&cli_inspect(&case.input), err.exit_code(), names);
    } else {
        assert!(cli_inspect(&case.input).status.success(), "inspect reads it");
    }
    if which != Refused::InspectOnly {
        let err =
            engine::prune(&prune_job(&case.input, &case.output(), false)).expect_err("prune refuses it");
        assert!(kind(&err), "prune: unexpected error {err:?}");
        assert_nothing_left(case, &[input_name]);
        assert_cli_error(
            &cli_prune(&case.input, &case.output(), &[]),
            err.exit_code(),
            names,
        );
        assert_nothing_left(case, &[input_name]);
    }
    assert_eq!(snapshot(&case.input), before, "input unchanged");
}

fn is_blob_at(offset: u64) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Blob { path, offset: o, .. } if *o == offset && path.ends_with("weight.bin"))
}

/// The name and blob offset of the first `const` stored in weight.bin.
fn first_blob_const(case: &Case) -> (String, u64) {
    let path = case.file("model.mlmodel");
    let model = Model::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let Some(Type::MlProgram(program)) = model.r#type else {
        panic!()
    };
    let mut found = None;
    mlprune::mil::access::for_each_op(&program, |op| -> Result<(), mlprune::Error> {
        if let (None, Some(v)) = (&found, op.attributes.lookup("val")) {
            if let Some(value::Value::BlobFileValue(b)) = &v.value {
                found = mlprune::mil::OperationExt::name(op).map(|n| (n.to_owned(), b.offset));
            }
        }
        Ok(())
    })
    .unwrap();
    found.expect("a blob const")
}

/// Changes the first dimension of the const named `tensor`, in its `val` and its output alike.
fn set_first_dimension(case: &Case, tensor: &str, change: impl Fn(&mut u64)) {
    case.edit_program(|p| {
        for_each_op_mut(p, |op| -> Result<(), mlprune::Error> {
            if mlprune::mil::OperationExt::name(op) == Some(tensor) {
                let val = op.attributes.lookup_mut("val").unwrap();
                for ty in [&mut val.r#type, &mut op.outputs[0].r#type] {
                    let Some(mlprune::proto::mil::value_type::Type::TensorType(t)) =
                        ty.as_mut().and_then(|t| t.r#type.as_mut())
                    else {
                        panic!()
                    };
                    let Some(dimension::Dimension::Constant(c)) = t.dimensions[0].dimension.as_mut() else {
                        panic!()
                    };
                    change(&mut c.size);
                }
            }
            Ok(())
        })
        .unwrap()
    });
}

/// Sets the blob offset of the const named `tensor`.
fn set_blob_offset(case: &Case, tensor: &str, offset: u64) {
    case.edit_program(|p| {
        for_each_op_mut(p, |op| -> Result<(), mlprune::Error> {
            if mlprune::mil::OperationExt::name(op) == Some(tensor) {
                if let Some(value::Value::BlobFileValue(b)) =
                    op.attributes.lookup_mut("val").and_then(|v| v.value.as_mut())
                {
                    b.offset = offset;
                }
            }
            Ok(())
        })
        .unwrap()
    });
}

#[test]
fn blob_offset_past_the_end_of_weight_bin() {
    let case = Case::linear();
    let (tensor, _) = first_blob_const(&case);
    let size = std::fs::metadata(case.weight_bin()).unwrap().len();
    for offset in [size, size - 32, u64::MAX - 8] {
        set_blob_offset(&case, &tensor, offset);
        let offset_text = offset.to_string();
        assert_refused(
            &case,
            Refused::Both,
            is_blob_at(offset),
            &["weight.bin", &offset_text, &tensor],
        );
    }
}

#[test]
fn blob_data_past_the_end_overflowing_or_overlapping_its_record() {
    // Record at 64: size_in_bytes at +8, data_offset at +16.
    let cases: [(usize, u64, &str); 4] = [
        (64 + 8, 1 << 40, "run past the end"),
        (64 + 8, u64::MAX, "run past the end"),
        (64 + 16, u64::MAX - 4, "run past the end"),
        (64 + 16, 100, "overlaps its own record"),
    ];
    for (at, value, reason) in cases {
        let case = Case::linear();
        let (tensor, offset) = first_blob_const(&case);
        assert_eq!(offset, 64);
        case.patch_weight_bin(at, &value.to_le_bytes());
        assert_refused(
            &case,
            Refused::Both,
            is_blob_at(64),
            &["weight.bin", "offset 64", reason, &tensor],
        );
    }
}

#[test]
fn blob_reference_into_another_blobs_data() {
    // Two consts overlapping: the second points inside the first's data, where no record starts.
    let case = Case::linear();
    let (tensor, offset) = first_blob_const(&case);
    set_blob_offset(&case, &tensor, offset + 128);
    let at = (offset + 128).to_string();
    assert_refused(
        &case,
        Refused::Both,
        is_blob_at(offset + 128),
        &["weight.bin", "bad sentinel", &at],
    );
}

/// A well-formed record nested inside another blob's data, read by a second const: each record
/// alone is valid, but their spans overlap, and records nested so could make a small file read and
/// write as much as they claim (120 records in one 8 MiB blob wrote 566 MB). Refused once the
/// spans read cover more than the file.
#[test]
fn blob_records_nested_in_another_blobs_data_are_refused() {
    let case = Case::linear();
    // fc1's weight: record at 64, 6,144 data bytes at 128. A record at 128 claims 6,080 of them.
    let mut record = Vec::new();
    record.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    record.extend_from_slice(&1u32.to_le_bytes()); // fp16
    record.extend_from_slice(&6080u64.to_le_bytes());
    record.extend_from_slice(&192u64.to_le_bytes());
    record.extend_from_slice(&0u64.to_le_bytes());
    case.patch_weight_bin(128, &record);
    let bias = "fc1_bias_0_to_fp16";
    set_blob_offset(&case, bias, 128);
    set_first_dimension(&case, bias, |size| *size = 3040);
    let overlap =
        |e: &Error| matches!(e, Error::Blob { reason, .. } if reason.contains("blob records overlap"));
    assert_refused(&case, Refused::Both, overlap, &["weight.bin", "overlap"]);
}

#[test]
fn bad_sentinel_and_storage_version() {
    let case = Case::linear();
    case.patch_weight_bin(64, &0xCAFE_F00Du32.to_le_bytes());
    assert_refused(
        &case,
        Refused::Both,
        is_blob_at(64),
        &["weight.bin", "0xcafef00d"],
    );

    let case = Case::linear();
    case.patch_weight_bin(4, &3u32.to_le_bytes());
    assert_refused(
        &case,
        Refused::Both,
        is_blob_at(0),
        &["weight.bin", "storage format version 3"],
    );
}

#[test]
fn blob_dtype_disagrees_with_the_ops_type() {
    let case = Case::linear();
    let (tensor, _) = first_blob_const(&case);
    case.patch_weight_bin(64 + 4, &3u32.to_le_bytes()); // fp16 → uint8
    assert_refused(
        &case,
        Refused::Both,
        is_blob_at(64),
        &["weight.bin", "blob holds uint8", "fp16", &tensor],
    );
}

#[test]
fn shape_whose_element_count_does_not_match_the_data() {
    let case = Case::linear();
    let (tensor, _) = first_blob_const(&case);
    // The val and the output keep agreeing (a disagreement is refused before any data is read:
    // model_checks.rs); the blob's element count is what no longer fits.
    set_first_dimension(&case, &tensor, |size| *size += 1);
    assert_refused(
        &case,
        Refused::Both,
        is_blob_at(64),
        &["weight.bin", "expected", &tensor],
    );
}

#[test]
fn blob_shared_by_values_of_different_types() {
    // Regression (weights/rebuild.rs): the second reference to an already copied blob was patched
    // through without checking its type; the bias (fp16 [n]) now points at the weight's blob.
    let case = Case::linear();
    let (weight, offset) = first_blob_const(&case);
    let mut others = Vec::new();
    case.edit_program(|p| {
        for_each_op_mut(p, |op| -> Result<(), mlprune::Error> {
            let name = mlprune::mil::OperationExt::name(op).map(str::to_owned);
            if let Some(value::Value::BlobFileValue(b)) =
                op.attributes.lookup_mut("val").and_then(|v| v.value.as_mut())
            {
                if name.as_deref() != Some(weight.as_str()) {
                    b.offset = offset;
                    others.push(name.unwrap());
                }
            }
            Ok(())
        })
        .unwrap()
    });
    let bias = &others[0];
    // inspect reads each const against its own type; prune hits it when copying the bias's blob.
    assert_refused(
        &case,
        Refused::Both,
        |e| matches!(e, Error::Blob { .. } | Error::Tensor { .. }),
        &[bias],
    );
}

/// `(mask blob offset, nonzero_data blob offset)` of the first `constexpr_sparse_to_dense`.
fn sparse_blobs(case: &Case) -> (u64, u64) {
    let mut offsets = (0, 0);
    case.edit_op("constexpr_sparse_to_dense", |op| {
        let blob = |v: &mlprune::proto::mil::Value| match &v.value {
            Some(value::Value::BlobFileValue(b)) => b.offset,
            _ => panic!("fixture stores sparse data in weight.bin"),
        };
        offsets = (
            blob(op.attributes.lookup("mask").unwrap()),
            blob(op.attributes.lookup("nonzero_data").unwrap()),
        );
    });
    offsets
}

#[test]
fn nonzero_data_length_differs_from_the_mask_popcount() {
    let case = Case::fixture("pruned_linear_fp16_ios16.mlpackage");
    let (mask, _) = sparse_blobs(&case);
    // Clear one set bit of the mask's data (which starts 64 bytes after its record).
    let mut w = std::fs::read(case.weight_bin()).unwrap();
    let data = mask as usize + 64;
    let byte = (data..w.len()).find(|&i| w[i] != 0).unwrap();
    w[byte] &= w[byte] - 1;
    std::fs::write(case.weight_bin(), w).unwrap();
    let sparse =
        |e: &Error| matches!(e, Error::Tensor { reason, .. } if reason.contains("nonzero_data holds"));
    // prune copies an existing sparse op's blobs as they are (reported, not changed here).
    assert_refused(
        &case,
        Refused::InspectOnly,
        sparse,
        &["nonzero_data holds", "but the mask sets"],
    );
}

#[test]
fn dangling_names_and_cycles_in_the_op_graph() {
    let dangling = Case::linear();
    dangling.edit_op("linear", |op| {
        let arg = op.inputs.lookup_mut("x").unwrap();
        arg.arguments[0].binding = Some(Binding::Name("no_such_value".into()));
    });
    let graph = |e: &Error| matches!(e, Error::Graph(m) if m.contains("not defined"));
    assert_refused(&dangling, Refused::Both, graph, &["model graph", "no_such_value"]);

    // A cycle: the first op of the main block takes the output of the last one.
    let cycle = Case::linear();
    cycle.edit_program(|p| {
        let block = p
            .functions
            .values_mut()
            .next()
            .unwrap()
            .block_specializations
            .values_mut()
            .next()
            .unwrap();
        let decode = |bytes: &_| mlprune::mil::decode_op(bytes).unwrap();
        let last = decode(block.operations.last().unwrap()).outputs[0].name.clone();
        let slot = block
            .operations
            .iter_mut()
            .find(|o| decode(o).r#type == "linear")
            .unwrap();
        let mut linear = decode(slot);
        linear.inputs.lookup_mut("x").unwrap().arguments[0].binding = Some(Binding::Name(last.clone()));
        *slot = mlprune::mil::encode_op(&linear);
    });
    assert_refused(&cycle, Refused::Both, graph, &["model graph", "refers to"]);
}

#[test]
fn manifest_item_paths_leaving_data() {
    for (path, reason) in [
        ("../../../etc", "contains '..'"),
        ("com.apple.CoreML/../../x", "contains '..'"),
        ("/etc/passwd", "is absolute"),
    ] {
        let case = Case::linear();
        case.edit_manifest(|m| m.replacen("\"com.apple.CoreML/weights\"", &format!("\"{path}\""), 1));
        let manifest =
            |e: &Error| matches!(e, Error::Manifest { path, .. } if path.ends_with("Manifest.json"));
        assert_refused(&case, Refused::Both, manifest, &["Manifest.json", reason]);
    }
}

/// A Manifest.json within the old 16 MiB cap, an unknown key holding `[0,0,…]`, took 1.78 GB while
/// pruning (issue 18, red-team pass of session 16). It is capped at 1 MiB, and its values are
/// counted before it is decoded.
#[test]
fn bloated_manifests_are_refused_before_they_are_decoded() {
    let manifest = |e: &Error| matches!(e, Error::Manifest { path, .. } if path.ends_with("Manifest.json"));
    for (zeros, reason) in [
        (600_000, "larger than 1048576 bytes"),
        (70_000, "more than 65536 JSON values"),
    ] {
        let case = Case::linear();
        let junk = vec!["0"; zeros].join(",");
        case.edit_manifest(|m| m.replacen('{', &format!("{{\"junk\": [{junk}],"), 1));
        assert_refused(&case, Refused::Both, manifest, &["Manifest.json", reason]);
    }
}

/// 12 MB of empty feature descriptions took 362 MB; 48 MB took 1.43 GB (issue 18, red-team pass
/// of session 16), within the whole file's decode budget. The part of the model decoded whole has
/// a budget of its own now.
#[test]
fn a_bloated_model_description_is_refused_before_it_is_decoded() {
    let case = Case::linear();
    let path = case.file("model.mlmodel");
    let mut model = Model::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let description = model.description.get_or_insert_with(Default::default);
    description.training_input = vec![Default::default(); 1_000_000];
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let model_error = |e: &Error| matches!(e, Error::Model { path, .. } if path.ends_with("model.mlmodel"));
    assert_refused(
        &case,
        Refused::Both,
        model_error,
        &["model.mlmodel", "apart from its ops"],
    );
}

#[cfg(unix)]
#[test]
fn symlinks_pointing_outside_the_package() {
    let outside_of = |case: &Case| {
        let outside = case.tmp.path().join("secret");
        std::fs::write(&outside, b"not part of the model").unwrap();
        outside
    };
    let package_error = |e: &Error| matches!(e, Error::Package { reason, .. } if reason.contains("outside"));

    let case = Case::linear();
    let outside = outside_of(&case);
    std::fs::remove_file(case.weight_bin()).unwrap();
    std::os::unix::fs::symlink(&outside, case.weight_bin()).unwrap();
    let before = snapshot(&case.input);
    assert!(mlprune::inspect::inspect(&case.input).is_err_and(|e| package_error(&e)));
    assert!(engine::prune(&prune_job(&case.input, &case.output(), false)).is_err_and(|e| package_error(&e)));
    assert_cli_error(&cli_inspect(&case.input), 1, &["weight.bin", "outside"]);
    assert_cli_error(
        &cli_prune(&case.input, &case.output(), &[]),
        1,
        &["weight.bin", "outside"],
    );
    assert_nothing_left(&case, &["in.mlpackage", "secret"]);
    assert_eq!(snapshot(&case.input), before);

    // A link inside the weights item that is no file mlprune reads: inspect never reads it, prune
    // refuses to copy it out. (Outside every item it would simply be left out of the output.)
    let case = Case::linear();
    let outside = outside_of(&case);
    std::os::unix::fs::symlink(&outside, case.file("weights/notes.txt")).unwrap();
    let before = snapshot(&case.input);
    assert!(cli_inspect(&case.input).status.success());
    assert!(engine::prune(&prune_job(&case.input, &case.output(), false)).is_err_and(|e| package_error(&e)));
    assert_cli_error(
        &cli_prune(&case.input, &case.output(), &[]),
        1,
        &["notes.txt", "outside"],
    );
    assert_nothing_left(&case, &["in.mlpackage", "secret"]);
    assert_eq!(snapshot(&case.input), before);

    // A link inside the weights item to a FIFO inside the package: refused as what it is, not
    // as a link to a directory, and never opened (it would block).
    let case = Case::linear();
    let fifo = case.file("weights/pipe");
    let fifo_mode = rustix::fs::Mode::from_raw_mode(0o600);
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, fifo_mode, 0).unwrap();
    std::os::unix::fs::symlink("pipe", case.file("weights/link")).unwrap();
    let o = cli_prune(&case.input, &case.output(), &[]);
    assert_cli_error(
        &o,
        1,
        &["weights/link", "a symbolic link to a FIFO is not supported"],
    );
    assert_nothing_left(&case, &["in.mlpackage"]);
}

/// Many names for one file inside the package: each would be written out in full (40 links to a
/// 1 MB file made 42 MB of output), so the package is refused, naming the second name and the
/// first; folder and zip OUTPUT alike, nothing left, the input untouched.
#[cfg(unix)]
#[test]
fn many_links_to_one_file_are_refused_not_copied_each() {
    for (link, output) in [("hard", "out.mlpackage"), ("symbolic", "out.zip")] {
        let case = Case::linear();
        for i in 0..40 {
            let name = case.file(&format!("weights/alias{i:02}"));
            match link {
                "hard" => std::fs::hard_link(case.weight_bin(), name).unwrap(),
                _ => std::os::unix::fs::symlink("weight.bin", name).unwrap(),
            }
        }
        let before = snapshot(&case.input);
        let o = cli_prune(&case.input, &case.tmp.path().join(output), &[]);
        assert_cli_error(
            &o,
            1,
            &["weights/alias00", "another name (a link) for", "weight.bin"],
        );
        assert_nothing_left(&case, &["in.mlpackage"]);
        assert_eq!(snapshot(&case.input), before, "{link}");
    }
}

/// Zips `entries` (name, bytes) into `path` with deflate.
fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(*name, opts).unwrap();
        std::io::Write::write_all(&mut w, bytes).unwrap();
    }
    w.finish().unwrap();
}

/// The entries of the linear fixture under `linear.mlpackage/`.
fn fixture_entries() -> Vec<(String, Vec<u8>)> {
    snapshot(&root().join("tests/fixtures/linear_fp16_ios18.mlpackage"))
        .into_iter()
        .map(|(rel, bytes)| (format!("linear.mlpackage/{}", rel.display()), bytes))
        .collect()
}

/// A case whose input is the archive `in.zip` holding the fixture plus `extra`.
fn zip_case(extra: &[(&str, &[u8])]) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.zip");
    let owned = fixture_entries();
    let mut entries: Vec<(&str, &[u8])> = owned.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    entries.extend_from_slice(extra);
    write_zip(&input, &entries);
    Case { tmp, input }
}

#[test]
fn zip_slip_is_refused() {
    for evil in [
        "linear.mlpackage/../../evil",
        "../evil",
        "linear.mlpackage/Data/../../../evil",
    ] {
        let case = zip_case(&[(evil, b"pwned")]);
        let zip_error = |e: &Error| matches!(e, Error::Zip { reason, .. } if reason.contains("'..'"));
        assert_refused(&case, Refused::Both, zip_error, &["in.zip", "'..'"]);
        assert!(!case.tmp.path().join("evil").exists() && !std::env::temp_dir().join("evil").exists());
    }
    let case = zip_case(&[("/tmp/mlprune-hostile-evil", b"pwned")]);
    let zip_error = |e: &Error| matches!(e, Error::Zip { reason, .. } if reason.contains("absolute"));
    assert_refused(&case, Refused::Both, zip_error, &["in.zip", "absolute path"]);
}

/// Rewrites the declared uncompressed size of the zip entry `name` in its local header and its
/// central directory record (sizes below 4 GiB: no zip64 fields).
fn understate_size(zip: &mut [u8], name: &str, declared: u32) {
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        let (sig, name_len_at, size_at, header) = match &zip[i..i + 4] {
            b"PK\x03\x04" => ("local", 26, 22, 30),
            b"PK\x01\x02" => ("central", 28, 24, 46),
            _ => continue,
        };
        let name_len = u16::from_le_bytes([zip[i + name_len_at], zip[i + name_len_at + 1]]) as usize;
        if zip.get(i + header..i + header + name_len) == Some(name.as_bytes()) {
            zip[i + size_at..i + size_at + 4].copy_from_slice(&declared.to_le_bytes());
            patched += 1;
            let _ = sig;
        }
    }
    assert_eq!(patched, 2, "local and central headers of {name}");
}

#[cfg(unix)]
#[test]
fn zip_bomb_with_an_understated_size_stops_at_the_declared_size() {
    // 256 MiB of zeros deflate to ~256 KiB; the headers claim 1 KiB. Extraction must stop right
    // after the declared size, not inflate the bomb (the zip crate enforces the declared size; this
    // pins it): the CLI runs with a 16 MiB file-size limit, a larger write kills it with SIGXFSZ.
    let zeros = vec![0u8; 256 << 20];
    // Inside the weights item: only entries under a declared item are extracted at all.
    let bomb = "linear.mlpackage/Data/com.apple.CoreML/weights/bomb.bin";
    let case = zip_case(&[(bomb, &zeros)]);
    drop(zeros);
    let mut bytes = std::fs::read(&case.input).unwrap();
    understate_size(&mut bytes, bomb, 1024);
    std::fs::write(&case.input, &bytes).unwrap();
    let zip_error = |e: &Error| matches!(e, Error::Zip { reason, .. } if reason.contains("bomb.bin"));
    let started = Instant::now();
    assert!(mlprune::inspect::inspect(&case.input).is_err_and(|e| zip_error(&e)));
    assert!(started.elapsed() < Duration::from_secs(60));
    let script = format!(
        "ulimit -f 16384; exec '{}' inspect '{}'",
        env!("CARGO_BIN_EXE_mlprune"),
        case.input.display()
    );
    let o = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert_cli_error(&o, 1, &["in.zip", "bomb.bin"]);
    let o = cli_prune(&case.input, &case.output(), &[]);
    assert_cli_error(&o, 1, &["in.zip", "bomb.bin"]);
    assert_nothing_left(&case, &["in.zip"]);
    assert_eq!(std::fs::read(&case.input).unwrap(), bytes);
}

#[test]
fn output_equal_to_inside_or_containing_the_input() {
    let case = Case::linear();
    let before = snapshot(&case.input);
    let inside = case.input.join("Data/out.mlpackage");
    for (output, clash) in [
        (case.input.clone(), "is the input"),
        // Refused for its spelling before it is compared.
        (case.input.join("."), "ends in '/' or '/.'"),
        (inside.clone(), "is inside the input"),
        (case.tmp.path().to_owned(), "contains the input"),
    ] {
        for force in [false, true] {
            let err = engine::prune(&prune_job(&case.input, &output, force)).unwrap_err();
            assert!(matches!(&err, Error::Usage(m) if m.contains(clash)), "{err}");
            let extra: &[&str] = if force { &["--force"] } else { &[] };
            assert_cli_error(&cli_prune(&case.input, &output, extra), 2, &[clash]);
        }
    }
    assert!(!inside.exists());
    assert_nothing_left(&case, &["in.mlpackage"]);
    assert_eq!(snapshot(&case.input), before, "input unchanged");
}

#[test]
fn existing_output_without_force_is_kept() {
    let case = Case::linear();
    let before = snapshot(&case.input);
    for existing_is_dir in [true, false] {
        let output = case.output();
        if existing_is_dir {
            std::fs::create_dir(&output).unwrap();
            std::fs::write(output.join("keep.txt"), b"mine").unwrap();
        } else {
            std::fs::write(&output, b"mine").unwrap();
        }
        let kept = snapshot(&output);
        let err = engine::prune(&prune_job(&case.input, &output, false)).unwrap_err();
        assert!(
            matches!(&err, Error::Usage(m) if m.contains("already exists")),
            "{err}"
        );
        assert_cli_error(
            &cli_prune(&case.input, &output, &[]),
            2,
            &["out.mlpackage", "--force"],
        );
        assert_eq!(snapshot(&output), kept, "existing OUTPUT untouched");
        assert_nothing_left(&case, &["in.mlpackage", "out.mlpackage"]);
        if existing_is_dir {
            std::fs::remove_dir_all(&output).unwrap();
        } else {
            std::fs::remove_file(&output).unwrap();
        }
    }
    assert_eq!(snapshot(&case.input), before);
}

/// `inspect` and `prune` of the case's input, each under a 1 GiB address-space limit (`ulimit -v`):
/// what a file merely claims must not be allocated.
#[cfg(unix)]
fn both_commands_under_1_gib(case: &Case) -> Vec<Output> {
    let commands = [
        format!("inspect '{}'", case.input.display()),
        format!(
            "prune '{}' '{}' {}",
            case.input.display(),
            case.output().display(),
            PRUNE_ARGS.join(" ")
        ),
    ];
    commands
        .iter()
        .map(|command| {
            let script = format!(
                "ulimit -v 1048576; exec '{}' {command}",
                env!("CARGO_BIN_EXE_mlprune")
            );
            Command::new("sh").arg("-c").arg(script).output().unwrap()
        })
        .collect()
}

#[cfg(unix)]
#[test]
fn tiny_weight_bin_claiming_2_pow_60_bytes_fails_fast_without_allocating() {
    let case = Case::linear();
    let mut w = std::fs::read(case.weight_bin()).unwrap();
    w.truncate(100);
    w[64 + 8..64 + 16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(case.weight_bin(), &w).unwrap();
    assert_refused(&case, Refused::Both, is_blob_at(64), &["weight.bin", "offset 64"]);
    // Under a 1 GiB address-space limit, both commands still fail cleanly and at once.
    let started = Instant::now();
    for o in both_commands_under_1_gib(&case) {
        assert_cli_error(&o, 1, &["weight.bin", "offset 64"]);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_nothing_left(&case, &["in.mlpackage"]);
}

/// A `weight.bin` cut inside its last tensor (as by a copy that stopped, or a file truncated before
/// the run): the tensor is never mapped past the end of the file (which would be SIGBUS), and both
/// commands fail with one line naming the file.
#[test]
fn weight_bin_cut_inside_its_last_tensor_is_a_clean_error() {
    let case = Case::linear();
    let len = std::fs::metadata(case.weight_bin()).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(case.weight_bin())
        .unwrap();
    f.set_len(len - 2).unwrap();
    drop(f);
    assert_refused(
        &case,
        Refused::Both,
        |e| matches!(e, Error::Blob { path, .. } if path.ends_with("weight.bin")),
        &["weight.bin", "offset"],
    );
}

#[test]
fn weight_bin_cut_inside_a_mapped_tensor_is_a_clean_error() {
    // 256 × 256 fp16 weights (128 KiB) are of the size that is mapped, not read (`SMALL_TENSOR_BYTES`),
    // so this covers the mapping side that `weight_bin_cut_inside_its_last_tensor…` (small
    // tensors, now read) no longer reaches. The file ends 1000 bytes into the last weight's data
    // (its bias record and data, 64 + 512 bytes, followed).
    let case = Case::generated(2, 256);
    let len = std::fs::metadata(case.weight_bin()).unwrap().len();
    const { assert!(128 << 10 >= mlprune::weights::SMALL_TENSOR_BYTES) };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(case.weight_bin())
        .unwrap();
    f.set_len(len - 64 - 512 - 1000).unwrap();
    drop(f);
    assert_refused(
        &case,
        Refused::Both,
        |e| matches!(e, Error::Blob { path, .. } if path.ends_with("weight.bin")),
        &["weight.bin", "offset"],
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Seeded bit flips and truncations of every fixture

/// xorshift64*: a fixed, dependency-free sequence so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One damage to `bytes`: bit flips, a truncation, or a 64-bit field overwritten with a boundary
/// value (record sizes and offsets are 8-byte aligned fields).
fn damage(bytes: &mut Vec<u8>, rng: &mut Rng) -> String {
    if bytes.is_empty() {
        bytes.push(0xFF);
        return "grown".into();
    }
    match rng.below(3) {
        0 => {
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            format!("{flips} bit flips")
        }
        1 => {
            let len = rng.below(bytes.len());
            bytes.truncate(len);
            format!("truncated to {len}")
        }
        _ => {
            let at = rng.below(bytes.len() / 8) * 8;
            let value = [0, 1, 63, 64, 1 << 32, 1 << 60, u64::MAX, u64::MAX - 63][rng.below(8)];
            let end = (at + 8).min(bytes.len());
            bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            format!("u64 at {at} set to {value}")
        }
    }
}

#[test]
fn damaged_fixtures_never_panic_and_never_leave_output() {
    const VARIANTS: usize = 300;
    let fixtures_dir = root().join("tests/fixtures");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&fixtures_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mlpackage" || e == "zip"))
        .collect();
    fixtures.sort();
    let started = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut refused, mut accepted) = (0, 0);
    for variant in 0..VARIANTS {
        let fixture = &fixtures[variant % fixtures.len()];
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join(fixture.file_name().unwrap());
        let files: Vec<PathBuf> = if fixture.is_dir() {
            copy_dir(fixture, &input);
            snapshot(&input).into_keys().map(|rel| input.join(rel)).collect()
        } else {
            std::fs::copy(fixture, &input).unwrap();
            vec![input.clone()]
        };
        let target = &files[rng.below(files.len())];
        let mut bytes = std::fs::read(target).unwrap();
        let what = damage(&mut bytes, &mut rng);
        std::fs::write(target, &bytes).unwrap();
        let context = format!(
            "variant {variant}: {} {} {what}",
            fixture.display(),
            target.display()
        );
        let before = snapshot(&input);
        let output = tmp.path().join("out.mlpackage");
        for command in ["inspect", "prune"] {
            let o = if command == "inspect" {
                cli_inspect(&input)
            } else {
                cli_prune(&input, &output, &[])
            };
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(!stderr.contains("panicked"), "{context}: {command}: {stderr}");
            match o.status.code() {
                Some(0) => accepted += 1,
                Some(1 | 2) => {
                    refused += 1;
                    assert_eq!(stderr.lines().count(), 1, "{context}: {command}: {stderr}");
                    assert!(
                        stderr.starts_with("mlprune: error: "),
                        "{context}: {command}: {stderr}"
                    );
                    assert!(
                        !output.exists(),
                        "{context}: {command}: output left after a failure"
                    );
                }
                other => panic!("{context}: {command}: exit {other:?}: {stderr}"),
            }
        }
        if output.exists() {
            std::fs::remove_dir_all(&output).unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![input.file_name().unwrap().to_owned()],
            "{context}: temporary files left"
        );
        assert_eq!(snapshot(&input), before, "{context}: input changed");
    }
    assert!(
        refused > VARIANTS / 4,
        "most damage is noticed: {refused} refused, {accepted} accepted"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn two_consts_sharing_a_name_attribute() {
    // Regression (engine.rs, found by fuzzing): both consts became `<name>_sparsified`, and prune
    // wrote a model defining that value twice. Now refused before anything is written.
    let case = Case::linear();
    let weight = "fc1_weight_0_to_fp16";
    case.edit_program(|p| {
        for_each_op_mut(p, |op| -> Result<(), mlprune::Error> {
            if mlprune::mil::OperationExt::name(op) == Some("fc2_weight_0_to_fp16") {
                let name = mlprune::mil::value::string_value(weight);
                op.attributes.set("name".into(), name);
            }
            Ok(())
        })
        .unwrap()
    });
    let graph = |e: &Error| matches!(e, Error::Graph(m) if m.contains("_sparsified"));
    assert_refused(&case, Refused::PruneOnly, graph, &["model graph", weight]);
}

// ---------------------------------------------------------------------------------------------
// 4. Second round (issue 18): one module per class of hostile input, sharing the helpers above.

mod config_input;
mod kernels;
mod model_checks;
mod multifunction;
mod output_safety;
mod scaling;
mod zip_input;
