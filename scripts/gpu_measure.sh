#!/usr/bin/env bash
# The GPU measurements quoted in the README. Run on the GPU machine from the repo
# root, with MAX and openai-whisper importable and FIDELITY_CACHE holding tiny.en.pt
# (and, to skip compiling there, the MEFs from `python -m fidelity.precompile`).
#   scripts/gpu_measure.sh compare   # compare in each dtype, fused capture, flash, sweep
#   scripts/gpu_measure.sh bench     # speed against PyTorch eager and torch.compile
# Logs and reports go under ${OUT:-gpu-results}/ (packed as <phase>.tgz).
set -uo pipefail
phase="${1:?usage: gpu_measure.sh compare|bench}"
out="${OUT:-gpu-results}"
work="$(mktemp -d)"
export PYTHONUNBUFFERED=1
step() {  # name, then the command
  local name="$1"; shift
  echo "=== $name: $*" | tee -a "$work/steps.log"
  local start=$SECONDS
  timeout "${STEP_TIMEOUT:-240}" "$@" > "$work/$name.log" 2>&1
  echo "=== $name: exit $? in $((SECONDS - start)) s" | tee -a "$work/steps.log"
  grep -v "still compiling" "$work/$name.log" | tail -n "${TAIL:-6}"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$work/gpu.txt" 2>&1
case "$phase" in
  compare)
    for dtype in ${DTYPES:-float32 bfloat16 float16}; do
      step "compare-$dtype" python3 -m fidelity.compare --device gpu --dtype "$dtype" --layer all --isolate \
        --consistency --out "$work/compare-$dtype" -q
    done
    step compare-tf32-reference python3 -m fidelity.compare --device gpu --dtype float32 --tf32 on \
      --out "$work/compare-tf32" -q
    step compare-fused-bf16 python3 -m fidelity.compare --device gpu --dtype bfloat16 --capture fused \
      --consistency --out "$work/compare-fused-bf16" -q
    step compare-flash-bf16 python3 -m fidelity.compare --device gpu --dtype bfloat16 --attention flash \
      --out "$work/compare-flash-bf16" -q
    step sweep python3 -m fidelity.sweep --device gpu --out "$work/sweep" -q
    ;;
  bench)
    step bench python3 -m fidelity.bench --device gpu --dtype "${BENCH_DTYPES:-float32,bfloat16}" \
      --batch 1,16 --repeats 50 --warmup 10 --torch-compile --stages --flash --out "$work/bench.json"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
mkdir -p "$out"
tar czf "$out/$phase.tgz" -C "$work" .
cp "$work/steps.log" "$out/$phase-steps.log"
