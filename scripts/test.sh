#!/usr/bin/env bash
# The README's test command: everything the tests need, then every test.
#   1. the coremltools 9.0 venv (our oracle), 2. Rust unit and integration tests,
#   3. end-to-end checks where coremltools loads what mlprune wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== python venv (coremltools 9.0)"
scripts/setup-python.sh

echo "== cargo test"
# MLPRUNE_REQUIRE_GPU=1: the GPU tests fail instead of skipping when no adapter (lavapipe) is found.
MLPRUNE_REQUIRE_GPU=1 cargo test --locked
cargo build --locked --bin mlprune

echo "== coremltools loads what mlprune writes (no-op rewrites of unseen models)"
bash tests/python/check_noop_rewrite.sh target/debug/mlprune

echo "== conformance: mlprune prune against coremltools 9.0 prune_weights"
"${PYTHON:-${MLPRUNE_VENV:-.venv}/bin/python}" tests/python/conformance.py --mlprune target/debug/mlprune
