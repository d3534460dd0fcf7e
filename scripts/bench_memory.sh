#!/usr/bin/env bash
# Peak RSS and wall time of `compare --layer all` on one 30 s window, per model and flags.
#   bash scripts/bench_memory.sh [tiny|large|all] [out.tsv]
# "large" is a large-v3-shaped checkpoint (32 blocks, width 1280, 128 mels, 20 heads; random
# weights, a small decoder), written once to ~/.cache/fidelity/large-v3-shape.pt. Its stage
# graphs compile once (minutes each on a 2-core CPU). One run per row (each is minutes long).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
out="${2:-/dev/stdout}"
py="${PYTHON:-.venv/bin/python}"
large="$HOME/.cache/fidelity/large-v3-shape.pt"
clip=$(mktemp --suffix=.wav)
work=$(mktemp -d)
trap 'rm -rf "$clip" "$work"' EXIT
"$py" - "$clip" <<'PY'
import sys, soundfile
from fidelity import audio
clip = audio.load_audio(audio.DEFAULT_CLIP)
soundfile.write(sys.argv[1], clip.samples[: 30 * audio.SAMPLE_RATE], audio.SAMPLE_RATE)  # one window
PY
if [[ "$which" != tiny && ! -f "$large" ]]; then
  "$py" - "$large" <<'PY'
import sys
from pathlib import Path
from whisper.model import ModelDimensions
from fidelity.checkpoints import random_checkpoint, save_checkpoint
dims = ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                       n_vocab=64, n_text_ctx=16, n_text_state=64, n_text_head=1, n_text_layer=1)
save_checkpoint(random_checkpoint(dims, seed=0, name="large-v3-shape"), Path(sys.argv[1]))
PY
fi
models=()
[[ "$which" == tiny || "$which" == all ]] && models+=(tiny.en)
[[ "$which" == large || "$which" == all ]] && models+=("$large")
printf "model\tflags\tpeak_rss_gib\twall_s\texit\n" >"$out"
for model in "${models[@]}"; do
  for flags in "--isolate" "" "--isolate --dump $work/dump" "--dump $work/dump"; do
    rm -rf "$work/report" "$work/dump"
    # shellcheck disable=SC2086
    /usr/bin/time -v "$py" -m fidelity.compare --model "$model" --audio "$clip" --layer all $flags \
      --out "$work/report" -q >/dev/null 2>"$work/time.txt" && code=0 || code=$?
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2 / 1048576}' "$work/time.txt")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.1f", s}' "$work/time.txt")
    printf "%s\t%s\t%s\t%s\t%s\n" "$(basename "$model")" "${flags//$work\//}" "$rss" "$wall" "$code" >>"$out"
  done
done
