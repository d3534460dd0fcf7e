"""Run the whole MAX encoder a few times, for a kernel profiler (ncu) to watch.

    ncu --print-summary per-kernel --metrics gpu__time_duration.sum \
        python3 scripts/profile_max_encoder.py --dtype bfloat16 --attention flash --batch 16
"""

import argparse

import numpy as np

from fidelity import audio, checkpoints
from fidelity.candidates.base import CandidateConfig
from fidelity.candidates.max_builtin import MaxOptions, Numerics
from fidelity.candidates.max_builtin.whole_graph import WholeEncoder

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--dtype", default="bfloat16")
parser.add_argument("--attention", default="flash")
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--runs", type=int, default=2)
args = parser.parse_args()
checkpoint = checkpoints.load_checkpoint("tiny.en")
mel = audio.mel_windows(audio.load_audio(audio.DEFAULT_CLIP), checkpoint.dims.n_mels)[:1]
encoder = WholeEncoder(checkpoint, CandidateConfig(device="gpu", dtype=args.dtype),
                       MaxOptions(numerics=Numerics(attention=args.attention)))
x = encoder.to_device(np.repeat(mel, args.batch, axis=0))
for _ in range(args.runs):
    out = encoder.execute(x)
out[0].to_numpy()
