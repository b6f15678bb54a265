//! Multifunction packages: every function pruned, a blob the functions share pruned once and kept
//! shared, conflicting configs on a shared blob refused, and inspect / `--report` naming functions.

use std::ffi::OsStr;

use mlprune::mil::value::{string_value, OperationExt, ValueExt};
use mlprune::proto::spec::FunctionDescription;

#[allow(unused_imports)]
use crate::*;

/// The fp16 linear fixture with its `main` function copied as `second`, both reading the same
/// blobs, as `ct.utils.save_multifunction` writes one model under two names; `second` is the
/// default. `rename` maps op names of `second` to new ones (a consumer only one function has).
fn two_functions(rename: &[(&str, &str)]) -> Case {
    let case = Case::linear();
    add_second_function(&case.input, rename);
    case
}

/// `package`'s `main` function copied as `second` (the default), as [`two_functions`] describes.
pub(crate) fn add_second_function(package: &Path, rename: &[(&str, &str)]) {
    let path = package.join(CORE_ML).join("model.mlmodel");
    let mut model = Model::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let Some(Type::MlProgram(program)) = model.r#type.as_mut() else {
        panic!("fixture is an ML Program")
    };
    let mut second = program.functions["main"].clone();
    for block in second.block_specializations.values_mut() {
        for slot in &mut block.operations {
            let mut op = mlprune::mil::decode_op(slot).unwrap();
            if let Some(&(_, new)) = rename.iter().find(|(old, _)| op.name() == Some(old)) {
                op.attributes.set("name".into(), string_value(new));
                *slot = mlprune::mil::encode_op(&op);
            }
        }
    }
    program.functions.insert("second".into(), second);
    let description = model.description.as_mut().unwrap();
    let function = |name: &str| FunctionDescription {
        name: name.into(),
        input: description.input.clone(),
        output: description.output.clone(),
        ..Default::default()
    };
    description.functions = vec![function("main"), function("second")];
    description.default_function_name = "second".into();
    std::fs::write(&path, model.encode_to_vec()).unwrap();
}

fn program_of(package: &Path) -> (Model, Program) {
    let path = package.join(CORE_ML).join("model.mlmodel");
    let model = Model::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let Some(Type::MlProgram(program)) = model.r#type.clone() else {
        panic!("an ML Program")
    };
    (model, program)
}

/// `(op name, mask offset, nonzero_data offset)` of every sparse op in `function`.
fn sparse_ops(program: &Program, function: &str) -> Vec<(String, u64, u64)> {
    let f = &program.functions[function];
    let offset =
        |op: &Operation, param: &str| match op.inputs.lookup(param).unwrap().arguments[0].binding.as_ref() {
            Some(Binding::Value(v)) => v.blob_offset().unwrap(),
            other => panic!("{param} is not a blob: {other:?}"),
        };
    f.block_specializations[&f.opset]
        .operations
        .iter()
        .map(|bytes| mlprune::mil::decode_op(bytes).unwrap())
        .filter(|op| op.r#type == "constexpr_sparse_to_dense")
        .map(|op| {
            (
                op.name().unwrap().to_owned(),
                offset(&op, "mask"),
                offset(&op, "nonzero_data"),
            )
        })
        .collect()
}

fn weight_bin_len(package: &Path) -> u64 {
    std::fs::metadata(package.join(CORE_ML).join("weights/weight.bin"))
        .unwrap()
        .len()
}

#[test]
fn every_function_is_pruned_and_a_shared_weight_is_written_once() {
    let case = two_functions(&[]);
    let summary = engine::prune(&prune_job(&case.input, &case.output(), false)).unwrap();
    let pruned: Vec<(&str, &str)> = summary
        .tensors
        .iter()
        .filter(|t| t.pruned)
        .map(|t| (&*t.function, t.name.as_str()))
        .collect();
    assert_eq!(
        pruned,
        [
            ("main", "fc1_weight_0_to_fp16"),
            ("main", "fc2_weight_0_to_fp16"),
            ("second", "fc1_weight_0_to_fp16"),
            ("second", "fc2_weight_0_to_fp16"),
        ]
    );
    // The second function's tensors were not pruned again: the report says whose result they use.
    let reused: Vec<_> = summary
        .tensors
        .iter()
        .filter(|t| t.pruned && &*t.function == "second")
        .map(|t| t.device_reason.clone().unwrap())
        .collect();
    assert_eq!(
        reused,
        [
            "shared weight.bin blob: pruned once, for main/fc1_weight_0_to_fp16",
            "shared weight.bin blob: pruned once, for main/fc2_weight_0_to_fp16",
        ]
    );
    let (model, program) = program_of(&case.output());
    let main = sparse_ops(&program, "main");
    assert_eq!(main.len(), 2);
    assert_eq!(main, sparse_ops(&program, "second"), "same ops on the same blobs");
    let description = model.description.unwrap();
    assert_eq!(description.default_function_name, "second");
    let names: Vec<_> = description.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["main", "second"]);

    // Written once: exactly the weight.bin of pruning the single-function fixture.
    let single = Case::linear();
    engine::prune(&prune_job(&single.input, &single.output(), false)).unwrap();
    assert_eq!(weight_bin_len(&case.output()), weight_bin_len(&single.output()));
}

