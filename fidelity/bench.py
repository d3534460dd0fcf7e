"""`python -m fidelity.bench`: encoder speed, MAX against PyTorch, side by side.

Times, as medians over `--repeats` runs after `--warmup` runs, on one device:
  max_encoder     the whole MAX encoder as one graph, ln_post only (taps off)
  max_flash       the same with flash attention (with --flash; GPU, bfloat16)
  max_traced      the traced MAX stage graphs, every tap copied to the host (batch 1)
  torch_eager     openai-whisper's AudioEncoder (fp32 parameters, input in the dtype)
  torch_compile   the same under torch.compile (with --torch-compile)
and, with --stages, each stage alone for both frameworks. `--compare-wall N`
times N whole `python -m fidelity.compare` processes instead (model loading,
compile cache and reports included). Results print as a table and go to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import audio, checkpoints
from .candidates.base import CandidateConfig
from .candidates.max_builtin import DTYPES, FLASH_DTYPES, BuiltinCandidate, MaxOptions, Numerics
from .candidates.max_builtin.whole_graph import WholeEncoder
from .candidates.max_engine import session_for, to_device
from .cli import EXIT_OK, Parser, add_logging_flags, run_main, setup_logging
from .devices import DEVICES
from .errors import FidelityError
from .report.files import ensure_writable_file, versions, write_text_atomic
from .runners.torch_ref import TORCH_DTYPES, TorchRunner

log = logging.getLogger("fidelity.bench")


def median_ms(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: int) -> float:
    """Median wall time of `fn` in milliseconds, synchronising the device around each run."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.bench", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL, help="checkpoint name or path")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--dtype", default="float32",
                        help=f"comma list of {', '.join(DTYPES)} (default float32)")
    parser.add_argument("--batch", default="1", help="comma list of batch sizes (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--flash", action="store_true",
                        help="also time the MAX encoder with flash attention (GPU, bfloat16)")
    parser.add_argument("--no-traced", action="store_true", help="skip the traced (all taps) MAX run")
    parser.add_argument("--stages", action="store_true", help="also time each stage alone")
    parser.add_argument("--compare-wall", type=int, default=0, metavar="N",
                        help="time N whole `python -m fidelity.compare` processes instead")
    parser.add_argument("--e2e-seconds", default=None, metavar="S,S",
                        help="instead: time whole transcriptions (openai-whisper's encoder vs MAX's) of the "
                             "shipped long clip tiled to these lengths, e.g. 30,180")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("bench", lambda: _bench(args))


