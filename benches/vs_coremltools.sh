#!/usr/bin/env bash
# mlprune vs coremltools 9.0, side by side, on an LLM-shaped model (see vs_coremltools.py).
# Usage: benches/vs_coremltools.sh [extra args for vs_coremltools.py, e.g. --layers 8 --dim 4096]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
cargo build --release --locked --bin mlprune
exec .venv/bin/python benches/vs_coremltools.py target/release/mlprune "$@"
