"""Issue 11 on a GPU: teacher-forced KL of several encoders in one precision against one float64 reference.

Transcribes the clip once with openai-whisper (float32, greedy, on the GPU), then
teacher-forces openai-whisper's decoder over that transcript with each encoder's
features and writes one JSON summary: for each encoder, the mean and p99 KL against
the float64 reference, the ratio to openai-whisper's own encoder in the same dtype
(the floor, `fidelity.e2e.torch_encoder`: explicit attention), and every flip
with its margin and the floor's movement there. Besides the MAX encoder (staged
graphs, and flash attention when --flash), openai-whisper's encoder as openai-whisper
itself runs it (SDPA attention) is a second, equally valid implementation in the
same dtype: its ratio to the floor shows how far chance alone moves the ratio.

    python scripts/teacher_gpu.py --audio fidelity/data/speech_long.flac --out teacher_gpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fidelity import audio, checkpoints
from fidelity.candidates.base import CandidateConfig
from fidelity.candidates.max_builtin import BuiltinCandidate, MaxOptions, Numerics
from fidelity.devices import torch_device
from fidelity.e2e import default_floor, memoized, torch_encoder, transcribe_with
from fidelity.e2e.teacher import reference_windows, teacher_forced
from fidelity.precisions import torch_dtype

log = logging.getLogger("teacher_gpu")


def whisper_own_encoder(model, dtype: str):
    """openai-whisper's `model.encoder` as openai-whisper runs it in half precision (SDPA attention)."""
    def encode(mel: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(mel).to(next(model.parameters()).device, torch_dtype(dtype))
        with torch.no_grad():
            return model.encoder(x).float().cpu().numpy()
    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, default=audio.DATA_DIR / "speech_long.flac", help="clip")
    parser.add_argument("--dtype", default="bfloat16", help="precision of every encoder under test")
    parser.add_argument("--device", default="gpu", help="cpu or gpu")
    parser.add_argument("--flash", action="store_true", help="also the MAX encoder with flash attention")
    parser.add_argument("--out", type=Path, required=True, help="JSON summary")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    checkpoint = checkpoints.load_checkpoint("tiny.en")
    model = checkpoint.whisper_model().to(torch_device(args.device))
    clip = audio.load_audio(args.audio)
    reference = transcribe_with(model, clip.samples, model.encoder, progress=False)
    windows = reference_windows(reference.decodes)
    float64 = memoized(torch_encoder(checkpoint, "float64", "cpu"))
    floor_encoder = default_floor(checkpoint, args.dtype, args.device)
    floor = memoized(floor_encoder.encode)
    candidates = {
        "max_staged": lambda: BuiltinCandidate(checkpoint, CandidateConfig(args.device, args.dtype)).encode,
        "openai_whisper_sdpa": lambda: whisper_own_encoder(model, args.dtype),
        "openai_whisper_float32": lambda: torch_encoder(checkpoint, "float32", args.device),
        "openai_whisper_float16": lambda: torch_encoder(checkpoint, "float16", args.device),
    }
    if args.flash:
        candidates["max_flash"] = lambda: BuiltinCandidate(checkpoint, CandidateConfig(args.device, args.dtype),
                                                           MaxOptions(numerics=Numerics(attention="flash"))).encode
    summary = {"audio": str(args.audio), "dtype": args.dtype, "device": args.device,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "reference_text": reference.text, "windows": len(windows), "encoders": {}}
    for name, build in candidates.items():
        start = time.perf_counter()
        try:
            encode = memoized(build())
        except Exception as exc:  # a graph that does not compile here is a finding to record, not a crash
            summary["encoders"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            log.warning("%s: %s", name, summary["encoders"][name]["error"])
            continue
        result = teacher_forced(model, windows, float64, encode, floor, args.dtype, floor_encoder.label).as_dict()
        cand, fl = result["candidate"], result["floor"]
        summary["encoders"][name] = {
            "kl_mean": cand["kl_mean"], "kl_p99": cand["kl_p99"], "kl_max": cand["kl_max"],
            "floor_kl_mean": fl["kl_mean"], "floor_kl_p99": fl["kl_p99"],
            "kl_ratio": result["kl_ratio"], "kl_ratio_p99": result["kl_ratio_p99"], "verdict": result["verdict"],
            "tokens": cand["tokens"], "top1_agreement": cand["top1_agreement"], "flips": cand["flips"],
            "floor_flips": fl["flips"], "per_window_ratio": [
                w["candidate"]["kl_mean"] / w["floor"]["kl_mean"] for w in result["windows"]],
            "kl": [w["candidate"]["kl"] for w in result["windows"]],
            "floor_kl": [w["floor"]["kl"] for w in result["windows"]],
            "seconds": round(time.perf_counter() - start, 1)}
        log.info("%s: KL %.3g (floor %.3g), ratio %.2f, p99 ratio %s, %d flip(s)", name, cand["kl_mean"],
                 fl["kl_mean"], result["kl_ratio"], result["kl_ratio_p99"], cand["flip_count"])
    args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
