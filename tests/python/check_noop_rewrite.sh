#!/usr/bin/env bash
# End-to-end check that mlprune rewrites packages losslessly when it prunes nothing.
#
# Usage: tests/python/check_noop_rewrite.sh MLPRUNE [SEED]
#
# Generates a fresh model zoo (tests/python/make_zoo.py, SEED or a random one), zips each model as
# `x.mlpackage.zip` holding `x.mlpackage/`, and for every model, folder and zip alike, runs
#   MLPRUNE prune IN OUT --weight-threshold 1000000000
# once with OUT a folder and once with OUT a `.zip`, then check_same_weights.py IN OUT (both OUTs
# in one run, to pay coremltools' start-up once): with that threshold no tensor is eligible, so
# every weight must come back bit-identical and the op sequence unchanged. Prints one PASS/FAIL
# line per case and `N passed, M failed` last; exits 1 if any case failed, 2 if the check itself
# could not run (bad arguments, no coremltools, zoo generation failed).
#
# Environment: PYTHON (default: the venv made by scripts/setup-python.sh), KEEP_TMP=1 keeps the
# temporary folder for inspection.
set -uo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 MLPRUNE [SEED]" >&2
  exit 2
fi

# Resolve the binary before changing directory, so a relative path keeps working.
MLPRUNE=$1
if [[ $MLPRUNE == */* ]]; then
  MLPRUNE="$(cd "$(dirname "$MLPRUNE")" 2>/dev/null && pwd)/$(basename "$MLPRUNE")"
fi
if ! command -v "$MLPRUNE" >/dev/null 2>&1; then
  echo "error: mlprune binary not found or not executable: $1" >&2
  exit 2
fi
SEED=${2:-}

cd "$(dirname "$0")/../.." || exit 2
PYTHON=${PYTHON:-${MLPRUNE_VENV:-.venv}/bin/python}
# Absolute, because the loop below runs python from other directories.
if [[ $PYTHON == */* && $PYTHON != /* ]]; then
  PYTHON="$PWD/$PYTHON"
fi
if ! "$PYTHON" -c 'import coremltools' >/dev/null 2>&1; then
  echo "error: $PYTHON cannot import coremltools; run scripts/setup-python.sh or set PYTHON" >&2
  exit 2
fi
THRESHOLD=1000000000

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mlprune-noop.XXXXXX") || exit 2
if [ "${KEEP_TMP:-0}" = 1 ]; then
  echo "keeping $TMP" >&2
else
  trap 'rm -rf "$TMP"' EXIT
fi
mkdir -p "$TMP/zoo" "$TMP/zips" "$TMP/out" "$TMP/logs"

if ! "$PYTHON" tests/python/make_zoo.py "$TMP/zoo" ${SEED:+--seed "$SEED"} \
    >"$TMP/logs/zoo.out" 2>"$TMP/logs/zoo.err"; then
  echo "error: make_zoo.py failed:" >&2
  tail -n 20 "$TMP/logs/zoo.err" >&2
  exit 2
fi
grep '^make_zoo: seed' "$TMP/logs/zoo.err"

passed=0
failed=0

# verdict INPUT OUTPUT LOG: the check's verdict for one output, with its detail lines.
# Prints the indented lines that precede OUTPUT's verdict and returns 0 only on a `same:` verdict;
# a check that crashed before giving one counts as a failure.
verdict() {
  awk -v same="same: $1 vs $2 (" -v diff="DIFFERENT: $1 vs $2" '
    /^    / { buf = buf $0 "\n"; next }
    index($0, same) == 1 { found = 1; ok = 1; exit }
    $0 == diff { printf "%s", buf; found = 1; exit }
    { buf = "" }
    END { if (!found) print "    no verdict from check_same_weights.py"; exit(ok ? 0 : 1) }
  ' "$3"
}

# check_input NAME KIND INPUT: prune INPUT (KIND folder or zip) into a folder and into a zip with
# nothing eligible, then compare both outputs with INPUT in one check_same_weights.py run.
check_input() {
  local name=$1 kind=$2 input=$3 log="$TMP/logs/case.log" out_kind output
  local outputs=()
  for out_kind in folder zip; do
    output="$TMP/out/$name.$kind-to-$out_kind.mlpackage"
    [ "$out_kind" = zip ] && output="$output.zip"
    if ! "$MLPRUNE" prune "$input" "$output" --weight-threshold "$THRESHOLD" >"$log" 2>&1; then
      echo "FAIL $name ($kind -> $out_kind): mlprune prune exited non-zero"
      sed 's/^/    /' "$log" | tail -n 20
      failed=$((failed + 1))
    elif [ ! -e "$output" ]; then
      echo "FAIL $name ($kind -> $out_kind): mlprune exited 0 but wrote no $output"
      failed=$((failed + 1))
    else
      outputs+=("$output")
    fi
  done
  [ ${#outputs[@]} -eq 0 ] && return
  "$PYTHON" tests/python/check_same_weights.py "$input" "${outputs[@]}" >"$log" 2>&1
  for output in "${outputs[@]}"; do
    out_kind=folder
    [[ $output == *.zip ]] && out_kind=zip
    if verdict "$input" "$output" "$log" >"$log.detail"; then
      echo "PASS $name ($kind -> $out_kind)"
      passed=$((passed + 1))
    else
      echo "FAIL $name ($kind -> $out_kind): rewritten package differs"
      cat "$log.detail"
      grep -q '^same: \|^DIFFERENT: ' "$log" || tail -n 20 "$log" | sed 's/^/    /'
      failed=$((failed + 1))
    fi
  done
}

shopt -s nullglob
models=("$TMP"/zoo/*.mlpackage)
if [ ${#models[@]} -eq 0 ]; then
  echo "error: make_zoo.py wrote no models" >&2
  exit 2
fi

for pkg in "${models[@]}"; do
  name=$(basename "$pkg" .mlpackage)
  zipped="$TMP/zips/$name.mlpackage.zip"
  # python -m zipfile stores directory entries too, so an empty weights/ survives the round trip.
  if ! (cd "$TMP/zoo" && "$PYTHON" -m zipfile -c "$zipped" "$name.mlpackage"); then
    echo "FAIL $name: could not zip the input"
    failed=$((failed + 1))
    continue
  fi
  check_input "$name" folder "$pkg"
  check_input "$name" zip "$zipped"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
