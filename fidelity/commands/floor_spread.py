"""`python -m fidelity.floor_spread`: how far the float32 noise floor moves with PyTorch's kernels.

The noise floor of a tap is openai-whisper's own float32 error against float64. Which
float32 kernels PyTorch runs depends on the machine (AVX-512 or AVX2, oneDNN or not,
thread count), and the floor moves with them. This command measures each kernel path
on this machine, each in a fresh process (the instruction set is chosen at import):

  native      what this machine picks
  avx2        ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 (a machine without AVX-512)
  scalar      ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41 (no wide vectors)
  no-onednn   torch.backends.mkldnn disabled (PyTorch's own convolution kernels)
  1-thread    torch.set_num_threads(1)

and prints, per tap, the floor (relative L2 of float32 against float64) on each path
and the spread (largest over smallest). A candidate's noise-floor ratio on another
machine can move by that factor with no change to the candidate: this is why the CI
gate compares statistics against float64 (stable across machines) with the baseline,
and checks the floor ratio only against its budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .. import audio, checkpoints
from ..errors import FidelityError
from ..outputs import ensure_writable_file, write_text_atomic
from ..provenance import reference_platform
from .cli import EXIT_OK, Parser, add_logging_flags, run_main, setup_logging

log = logging.getLogger("fidelity.floor_spread")

KERNEL_PATHS: dict[str, tuple[dict[str, str], dict]] = {
    "native": ({}, {}),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "scalar": ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, {}),
    "no-onednn": ({}, {"mkldnn": False}),
    "1-thread": ({}, {"threads": 1}),
}


def measure_floor(model: str, clip: Path, mkldnn: bool = True, threads: int | None = None) -> dict:
    """Per-tap float32 floor (rel L2 against float64) on this process's kernel path, first window."""
    import torch

    from ..metrics import compare
    from ..reference.runner import TorchRunner
    from ..taps import encoder_taps

    torch.backends.mkldnn.enabled = mkldnn
    if threads:
        torch.set_num_threads(threads)
    checkpoint = checkpoints.load_checkpoint(model)
    mel = audio.mel_windows(audio.load_audio(clip), checkpoint.dims.n_mels)[:1]
    names = [t.name for t in encoder_taps(checkpoint.dims) if not t.optional]
    truth = TorchRunner(checkpoint, "float64").run(mel, names)
    floor = TorchRunner(checkpoint, "float32").run(mel, names)
    return {"platform": reference_platform(),
            "floor": {name: compare(floor[name], truth[name]).rel_l2 for name in names}}


def run_path(name: str, model: str, clip: Path) -> dict:
    """One kernel path measured in a fresh interpreter."""
    env_over, settings = KERNEL_PATHS[name]
    code = ("import json, sys; from fidelity.commands.floor_spread import measure_floor; "
            f"print(json.dumps(measure_floor({model!r}, {str(clip)!r}, **{settings!r})))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env_over},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"kernel path {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(results: dict[str, dict]) -> dict[str, dict]:
    """Per tap: the floor on each path and max/min over paths."""
    taps = next(iter(results.values()))["floor"]
    table = {}
    for tap in taps:
        values = {path: r["floor"][tap] for path, r in results.items()}
        positive = [v for v in values.values() if v > 0]
        table[tap] = {**values, "spread": max(positive) / min(positive) if positive else float("nan")}
    return table


def format_spread(table: dict[str, dict], paths: list[str]) -> str:
    lines = [f"{'tap':36s} " + " ".join(f"{p:>10s}" for p in paths) + f" {'spread':>7s}"]
    for tap, row in table.items():
        lines.append(f"{tap:36s} " + " ".join(f"{row[p]:10.3g}" for p in paths) + f" {row['spread']:6.2f}x")
    worst = max(table.items(), key=lambda kv: kv[1]["spread"])
    lines.append(f"\nlargest spread: {worst[0]} {worst[1]['spread']:.2f}x; median over taps "
                 f"{float(np.median([r['spread'] for r in table.values()])):.2f}x")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.floor_spread", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL, help="checkpoint (default tiny.en)")
    parser.add_argument("--audio", type=Path, default=audio.DEFAULT_CLIP, help="clip (default: the shipped one)")
    parser.add_argument("--paths", default=",".join(KERNEL_PATHS),
                        help=f"comma list of kernel paths (default all: {', '.join(KERNEL_PATHS)})")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("floor_spread", lambda: _floor_spread(args))


def _floor_spread(args: argparse.Namespace) -> int:
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in KERNEL_PATHS]
    if unknown or not paths:
        raise FidelityError(f"--paths: unknown {', '.join(unknown) or 'empty list'}; "
                            f"choose from {', '.join(KERNEL_PATHS)}")
    if args.out:
        ensure_writable_file(args.out)
    checkpoints.load_checkpoint(args.model)  # bad model or clip: one line before any child runs
    audio.load_audio(args.audio)
    results = {}
    for path in paths:
        log.info("kernel path %s ...", path)
        results[path] = run_path(path, args.model, args.audio)
        log.info("kernel path %s: %s", path, results[path]["platform"])
    table = spread(results)
    sys.stdout.write(format_spread(table, paths) + "\n")
    if args.out:
        doc = {"platforms": {p: r["platform"] for p, r in results.items()}, "taps": table}
        write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
