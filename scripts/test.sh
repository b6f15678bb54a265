#!/usr/bin/env bash
# The README's test command. On a fresh Debian/Ubuntu machine with only Rust and Python 3 it
# installs what the tests need, then runs every check and test:
#   1. system packages: mesa-vulkan-drivers (lavapipe, a software Vulkan adapter, so the GPU kernels
#      run for real) and python3-venv (for the coremltools venv);
#   2. style: cargo fmt --check and cargo clippy with warnings as errors; rust-version checked;
#   3. the coremltools 9.0 venv (our oracle), Rust unit and integration tests;
#   4. end-to-end checks where coremltools loads what mlprune wrote, and the conformance suite;
#   5. the Python package: `pip install .` into the venv, then its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Disk: a CI run once ran out of space building the Python package (stop 30), with about 7 GB
# built. Incremental caches only pay on a rerun, and full debug info in every dependency only
# in a debugger, so neither is built here: backtraces keep their file and line numbers.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
# CI (.ci/run) also drops each build folder once the steps that use it are done; a developer's
# rerun keeps them, to stay incremental.
drop_build() {
  if [ "${MLPRUNE_DROP_BUILDS:-}" = 1 ]; then
    echo "MLPRUNE_DROP_BUILDS=1: removing $1 ($(du -sh "$1" 2>/dev/null | cut -f1)), no later step uses it"
    rm -rf "$1"
  fi
}

echo "== disk: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free here at the start"

echo "== system packages"
scripts/install-system-packages.sh

echo "== style: cargo fmt --check, cargo clippy --all-targets -D warnings"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# The Python bindings' crate (a workspace member outside the default build).
cargo clippy --locked -p mlprune-python -- -D warnings

echo "== docs: cargo doc -D warnings (no link to a private, renamed or ambiguous item)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --lib

echo "== rust-version"
scripts/check-rust-version.sh
drop_build target/msrv

echo "== python venv (coremltools 9.0)"
scripts/setup-python.sh

echo "== cargo test"
# With lavapipe installed an adapter always exists: the GPU tests must then run, not skip.
if dpkg -s mesa-vulkan-drivers >/dev/null 2>&1; then
  export MLPRUNE_REQUIRE_GPU=1
else
  echo "NOTICE: mesa-vulkan-drivers is not installed: GPU tests run only if another adapter exists, and say SKIPPING otherwise"
fi
cargo test --locked
cargo build --locked --bin mlprune

echo "== coremltools loads what mlprune writes (no-op rewrites of unseen models)"
bash tests/python/check_noop_rewrite.sh target/debug/mlprune

echo "== conformance: mlprune prune against coremltools 9.0 prune_weights"
"${PYTHON:-${MLPRUNE_VENV:-.venv}/bin/python}" tests/python/conformance.py --mlprune target/debug/mlprune

echo "== multifunction packages: mlprune against coremltools pruning each source, joined"
"${PYTHON:-${MLPRUNE_VENV:-.venv}/bin/python}" tests/python/multifunction.py --mlprune target/debug/mlprune --require-size

echo "== --global-sparsity against a numpy restatement of its rule (CPU, then GPU where required)"
"${PYTHON:-${MLPRUNE_VENV:-.venv}/bin/python}" tests/python/global_sparsity.py --mlprune target/debug/mlprune --device cpu
if [ "${MLPRUNE_REQUIRE_GPU:-}" = 1 ]; then
  "${PYTHON:-${MLPRUNE_VENV:-.venv}/bin/python}" tests/python/global_sparsity.py --mlprune target/debug/mlprune --device gpu
fi

echo "== Python package: pip install . and its tests"
drop_build target/debug
VENV_PYTHON="${PYTHON:-${MLPRUNE_VENV:-.venv}/bin/python}"
# Built by maturin from source, as a user's `pip install <checkout>` does; the shared target folder
# keeps a rerun incremental.
CARGO_TARGET_DIR="$PWD/target" "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check .
"$VENV_PYTHON" -m pytest -q tests/python/test_package.py

echo "== disk: $(du -sh target | cut -f1) in target/ at the end"
