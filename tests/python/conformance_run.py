"""One conformance case: prune a model with coremltools 9.0 and with mlprune, compare the results.

Used by tests/python/conformance.py (see its docstring for what is compared and why). Everything
here runs inside a worker process, which imports coremltools once.

Public API:
    Names(model_id, path)                          actual op / const names of a built model
    run_case(model_id, case_name, model_path, case_dir, mlprune) -> dict
"""

import oracle  # noqa: F401  (pins NPY_DISABLE_CPU_FEATURES before numpy is imported)

import copy
import json
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import coremltools as ct
from coremltools.converters.mil.mil.builder import Builder
from coremltools.optimize.coreml import OptimizationConfig, prune_weights

import check_same_weights as csw
import conformance_cases as cc

SPARSE_OP = "constexpr_sparse_to_dense"
MLPRUNE_TIMEOUT_S = 120


def _op_name(op):
    attr = op.attributes.get("name")
    if attr is not None and attr.immediateValue.tensor.strings.values:
        return attr.immediateValue.tensor.strings.values[0]
    return op.outputs[0].name if op.outputs else ""


def _walk(block):
    for op in block.operations:
        yield op
        for nested in op.blocks:
            yield from _walk(nested)


def _program_ops(path):
    """Every op of every function (nested blocks included), as protobuf messages."""
    program = oracle.load_package(path).get_spec().mlProgram
    for fname in sorted(program.functions):
        func = program.functions[fname]
        yield from _walk(func.block_specializations[func.opset])


def _is_prunable_tensor(value_type):
    tensor = value_type.tensorType
    # MIL.proto FLOAT16, FLOAT32, INT8, UINT8
    return tensor.dataType in (10, 11, 21, 31) and tensor.rank >= 2


class Names:
    """Actual op and const names of a built model.

    The converter renames ops when it casts to fp16 (`fc1` becomes `fc1_cast_fp16`, its weight
    `fc1_weight_0_to_fp16`), so configs that name ops look them up here by the builder's name.
    """

    def __init__(self, model_id, path):
        self.model_id = model_id
        self.family = model_id.split("/")[0]
        self.path = path
        self._ops = list(_program_ops(path))
        self._producer = {out.name: op for op in self._ops for out in op.outputs}
        self._weights = None

    def op(self, builder_name):
        """The non-const op the builder named `builder_name`."""
        found = [
            _op_name(op)
            for op in self._ops
            if op.type != "const" and _op_name(op) in (builder_name, builder_name + "_cast_fp16")
        ]
        if len(found) != 1:
            raise LookupError(f"{self.model_id}: op {builder_name!r} matches {found}")
        return found[0]

    def const(self, builder_name):
        """The const the builder named `builder_name` (possibly cast to fp16 by the converter)."""
        found = [
            _op_name(op)
            for op in self._ops
            if op.type == "const" and _op_name(op) in (builder_name, builder_name + "_to_fp16")
        ]
        if len(found) != 1:
            raise LookupError(f"{self.model_id}: const {builder_name!r} matches {found}")
        return found[0]

    def compressed(self, builder_const_name):
        """The constexpr op that replaced the const the builder named `builder_const_name`."""
        found = [
            _op_name(op)
            for op in self._ops
            if op.type.startswith("constexpr_") and _op_name(op).startswith(builder_const_name + "_")
        ]
        if len(found) != 1:
            raise LookupError(f"{self.model_id}: compressed {builder_const_name!r} matches {found}")
        return found[0]

    def w(self, builder_op_name):
        """The weight const (`weight`, else `y`, else `x` input) of the op named `builder_op_name`."""
        name = self.op(builder_op_name)
        op = next(o for o in self._ops if _op_name(o) == name)
        for param in ("weight", "y", "x"):
            if param in op.inputs:
                producer = self._producer.get(op.inputs[param].arguments[0].name)
                if producer is not None and producer.type == "const":
                    return _op_name(producer)
        raise LookupError(f"{self.model_id}: op {name!r} has no const weight")

    def weight_consts(self):
        """Names of every fp16/fp32/int8/uint8 const of rank >= 2 (what pruning can touch)."""
        return [
            _op_name(op)
            for op in self._ops
            if op.type == "const" and op.outputs and _is_prunable_tensor(op.outputs[0].type)
        ]

    @property
    def weights(self):
        """Const op name -> value (coremltools' view of the input model)."""
        if self._weights is None:
            dense = oracle.dense_weights(self.path)
            self._weights = {
                _op_name(op): dense[op.outputs[0].name]
                for op in self._ops
                if op.type == "const" and op.outputs and op.outputs[0].name in dense
            }
        return self._weights


