#!/usr/bin/env bash
# Issue 11 on the GPU machine: the bfloat16 transcript case under teacher forcing, on the
# shipped long clip. Run from the repo root with MAX and openai-whisper importable and
# FIDELITY_CACHE holding tiny.en.pt (MEFs there skip compiling).
#   scripts/gpu_teacher.sh teacher   # scripts/teacher_gpu.py: MAX staged/flash, torch SDPA/f16/f32 vs the bf16 floor
#   scripts/gpu_teacher.sh compare   # compare --device gpu --dtype bfloat16 --e2e (the workbench's own report)
# Logs and results go under ${OUT:-gpu-results}/.
set -uo pipefail
phase="${1:?usage: gpu_teacher.sh teacher|compare}"
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
start=$SECONDS
case "$phase" in
  teacher)
    timeout "${STEP_TIMEOUT:-540}" python3 scripts/teacher_gpu.py --flash --out "$out/teacher_gpu.json" \
      > "$out/teacher_gpu.log" 2>&1
    ;;
  compare)
    timeout "${STEP_TIMEOUT:-540}" python3 -m fidelity.compare --device gpu --dtype bfloat16 \
      --audio fidelity/data/speech_long.flac --e2e --layer encoder.ln_post --out "$out/compare-bf16" \
      > "$out/compare-bf16.out" 2> "$out/compare-bf16.err"
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
echo "$phase: exit $? in $((SECONDS - start)) s"
grep -v "still compiling" "$out"/*.log "$out"/*.err 2>/dev/null | tail -n 25
