//! End-to-end tests of the `mlprune` binary on fixture models built by coremltools 9.0
//! (`tests/python/make_fixtures.py`, committed under `tests/fixtures/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mlprune::mil::access::for_each_op;
use mlprune::mil::entries::Entries;
use mlprune::mil::value::OperationExt;
use mlprune::mil::LoadedModel;
use mlprune::package::Package;
use mlprune::tensor::TensorData;
use mlprune::weights::WeightSource;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mlprune"))
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = bin();
    for a in args {
        c.arg(a);
    }
    c.output().expect("mlprune runs")
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mlpackage"))
        .collect();
    v.sort();
    assert!(v.len() >= 8, "expected the committed fixtures, found {v:?}");
    v
}

/// Every file of a package folder, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in snapshot(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// Dense values of every const op (blob or immediate), by op name, read through the library.
fn const_values(pkg: &Path) -> BTreeMap<String, TensorData> {
    let package = Package::open(pkg).unwrap();
    let model_path = package.model_path();
    let model = LoadedModel::read_held(&model_path, &model_path).unwrap();
    let source = WeightSource::open(&package, None).unwrap();
    let mut out = BTreeMap::new();
    for_each_op(&model.program, |op| -> Result<(), mlprune::Error> {
        if let (Some(name), Some(v)) = (op.name(), op.const_value()) {
            if let Ok((_, data)) = source.read(name, v) {
                out.insert(name.to_owned(), data);
            }
        }
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn inspect_lists_weights_of_every_fixture() {
    for f in fixtures() {
        let out = run(&[&"inspect", &f, &"--json"]);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let spec = report["spec_version"].as_i64().unwrap();
        assert!((6..=10).contains(&spec), "{}: spec {spec}", f.display());
        for w in report["weights"].as_array().unwrap() {
            let shape: Vec<u64> = w["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(
                w["elements"].as_u64().unwrap(),
                shape.iter().product::<u64>(),
                "{w}"
            );
            if let Some(s) = w["sparsity"].as_f64() {
                assert!((0.0..=1.0).contains(&s), "{w}");
            }
        }
        let table = run(&[&"inspect", &f]);
        assert!(table.status.success());
        let text = String::from_utf8(table.stdout).unwrap();
        assert!(text.starts_with("NAME"), "{text}");
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with("total: ") && last.contains(&format!("spec version {spec}")),
            "{last}"
        );
    }
}

#[test]
fn inspect_agrees_with_the_library_on_sparsity() {
    // The table's sparsity of a plain const is the share of exact zeros of its values.
    for f in fixtures() {
        let values = const_values(&f);
        let out = run(&[&"inspect", &f, &"--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for w in report["weights"].as_array().unwrap() {
            if w["storage"] != "const" {
                continue;
            }
            let data = &values[w["name"].as_str().unwrap()];
            let expected = data.count_zeros() as f64 / data.len() as f64;
            assert_eq!(w["sparsity"].as_f64().unwrap(), expected, "{}", f.display());
        }
    }
}

#[test]
fn noop_prune_keeps_every_weight_folder_and_zip() {
    let tmp = tempfile::tempdir().unwrap();
    for f in fixtures() {
        let stem = f.file_stem().unwrap().to_str().unwrap().to_owned();
        let before = snapshot(&f);
        let original = const_values(&f);
        for out in [
            tmp.path().join(format!("{stem}.mlpackage")),
            tmp.path().join(format!("{stem}.zip")),
        ] {
            let o = run(&[
                &"prune",
                &f,
                &out,
                &"--weight-threshold",
                &"1000000000",
                &"--quiet",
            ]);
            assert!(
                o.status.success(),
                "{}: {}",
                f.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(o.stderr.is_empty(), "--quiet prints nothing");
            assert_eq!(
                const_values(&out),
                original,
                "{} → {}",
                f.display(),
                out.display()
            );
            // Reading the rewritten package's blobs validates the fresh weight.bin end to end.
            let o = run(&[&"inspect", &out]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        assert_eq!(snapshot(&f), before, "input untouched");
    }
}

#[test]
fn zipped_input_prunes_like_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let f = &fixtures()[0];
    let zipped = tmp.path().join("in.zip");
    let folder_out = tmp.path().join("a.mlpackage");
    assert!(
        run(&[&"prune", f, &zipped, &"--weight-threshold", &"1000000000", &"-q"])
            .status
            .success()
    );
    let o = run(&[
        &"prune",
        &zipped,
        &folder_out,
        &"--weight-threshold",
        &"1000000000",
        &"-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(const_values(&folder_out), const_values(f));
}

#[test]
fn output_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    for f in fixtures() {
        let a = tmp.path().join("a.mlpackage");
        let b = tmp.path().join("b.mlpackage");
        for out in [&a, &b] {
            let o = run(&[
                &"prune",
                &f,
                out,
                &"--weight-threshold",
                &"1000000000",
                &"-q",
                &"--force",
            ]);
            assert!(o.status.success());
        }
        assert_eq!(snapshot(&a), snapshot(&b), "{}", f.display());
    }
}

/// Runs `args` on a corrupted copy of a fixture and checks the failure contract: exit 1, one line
/// on stderr naming `names_file`, no output left, input unchanged.
fn assert_clean_failure(corrupt: impl Fn(&Path), names_file: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures()
        .into_iter()
        .find(|p| p.join("Data/com.apple.CoreML/weights/weight.bin").exists())
        .unwrap();
    let input = tmp.path().join("in.mlpackage");
    copy_dir(&f, &input);
    corrupt(&input);
    let before = snapshot(&input);
    for args in [vec!["inspect"], vec!["prune", "--weight-threshold", "0"]] {
        let out_path = tmp.path().join("out.mlpackage");
        let mut c = bin();
        c.arg(args[0]).arg(&input);
        if args[0] == "prune" {
            c.arg(&out_path).args(&args[1..]);
        }
        let o = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("mlprune: error: ") && stderr.contains(names_file),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out_path.exists(), "no output left behind");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            vec![std::ffi::OsString::from("in.mlpackage")],
            "no temp files left"
        );
    }
    assert_eq!(snapshot(&input), before, "input untouched");
}

fn weight_bin(p: &Path) -> PathBuf {
    p.join("Data/com.apple.CoreML/weights/weight.bin")
}

fn model_file(p: &Path) -> PathBuf {
    p.join("Data/com.apple.CoreML/model.mlmodel")
}

#[test]
fn truncated_weight_bin_is_a_clean_error() {
    assert_clean_failure(
        |p| {
            let bytes = std::fs::read(weight_bin(p)).unwrap();
            std::fs::write(weight_bin(p), &bytes[..bytes.len() / 2]).unwrap();
        },
        "weight.bin",
    );
}

#[test]
fn garbage_weight_bin_is_a_clean_error() {
    assert_clean_failure(
        |p| {
            let len = std::fs::metadata(weight_bin(p)).unwrap().len() as usize;
            let garbage: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
            std::fs::write(weight_bin(p), garbage).unwrap();
        },
        "weight.bin",
    );
}

#[test]
fn forged_blob_header_is_a_clean_error() {
    // The first record claims 2^60 bytes of data: must fail without allocating them.
    assert_clean_failure(
        |p| {
            let mut bytes = std::fs::read(weight_bin(p)).unwrap();
            bytes[64 + 8..64 + 16].copy_from_slice(&(1u64 << 60).to_le_bytes());
            std::fs::write(weight_bin(p), bytes).unwrap();
        },
        "weight.bin",
    );
}

#[test]
fn garbage_model_is_a_clean_error() {
    assert_clean_failure(
        |p| std::fs::write(model_file(p), b"\xff\xff\xffnot a protobuf").unwrap(),
        "model.mlmodel",
    );
}

#[test]
fn truncated_model_is_a_clean_error() {
    assert_clean_failure(
        |p| {
            let bytes = std::fs::read(model_file(p)).unwrap();
            std::fs::write(model_file(p), &bytes[..bytes.len() - 7]).unwrap();
        },
        "model.mlmodel",
    );
}

#[test]
fn bad_manifest_is_a_clean_error() {
    assert_clean_failure(
        |p| std::fs::write(p.join("Manifest.json"), b"{ \"fileFormatVersion\": ").unwrap(),
        "Manifest.json",
    );
    assert_clean_failure(
        |p| {
            let m = std::fs::read_to_string(p.join("Manifest.json")).unwrap();
            let m = m.replace("rootModelIdentifier", "rootModelIdentifierX");
            std::fs::write(p.join("Manifest.json"), m).unwrap();
        },
        "Manifest.json",
    );
}

#[test]
fn missing_model_file_is_a_clean_error() {
    assert_clean_failure(|p| std::fs::remove_file(model_file(p)).unwrap(), "model.mlmodel");
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let f = &fixtures()[0];
    let out = tmp.path().join("o.mlpackage");
    // No mode at all.
    let o = run(&[&"prune", f, &out]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    // Output equal to input.
    let o = run(&[&"prune", f, f, &"--weight-threshold", &"5"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    // An existing folder that is no package is not replaced, even with --force.
    std::fs::create_dir(&out).unwrap();
    let o = run(&[
        &"prune",
        f,
        &out,
        &"--weight-threshold",
        &"1000000000",
        &"--force",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir(&out).unwrap();
    // An existing package needs --force, then is replaced.
    let o = run(&[&"prune", f, &out, &"--weight-threshold", &"1000000000", &"-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[&"prune", f, &out, &"--weight-threshold", &"1000000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[
        &"prune",
        f,
        &out,
        &"--weight-threshold",
        &"1000000000",
        &"--force",
        &"-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Clap-level errors.
    assert_eq!(run(&[&"prune"]).status.code(), Some(2));
    assert_eq!(run(&[&"frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&[&"--help"]).status.code(), Some(0));
}

#[test]
fn argument_errors_are_one_prefixed_line_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures()[0].to_str().unwrap().to_owned();
    let out = tmp.path().join("o.mlpackage");
    let out = out.to_str().unwrap();
    let prune_help = "; see 'mlprune prune --help'";
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // Unknown flag, with clap's suggestion.
        (
            vec!["prune", &f, out, "--foo"],
            vec!["unexpected argument '--foo'", prune_help],
        ),
        (
            vec!["prune", &f, out, "--forc"],
            vec!["unexpected argument '--forc' (did you mean '--force'?)"],
        ),
        (
            vec!["inspect", &f, "extra"],
            vec!["unexpected argument 'extra'; see 'mlprune inspect --help'"],
        ),
        // Missing arguments.
        (
            vec!["prune", &f],
            vec!["missing required argument <OUTPUT>", prune_help],
        ),
        (
            vec!["prune"],
            vec!["missing required arguments <INPUT>, <OUTPUT>", prune_help],
        ),
        (
            vec!["prune", &f, out, "--config"],
            vec!["a value is required for '--config <FILE>'"],
        ),
        (
            vec!["prune", &f, out, "--min-sparsity", "0.3"],
            vec!["missing required argument --threshold <T>"],
        ),
        // Bad values.
        (
            vec!["prune", &f, out, "--sparsity", "half"],
            vec![
                "invalid value 'half' for '--sparsity <S>': invalid float literal",
                prune_help,
            ],
        ),
        (
            vec!["prune", &f, out, "--device", "tpu"],
            vec!["invalid value 'tpu' for '--device <DEVICE>' (possible values: auto, cpu, gpu)"],
        ),
        (
            vec!["generate", out, "--layers", "many"],
            vec![
                "invalid value 'many' for '--layers <LAYERS>': invalid digit",
                "; see 'mlprune generate --help'",
            ],
        ),
        // Conflicting and repeated flags.
        (
            vec!["prune", &f, out, "--threshold", "0.1", "--sparsity", "0.5"],
            vec![
                "the argument '--threshold <T>' cannot be used with '--sparsity <S>'",
                prune_help,
            ],
        ),
        (
            vec!["prune", &f, out, "--config", "c.json", "--n-m", "2:4"],
            vec!["the argument '--config <FILE>' cannot be used with '--n-m <N:M>'"],
        ),
        (
            vec!["prune", &f, out, "--sparsity", "0.5", "--sparsity", "0.4"],
            vec!["'--sparsity <S>' cannot be used more than once"],
        ),
        // Commands.
        (
            vec!["frobnicate"],
            vec!["unrecognized command 'frobnicate'; see 'mlprune --help'"],
        ),
        (
            vec![],
            vec!["no command given (one of: inspect, prune, generate, bench); see 'mlprune --help'"],
        ),
    ];
    for (args, expected) in cases {
        let o = bin().args(&args).output().unwrap();
        let stderr = String::from_utf8(o.stderr).unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(o.stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            stderr.starts_with("mlprune: error: ") && stderr.ends_with("--help'\n"),
            "{args:?}: {stderr}"
        );
        for e in expected {
            assert!(stderr.contains(e), "{args:?}: expected '{e}' in {stderr}");
        }
        assert!(!out_exists(out), "{args:?}: nothing written");
    }
    // Control characters in an argument are escaped like those of any other error.
    let o = bin()
        .args(["prune", &f, out, "--device", "\x1b[2J\ngpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(o.stderr).unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid value '\\u{1b}[2J\\ngpu'") && !stderr.contains('\x1b'),
        "{stderr}"
    );
}

fn out_exists(p: &str) -> bool {
    Path::new(p).exists()
}

#[test]
fn help_and_version_print_in_full_on_stdout_with_exit_0() {
    for args in [
        vec!["--help"],
        vec!["-h"],
        vec!["prune", "--help"],
        vec!["help", "prune"],
        vec!["inspect", "--help"],
    ] {
        let o = bin().args(&args).output().unwrap();
        let stdout = String::from_utf8(o.stdout).unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(o.stderr.is_empty(), "{args:?}");
        assert!(
            stdout.contains("Usage: mlprune") && stdout.lines().count() > 5,
            "{args:?}: {stdout}"
        );
        if args.contains(&"prune") {
            assert!(
                stdout.contains("--sparsity <S>") && stdout.contains("--joint-compression"),
                "{stdout}"
            );
        }
    }
    for flag in ["--version", "-V"] {
        let o = bin().arg(flag).output().unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert!(o.stderr.is_empty());
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            format!("mlprune {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// Rewrites the fixture's model protobuf in place with `edit`.
fn edit_model(p: &Path, edit: impl FnOnce(&mut mlprune::proto::spec::Model)) {
    use prost::Message;
    let bytes = std::fs::read(model_file(p)).unwrap();
    let mut model = mlprune::proto::spec::Model::decode(bytes.as_slice()).unwrap();
    edit(&mut model);
    std::fs::write(model_file(p), model.encode_to_vec()).unwrap();
}

#[test]
fn blob_reference_to_another_file_is_refused() {
    use mlprune::proto::mil::value::Value as V;
    assert_clean_failure(
        |p| {
            edit_model(p, |m| {
                let Some(mlprune::proto::spec::model::Type::MlProgram(prog)) = m.r#type.as_mut() else {
                    panic!()
                };
                let mut done = false;
                mlprune::mil::access::for_each_op_mut(prog, |op| -> Result<(), mlprune::Error> {
                    if let Some(val) = op.attributes.lookup_mut("val") {
                        if let Some(V::BlobFileValue(b)) = val.value.as_mut() {
                            if !done {
                                b.file_name = "@model_path/weights/../../../etc/passwd".into();
                                done = true;
                            }
                        }
                    }
                    Ok(())
                })
                .unwrap();
                assert!(done);
            })
        },
        "only weights/weight.bin is supported",
    );
}

#[test]
fn a_description_listing_functions_is_pruned_and_kept() {
    // Multifunction models are pruned (tests/hostile/multifunction.rs); the description's function
    // list and default function come through unchanged.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("mf.mlpackage");
    copy_dir(&fixtures()[0], &input);
    edit_model(&input, |m| {
        let d = m.description.get_or_insert_with(Default::default);
        d.functions.push(mlprune::proto::spec::FunctionDescription {
            name: "main".into(),
            ..Default::default()
        });
        d.default_function_name = "main".into();
    });
    let out = tmp.path().join("o.mlpackage");
    let o = run(&[&"prune", &input, &out, &"--sparsity", &"0.5", &"-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(model_file(&out)).unwrap();
    let model = <mlprune::proto::spec::Model as prost::Message>::decode(bytes.as_slice()).unwrap();
    let description = model.description.unwrap();
    assert_eq!(description.default_function_name, "main");
    assert_eq!(description.functions.len(), 1);
    assert_eq!(description.functions[0].name, "main");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn joint_compression_prunes_palettized_and_quantized_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, chain) in [
        (
            "palettized_linear_fp16_ios18.mlpackage",
            "constexpr_lut_to_sparse",
        ),
        (
            "quantized_linear_fp16_ios18.mlpackage",
            "constexpr_sparse_blockwise_shift_scale",
        ),
    ] {
        let out = tmp.path().join(name);
        let o = run(&[
            &"prune",
            &fixture(name),
            &out,
            &"--sparsity",
            &"0.5",
            &"--weight-threshold",
            &"1000",
            &"--joint-compression",
            &"-q",
        ]);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&run(&[&"inspect", &out, &"--json"]).stdout).unwrap();
        let row = report["weights"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["storage"] == "constexpr_sparse_to_dense")
            .unwrap();
        assert_eq!(
            row["chain"],
            serde_json::json!([chain, "constexpr_sparse_to_dense"]),
            "{name}"
        );
        // Plain consts are left alone in joint mode.
        let consts = report["weights"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["storage"] == "const")
            .count();
        assert_eq!(consts, 3, "{name}");
    }
}

#[test]
fn joint_compression_needs_ios18() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.mlpackage");
    let o = run(&[
        &"prune",
        &fixture("linear_fp16_ios17.mlpackage"),
        &out,
        &"--sparsity",
        &"0.5",
        &"--joint-compression",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Joint compression is only supported since iOS18."));
    assert!(!out.exists());
}

#[test]
fn gpu_probe_prints_nothing_but_our_own_line() {
    // Mesa's Vulkan drivers make libwayland complain on stderr when XDG_RUNTIME_DIR is unset.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.mlpackage");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample/sample.mlpackage");
    let o = bin()
        .env_remove("XDG_RUNTIME_DIR")
        .args([
            "prune",
            "--sparsity",
            "0.5",
            "--device",
            "gpu",
            "--gpu-min-elements",
            "0",
            "-q",
        ])
        .arg(&sample)
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    match o.status.code() {
        // An adapter was found: --quiet means nothing at all on stderr.
        Some(0) => assert!(stderr.is_empty(), "{stderr}"),
        // No adapter: exactly our one line.
        Some(1) => assert_eq!(stderr.lines().count(), 1, "{stderr}"),
        other => panic!("unexpected exit {other:?}: {stderr}"),
    }
}

#[test]
fn all_zero_results_of_the_same_type_share_one_op_like_coremltools() {
    // coremltools' export merges identical constexpr ops in a block: the sample's three 256x256
    // layers pruned to nothing become one op that all three layers read.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("z.mlpackage");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample/sample.mlpackage");
    let o = run(&[
        &"prune",
        &sample,
        &out,
        &"--sparsity",
        &"1.0",
        &"-q",
        &"--report",
        &tmp.path().join("r.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&run(&[&"inspect", &out, &"--json"]).stdout).unwrap();
    let sparse: Vec<&str> = report["weights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["storage"] == "constexpr_sparse_to_dense")
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        sparse,
        [
            "fc1_weight_0_to_fp16_sparsified",
            "head_weight_0_to_fp16_sparsified"
        ]
    );
    let fc1 = report["weights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == sparse[0])
        .unwrap();
    let readers: Vec<&str> = fc1["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    assert_eq!(readers, ["fc1_cast_fp16", "fc2_cast_fp16", "fc3_cast_fp16"]);
    let tensors: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("r.json")).unwrap()).unwrap();
    assert!(tensors
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pruned"] == true)
        .all(|t| t["sparsity"] == 1.0));
}

#[test]
fn equal_blobs_are_stored_once_and_runs_are_deterministic() {
    // At target sparsity 0 every mask is all ones: the three 256x256 layers' masks (8192 bytes
    // each, iOS16 form) are one blob. 12 blobs without sharing (4 nonzero_data, 4 masks, 4
    // biases), 10 with it.
    let tmp = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample/sample.mlpackage");
    let weight_bin =
        |out: &Path| std::fs::read(out.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap();
    let mut outputs = Vec::new();
    for name in ["a.mlpackage", "b.mlpackage"] {
        let out = tmp.path().join(name);
        let o = run(&[&"prune", &sample, &out, &"--sparsity", &"0.0", &"-q"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outputs.push(out);
    }
    let bytes = weight_bin(&outputs[0]);
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), 10);
    // No two blobs hold the same content.
    let reader = mlprune::blob::BlobReader::new(bytes.as_slice(), "weight.bin".into()).unwrap();
    let mut contents: Vec<_> = reader
        .records()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.dtype,
                reader.read(r.offset, r.dtype, r.element_count()).unwrap(),
            )
        })
        .collect();
    assert_eq!(contents.len(), 10);
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len(), 10, "a content stored twice");
    assert_eq!(bytes, weight_bin(&outputs[1]));
    let model = |out: &Path| std::fs::read(out.join("Data/com.apple.CoreML/model.mlmodel")).unwrap();
    assert_eq!(model(&outputs[0]), model(&outputs[1]));
}

#[test]
fn the_report_says_why_each_device_was_chosen() {
    // Without a GPU in play: `cpu` says so, and `auto` keeps tensors below --gpu-min-elements on
    // the CPU and says that. Skipped tensors ran no kernel and give no reason.
    let tmp = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample/sample.mlpackage");
    for (device, reason) in [
        ("cpu", "--device cpu".to_string()),
        (
            "auto",
            format!("--device auto: below --gpu-min-elements ({})", u64::MAX),
        ),
    ] {
        let report_path = tmp.path().join(format!("{device}.json"));
        let max = u64::MAX.to_string();
        let o = run(&[
            &"prune",
            &sample,
            &tmp.path().join(format!("{device}.mlpackage")),
            &"--sparsity",
            &"0.5",
            &"--device",
            &device,
            &"--gpu-min-elements",
            &max,
            &"-q",
            &"--report",
            &report_path,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
        let tensors = report.as_array().unwrap();
        assert!(tensors.iter().any(|t| t["pruned"] == true), "{report}");
        for t in tensors {
            if t["pruned"] == true {
                assert_eq!(t["device"], "cpu", "{t}");
                assert_eq!(t["device_reason"], reason.as_str(), "{t}");
            } else if t["skipped"].as_str().is_some_and(|s| !s.is_empty()) && t["mode"] == "none" {
                assert!(t.get("device_reason").is_none(), "no kernel ran: {t}");
            }
        }
    }
}

// ----- --global-sparsity ---------------------------------------------------------------------------

/// One cut over the whole sample model: the report's k, N and cut are those of the rule restated by
/// sorting every eligible magnitude, each tensor's sparsity is its share of `|w| <= v` (or zero),
/// an excluded consumer's weight stays dense, and the summary line names the cut.
#[test]
fn global_sparsity_cuts_every_eligible_tensor_at_one_magnitude() {
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample/sample.mlpackage");
    let values = const_values(&input);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.mlpackage");
    let report = tmp.path().join("report.json");
    let o = run(&[
        &"prune",
        &input,
        &out,
        &"--global-sparsity",
        &"0.37",
        &"--exclude",
        &"head_cast_fp16",
        &"--report",
        &report,
        &"--device",
        &"cpu",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("global cut |w| <= "), "{stderr}");
    let entries: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let entries = entries.as_array().unwrap();
    let eligible: Vec<&serde_json::Value> = entries.iter().filter(|e| e["mode"] == "global").collect();
    let names: Vec<&str> = eligible.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "fc1_weight_0_to_fp16",
            "fc2_weight_0_to_fp16",
            "fc3_weight_0_to_fp16"
        ],
        "the head weight is excluded by its consumer, biases are below the weight threshold"
    );
    let head = entries
        .iter()
        .find(|e| e["name"] == "head_weight_0_to_fp16")
        .unwrap();
    assert_eq!(head["pruned"], false);
    assert!(
        head["skipped"]
            .as_str()
            .unwrap()
            .contains("--exclude 'head_cast_fp16'"),
        "{head}"
    );
    let mags = |name: &str| match &values[name] {
        TensorData::F16(w) => w.iter().map(|x| x.to_f32().abs()).collect::<Vec<f32>>(),
        other => panic!("{name}: {other:?}"),
    };
    let mut all: Vec<f32> = names.iter().flat_map(|n| mags(n)).collect();
    all.sort_by(f32::total_cmp);
    let n = all.len() as u64;
    let k = 37 * n / 100;
    let v = all[k as usize - 1];
    for e in &eligible {
        let cut = &e["global_cut"];
        assert_eq!(cut["eligible_elements"], n);
        assert_eq!(cut["k"], k);
        assert_eq!(cut["cut_key"], v.to_bits());
        assert_eq!(cut["cut_value"], v.to_string());
        let w = mags(e["name"].as_str().unwrap());
        let zeros = w.iter().filter(|&&m| m <= v).count();
        assert_eq!(
            e["sparsity"].as_f64().unwrap(),
            zeros as f64 / w.len() as f64,
            "{e}"
        );
    }
    // Ties over-prune: at least k elements are zero in all.
    let zeros: usize = all.iter().filter(|&&m| m <= v).count();
    assert!(zeros as u64 >= k);
}

#[test]
fn global_sparsity_usage_errors_exit_2_and_leave_nothing() {
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample/sample.mlpackage");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.mlpackage");
    let cases: [(&[&str], &str); 11] = [
        (&["--global-sparsity", "nan"], "not a decimal number in [0, 1]"),
        (&["--global-sparsity", "1.5"], "outside [0, 1]"),
        (&["--global-sparsity=-0.1"], "not a decimal number"),
        (
            &["--global-sparsity", "0.5", "--sparsity", "0.5"],
            "cannot be used with",
        ),
        (
            &["--global-sparsity", "0.5", "--threshold", "0.1"],
            "cannot be used with",
        ),
        (
            &["--global-sparsity", "0.5", "--n-m", "2:4"],
            "cannot be used with",
        ),
        (
            &["--global-sparsity", "0.5", "--config", "x.json"],
            "cannot be used with",
        ),
        (
            &["--global-sparsity", "0.5", "--exclude", "no_such_op"],
            "--exclude 'no_such_op'",
        ),
        // An op that reads no weight, and a const that is no weight (a cast's dtype string).
        (
            &["--global-sparsity", "0.5", "--exclude", "fc1_relu_cast_fp16"],
            "--exclude 'fc1_relu_cast_fp16': the model has no weight const of that name, nor an op reading one",
        ),
        (
            &["--global-sparsity", "0.5", "--exclude", "x_to_fp16_dtype_0"],
            "--exclude 'x_to_fp16_dtype_0'",
        ),
        (
            &["--sparsity", "0.5", "--exclude", "fc1_cast_fp16"],
            "--exclude needs --global-sparsity",
        ),
    ];
    for (flags, message) in cases {
        let mut c = bin();
        c.arg("prune").arg(&input).arg(&out).args(flags);
        let o = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{flags:?} left files"
        );
    }
}