def _bench(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0:
        raise FidelityError("--repeats must be at least 1 and --warmup at least 0")
    if args.out:
        ensure_writable_file(args.out)  # before minutes of timing, not after
    if args.compare_wall:
        results = {"compare_wall": compare_wall(args.compare_wall, args.model, args.device)}
    elif args.e2e_seconds:
        lengths = [_positive(x, "--e2e-seconds") for x in args.e2e_seconds.split(",")]
        results = {"e2e": bench_e2e(args.model, args.device, lengths, args.repeats)}
    else:
        dtypes = _parse_list(args.dtype, DTYPES, "--dtype")
        batches = [_positive(b, "--batch") for b in args.batch.split(",")]
        results = {"cases": bench_encoders(args, dtypes, batches)}
    results.update({"device": args.device, "model": args.model, "versions": versions(),
                    "machine": _machine(args.device), "date": time.strftime("%Y-%m-%d")})
    sys.stdout.write(format_results(results) + "\n")
    if args.out:
        write_text_atomic(args.out, json.dumps(results, indent=1) + "\n")
    return EXIT_OK


def bench_encoders(args, dtypes: list[str], batches: list[int]) -> list[dict]:
    checkpoint = checkpoints.load_checkpoint(args.model)
    clip = audio.load_audio(audio.DEFAULT_CLIP)
    mel1 = audio.mel_windows(clip, checkpoint.dims.n_mels)[:1]
    sync = _synchronizer(args.device)
    cases = []
    for dtype in dtypes:
        config = CandidateConfig(device=args.device, dtype=dtype)
        encoder = WholeEncoder(checkpoint, config)
        flash = None
        if args.flash and dtype not in FLASH_DTYPES:
            log.warning("no flash attention timing in %s: MAX 26.7 compiles it in %s only", dtype,
                        ", ".join(FLASH_DTYPES))
        elif args.flash and args.device == "gpu":
            flash = WholeEncoder(checkpoint, config, MaxOptions(numerics=Numerics(attention="flash")))
        reference = TorchRunner(checkpoint, "float32", args.device)
        compiled = torch.compile(reference.encoder, mode="reduce-overhead" if args.device == "gpu" else "default") \
            if args.torch_compile else None
        for batch in batches:
            mel = np.repeat(mel1, batch, axis=0)
            on_device = encoder.to_device(mel)
            x = torch.from_numpy(mel).to(reference.device, TORCH_DTYPES[dtype])
            timed = {"max_encoder": lambda: encoder.execute(on_device),
                     "torch_eager": lambda: _torch_call(reference.encoder, x)}
            if flash is not None:
                timed["max_flash"] = lambda: flash.execute(on_device)
            if compiled is not None:
                timed["torch_compile"] = lambda: _torch_call(compiled, x)
            for name, fn in timed.items():
                ms = median_ms(fn, sync, args.repeats, args.warmup)
                cases.append({"what": name, "dtype": dtype, "batch": batch, "median_ms": round(ms, 3)})
                log.info("%s %s batch %d: %.2f ms", name, dtype, batch, ms)
        traced = BuiltinCandidate(checkpoint, config) if not args.no_traced or args.stages else None
        if not args.no_traced:
            every = traced.available_taps()
            ms = median_ms(lambda: traced.run(mel1, every), sync, args.repeats, args.warmup)
            cases.append({"what": "max_traced", "dtype": dtype, "batch": 1, "median_ms": round(ms, 3)})
        if args.stages:
            flash_traced = BuiltinCandidate(checkpoint, config, flash.options) if flash is not None else None
            for batch in batches:
                mel = np.repeat(mel1, batch, axis=0)
                cases += bench_stages(traced, reference, mel, dtype, sync, args, with_torch=True)
                if flash_traced is not None:
                    cases += bench_stages(flash_traced, reference, mel, dtype, sync, args, with_torch=False,
                                          only=("blocks.0.attn",), label="max_flash_stage")
    return cases


def bench_stages(traced: BuiltinCandidate, reference: TorchRunner, mel: np.ndarray, dtype: str, sync, args,
                 with_torch: bool, only: tuple[str, ...] = (), label: str = "max_stage") -> list[dict]:
    """Each stage alone (or those in `only`), on the float32 reference's input for it."""
    inputs = reference.run(mel, traced.patchable_taps())
    cases = []
    for stage in traced.stages:
        if only and stage.name not in only:
            continue
        source = mel if stage.input is None else inputs[stage.input]
        device_input = to_device(source, traced.config.device)
        model = traced.models[stage.name]
        timed = [(label, lambda: model.execute(device_input))]
        if with_torch:
            x = torch.from_numpy(source).to(reference.device, TORCH_DTYPES[dtype])
            torch_fn = reference.stage_fn(stage)
            timed.append(("torch_stage", lambda: _torch_call(torch_fn, x)))
        for name, fn in timed:
            ms = median_ms(fn, sync, args.repeats, args.warmup)
            cases.append({"what": name, "stage": stage.name, "dtype": dtype, "batch": len(mel),
                          "median_ms": round(ms, 3)})
    return cases


def bench_e2e(model_name: str, device: str, lengths: list[int], repeats: int) -> list[dict]:
    """Whole transcriptions with each encoder: wall time, the encoder's share (medians), same text or not
    and the WER against openai-whisper's own transcript."""
    from .e2e import candidate_encoder, error_rates, transcribe_with

    checkpoint = checkpoints.load_checkpoint(model_name)
    model = checkpoint.whisper_model().to("cuda" if device == "gpu" else "cpu")
    candidate = BuiltinCandidate(checkpoint, CandidateConfig(device=device))
    source = audio.load_audio(audio.DATA_DIR / "speech_long.flac").samples
    rows = []
    for seconds in lengths:
        samples = np.resize(source, seconds * audio.SAMPLE_RATE)  # the clip tiled to length
        reference_text = None
        for side, encoder in (("openai-whisper", model.encoder), ("max", candidate_encoder(candidate))):
            runs = [transcribe_with(model, samples, encoder, progress=False) for _ in range(repeats)]
            wall = statistics.median(r.seconds for r in runs)
            enc = statistics.median(r.encoder_seconds for r in runs)
            reference_text = reference_text if reference_text is not None else runs[0].text
            rows.append({"audio_s": seconds, "encoder": side, "wall_s": round(wall, 2), "encoder_s": round(enc, 2),
                         "encoder_share": round(enc / wall, 3), "windows": runs[0].encoder_calls,
                         "same_text": all(r.text == reference_text for r in runs),
                         "wer": error_rates(reference_text, runs[0].text, runs[0].language)["wer"]})
            log.info("%d s audio, %s encoder: %.1f s wall, %.0f%% in the encoder", seconds, side, wall,
                     100 * enc / wall)
    return rows


def compare_wall(runs: int, model: str, device: str) -> dict:
    """Median wall time of whole `compare --layer all` processes (the first run warms caches)."""
    command = [sys.executable, "-m", "fidelity.compare", "--layer", "all", "--model", model, "--device", device,
               "--out", "reports/bench-compare", "-q"]
    subprocess.run(command, check=False, capture_output=True)  # warm-up: compile cache, model conversion
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise FidelityError(f"compare failed: {done.stderr.strip().splitlines()[-1]}")
    return {"runs": runs, "median_s": round(statistics.median(times), 2), "all_s": [round(t, 2) for t in times],
            "command": " ".join(command[1:])}


def format_results(results: dict) -> str:
    if "e2e" in results:
        return "\n".join(f"{r['audio_s']:4d} s audio  {r['encoder']:15s} {r['wall_s']:7.1f} s wall  "
                         f"{r['encoder_s']:6.1f} s encoder ({100 * r['encoder_share']:.0f}%), "
                         f"{r['windows']} windows, {'same text' if r['same_text'] else 'TEXT DIFFERS'} "
                         f"(WER {r['wer']:.3f})"
                         for r in results["e2e"])
    if "compare_wall" in results:
        wall = results["compare_wall"]
        return f"compare --layer all: median {wall['median_s']:.2f} s over {wall['runs']} runs {wall['all_s']}"
    lines = [f"{'what':14s} {'stage':16s} {'dtype':9s} {'batch':>5s} {'median ms':>10s}"]
    for case in results["cases"]:
        lines.append(f"{case['what']:14s} {case.get('stage', ''):16s} {case['dtype']:9s} {case['batch']:5d} "
                     f"{case['median_ms']:10.2f}")
    lines.append(f"device: {results['machine']}")
    return "\n".join(lines)


def _torch_call(module, x):
    with torch.no_grad():
        return module(x)


def _synchronizer(device: str) -> Callable[[], None]:
    if device == "cpu":
        return lambda: None
    _, accelerator = session_for("gpu")

    def sync():
        accelerator.synchronize()
        torch.cuda.synchronize()
    return sync


def _machine(device: str) -> str:
    if device == "gpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os
    import platform
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def _parse_list(text: str, allowed, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise FidelityError(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def _positive(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise FidelityError(f"{flag}: {text!r} is not a whole number") from None
    if value < 1:
        raise FidelityError(f"{flag}: each value must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
