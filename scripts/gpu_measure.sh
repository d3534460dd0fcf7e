#!/usr/bin/env bash
# The GPU measurements quoted in the README, in one go (run on the GPU machine from
# the repo root, with MAX and openai-whisper importable and FIDELITY_CACHE holding
# tiny.en.pt and the MEFs from `python -m fidelity.precompile`). Writes logs and
# reports under ${OUT:-gpu-results}/ and packs them into results.tgz there.
set -uo pipefail
out="${OUT:-gpu-results}"
work="$(mktemp -d)"
export PYTHONUNBUFFERED=1
step() {  # name, then the command
  local name="$1"; shift
  echo "=== $name: $*" | tee -a "$work/steps.log"
  local start=$SECONDS
  timeout "${STEP_TIMEOUT:-300}" "$@" > "$work/$name.log" 2>&1
  echo "=== $name: exit $? in $((SECONDS - start)) s" | tee -a "$work/steps.log"
  tail -n "${TAIL:-8}" "$work/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$work/gpu.txt" 2>&1
for dtype in ${DTYPES:-float32 bfloat16 float16}; do
  step "compare-$dtype" python3 -m fidelity.compare --device gpu --dtype "$dtype" --layer all --isolate \
    --consistency --out "$work/compare-$dtype" -q
done
step compare-fused-bf16 python3 -m fidelity.compare --device gpu --dtype bfloat16 --capture fused --consistency \
  --out "$work/compare-fused-bf16" -q
step compare-flash-bf16 python3 -m fidelity.compare --device gpu --dtype bfloat16 --attention flash \
  --out "$work/compare-flash-bf16" -q
step sweep python3 -m fidelity.sweep --device gpu --out "$work/sweep" -q
step bench python3 -m fidelity.bench --device gpu --dtype "${BENCH_DTYPES:-float32,bfloat16,float16}" \
  --batch 1,16 --repeats 50 --warmup 10 --torch-compile --stages --flash --out "$work/bench.json"
mkdir -p "$out"
tar czf "$out/results.tgz" -C "$work" .
cp "$work/steps.log" "$out/steps.log"
