#!/usr/bin/env python3
"""Red team B-3 (session 22): `inspect` held a sub-byte (uint1/uint2/...) weight unpacked at one byte
per element (1,159 MiB for a 128 MiB uint1 blob); it counts on the packed bytes since.

A package holding one uint1 const of 2^30 elements (a 128 MiB blob) read by an `identity` op.
Peak RSS (GNU time) of `inspect` against `prune` and the documented bound (2 x the largest
tensor + 128 MiB = 384 MiB). Stdlib only (pbmini.py beside this file). Run from the repository root:
`python3 benches/red_team/subbyte_inspect.py`."""
import os, sys, subprocess, tempfile, shutil, importlib
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
pb = importlib.import_module("pbmini")
BIN = os.environ.get("BIN", "target/release/mlprune")
N = int(os.environ.get("N", str(1 << 30)))
UINT1, BLOB_UINT1 = 37, 9

def rss(args):
    p = subprocess.run(["bash", "-c", "ulimit -v 12000000; exec /usr/bin/time -f '@@ %e %M' timeout -s KILL 300 "
                        + BIN + " " + " ".join(args) + " >/dev/null"], capture_output=True)
    line = [l for l in p.stderr.decode().splitlines() if l.startswith("@@")][-1].split()
    return p.returncode, float(line[1]), int(line[2]) / 1024

work = tempfile.mkdtemp(prefix="mlprune-bench-subbyte-")
try:
    pkg = os.path.join(work, "bits.mlpackage")
    wb = pb.WeightBin()
    off = wb.add(b"\x5a" * (N // 8), code=BLOB_UINT1)
    ident = (pb.f_len(1, "identity") + pb.inp("x", "w")
             + pb.f_len(3, pb.nvt("y", pb.tensor_type(UINT1, (N,)))) + pb.attr("name", pb.str_value("y")))
    ops = [pb.const_op("w", (N,), off, dtype=UINT1), ident]
    pb.package(pkg, pb.model(ops, "y", (1, 64), (N,)), wb.bytes())
    blob_mib = N / 8 / 2**20
    rc, t, m = rss(["inspect", pkg])
    rc2, t2, m2 = rss(["prune", pkg, os.path.join(work, "o.mlpackage"), "--sparsity", "0.5", "-q"])
    bound = 2 * blob_mib + 128
    print(f"uint1 const of {N} elements ({blob_mib:.0f} MiB blob): inspect rc={rc} {t:.1f} s {m:.0f} MiB; "
          f"prune rc={rc2} {t2:.1f} s {m2:.0f} MiB; bound {bound:.0f} MiB")
    print("FOUND" if m > bound * 1.5 else "NOT FOUND")
finally:
    shutil.rmtree(work, ignore_errors=True)
