"""Multifunction packages: mlprune against coremltools 9.0, function by function.

coremltools cannot prune a multifunction model ("not supported for a multifunction model"), so the
reference is what a user would have to do by hand: prune every SOURCE model with coremltools, then
join the pruned sources with `ct.utils.save_multifunction`. mlprune prunes the joined UNPRUNED
package in one run. For every package and config this checks:

- the same functions, description function names and `defaultFunctionName`;
- per function, the same ops (name, type) in the same order, and every const / constexpr output
  materialized by coremltools itself bit for bit equal;
- the output opens with `ct.models.MLModel(path, skip_model_load=True)`, also with `function_name=`
  for each function;
- weights the input shares across functions (one blob) stay shared: every pruned op reading a
  shared source blob points at the same mask and nonzero_data blobs;
- weight.bin sizes, ours and the reference's, are printed; with `--require-size` (as
  scripts/test.sh runs it) ours may not be larger;
- a shared weight whose consumers resolve to different configs fails with exit 2, naming both ops.

    .venv/bin/python tests/python/multifunction.py --mlprune target/debug/mlprune [--keep DIR]

Exit status 0 when everything matches, 1 otherwise.
"""

import oracle  # noqa: F401  (pins NPY_DISABLE_CPU_FEATURES before numpy is imported)

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.builder import Builder
from coremltools.converters.mil.frontend.milproto.load import load as milproto_to_pymil
from coremltools.optimize.coreml import OptimizationConfig, prune_weights

TARGET = ct.target.iOS18


def _convert(prog, path, target=TARGET):
    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
    )
    model.save(str(path))


