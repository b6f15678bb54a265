#!/usr/bin/env bash
# Time against the number of near-duplicate candidates (coremltools' const_deduplication compares
# a float const with every earlier const of its block with the same type and first 100 elements):
# models of N fp16 weights of 128 elements (`mlprune generate --shape 16x8`: N/2 of shape [16, 8],
# N/2 of [8, 16]) whose first 100 elements are then set to 0, the last 28 staying random, pruned
# with --sparsity 0.5 (too small to prune, so every weight goes through deduplication).
# Usage: benches/near_duplicates.sh [N ...]   (default: 1000 2000 4000 8000); 3 runs each, median.
# MLPRUNE_BIN=path times another build (then nothing is built); a run over 300 s is cut off.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || scripts/install-system-packages.sh
bin=${MLPRUNE_BIN:-target/release/mlprune}
[ -n "${MLPRUNE_BIN:-}" ] || cargo build --release --locked --bin mlprune >/dev/null 2>&1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 2000 4000 8000)
printf '%8s %14s %12s %14s\n' weights "median wall s" "us/weight" "peak RSS MiB"
for n in "${counts[@]}"; do
  "$bin" generate "$work/in$n.mlpackage" --layers "$n" --shape 16x8 >/dev/null 2>&1
  # Zero the first 100 elements (200 bytes) of every blob of at least 100 fp16 elements.
  python3 - "$work/in$n.mlpackage/Data/com.apple.CoreML/weights/weight.bin" <<'PY'
import struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
at = 64
while at + 64 <= len(data):
    sentinel, _dtype, size, offset = struct.unpack_from("<IIQQ", data, at)
    assert sentinel == 0xDEADBEEF, hex(at)
    if size >= 200:
        data[offset:offset + 200] = bytes(200)
    at = (offset + size + 63) // 64 * 64
open(path, "wb").write(data)
PY
  walls=() rss=()
  for run in 1 2 3; do
    rm -rf "$work/out.mlpackage"
    /usr/bin/time -f '%e %M' -o "$work/time" timeout 300 "$bin" prune "$work/in$n.mlpackage" \
      "$work/out.mlpackage" --sparsity 0.5 --device cpu --quiet || echo "300 0" >"$work/time"
    read -r w m <"$work/time"
    walls+=("$w") rss+=("$m")
    [ "$w" != 300 ] || break
  done
  median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
  w=$(median "${walls[@]}") m=$(median "${rss[@]}")
  awk -v n="$n" -v w="$w" -v m="$m" \
    'BEGIN { printf "%8d %14.2f %12.1f %14.1f\n", n, w, w * 1e6 / n, m / 1024 }'
done