def weight_file_size(package):
    path = Path(package) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return path.stat().st_size if path.exists() else 0


def _functions(path):
    """(spec version, {function: opset}) of a package."""
    spec = oracle.load_package(path).get_spec()
    funcs = {name: f.opset for name, f in spec.mlProgram.functions.items()}
    return int(spec.specificationVersion), funcs


def _short(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_coremltools(model_path, config, out_path, joint=False):
    """prune_weights (with joint_compression=`joint`) + save; returns None on success, else the
    exception as one line."""
    try:
        # from_dict mutates nothing we rely on, but the same dict is also written for mlprune.
        config = OptimizationConfig.from_dict(copy.deepcopy(config))
    except Exception as exc:
        return "config: " + _leaf_message(exc)
    try:
        model = ct.models.MLModel(str(model_path), skip_model_load=True)
        # As in a fresh process (what one mlprune run stands for): joint compression's sparse ops
        # take auto names `<op type>_<k>` from the Builder's process-wide counters, which earlier
        # cases in this worker would otherwise have advanced.
        Builder.name_count = defaultdict(int)
        pruned = prune_weights(model, config, joint_compression=joint)
        pruned.save(str(out_path))
        return None
    except Exception as exc:  # coremltools raising is a verdict, not a crash of the suite
        return "prune_weights: " + _leaf_message(exc)


def _leaf_message(exc):
    """One line for an exception. cattrs wraps validation errors in exception groups: report the
    first leaf, what a user reads first."""
    leaf = exc
    while getattr(leaf, "exceptions", None):
        leaf = leaf.exceptions[0]
    return _short(f"{type(leaf).__name__}: {leaf}")


def run_mlprune(mlprune, model_path, out_path, args):
    try:
        proc = subprocess.run(
            [mlprune, "prune", str(model_path), str(out_path), *args, "-q"],
            capture_output=True,
            text=True,
            timeout=MLPRUNE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {MLPRUNE_TIMEOUT_S}s"
    return proc.returncode, _short(proc.stderr.strip() or proc.stdout.strip())


def op_list(path):
    """(op name, op type, is weight op) of every op in program order, nested blocks included.

    Weight ops are every `constexpr_*` op and every `const` holding a tensor of at least 10
    elements (what coremltools could store in weight.bin and pruning could touch); the rest are
    the graph's compute ops and its scalar/short parameters.
    """
    result = []
    for op in _program_ops(path):
        weight = op.type.startswith("constexpr_")
        if op.type == "const" and op.outputs:
            tensor = op.outputs[0].type.tensorType
            dims = [d.constant.size for d in tensor.dimensions]
            known = all(d.HasField("constant") for d in tensor.dimensions)
            weight = tensor.rank >= 1 and known and int(np.prod(dims)) >= 10
        result.append((_op_name(op), op.type, weight))
    return result


_NOOP_OPS = {}


def coremltools_noop_ops(model_id, model_path):
    """op_list of coremltools' re-export of the model with nothing pruned (a config that selects
    no tensor), cached per model: what its MIL pipeline alone does to the graph."""
    if model_id not in _NOOP_OPS:
        with tempfile.TemporaryDirectory(prefix="mlprune-noop-") as tmp:
            out = Path(tmp) / "noop.mlpackage"
            model = ct.models.MLModel(str(model_path), skip_model_load=True)
            prune_weights(model, OptimizationConfig()).save(str(out))
            _NOOP_OPS[model_id] = op_list(out)
    return _NOOP_OPS[model_id]


def _first_difference(a_ops, b_ops, a_label="coremltools", b_label="mlprune"):
    """Where two op lists first differ, as one line."""
    for i in range(max(len(a_ops), len(b_ops))):
        a = a_ops[i][:2] if i < len(a_ops) else ("<none>", "<none>")
        b = b_ops[i][:2] if i < len(b_ops) else ("<none>", "<none>")
        if a != b:
            return (
                f"{len(a_ops)} vs {len(b_ops)} ops, first difference at op {i}:"
                f" {a_label} {a[0]} ({a[1]}), {b_label} {b[0]} ({b[1]})"
            )
    return "same"


def _weight_ops(ops):
    return [o for o in ops if o[2]]


def _other_ops(ops):
    return [o for o in ops if not o[2]]


def _pipeline_explained(ct_ops, ml_ops, input_ops, noop_ops):
    """Problems left once the rewrites coremltools' pipeline makes without pruning are set aside:
    the weight ops must agree exactly, mlprune must keep the input's other ops unchanged, and
    coremltools' other ops must be exactly those of its no-op re-export."""
    problems = []
    if _weight_ops(ct_ops) != _weight_ops(ml_ops):
        problems.append("weight ops: " + _first_difference(_weight_ops(ct_ops), _weight_ops(ml_ops)))
    if _other_ops(ml_ops) != _other_ops(input_ops):
        diff = _first_difference(_other_ops(input_ops), _other_ops(ml_ops), "input")
        problems.append(f"mlprune changed non-weight ops of the input: {diff}")
    if _other_ops(ct_ops) != _other_ops(noop_ops):
        diff = _first_difference(_other_ops(ct_ops), _other_ops(noop_ops), b_label="no-op re-export")
        problems.append(f"coremltools' non-weight ops differ from its no-op re-export: {diff}")
    return problems


def dense_weights(path):
    """oracle.dense_weights, except that a constexpr op whose value coremltools cannot materialize
    itself (a LUT op reading its `lut` from another constexpr op, as per-channel-scale
    palettization and LUT quantization write it) contributes no value. Its inputs still do: the
    loader turns them into const ops (or they are the producer's materialized output), so a change
    to them is still seen."""
    try:
        return oracle.dense_weights(path)
    except AttributeError:
        pass
    model = oracle.load_package(path)
    spec = model.get_spec()
    saved_counts = Builder.name_count
    Builder.name_count = defaultdict(int)  # as oracle.dense_weights: names independent of history
    try:
        prog = oracle.milproto_to_pymil(
            model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir
        )
    finally:
        Builder.name_count = saved_counts
    out = {}
    for func in prog.functions.values():
        for op in oracle._walk_ops(func):
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray):
                out[op.outputs[0].name] = op.outputs[0].val
            elif op.op_type.startswith("constexpr_"):
                try:
                    vals = op.materialized_val_inference()
                except AttributeError:
                    continue
                vals = vals if isinstance(vals, (tuple, list)) else [vals]
                for var, v in zip(op.outputs, vals):
                    out[var.name] = np.asarray(v)
    return out


def compare_outputs(model_id, model_path, ct_path, ml_path):
    """Differences between coremltools' and mlprune's pruned packages, as printable lines."""
    problems = []
    ct_spec, ct_funcs = _functions(ct_path)
    ml_spec, ml_funcs = _functions(ml_path)
    if (ct_spec, ct_funcs) != (ml_spec, ml_funcs):
        problems.append(f"spec/opsets: coremltools {ct_spec} {ct_funcs}, mlprune {ml_spec} {ml_funcs}")

    ct_weights = dense_weights(ct_path)
    ml_weights = dense_weights(ml_path)
    diffs = csw.weight_differences(ct_weights, ml_weights)
    diffs = [d.replace("missing in REWRITTEN", "missing in mlprune's output") for d in diffs]
    extra = sorted(set(ml_weights) - set(ct_weights))
    diffs += [f"weight {name}: only in mlprune's output" for name in extra]
    if len(diffs) > csw.MAX_REPORTED:
        diffs = diffs[: csw.MAX_REPORTED] + [f"... and {len(diffs) - csw.MAX_REPORTED} more"]
    problems += diffs

    ct_ops, ml_ops = op_list(ct_path), op_list(ml_path)
    note = None
    if ct_ops != ml_ops:
        noop = coremltools_noop_ops(model_id, model_path)
        inp = op_list(model_path)
        if noop == inp:
            # coremltools' pipeline leaves this model alone: any difference is mlprune's.
            problems.append("op sequence: " + _first_difference(ct_ops, ml_ops))
        else:
            problems += _pipeline_explained(ct_ops, ml_ops, inp, noop)
            note = "coremltools' re-export rewrites non-weight ops of this model even without pruning"

    ct_size, ml_size = weight_file_size(ct_path), weight_file_size(ml_path)
    if ml_size > ct_size:
        problems.append(f"weight.bin: mlprune {ml_size} bytes > coremltools {ct_size} bytes")
    # Sparse ops coremltools added (a precompressed input may hold some already).
    sparse_ops = sum(1 for _, t, _ in ct_ops if t == SPARSE_OP) - sum(
        1 for _, t, _ in op_list(model_path) if t == SPARSE_OP
    )
    return problems, sparse_ops, note


def run_case(model_id, case_name, model_path, case_dir, mlprune):
    """Runs one (model, case) pair; returns a JSON-able verdict."""
    start = time.monotonic()
    case = cc.CASES[case_name]
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    # A private copy: opening a package with coremltools rewrites its Manifest.json (through a
    # temporary `Manifest.<uuid>` file), which would race with mlprune copying the package files
    # in another worker.
    shared_model, model_path = model_path, case_dir / "input.mlpackage"
    shutil.copytree(shared_model, model_path)
    flags = list(case.cli or ()) + (["--joint-compression"] if case.joint else [])
    result = {"model": model_id, "case": case_name, "problems": [], "cli": flags}
    result["dir"] = str(case_dir)
    try:
        config = case.config(Names(model_id, model_path)) if callable(case.config) else case.config
    except Exception as exc:
        result["problems"].append(f"test error: config for this model: {type(exc).__name__}: {exc}")
        result["seconds"] = time.monotonic() - start
        return result
    result["config"] = config
    config_path = case_dir / "config.json"
    config_path.write_text(json.dumps(config, indent=1) + "\n")

    ct_out, ml_out = case_dir / "coremltools.mlpackage", case_dir / "mlprune.mlpackage"
    ct_error = run_coremltools(model_path, config, ct_out, joint=case.joint)
    ml_args = flags if case.cli else ["--config", str(config_path), *flags]
    ml_rc, ml_stderr = run_mlprune(mlprune, model_path, ml_out, ml_args)
    result.update(ct_error=ct_error, ml_rc=ml_rc, ml_stderr=ml_stderr)

    problems = result["problems"]
    if ml_rc not in (0, 1, 2):
        # 101 is a Rust panic, negative a signal or our timeout: never an acceptable refusal.
        problems.append(f"mlprune crashed (exit {ml_rc}): {ml_stderr}")
    if ct_error is not None:
        # Both must fail for the same class of reason: a config coremltools refuses (while reading
        # it, or against this model) is a config error, exit 2; a model whose compression
        # coremltools itself cannot handle ("unsupported" cases) is bad input, exit 1.
        outcome = "unsupported" if case.expect == "unsupported" else "error"
        want_rc = 1 if outcome == "unsupported" else 2
        if ml_rc == 0:
            problems.append(f"coremltools raised ({ct_error}) but mlprune succeeded")
        elif ml_rc in (1, 2) and ml_rc != want_rc:
            problems.append(
                f"coremltools raised ({ct_error}) and mlprune failed for another class of reason: "
                f"exit {ml_rc}, expected {want_rc}: {ml_stderr}"
            )
        if outcome == "unsupported" and ct_error.startswith("config: "):
            problems.append(f"test matrix: an 'unsupported' case, but coremltools refused the config itself: {ct_error}")
    elif ml_rc != 0:
        outcome = None
        problems.append(f"mlprune failed (exit {ml_rc}: {ml_stderr}) but coremltools succeeded")
    else:
        try:
            diffs, sparse_ops, note = compare_outputs(model_id, model_path, ct_out, ml_out)
        except Exception as exc:
            diffs, sparse_ops, note = [f"comparison failed: {type(exc).__name__}: {_short(exc)}"], 0, None
        problems += diffs
        if note:
            result["note"] = note
        outcome = "pruned" if sparse_ops > 0 else "none"
        result["sparse_ops"] = sparse_ops
    result["outcome"] = outcome
    if case.expect is not None and outcome is not None and outcome != case.expect:
        problems.append(
            f"test matrix: coremltools' outcome is '{outcome}', the case expects '{case.expect}'"
            + (f" ({ct_error})" if ct_error else "")
        )
    result["seconds"] = time.monotonic() - start
    return result
