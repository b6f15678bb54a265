#!/usr/bin/env bash
# Time and peak RSS against the number of tensors (issue 18, item 9): models of N small fp16
# weights (32x32, each with its `linear`, from `mlprune generate`), pruned with --sparsity 0.5
# --weight-threshold 0 on the CPU. Linear scaling shows as a constant time per tensor.
# Usage: [MLPRUNE=binary] benches/many_tensors.sh [--nested] [N ...]   (default: 5000 10000 20000); 3 runs each,
# median. --nested first moves every op into the nested block of one `cond` op
# (benches/nest_ops.py, needs the venv of scripts/setup-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || scripts/install-system-packages.sh
# MLPRUNE=path/to/mlprune times another build (an earlier commit's) the same way.
if [ -n "${MLPRUNE:-}" ]; then
  bin=$MLPRUNE
else
  cargo build --release --locked --bin mlprune >/dev/null 2>&1
  bin=target/release/mlprune
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nested=
if [ "${1:-}" = --nested ]; then
  nested=1
  shift
  [ -x .venv/bin/python ] || scripts/setup-python.sh
fi
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(5000 10000 20000)
printf '%8s %12s %14s %12s %14s\n' tensors model.mlmodel "median wall s" "us/tensor" "peak RSS MiB"
for n in "${counts[@]}"; do
  "$bin" generate "$work/in$n.mlpackage" --layers "$n" --shape 32x32 >/dev/null 2>&1
  [ -z "$nested" ] || .venv/bin/python benches/nest_ops.py "$work/in$n.mlpackage" 2>/dev/null
  proto=$(stat -c %s "$work/in$n.mlpackage/Data/com.apple.CoreML/model.mlmodel")
  walls=() rss=()
  for run in 1 2 3; do
    rm -rf "$work/out.mlpackage"
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" prune "$work/in$n.mlpackage" "$work/out.mlpackage" \
      --sparsity 0.5 --weight-threshold 0 --device cpu --quiet
    read -r w m <"$work/time"
    walls+=("$w") rss+=("$m")
  done
  median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
  w=$(median "${walls[@]}") m=$(median "${rss[@]}")
  awk -v n="$n" -v p="$proto" -v w="$w" -v m="$m" \
    'BEGIN { printf "%8d %12d %14.2f %12.1f %14.1f\n", n, p, w, w * 1e6 / n, m / 1024 }'
done
