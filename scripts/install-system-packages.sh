#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the tests need, where they are missing:
#   mesa-vulkan-drivers  Mesa's lavapipe, a software Vulkan adapter: the GPU tests run on it
#   python3-venv         `python3 -m venv` for the coremltools venv (Debian splits it out)
#   time                 GNU time (/usr/bin/time), which the benchmarks and tests use for peak RSS
# As root it uses apt-get directly, otherwise sudo. Without either it says what is missing: the
# venv is required (exit 1); without lavapipe the GPU tests skip, loudly.
set -euo pipefail

missing=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "cannot install ${missing[*]}: not root and no password-less sudo" >&2
  for p in "${missing[@]}"; do
    [ "$p" = python3-venv ] && { echo "python3-venv is required: install it and run again" >&2; exit 1; }
  done
  echo "NOTICE: continuing without ${missing[*]}" >&2
  exit 0
fi
echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