def mlp(path, layers, target=TARGET):
    """Linears in a chain: `layers` is [(op name, fp16 weight)], each weight (out, in)."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, layers[0][1].shape[1]), dtype=types.fp16)],
                opset_version=target)
    def prog(x):
        for name, w in layers:
            x = mb.linear(x=x, weight=w, name=name)
            x = mb.relu(x=x, name=f"{name}_relu")
        return x

    _convert(prog, path, target)


def convnet(path, rng):
    """Two convs and a linear, unrelated to the MLPs."""
    w1 = rng.standard_normal((32, 8, 3, 3)).astype(np.float16)
    w2 = rng.standard_normal((16, 32, 3, 3)).astype(np.float16)
    w3 = rng.standard_normal((24, 16 * 4 * 4)).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 8, 8), dtype=types.fp16)],
                opset_version=TARGET)
    def prog(x):
        x = mb.conv(x=x, weight=w1, pad_type="same", name="conv_a")
        x = mb.relu(x=x, name="conv_a_relu")
        x = mb.conv(x=x, weight=w2, strides=[2, 2], pad_type="valid", name="conv_b")
        x = mb.reshape(x=x, shape=[1, 16 * 3 * 3], name="flat")
        x = mb.linear(x=x, weight=w3[:, : 16 * 3 * 3], name="head")
        return x

    _convert(prog, path)


def build_packages(root):
    """{package id: (joined package, [(source package, source function, target function)], default)}."""
    rng = np.random.default_rng(16)
    weights = {n: rng.standard_normal(s).astype(np.float16)
               for n, s in [("fc1", (64, 53)), ("fc2", (64, 64)), ("fc3", (96, 64)), ("fc4", (48, 96))]}
    # Ties and exact zeros, to exercise the tie order.
    weights["fc2"] = (np.round(weights["fc2"] * 4) / 4).astype(np.float16)
    base = root / "base.mlpackage"
    mlp(base, [(n, w) for n, w in weights.items()])
    # The adapter: fc3 differs (a fine-tuned layer), two layers only it has (ad_sq, lora_up), and
    # fc4's weight read by a differently named op (ad_fc4): equal values, so save_multifunction
    # shares it. ad_sq has fc2's shape and comes first: pruned to all zeros, the adapter's fc2 then
    # reuses ad_sq's op (coremltools' within-block rule) and writes nothing, so main's fc2, which
    # shares the adapter's source blob, must write the all-zero blobs itself.
    adapter = root / "adapter.mlpackage"
    fc3 = rng.standard_normal((96, 64)).astype(np.float16)
    square = rng.standard_normal((64, 64)).astype(np.float16)
    lora = rng.standard_normal((96, 96)).astype(np.float16)
    mlp(adapter, [("fc1", weights["fc1"]), ("ad_sq", square), ("fc2", weights["fc2"]), ("fc3", fc3),
                  ("lora_up", lora), ("ad_fc4", weights["fc4"])])
    conv = root / "conv.mlpackage"
    convnet(conv, rng)
    # iOS16 sources: save_multifunction lifts them to spec 9 (opset CoreML8), but it cannot join
    # their pruned forms (iOS16 sparse ops do not load at spec 9), so the reference is each pruned
    # source on its own (UNJOINED).
    base16 = root / "base_ios16.mlpackage"
    mlp(base16, [(n, w) for n, w in weights.items()], ct.target.iOS16)
    adapter16 = root / "adapter_ios16.mlpackage"
    mlp(adapter16, [("fc1", weights["fc1"]), ("fc2", weights["fc2"]), ("fc3", fc3)], ct.target.iOS16)
    layouts = {
        "base_adapter": ([(base, "main", "main"), (adapter, "main", "adapter")], "main"),
        "ios16_sources": ([(base16, "main", "main"), (adapter16, "main", "adapter")], "adapter"),
        "unrelated": ([(base, "main", "text"), (conv, "main", "vision")], "vision"),
        "two_names": ([(base, "main", "main"), (base, "main", "main_copy")], "main_copy"),
    }
    packages = {}
    for package_id, (functions, default) in layouts.items():
        path = root / f"{package_id}.mlpackage"
        join(functions, default, path)
        packages[package_id] = (path, functions, default)
    return packages


def join(functions, default, path):
    desc = ct.utils.MultiFunctionDescriptor()
    for source, source_function, target in functions:
        desc.add_function(str(source), source_function, target)
    desc.default_function_name = default
    ct.utils.save_multifunction(desc, str(path))


MAG = "OpMagnitudePrunerConfig"
CONFIGS = {
    "magnitude": {"config_type": MAG, "global_config": {"target_sparsity": 0.5}},
    "magnitude_all": {"config_type": MAG, "global_config": {"target_sparsity": 1.0, "weight_threshold": 100}},
    "threshold": {"config_type": "OpThresholdPrunerConfig",
                  "global_config": {"threshold": 0.6, "minimum_sparsity_percentile": 0.1}},
    "n_m": {"config_type": MAG, "global_config": {"n_m_ratio": [2, 4]}},
    "block": {"config_type": MAG, "global_config": {"target_sparsity": 0.4, "block_size": 4}},
    # lora_up exists only in the adapter function; fc3 in both, with different weights there.
    "op_name_one_function": {
        "config_type": MAG,
        "global_config": {"target_sparsity": 0.3},
        "op_name_configs": {"lora_up": {"target_sparsity": 0.8}, "fc3": {"target_sparsity": 0.6}},
    },
    # ad_fc4 (adapter) reads the blob main's fc4 reads: two configs for one shared weight.
    "conflict": {
        "config_type": MAG,
        "global_config": {"target_sparsity": 0.5},
        "op_name_configs": {"ad_fc4": {"target_sparsity": 0.9}},
    },
}
# Packages whose reference is each pruned source on its own (see build_packages).
UNJOINED = {"ios16_sources"}
# (package, config) pairs whose mlprune run must fail: (exit code, strings the message holds).
EXPECTED_FAILURES = {
    ("base_adapter", "conflict"): (2, ["main/fc4", "adapter/ad_fc4", "conflict"]),
}


def reference(package_id, functions, default, config, work):
    """coremltools: prune each source on its own, then join the pruned sources. For UNJOINED
    packages, {target function: pruned source} instead."""
    pruned = {}
    for source, _, _ in functions:
        if source in pruned:
            continue
        out = work / f"ref_{package_id}_{source.stem}.mlpackage"
        Builder.name_count = defaultdict(int)
        model = ct.models.MLModel(str(source), skip_model_load=True)
        prune_weights(model, OptimizationConfig.from_dict(copy.deepcopy(config))).save(str(out))
        pruned[source] = out
    if package_id in UNJOINED:
        return {target: pruned[source] for source, _, target in functions}
    path = work / f"ref_{package_id}.mlpackage"
    join([(pruned[s], f, t) for s, f, t in functions], default, path)
    return path


def spec_of(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def _op_name(op):
    attr = op.attributes.get("name")
    if attr is not None and attr.immediateValue.tensor.strings.values:
        return attr.immediateValue.tensor.strings.values[0]
    return op.outputs[0].name if op.outputs else ""


def op_chains(spec):
    """{function: [(op name, op type)]} in block order."""
    chains = {}
    for name, func in spec.mlProgram.functions.items():
        block = func.block_specializations[func.opset]
        chains[name] = [(_op_name(op), op.type) for op in block.operations]
    return chains


def function_weights(path):
    """{function: {output name: array}}: const values and constexpr outputs materialized by
    coremltools' own decompression."""
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    Builder.name_count = defaultdict(int)
    prog = milproto_to_pymil(model_spec=spec, specification_version=spec.specificationVersion,
                             file_weights_dir=model.weights_dir)
    result = {}
    for fname, func in prog.functions.items():
        values = {}
        for op in func.operations:
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray):
                # Loader-made consts for constexpr inputs are named by a process-wide counter;
                # what they hold is compared through the constexpr output they make.
                if any(c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops):
                    continue
                values[op.outputs[0].name] = op.outputs[0].val
            elif op.op_type.startswith("constexpr_"):
                vals = op.materialized_val_inference()
                vals = vals if isinstance(vals, (tuple, list)) else [vals]
                for var, v in zip(op.outputs, vals):
                    values[var.name] = np.asarray(v)
        result[fname] = values
    return result


