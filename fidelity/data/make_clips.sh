#!/usr/bin/env bash
# Regenerate the shipped speech clips from their texts (Debian: espeak-ng, sox).
# espeak-ng 1.51, voice en-us; 16 kHz mono FLAC. The .txt files are the ground truth.
set -euo pipefail
cd "$(dirname "$0")"
make_clip() {  # name words-per-minute
  espeak-ng -v en-us -s "$2" -w "/tmp/$1.wav" -f "$1.txt"
  sox "/tmp/$1.wav" -r 16000 -c 1 "$1.flac"
  rm -f "/tmp/$1.wav"
  echo "$1.flac: $(soxi -D "$1.flac") s"
}
make_clip speech_30s 125
make_clip speech_long 150
