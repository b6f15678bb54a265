#!/usr/bin/env bash
# Host-side cost of the GPU path against the CPU path (issue 14): wall time, peak RSS and minor page
# faults of `mlprune prune --device cpu|gpu` in every mode, median of 3 (GNU time). On lavapipe
# (no GPU) this judges host work only (page faults, RSS, copies; device memory is host memory
# there), never GPU speed.
# Usage: benches/gpu_host.sh [LAYERS [SHAPE]]   (default: 4 4096x4096, fp16: 4 tensors of 32 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || scripts/install-system-packages.sh
cargo build --release --locked --bin mlprune >/dev/null 2>&1
bin=$PWD/target/release/mlprune
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" generate "$work/in.mlpackage" --layers "${1:-4}" --shape "${2:-4096x4096}" >/dev/null 2>&1
printf '%-30s %-4s %8s %10s %12s\n' mode device "wall s" "peak MiB" "minor faults"
for mode in "--sparsity 0.5" "--threshold 0.01" "--n-m 2:4" "--sparsity 0.5 --block-size 4"; do
  for device in cpu gpu; do
    runs=()
    for run in 1 2 3; do
      rm -rf "$work/out.mlpackage"
      # shellcheck disable=SC2086
      /usr/bin/time -f '%e %M %R' -o "$work/time" "$bin" prune "$work/in.mlpackage" "$work/out.mlpackage" \
        $mode --device "$device" --quiet
      runs+=("$(cat "$work/time")")
    done
    printf '%s\n' "${runs[@]}" | sort -g | sed -n 2p |
      awk -v m="$mode" -v d="$device" '{ printf "%-30s %-4s %8.2f %10.1f %12d\n", m, d, $1, $2 / 1024, $3 }'
  done
done
