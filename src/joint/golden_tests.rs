//! Joint compression against coremltools 9.0 (`tests/golden/joint`, made by
//! `tests/python/make_joint_cases.py`): every case's materialized values must equal coremltools'
//! byte for byte, and a joint prune run the way the engine will run it (plan → materialize →
//! kernel → encode → rewire, weight.bin rebuilt in program order) must give coremltools' ops —
//! names, bindings, types and blob offsets — and a byte-identical weight.bin.

use std::io::Cursor;

use crate::mil::entries::Entries;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::*;
use crate::config::OptimizationConfig;
use crate::dispatch::{run_kernel, KernelResult};
use crate::mil::access::{op_at, with_op_mut};
use crate::mil::encode_op;
use crate::mil::rewrite::{rename_all, replace_ops};
use crate::mil::value::OperationExt;
use crate::mil::LoadedModel;
use crate::package::Package;
use crate::plan::Decision;
use crate::weights::{WeightFileBuilder, WeightSource};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/joint")
}

fn cases() -> serde_json::Map<String, Json> {
    let text = std::fs::read_to_string(golden_dir().join("cases.json")).expect("cases.json");
    match serde_json::from_str(&text).expect("cases.json is JSON") {
        Json::Object(m) => m,
        _ => panic!("cases.json is not an object"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load(path: &Path) -> (Package, LoadedModel) {
    let package = Package::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let model_path = package.model_path();
    let model = LoadedModel::read_held(&model_path, path).unwrap();
    (package, model)
}

#[test]
fn materialization_matches_coremltools_byte_for_byte() {
    let mut checked = 0;
    for (case, entry) in cases() {
        let (package, model) = load(&golden_dir().join(format!("{case}.mlpackage")));
        let graph = GraphView::build(&model.program).unwrap();
        let source = WeightSource::open(&package, None).unwrap();
        let ctx = Context::new(&model.program, &graph, &source);
        for (name, expected) in entry["dense"].as_object().unwrap() {
            let index = (0..graph.op_count())
                .position(|i| *graph.name(i) == **name)
                .unwrap_or_else(|| panic!("{case}: no op {name}"));
            let m = materialize(&ctx, index).unwrap_or_else(|e| panic!("{case}/{name}: {e}"));
            assert_eq!(
                m.dense.dtype().name(),
                expected["dtype"].as_str().unwrap(),
                "{case}/{name} dtype"
            );
            let shape: Vec<u64> = expected["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(m.shape, shape, "{case}/{name} shape");
            assert_eq!(
                hex(&m.dense.to_le_bytes()),
                expected["hex"].as_str().unwrap(),
                "{case}/{name} values"
            );
            assert_eq!(
                dense_dtype(&ctx, index).unwrap(),
                m.dense.dtype(),
                "{case}/{name} planned dtype"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} materializations checked");
}

/// What a joint prune produced: the rewritten program and weight.bin, and the kernel skip reasons.
struct JointRun {
    model: LoadedModel,
    weight_bin: Vec<u8>,
    skipped: Vec<String>,
    pruned: usize,
}

/// The engine's joint loop, as `src/joint/mod.rs` describes it.
fn run_joint(path: &Path, config: &OptimizationConfig) -> crate::Result<JointRun> {
    let (package, mut model) = load(path);
    let graph = GraphView::build(&model.program)?;
    let planned = plan_joint(&model.program, &graph, config, model.spec_version())?;
    let source = WeightSource::open(&package, None)?;
    let mut weights = WeightFileBuilder::new(Cursor::new(Vec::new()), "ours.bin".into())?;
    let mut namer = JointNamer::new();
    let (mut edits, mut renames, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for (index, info) in graph.infos() {
        let config = planned
            .iter()
            .find(|p| p.op_index == index)
            .and_then(|p| match &p.decision {
                Decision::Prune(c) => Some(c.clone()),
                Decision::Skip(_) => None,
            });
        if let Some(config) = config {
            let m = materialize(&Context::new(&model.program, &graph, &source), index)?;
            match run_kernel(&config, &m.dense, &m.shape, &info.name)? {
                KernelResult::Skipped(reason) => skipped.push(reason),
                KernelResult::Pruned(pruned) => {
                    let names = namer.names(&graph, index)?;
                    let original = op_at(&model.program, &info.path).unwrap();
                    let out = joint_ops(
                        &original,
                        &info.name,
                        &m,
                        &pruned.mask,
                        &names,
                        &source,
                        &mut weights,
                    )?;
                    renames.push((
                        info.path.function.to_string(),
                        original.outputs[0].name.clone(),
                        out.output,
                    ));
                    edits.push((info.path.clone(), out.ops));
                    continue;
                }
            }
        }
        with_op_mut(&mut model.program, &info.path, |op| {
            weights.copy_op_blobs(op, &info.name, source.blob_reader())
        })
        .unwrap()?;
    }
    let pruned = edits.len();
    replace_ops(&mut model.program, edits)?;
    rename_all(&mut model.program, &renames)?;
    let weight_bin = weights.finish()?.into_inner();
    Ok(JointRun {
        model,
        weight_bin,
        skipped,
        pruned,
    })
}

fn ops_by_name(model: &LoadedModel) -> Vec<(String, crate::proto::mil::Operation)> {
    let mut out = Vec::new();
    crate::mil::access::for_each_op(&model.program, |op| {
        out.push((op.name().unwrap_or_default().to_owned(), op.clone()));
        Ok::<(), crate::Error>(())
    })
    .unwrap();
    out
}

#[test]
fn joint_prune_matches_coremltools_output() {
    let mut compared = 0;
    for (case, entry) in cases() {
        let input = golden_dir().join(format!("{case}.mlpackage"));
        for (cname, expected) in entry["configs"].as_object().unwrap() {
            let label = format!("{case}/{cname}");
            let config = OptimizationConfig::from_json_str(&expected["config"].to_string()).unwrap();
            let result = run_joint(&input, &config);
            if let Some(error) = expected.get("error").and_then(Json::as_str) {
                let e = result
                    .err()
                    .unwrap_or_else(|| panic!("{label}: coremltools failed with {error}, we did not"));
                let ours = e.to_string();
                match error.split_once(": ") {
                    Some(("ValueError", msg)) => assert_eq!(ours, msg, "{label}"),
                    Some(("AssertionError", _)) => {
                        assert!(ours.contains("AssertionError"), "{label}: {ours}")
                    }
                    Some(("IndexError", _)) => assert!(ours.contains("IndexError"), "{label}: {ours}"),
                    _ => panic!("{label}: unexpected coremltools error {error}"),
                }
                continue;
            }
            let run = result.unwrap_or_else(|e| panic!("{label}: {e}"));
            let warnings: Vec<&str> = expected["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Json::as_str)
                .collect();
            for reason in &run.skipped {
                assert!(
                    warnings.contains(&reason.as_str()),
                    "{label}: skip '{reason}' not in {warnings:?}"
                );
            }
            let Some(output) = expected["output"].as_str() else {
                assert_eq!(run.pruned, 0, "{label}: coremltools changed nothing");
                continue;
            };
            let (_, theirs) = load(&golden_dir().join(output));
            let ours_ops = ops_by_name(&run.model);
            let their_ops = ops_by_name(&theirs);
            assert_eq!(ours_ops.len(), their_ops.len(), "{label}: op count");
            for ((name, ours), (their_name, theirs)) in ours_ops.iter().zip(&their_ops) {
                if theirs.r#type.starts_with("constexpr_") {
                    assert_eq!(ours, theirs, "{label}: op {name}");
                } else {
                    // coremltools' post-pass pipeline may rename ops it did not touch (e.g. a
                    // `cast` renamed after its output); the rewiring is what must match.
                    assert_eq!(
                        (&ours.r#type, &ours.inputs),
                        (&theirs.r#type, &theirs.inputs),
                        "{label}: op {name} / {their_name}"
                    );
                    assert_eq!(ours.outputs, theirs.outputs, "{label}: op {name} outputs");
                }
            }
            let their_bin = std::fs::read(
                golden_dir()
                    .join(output)
                    .join("Data/com.apple.CoreML/weights/weight.bin"),
            )
            .unwrap();
            assert!(
                run.weight_bin == their_bin,
                "{label}: weight.bin differs ({} vs {} bytes)",
                run.weight_bin.len(),
                their_bin.len()
            );
            compared += 1;
        }
    }
    assert!(compared >= 25, "only {compared} outputs compared");
}

/// coremltools inlines every constant input of an iOS18 constexpr op, but other writers may bind
/// one by name to a `const` op: it must materialize the same and be carried over inline.
#[test]
fn name_bound_const_inputs_materialize_and_are_inlined() {
    use crate::mil::build::{bind_name, const_op};
    use crate::proto::mil::argument::binding::Binding;

    let path = golden_dir().join("lut4g_fp16.mlpackage");
    let (package, mut model) = load(&path);
    let source = WeightSource::open(&package, None).unwrap();
    let graph = GraphView::build(&model.program).unwrap();
    let index = (0..graph.op_count())
        .position(|i| graph.op_type(i) == LUT_TO_DENSE)
        .unwrap();
    let expected = materialize(&Context::new(&model.program, &graph, &source), index).unwrap();

    let path_of_op = graph.path(index);
    let lut = with_op_mut(&mut model.program, &path_of_op, |op| {
        let lut = op.inputs.lookup("lut").unwrap().arguments[0].binding.clone();
        op.inputs.set("lut".into(), bind_name("lut_const"));
        lut
    })
    .unwrap();
    let Some(Binding::Value(lut)) = lut else {
        panic!("lut inline")
    };
    let block = model
        .program
        .functions
        .get_mut("main")
        .unwrap()
        .block_specializations
        .values_mut()
        .next()
        .unwrap();
    block
        .operations
        .insert(0, encode_op(&const_op("lut_const", lut.clone())));

    let graph = GraphView::build(&model.program).unwrap();
    let index = (0..graph.op_count())
        .position(|i| graph.op_type(i) == LUT_TO_DENSE)
        .unwrap();
    let m = materialize(&Context::new(&model.program, &graph, &source), index).unwrap();
    assert_eq!(m.dense, expected.dense);
    let JointKind::Lut { lut: carried, .. } = &m.kind else {
        panic!("not a LUT")
    };
    assert_eq!(carried.arguments[0].binding, Some(Binding::Value(lut)));
}

#[test]
fn plan_leaves_plain_consts_alone_and_reports_skips() {
    let config = OptimizationConfig::from_json_str(
        r#"{"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5}}"#,
    )
    .unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (_, plain) = load(&fixtures.join("linear_fp16_ios18.mlpackage"));
    let graph = GraphView::build(&plain.program).unwrap();
    assert!(
        plan_joint(&plain.program, &graph, &config, 9).unwrap().is_empty(),
        "const weights are not candidates"
    );

    let (_, three) = load(&golden_dir().join("three_linear_fp16.mlpackage"));
    let graph = GraphView::build(&three.program).unwrap();
    let planned = plan_joint(&three.program, &graph, &config, 9).unwrap();
    let summary: Vec<_> = planned
        .iter()
        .map(|p| {
            (
                p.op_type.as_str(),
                p.meta.count,
                matches!(p.decision, Decision::Prune(_)),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (SHIFT_SCALE, 3072, true),
            (LUT_TO_DENSE, 2304, true),
            (SHIFT_SCALE, 3456, true)
        ]
    );

    let e = plan_joint(&three.program, &graph, &config, 8).unwrap_err();
    assert_eq!(e.to_string(), NEEDS_IOS18);
    let small = OptimizationConfig::from_json_str(
        r#"{"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5, "weight_threshold": 3072}}"#,
    )
    .unwrap();
    let planned = plan_joint(&three.program, &graph, &small, 9).unwrap();
    assert!(
        matches!(&planned[0].decision, Decision::Skip(r) if r.contains("3072 elements ≤ weight_threshold 3072"))
    );
    assert!(matches!(planned[2].decision, Decision::Prune(_)));
}

/// coremltools materializes every candidate op before it looks at the config, and cannot
/// materialize a LUT op whose `lut` is another constexpr op's output (what per-channel-scale
/// palettization and a LUT quantized with `joint_compression=True` write). Joint compression of
/// such a model fails in coremltools even when the config selects nothing; so must the plan.
#[test]
fn lut_read_from_a_constexpr_op_fails_every_joint_plan() {
    use crate::mil::build::bind_name;

    let skip_all = OptimizationConfig::from_json_str(
        r#"{"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5, "weight_threshold": 1000000}}"#,
    )
    .unwrap();
    let (_, mut model) = load(&golden_dir().join("lut4t_fp16.mlpackage"));
    let graph = GraphView::build(&model.program).unwrap();
    let planned = plan_joint(&model.program, &graph, &skip_all, 9).unwrap();
    assert!(planned.iter().all(|p| matches!(p.decision, Decision::Skip(_))));

    // A copy of the LUT op, named by its output `lut_src`, becomes the producer of its `lut`
    // (only the producer's op type matters to the check).
    let index = (0..graph.op_count())
        .position(|i| graph.op_type(i) == LUT_TO_DENSE)
        .unwrap();
    let path = graph.path(index);
    let mut producer = op_at(&model.program, &path).unwrap();
    producer.attributes.take("name");
    producer.outputs[0].name = "lut_src".into();
    with_op_mut(&mut model.program, &path, |op| {
        op.inputs.set("lut".into(), bind_name("lut_src"))
    })
    .unwrap();
    let block = model
        .program
        .functions
        .get_mut("main")
        .unwrap()
        .block_specializations
        .values_mut()
        .next()
        .unwrap();
    block.operations.insert(0, encode_op(&producer));

    let graph = GraphView::build(&model.program).unwrap();
    let e = plan_joint(&model.program, &graph, &skip_all, 9).unwrap_err();
    assert!(matches!(e, crate::Error::Unsupported(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("its lut is the output of constexpr op 'lut_src'"),
        "{e}"
    );
}
