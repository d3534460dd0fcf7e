#!/usr/bin/env bash
# On the GPU machine, after the staged parts are in /root/stage: install MAX and friends, put tiny.en.pt
# and any carried MEFs into FIDELITY_CACHE. Source it: it exports PYTHONPATH and FIDELITY_CACHE.
# `gpu_keep_mefs` copies the MEF store under $OUT so that the graphs compiled there come back.
# tiny.en.pt (76 MB) is over one transfer's 64 MiB, so it travels in two pieces, made here with
#   split -b 40M -d -a 1 ~/.cache/fidelity/tiny.en.pt tiny.en.pt.part-
# part-0 copied into $FIDELITY_CACHE by an earlier call, part-1 and tiny.en.json carried in .gpu-model/b;
# MEFs from `python -m fidelity.precompile` (FIDELITY_CACHE=.gpu-cache) carried in .gpu-cache/mef.
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
