"""`python -m fidelity.sweep`: a precision sweep, tap x (dtype, framework) -> error against float64.

For each dtype, the MAX candidate and openai-whisper run in that dtype on the same
device (openai-whisper's convention for half precision: float32 parameters, a half
input); for float32 the torch reference also runs with TF32 matmuls. Every number
is the relative L2 error of that run against openai-whisper in float64 on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .. import audio, checkpoints
from ..candidates import specs
from ..candidates.base import CandidateConfig
from ..devices import DEVICES
from ..metrics import compare
from ..outputs import atomic_dir, ensure_replaceable
from ..precisions import served_by
from ..reference.arithmetic import TF32
from ..reference.runner import TorchRunner
from ..taps import select_taps
from .cli import EXIT_OK, Parser, add_logging_flags, parse_choices, run_main, setup_logging

DTYPES = served_by("max")

log = logging.getLogger("fidelity.sweep")


def sweep(checkpoint, mel: np.ndarray, taps: list[str], device: str, dtypes: list[str]) -> dict[str, dict]:
    """column name -> {tap: relative L2 against float64}; columns like 'max/bfloat16', 'torch/tf32'."""
    truth = TorchRunner(checkpoint, "float64", "cpu").run(mel, taps)
    runs: dict[str, dict] = {}
    for dtype in dtypes:
        log.info("sweep: %s", dtype)
        candidate = specs.build("max", checkpoint, CandidateConfig(device=device, dtype=dtype))
        runs[f"max/{dtype}"] = candidate.run(mel, taps)
        runs[f"torch/{dtype}"] = TorchRunner(checkpoint, dtype, device).run(mel, taps)
        if dtype == "float32" and device == "gpu":
            runs["torch/tf32"] = TorchRunner(checkpoint, dtype, device, TF32, tf32_convolutions=True).run(mel, taps)
    return {column: {tap: compare(values[tap], truth[tap]).rel_l2 for tap in taps}
            for column, values in runs.items()}


def format_sweep(table: dict[str, dict], taps: list[str]) -> str:
    columns = list(table)
    width = max(len(t) for t in taps)
    lines = [f"{'tap':{width}s}  " + "  ".join(f"{c:>15s}" for c in columns)]
    for tap in taps:
        lines.append(f"{tap:{width}s}  " + "  ".join(f"{table[c][tap]:15.2e}" for c in columns))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.sweep", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL, help="checkpoint name or path")
    parser.add_argument("--audio", type=Path, default=audio.DEFAULT_CLIP, help="audio clip (first 30 s used)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma list (default: all three)")
    parser.add_argument("--layer", default="all", help="taps, as for compare --layer")
    parser.add_argument("--out", type=Path, default=None, help="write sweep.json and sweep.csv into this folder")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("sweep", lambda: _sweep(args))


def _sweep(args: argparse.Namespace) -> int:
    dtypes = parse_choices(args.dtypes, DTYPES, "--dtypes")
    if args.out:
        ensure_replaceable(args.out, "sweep.json")  # before the runs, not after
    checkpoint = checkpoints.load_checkpoint(args.model)
    taps = [t.name for t in select_taps(checkpoint.dims, args.layer) if not t.optional]
    mel = audio.mel_windows(audio.load_audio(args.audio), checkpoint.dims.n_mels)[:1]
    table = sweep(checkpoint, mel, taps, args.device, dtypes)
    sys.stdout.write(format_sweep(table, taps) + "\n")
    if args.out:
        with atomic_dir(args.out, "sweep.json") as folder:
            (folder / "sweep.json").write_text(json.dumps({"device": args.device, "taps": taps, "rel_l2": table},
                                                          indent=1) + "\n")
            with open(folder / "sweep.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["tap", *table])
                for tap in taps:
                    writer.writerow([tap, *(table[c][tap] for c in table)])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
