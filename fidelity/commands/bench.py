"""`python -m fidelity.bench`: how fast a port runs, beside how faithful it is.

For each configuration (each --candidate in each --dtype and, where the candidate offers
the choice, each --attention form), and beside openai-whisper's encoder in torch (eager;
with --torch-compile also compiled), on one device:
  speed     the median time of the candidate's `encode(mel)` (numpy log-mel in, the encoder
            output out) over --repeats runs after --warmup, at each --batch (a candidate
            with a fixed batch at its own), as ms per 30 s window, TFLOP/s (the encoder's
            FLOPs from the model's dimensions) and the share of the device's dense peak in
            that precision (a large torch matmul, measured in the same run);
  fidelity  the candidate examined on the clip by the same flow as `compare --layer all`:
            the encoder output's error in noise floors, the first divergence; with --e2e
            the teacher-forced KL ratio and the WER of its transcript.
A fast configuration that is over budget is marked so. Results: a table, JSON (--out) and a
page with ms against floor ratio and the fast-and-faithful frontier (--html).

Other measurements, instead: --compare-wall N times whole `compare --layer all` runs;
--e2e-seconds S,S times whole transcriptions with openai-whisper's and MAX's encoder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .. import audio, checkpoints
from ..candidates import specs
from ..candidates.base import ATTENTIONS
from ..devices import DEVICES
from ..outputs import ensure_writable_file, write_text_atomic
from ..precisions import CANDIDATE_PRECISIONS
from ..provenance import machine, versions
from ..report.speed_table import format_bench
from ..speed.measure import BenchPlan, measure
from ..speed.timing import check_counts
from ..speed.wall import compare_wall, transcription_times
from .cli import EXIT_OK, Parser, add_logging_flags, parse_choices, parse_counts, run_main, setup_logging
from .compare import read_truth

log = logging.getLogger("fidelity.bench")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.bench", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", action="append", default=None, metavar="SPEC",
                        help="an encoder to time and examine, repeatable (default: max): "
                             + "; ".join(specs.known()) + "; PATH.py:NAME or module:NAME: your builder")
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL, help="checkpoint name or path")
    parser.add_argument("--audio", type=Path, default=audio.DEFAULT_CLIP,
                        help="the clip examined (its first window is the one timed; default: the shipped clip)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--dtype", default="float32",
                        help=f"comma list of {', '.join(CANDIDATE_PRECISIONS)}, each served by every candidate "
                             "(default float32)")
    parser.add_argument("--attention", default="matmul",
                        help=f"comma list of {', '.join(ATTENTIONS)}: the forms tried on a candidate that offers the "
                             "choice (the built-in; flash: GPU, bfloat16); a form a configuration refuses is "
                             "skipped and listed (default matmul)")
    parser.add_argument("--batch", default="1", help="comma list of batch sizes (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time openai-whisper under torch.compile (mode reduce-overhead on the GPU)")
    parser.add_argument("--whole-graph", action="store_true",
                        help="also time the built-in (--candidate max) compiled as one graph, the encoder output "
                             "its only output (its fast path; the candidate itself chains its stage graphs)")
    parser.add_argument("--no-traced", action="store_true",
                        help="skip timing a run with every tap copied to the host")
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage of the built-in alone, and openai-whisper's")
    parser.add_argument("--e2e", action="store_true",
                        help="the examination also transcribes the clip and teacher-forces the decoder: KL ratio and "
                             "WER beside the speed (minutes on a CPU per configuration)")
    parser.add_argument("--compare-wall", type=int, default=0, metavar="N",
                        help="instead: time N whole `compare --layer all` examinations (checkpoint, graphs from the "
                             "MEF store, references, metrics, report) in this process")
    parser.add_argument("--e2e-seconds", default=None, metavar="S,S",
                        help="instead: time whole transcriptions (openai-whisper's encoder vs MAX's) of the "
                             "shipped long clip tiled to these lengths, e.g. 30,180")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--html", type=Path, default=None,
                        help="write the speed and fidelity page here (self-contained HTML)")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("bench", lambda: _bench(args))


def _bench(args: argparse.Namespace) -> int:
    check_counts(args.repeats, args.warmup)
    for path in (args.out, args.html):
        if path:
            ensure_writable_file(path)  # before minutes of timing, not after
    if args.compare_wall or args.e2e_seconds:
        doc, text = _other_measurement(args)
    else:
        doc = measure(plan_from(args))
        text = format_bench(doc)
    sys.stdout.write(text + "\n")
    if args.out:
        write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    if args.html:
        from ..report.frontier import render_bench_html  # matplotlib costs ~1 s to import: only when asked

        write_text_atomic(args.html, render_bench_html(doc))
    return EXIT_OK


def plan_from(args: argparse.Namespace) -> BenchPlan:
    """The benchmark the arguments ask for (reads the clip's ground-truth text for --e2e)."""
    return BenchPlan(model=args.model, audio=args.audio, candidates=tuple(args.candidate or [specs.DEFAULT]),
                     dtypes=tuple(parse_choices(args.dtype, CANDIDATE_PRECISIONS, "--dtype")),
                     attentions=tuple(parse_choices(args.attention, ATTENTIONS, "--attention")),
                     batches=tuple(parse_counts(args.batch, "--batch")), device=args.device, repeats=args.repeats,
                     warmup=args.warmup, torch_compile=args.torch_compile, whole_graph=args.whole_graph,
                     traced=not args.no_traced, stages=args.stages, e2e=args.e2e,
                     truth=read_truth(None, args.audio) if args.e2e else None,
                     command=" ".join(["python -m fidelity.bench", *sys.argv[1:]]))


def _other_measurement(args: argparse.Namespace) -> tuple[dict, str]:
    """--compare-wall or --e2e-seconds: the document and its text."""
    if args.compare_wall:
        wall = compare_wall(args.compare_wall, args.model, args.device)
        doc = {"compare_wall": wall}
        text = f"compare --layer all: median {wall['median_s']:.2f} s over {wall['runs']} runs {wall['all_s']}"
    else:
        rows = transcription_times(args.model, args.device, parse_counts(args.e2e_seconds, "--e2e-seconds"),
                                   args.repeats)
        doc = {"e2e": rows}
        text = "\n".join(f"{r['audio_s']:4d} s audio  {r['encoder']:15s} {r['wall_s']:7.1f} s wall  "
                         f"{r['encoder_s']:6.1f} s encoder ({100 * r['encoder_share']:.0f}%), "
                         f"{r['windows']} windows, {'same text' if r['same_text'] else 'TEXT DIFFERS'}" for r in rows)
    doc.update({"device": args.device, "model": args.model, "versions": versions(), "machine": machine(args.device),
                "date": time.strftime("%Y-%m-%d")})
    return doc, text


if __name__ == "__main__":
    sys.exit(main())
