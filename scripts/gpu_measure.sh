#!/usr/bin/env bash
# The GPU measurements quoted in the README. Run on the GPU machine from the repo
# root, with MAX and openai-whisper importable and FIDELITY_CACHE holding tiny.en.pt
# (and, to skip compiling there, the MEFs from `python -m fidelity.precompile`).
#   scripts/gpu_measure.sh compare   # compare in each dtype, fused capture, flash, sweep
#   scripts/gpu_measure.sh bench     # speed beside fidelity, against PyTorch eager and torch.compile
#   scripts/gpu_measure.sh profile   # per-stage times at batch 1 and 16, and an ncu kernel summary
# Logs and reports go under ${OUT:-gpu-results}/ (packed as <phase>.tgz).
set -uo pipefail
phase="${1:?usage: gpu_measure.sh compare|bench|profile}"
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
  mkdir -p "$out" && tar czf "$out/$phase.tgz" -C "$work" . && cp "$work/steps.log" "$out/$phase-steps.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$work/gpu.txt" 2>&1
case "$phase" in
  compare)
    compare() {  # dtype, name, extra flags
      local dtype="$1" name="$2"; shift 2
      step "$name" python3 -m fidelity.compare --device gpu --dtype "$dtype" --layer all --out "$work/$name" -q "$@"
    }
    compare bfloat16 compare-bf16 --isolate --consistency
    compare bfloat16 compare-flash-bf16 --attention flash --isolate
    step sweep python3 -m fidelity.sweep --device gpu --out "$work/sweep" -q
    compare float32 compare-f32 --isolate --consistency
    compare float16 compare-f16 --isolate --consistency
    compare float32 compare-f32-tf32-reference --tf32 on
    compare bfloat16 compare-fused-bf16 --capture fused --consistency
    ;;
  bench)
    STEP_TIMEOUT="${STEP_TIMEOUT:-900}" step bench python3 -m fidelity.bench --device gpu --candidate max \
      --candidate examples/ports/hackathon_port.py:build --dtype bfloat16,float16,float32 --attention matmul,flash \
      --batch 1,16 --repeats 50 --warmup 10 --torch-compile --whole-graph --out "$work/bench.json" \
      --html "$work/bench.html"
    ;;
  profile)
    step bench-stages python3 -m fidelity.bench --device gpu --dtype bfloat16 --batch 1,16 --repeats 30 \
      --warmup 5 --stages --attention matmul,flash --no-traced --out "$work/bench-stages.json"
    step ncu-flash-b16 ncu --print-summary per-kernel --metrics gpu__time_duration.sum \
      python3 scripts/profile_max_encoder.py --dtype bfloat16 --attention flash --batch 16
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
