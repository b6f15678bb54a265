#!/usr/bin/env bash
# Checks that `rust-version` in Cargo.toml is true:
#   1. no locked dependency declares a newer rust-version than ours;
#   2. the library and the binary build (`cargo check`) with that exact toolchain, installed
#      through rustup when missing. Where it cannot be installed, this part says SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/.."

declared=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1)
[ -n "$declared" ] || { echo "Cargo.toml has no rust-version" >&2; exit 1; }

cargo metadata --locked --format-version 1 | python3 -c '
import json, sys
declared = sys.argv[1]
key = lambda v: tuple(int(x) for x in v.split("."))
packages = json.load(sys.stdin)["packages"]
newer = sorted((p["name"], p["rust_version"]) for p in packages
               if p.get("rust_version") and key(p["rust_version"]) > key(declared))
if newer:
    sys.exit(f"rust-version {declared} is older than what these dependencies need: {newer}")
top = max((key(p["rust_version"]), p["name"]) for p in packages if p.get("rust_version"))
highest = ".".join(map(str, top[0]))
print(f"rust-version {declared}: no dependency needs more (highest: {top[1]} at {highest})")
' "$declared"

if ! command -v rustup >/dev/null 2>&1; then
  echo "SKIPPED: no rustup, so the build with Rust $declared itself was not checked"
  exit 0
fi
if ! rustup run "$declared" rustc --version >/dev/null 2>&1; then
  if ! rustup toolchain install "$declared" --profile minimal >/dev/null 2>&1; then
    echo "SKIPPED: Rust $declared could not be installed, so the build with it was not checked"
    exit 0
  fi
fi
CARGO_TARGET_DIR=target/msrv cargo "+$declared" check --locked --lib --bins --quiet
echo "rust-version $declared: cargo check --lib --bins passes with $(rustup run "$declared" rustc --version)"
