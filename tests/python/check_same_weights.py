#!/usr/bin/env python3
"""Checks that a rewritten package carries exactly the original's weights and op sequence.

Usage: check_same_weights.py ORIGINAL REWRITTEN [REWRITTEN ...]
       (each an .mlpackage folder or a .zip holding one)

Exits 0 iff both load with coremltools (skip_model_load=True), every dense weight of ORIGINAL
(spec §6 oracle: const arrays and materialized constexpr outputs, all functions and nested blocks)
exists in REWRITTEN under the same name with the same dtype, shape and bytes, and the op type
sequence (program order) is the same. Otherwise prints each difference and exits 1.

Several REWRITTEN packages may be given (ORIGINAL is loaded once, which saves the coremltools
start-up per comparison); each gets exactly one verdict line, `same: ORIGINAL vs REWRITTEN ...`
or `DIFFERENT: ORIGINAL vs REWRITTEN`, after its indented differences. Exit 0 iff all are same.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oracle  # noqa: E402  (pins numpy CPU features before numpy loads)

import argparse  # noqa: E402

import numpy as np  # noqa: E402

MAX_REPORTED = 20  # per kind of difference, so a wholesale mismatch stays readable


def same_values(a, b):
    """dtype, shape, value (NaN == NaN for float kinds) and raw-byte equality."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    equal_nan = a.dtype.kind in "fc"
    if not np.array_equal(a, b, equal_nan=equal_nan):
        return False
    # array_equal treats 0.0 == -0.0 and all NaN payloads alike; the bytes must match too.
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def describe(a):
    return f"{a.dtype}{list(a.shape)}"


def weight_differences(original, rewritten):
    problems = []
    for name, a in sorted(original.items()):
        if name not in rewritten:
            problems.append(f"weight {name} ({describe(a)}): missing in REWRITTEN")
            continue
        b = rewritten[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"weight {name}: {describe(a)} became {describe(b)}")
        elif not same_values(a, b):
            bytes_a = np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)
            bytes_b = np.frombuffer(np.ascontiguousarray(b).tobytes(), np.uint8)
            differing = int(np.count_nonzero(bytes_a != bytes_b))
            problems.append(f"weight {name} ({describe(a)}): {differing} bytes differ")
    return problems


def op_sequence_differences(original, rewritten):
    types_a = [t for _, t in original]
    types_b = [t for _, t in rewritten]
    if types_a == types_b:
        return []
    problems = [f"op type sequence differs: {len(types_a)} ops vs {len(types_b)} ops"]
    for i in range(max(len(original), len(rewritten))):
        a = original[i] if i < len(original) else ("<none>", "<none>")
        b = rewritten[i] if i < len(rewritten) else ("<none>", "<none>")
        if a[1] != b[1]:
            problems.append(f"first difference at op {i}: {a[0]} ({a[1]}) vs {b[0]} ({b[1]})")
            break
    return problems


def load_side(label, path):
    """(dense weights, op list) of one package, or an error line."""
    try:
        return oracle.dense_weights(path), oracle.op_types(path), None
    except Exception as exc:  # any load failure is a verdict, not a crash
        reason = f"{type(exc).__name__}: {exc}"
        return None, None, f"{label} {path}: does not load with coremltools: {reason}"


def compare(original, rewritten_path):
    """Differences between a loaded ORIGINAL (weights, ops) and REWRITTEN, as printable lines."""
    weights_a, ops_a = original
    weights_b, ops_b, error = load_side("REWRITTEN", rewritten_path)
    if error:
        return [error]
    problems = weight_differences(weights_a, weights_b)
    if len(problems) > MAX_REPORTED:
        hidden = len(problems) - MAX_REPORTED
        problems = problems[:MAX_REPORTED] + [f"... and {hidden} more weights"]
    return problems + op_sequence_differences(ops_a, ops_b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original")
    parser.add_argument("rewritten", nargs="+")
    args = parser.parse_args()
    weights_a, ops_a, error = load_side("ORIGINAL", args.original)
    all_same = True
    for rewritten in args.rewritten:
        problems = [error] if error else compare((weights_a, ops_a), rewritten)
        for line in problems:
            print(f"    {line}")
        if problems:
            all_same = False
            print(f"DIFFERENT: {args.original} vs {rewritten}", flush=True)
        else:
            counts = f"{len(weights_a)} weights, {len(ops_a)} ops"
            print(f"same: {args.original} vs {rewritten} ({counts})", flush=True)
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