#[test]
fn a_shared_weight_with_two_configs_is_refused_naming_both_ops() {
    // `fc1_cast_fp16` (the linear reading fc1's weight) is called `fc1_other` in `second` only.
    let case = two_functions(&[("fc1_cast_fp16", "fc1_other")]);
    let before = snapshot(&case.input);
    let run = prune_with_config_file(
        &case,
        r#"{"config_type": "OpMagnitudePrunerConfig",
            "global_config": {"target_sparsity": 0.5, "weight_threshold": 0},
            "op_name_configs": {"fc1_other": {"target_sparsity": 0.75, "weight_threshold": 0}}}"#,
    );
    assert_cli_error(
        &run,
        2,
        &[
            "conflict",
            "main/fc1_weight_0_to_fp16",
            "second/fc1_weight_0_to_fp16",
            "target_sparsity=0.75",
        ],
    );
    assert_nothing_left(&case, &["in.mlpackage", "config.json"]);
    assert_eq!(snapshot(&case.input), before, "input unchanged");

    // The same config naming an op both functions have is one config for the shared weight.
    let same = two_functions(&[]);
    let o = prune_with_config_file(
        &same,
        r#"{"config_type": "OpMagnitudePrunerConfig",
            "global_config": {"target_sparsity": 0.5, "weight_threshold": 0},
            "op_name_configs": {"fc1_cast_fp16": {"target_sparsity": 0.75, "weight_threshold": 0}}}"#,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Configs that are equal as values though they print apart (a threshold of -0.0 and one of
    // 0.0) are one config, as coremltools compares them: pruned as with 0.0 for both.
    let threshold = |other: &str| {
        let case = two_functions(&[("fc1_cast_fp16", "fc1_other")]);
        let o = prune_with_config_file(
            &case,
            &format!(
                r#"{{"config_type": "OpThresholdPrunerConfig",
                    "global_config": {{"threshold": 0.0, "weight_threshold": 0}},
                    "op_name_configs": {{"fc1_other": {{"threshold": {other}, "weight_threshold": 0}}}}}}"#
            ),
        );
        assert!(
            o.status.success(),
            "{other}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        snapshot(&case.output())
    };
    assert!(threshold("-0.0") == threshold("0.0"), "the same output");
}

#[test]
fn global_sparsity_excluding_a_shared_weight_for_one_function_only_is_refused() {
    // `fc1_other` consumes fc1's shared weight in `second` only: excluding it there but pruning the
    // same blob for `main` would store it twice and unshare it.
    let case = two_functions(&[("fc1_cast_fp16", "fc1_other")]);
    let before = snapshot(&case.input);
    let global = |case: &Case, exclude: &str| {
        let flags = [
            "--global-sparsity",
            "0.5",
            "--weight-threshold",
            "0",
            "--exclude",
            exclude,
        ];
        prune_cli(case, &flags.map(OsStr::new))
    };
    let run = global(&case, "fc1_other");
    assert_cli_error(
        &run,
        2,
        &[
            "--exclude",
            "second/fc1_weight_0_to_fp16",
            "main/fc1_weight_0_to_fp16",
            "exclude both",
        ],
    );
    assert_nothing_left(&case, &["in.mlpackage"]);
    assert_eq!(snapshot(&case.input), before, "input unchanged");

    // Named by the const itself, the weight is excluded in both functions: stored once, as is.
    let run = global(&case, "fc1_weight_0_to_fp16");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (_, program) = program_of(&case.output());
    for function in ["main", "second"] {
        let sparse = sparse_ops(&program, function);
        assert!(!sparse.is_empty(), "{function}: the other weights are pruned");
        assert!(
            !sparse.iter().any(|(name, ..)| name.contains("fc1_weight")),
            "{function}: fc1's weight stays dense: {sparse:?}"
        );
    }
}

#[test]
fn a_shared_bias_nobody_prunes_is_no_conflict() {
    // Biases are rank 1: whatever config each function's consumer resolves to, nothing is pruned,
    // so the blob stays shared and nothing conflicts.
    let case = two_functions(&[("fc1_cast_fp16", "fc1_other")]);
    let mut job = prune_job(&case.input, &case.output(), false);
    job.config = mlprune::config::OptimizationConfig::from_json_str(
        r#"{"config_type": "OpMagnitudePrunerConfig",
            "op_name_configs": {"fc1_other": {"target_sparsity": 0.75, "weight_threshold": 0},
                                "fc1_weight_0_to_fp16": null}}"#,
    )
    .unwrap();
    let summary = engine::prune(&job).unwrap();
    assert_eq!(summary.pruned_count(), 0);
}

#[test]
fn joint_compression_of_a_multifunction_model_is_refused() {
    let case = two_functions(&[]);
    let mut job = prune_job(&case.input, &case.output(), false);
    job.joint_compression = true;
    let err = engine::prune(&job).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("multifunction"), "{err}");
    assert_nothing_left(&case, &["in.mlpackage"]);
}

