#!/usr/bin/env bash
# The README's main job: prune the bundled sample model and show the result.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
cargo build --release --locked --bin mlprune
bin=target/release/mlprune
$bin inspect examples/sample/sample.mlpackage
$bin prune examples/sample/sample.mlpackage out/sample-pruned.mlpackage \
  --config examples/sample/config.yaml --report out/sample-report.json --force
$bin inspect out/sample-pruned.mlpackage
echo "per-tensor report: out/sample-report.json"
