#!/usr/bin/env bash
# Creates .venv with coremltools 9.0, the oracle our tests compare against.
# Idempotent: a venv that already has the pinned coremltools (and pytest, pyyaml) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MLPRUNE_VENV:-.venv}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import coremltools as ct, pytest, yaml, sys; sys.exit(ct.__version__ != "9.0")' 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