#[test]
fn inspect_and_report_name_the_function_and_mark_shared_tensors() {
    let case = two_functions(&[]);
    let o = cli_inspect(&case.input);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("FUNCTION  NAME"), "{text}");
    assert!(lines[0].ends_with("SHARED"), "{text}");
    let weight_rows: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.contains("fc1_weight_0_to_fp16"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(weight_rows.len(), 2, "{text}");
    assert_eq!(
        (weight_rows[0][0], weight_rows[0].last()),
        ("main", Some(&"second"))
    );
    assert_eq!(
        (weight_rows[1][0], weight_rows[1].last()),
        ("second", Some(&"main"))
    );
    assert!(
        text.ends_with("; functions main,second (default second)\n"),
        "{text}"
    );

    let report = mlprune::inspect::inspect(&case.input).unwrap();
    assert_eq!(report.functions, ["main", "second"]);
    assert_eq!(report.default_function.as_deref(), Some("second"));
    let row = report
        .weights
        .iter()
        .find(|w| w.function == "second" && w.name == "fc1_weight_0_to_fp16")
        .unwrap();
    assert_eq!(row.shared_with, ["main"]);
    let main_row = report
        .weights
        .iter()
        .find(|w| w.function == "main" && w.name == "fc1_weight_0_to_fp16")
        .unwrap();
    assert_eq!(main_row.shared_with, ["second"]);
    assert_eq!(row.shared_offsets.len(), 1);
    assert_eq!(row.shared_offsets, main_row.shared_offsets);
    // `inspect --json` writes its rows as it makes them: the text is that of the whole report.
    let inspection = mlprune::inspect::Inspection::open(&case.input).unwrap();
    let streamed = mlprune::inspect::render_json(&inspection).unwrap();
    assert_eq!(streamed, serde_json::to_string_pretty(&report).unwrap() + "\n");
    let o = cli(&["inspect".as_ref(), case.input.as_os_str(), "--json".as_ref()]);
    assert_eq!(String::from_utf8(o.stdout).unwrap(), streamed);

    // A single-function model keeps its table: no FUNCTION or SHARED column.
    let single = cli_inspect(&Case::linear().input);
    let single = String::from_utf8(single.stdout).unwrap();
    assert!(single.starts_with("NAME  "), "{single}");
    assert!(
        !single.contains("SHARED") && !single.contains("functions"),
        "{single}"
    );

    // --report: one entry per function's tensor, each naming its function.
    let report_path = case.tmp.path().join("report.json");
    let o = cli_prune(
        &case.input,
        &case.output(),
        &["--report", report_path.to_str().unwrap(), "-q"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let entries: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let functions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["function"].as_str().unwrap())
        .collect();
    assert_eq!(functions.len(), 8, "{entries}");
    assert_eq!(functions.iter().filter(|f| **f == "second").count(), 4);
}

#[test]
fn a_shared_weight_the_kernel_skips_is_skipped_once_for_every_function() {
    // A threshold far below every magnitude leaves the tensors short of the minimum sparsity: the
    // kernel skips them, once, and the second function's consts take that verdict.
    let case = two_functions(&[]);
    let mut job = prune_job(&case.input, &case.output(), false);
    job.config = from_shortcuts(&Shortcuts {
        threshold: Some(1e-9),
        min_sparsity: Some(0.5),
        weight_threshold: Some(0),
        ..Default::default()
    })
    .unwrap();
    let summary = engine::prune(&job).unwrap();
    assert_eq!(summary.pruned_count(), 0);
    let second: Vec<_> = summary
        .tensors
        .iter()
        .filter(|t| &*t.function == "second" && t.name.contains("weight"))
        .collect();
    assert_eq!(second.len(), 2);
    for t in second {
        let first = summary
            .tensors
            .iter()
            .find(|f| &*f.function == "main" && f.name == t.name)
            .unwrap();
        assert!(t.skipped.is_some() && t.skipped == first.skipped, "{t:?}");
        assert_eq!(
            t.device_reason.as_deref(),
            Some(format!("shared weight.bin blob: the kernel ran once, for main/{}", t.name).as_str())
        );
    }
    // Nothing pruned, every blob copied once: the input's weight.bin.
    assert_eq!(weight_bin_len(&case.output()), weight_bin_len(&case.input));
}

/// `mlprune prune` of `case`'s input into its output with `config` (JSON) written as
/// `config.json` beside them.
fn prune_with_config_file(case: &Case, config: &str) -> std::process::Output {
    let path = case.tmp.path().join("config.json");
    std::fs::write(&path, config).unwrap();
    prune_cli(case, &["--config".as_ref(), path.as_os_str()])
}

/// `mlprune prune` of `case`'s input into its output with `flags`.
fn prune_cli(case: &Case, flags: &[&OsStr]) -> std::process::Output {
    let output = case.output();
    let mut args = vec!["prune".as_ref(), case.input.as_os_str(), output.as_os_str()];
    args.extend_from_slice(flags);
    cli(&args)
}
