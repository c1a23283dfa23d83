#!/usr/bin/env bash
# Rerun the tests marked `timing` (they start, kill or wait on processes) N times in a row, at 1 and at 2 threads,
# optionally with the other core busy. Stops at the first failure. Usage: tests/repeat_timing.sh [N] [--load]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-30}"
load="${2:-}"
py="${PYTHON:-.venv/bin/python}"
pid=""
if [ "$load" = "--load" ]; then
    "$py" -c "while True: pass" &   # one busy core, as another job on a shared machine
    pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
fi
for threads in 1 2; do
    echo "== timing tests x$n at OMP_NUM_THREADS=$threads${pid:+, other core busy}"
    OMP_NUM_THREADS=$threads "$py" -m pytest -q -x -p no:cacheprovider -m timing --repeat-timing "$n"
done
