#!/usr/bin/env bash
# The porter's loop, timed: the example port with one constant edited (so its graphs are new to the MEF
# store), `compare --candidate ... --layer all --isolate`, then the same command again (warm). Prints the
# seconds to the first answer (the last table row on stdout), to the end, and the run's compile summary.
#   scripts/measure_port_loop.sh [EPSILON]   # the layer-norm epsilon written into the copy (default: random)
set -euo pipefail
cd "$(dirname "$0")/.."
eps="${1:-1.$((RANDOM % 9000 + 1000))e-5}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed "s/beta.cast(f32), 1e-5)/beta.cast(f32), ${eps})/" examples/ports/hackathon_port.py > "$work/edited_port.py"
grep -q "$eps" "$work/edited_port.py" || { echo "the edit did not apply" >&2; exit 2; }
run() {  # label
  local start; start=$(date +%s.%N)
  PYTHONUNBUFFERED=1 .venv/bin/python -m fidelity.compare --candidate "$work/edited_port.py:build" --layer all --isolate \
    --out "$work/$1" 2> "$work/$1.log" | while IFS= read -r line; do
      printf '%s %s\n' "$(awk -v now="$(date +%s.%N)" -v t0="$start" 'BEGIN { printf "%.1f", now - t0 }')" "$line"
    done > "$work/$1.out" || true
  local answer end
  answer=$(grep -E "^[0-9.]+ encoder\.ln_post " "$work/$1.out" | head -n 1 | cut -d' ' -f1)
  end=$(tail -n 1 "$work/$1.out" | cut -d' ' -f1)
  echo "$1: first answer after ${answer:-?} s, ended after ${end} s (epsilon ${eps}; load $(cut -d' ' -f1-3 /proc/loadavg))"
  grep -h "compiling took" "$work/$1.out" | cut -d' ' -f2- || true
}
run edited-cold
run edited-warm