def blob_offsets(spec, op_type, params):
    """{(function, op name): {param: offset}} of the blob values `op_type` ops hold."""
    found = {}
    for fname, func in spec.mlProgram.functions.items():
        for op in func.block_specializations[func.opset].operations:
            if op.type != op_type:
                continue
            offsets = {}
            for param in params:
                value = op.attributes.get(param)
                if value is None and param in op.inputs:
                    value = op.inputs[param].arguments[0].value
                if value is not None and value.HasField("blobFileValue"):
                    offsets[param] = value.blobFileValue.offset
            found[(fname, _op_name(op))] = offsets
    return found


def weight_size(path):
    return (Path(path) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


def same_array(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def compare(input_path, ours, ref):
    """Every difference between our output and the reference, as lines."""
    problems = []
    our_spec, ref_spec = spec_of(ours), spec_of(ref)
    if our_spec.description.defaultFunctionName != ref_spec.description.defaultFunctionName:
        problems.append(f"defaultFunctionName {our_spec.description.defaultFunctionName!r} "
                        f"!= {ref_spec.description.defaultFunctionName!r}")
    our_fns = sorted(f.name for f in our_spec.description.functions)
    ref_fns = sorted(f.name for f in ref_spec.description.functions)
    if our_fns != ref_fns:
        problems.append(f"description functions {our_fns} != {ref_fns}")
    our_chains, ref_chains = op_chains(our_spec), op_chains(ref_spec)
    if sorted(our_chains) != sorted(ref_chains):
        problems.append(f"program functions {sorted(our_chains)} != {sorted(ref_chains)}")
    for fname in sorted(set(our_chains) & set(ref_chains)):
        if our_chains[fname] != ref_chains[fname]:
            problems.append(f"{fname}: ops {our_chains[fname]} != reference {ref_chains[fname]}")
    our_w, ref_w = function_weights(ours), function_weights(ref)
    for fname in sorted(set(our_w) & set(ref_w)):
        if sorted(our_w[fname]) != sorted(ref_w[fname]):
            problems.append(f"{fname}: weights {sorted(our_w[fname])} != {sorted(ref_w[fname])}")
        for name in sorted(set(our_w[fname]) & set(ref_w[fname])):
            if not same_array(our_w[fname][name], ref_w[fname][name]):
                problems.append(f"{fname}: {name} differs from the reference")
    # Loads as a whole and per function.
    ct.models.MLModel(str(ours), skip_model_load=True)
    for fname in our_fns:
        ct.models.MLModel(str(ours), skip_model_load=True, function_name=fname)
    problems += shared_stays_shared(input_path, our_spec)
    return problems


def compare_unjoined(input_path, ours, sources):
    """Like `compare`, against `{function: pruned source}` (each source's only function, main)."""
    problems = []
    our_spec = spec_of(ours)
    our_chains, our_w = op_chains(our_spec), function_weights(ours)
    if sorted(our_chains) != sorted(sources):
        problems.append(f"program functions {sorted(our_chains)} != {sorted(sources)}")
    for fname in sorted(set(our_chains) & set(sources)):
        ref_chain = op_chains(spec_of(sources[fname]))["main"]
        if our_chains[fname] != ref_chain:
            problems.append(f"{fname}: ops {our_chains[fname]} != reference {ref_chain}")
        ref_w = function_weights(sources[fname])["main"]
        if sorted(our_w[fname]) != sorted(ref_w):
            problems.append(f"{fname}: weights {sorted(our_w[fname])} != {sorted(ref_w)}")
        for name in sorted(set(our_w[fname]) & set(ref_w)):
            if not same_array(our_w[fname][name], ref_w[name]):
                problems.append(f"{fname}: {name} differs from the reference")
        ct.models.MLModel(str(ours), skip_model_load=True, function_name=fname)
    problems += shared_stays_shared(input_path, our_spec)
    return problems


def shared_stays_shared(input_path, our_spec):
    """Pruned ops whose source consts shared one blob must read the same output blobs."""
    sources = blob_offsets(spec_of(input_path), "const", ["val"])
    pruned = blob_offsets(our_spec, "constexpr_sparse_to_dense", ["mask", "nonzero_data"])
    by_source = defaultdict(list)
    for (fname, const), offsets in sources.items():
        key = (fname, f"{const}_sparsified")
        if "val" in offsets and key in pruned:
            by_source[offsets["val"]].append((key, pruned[key]))
    problems = []
    for offset, users in by_source.items():
        outputs = {json.dumps(o, sort_keys=True) for _, o in users}
        if len(outputs) > 1:
            problems.append(f"source blob {offset} is shared by {[k for k, _ in users]} but pruned "
                            f"into different blobs {sorted(outputs)}")
    return problems


def shared_pruned_count(input_path, ours):
    """(source blobs read by pruned ops of several functions, those pruned ops)."""
    sources = blob_offsets(spec_of(input_path), "const", ["val"])
    pruned = blob_offsets(spec_of(ours), "constexpr_sparse_to_dense", ["mask"])
    users = defaultdict(set)
    for (fname, const), offsets in sources.items():
        if "val" in offsets and (fname, f"{const}_sparsified") in pruned:
            users[offsets["val"]].add(fname)
    shared = [u for u in users.values() if len(u) > 1]
    return len(shared), sum(len(u) for u in shared)


def run(mlprune, packages, work, require_size):
    failures = 0
    shared_seen = 0
    for package_id, (path, functions, default) in packages.items():
        for config_id, config in CONFIGS.items():
            label = f"{package_id}/{config_id}"
            config_path = work / f"{config_id}.json"
            config_path.write_text(json.dumps(config))
            ours = work / f"ours_{package_id}_{config_id}.mlpackage"
            proc = subprocess.run([mlprune, "prune", str(path), str(ours), "--config", str(config_path), "-q"],
                                  capture_output=True, text=True, timeout=120)
            expected = EXPECTED_FAILURES.get((package_id, config_id))
            if expected is not None:
                code, words = expected
                missing = [w for w in words if w not in proc.stderr]
                ok = proc.returncode == code and not missing and not ours.exists()
                print(f"{'ok  ' if ok else 'FAIL'} {label}: exit {proc.returncode} {proc.stderr.strip()}")
                failures += not ok
                continue
            if proc.returncode != 0:
                print(f"FAIL {label}: mlprune exit {proc.returncode}: {proc.stderr.strip()}")
                failures += 1
                continue
            ref = reference(package_id, functions, default, config, work)
            if package_id in UNJOINED:
                problems = compare_unjoined(path, ours, ref)
                ours_size, ref_label = weight_size(ours), "not joinable"
            else:
                problems = compare(path, ours, ref)
                ours_size, ref_size = weight_size(ours), weight_size(ref)
                if require_size and ours_size > ref_size:
                    problems.append(f"weight.bin {ours_size} bytes > reference {ref_size}")
                ref_label = f"{ref_size} B"
            shared, users = shared_pruned_count(path, ours)
            shared_seen += shared
            status = "FAIL" if problems else "ok  "
            print(f"{status} {label}: weight.bin ours {ours_size} B, reference {ref_label}, input "
                  f"{weight_size(path)} B; {shared} shared source blobs pruned once for {users} ops")
            for p in problems[:10]:
                print(f"     {p}")
            failures += bool(problems)
    if shared_seen == 0:
        print("FAIL: no case pruned a shared weight; the packages do not test sharing")
        failures += 1
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlprune", required=True)
    parser.add_argument("--keep", help="write packages here and keep them")
    parser.add_argument("--require-size", action="store_true",
                        help="fail when our weight.bin is larger than the reference's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlprune-multifunction-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        packages = build_packages(work)
        failures = run(str(Path(args.mlprune).resolve()), packages, work, args.require_size)
    print(f"multifunction: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
