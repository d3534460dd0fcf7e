#!/usr/bin/env bash
# On the GPU machine, after the staged parts are in /root/stage: install MAX and friends, put tiny.en.pt
# (sent in two pieces) and any carried MEFs into FIDELITY_CACHE. Source it: it exports PYTHONPATH and
# FIDELITY_CACHE. `gpu_keep_mefs` copies the MEF store under $OUT so that the graphs compiled there come back.
FIDELITY_CACHE="${FIDELITY_CACHE:-/root/fcache}"
export FIDELITY_CACHE PYTHONPATH="$PWD:/root/site"
last="$(ls -d .gpu-stage/part-* | tail -n 1)"
bash "$last/install.sh" > /root/install.log 2>&1 || { tail -n 20 /root/install.log; return 1; }
mkdir -p "$FIDELITY_CACHE/mef"
if [ ! -f "$FIDELITY_CACHE/tiny.en.pt" ] && [ -f .gpu-model/b/tiny.en.pt.part-1 ]; then
  cat "$FIDELITY_CACHE"/tiny.en.pt.part-0 .gpu-model/b/tiny.en.pt.part-1 > "$FIDELITY_CACHE/tiny.en.pt"
  cp .gpu-model/b/tiny.en.json "$FIDELITY_CACHE/"
fi
[ -d .gpu-cache/mef ] && cp -r --update=none .gpu-cache/mef/. "$FIDELITY_CACHE/mef/"
gpu_keep_mefs() { mkdir -p "$OUT/mef" && tar cf "$OUT/mef/mef.tar" -C "$FIDELITY_CACHE" mef; }
