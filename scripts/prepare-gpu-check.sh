#!/usr/bin/env bash
# Prepares issue 14's real-GPU check for a lent GPU machine (the device tool, which has no cargo
# and no network): a stripped release build, the Vulkan loader packages and ../shared/gpu/check.sh,
# all in .gl/ (ignored through .git/info/exclude), which the device run carries. Then, in one
# device call with `carry: [".gl"]`:
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
#   export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json;
#   bash .gl/check.sh .gl/mlprune 2>&1 | tee $OUT/check.txt
# and record every figure in benches/README.md with the machine and the command.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info .gl
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
cargo build --release --locked --bin mlprune
strip -o .gl/mlprune target/release/mlprune
cp ../shared/gpu/check.sh .gl/check.sh
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  # shellcheck disable=SC2086
  apt-get $o update
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .gl
ls .gl
