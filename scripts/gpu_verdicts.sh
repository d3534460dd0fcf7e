#!/usr/bin/env bash
# Issue 16's GPU proofs: verdicts in the candidate's own arithmetic. Run on the GPU machine from the
# repo root with MAX and openai-whisper importable and FIDELITY_CACHE holding tiny.en.pt (and any MEFs).
#   scripts/gpu_verdicts.sh float32 [SHORT_WAV]   # port and built-in: green by default, red when strict;
#                                                 # the conv-average bug at conv1 in both modes
#   scripts/gpu_verdicts.sh bfloat16 SHORT_WAV    # the port in bfloat16 with --isolate --e2e, both bugs
# Each step's exit status, summary and report.json go under ${OUT:-gpu-results}/verdicts-<phase>/.
set -uo pipefail
phase="${1:?usage: gpu_verdicts.sh float32|bfloat16 [SHORT_WAV]}"
short="${2:-}"
out="${OUT:-gpu-results}/verdicts-$phase"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PORT=examples/ports/hackathon_port.py
step() {  # name, then compare's arguments
  local name="$1"; shift
  local start=$SECONDS
  timeout "${STEP_TIMEOUT:-400}" python3 -m fidelity.compare --device gpu --out "$out/$name" "$@" > "$out/$name.log" 2>&1
  local code=$?
  echo "=== $name: exit $code in $((SECONDS - start)) s: $*" | tee -a "$out/steps.log"
  grep -E "first divergence|arithmetic|matmuls|verdict|probe|KL|flip|WER|compiling took|error" "$out/$name.log" \
    | grep -v "still compiling" | tail -n "${TAIL:-12}"
}
case "$phase" in
  float32)
    step port-f32 --candidate "$PORT:build" --layer all --isolate --e2e
    step port-f32-strict --candidate "$PORT:build" --layer all --isolate --strict-fp32
    step port-convavg-f32 --candidate "$PORT:build_conv_average" --layer all --isolate
    step port-convavg-f32-strict --candidate "$PORT:build_conv_average" --layer all --isolate --strict-fp32
    step builtin-f32 --candidate max --layer all --isolate --e2e
    step builtin-f32-strict --candidate max --layer all --isolate --strict-fp32
    ;;
  bfloat16)
    step port-bf16 --candidate "$PORT:build" --dtype bfloat16 --layer all --isolate --e2e
    step port-convavg-bf16 --candidate "$PORT:build_conv_average" --dtype bfloat16 --layer all --isolate --e2e
    [ -n "$short" ] && step port-melpad-bf16 --candidate "$PORT:build_mel_zero_pad" --dtype bfloat16 \
      --audio "$short" --layer all --isolate --e2e
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
