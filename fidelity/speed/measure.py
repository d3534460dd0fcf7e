"""One benchmark: every configuration's fidelity (an examination on the clip) and speed (per batch).

`measure(BenchPlan(...))` returns the benchmark document (what `--out` writes): per
configuration its fidelity summary and, per batch, the median time of `encode(mel)`
(the log-mel already on the device, the encoder output left there, alike for every encoder),
the rate it reaches and its share of the device's dense peak in its precision,
and the fast-and-faithful frontier per batch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import audio, checkpoints
from ..candidates import specs
from ..candidates.base import ENCODER_OUTPUT
from ..candidates.max_builtin import BuiltinCandidate
from ..candidates.max_engine import to_device
from ..checkpoints import Checkpoint
from ..errors import FidelityError
from ..flow.examination import Examination
from ..flow.examine import Examiner
from ..flow.request import Request
from ..flow.walk import call_candidate
from ..provenance import machine, versions
from ..reference.runner import TorchRunner
from ..verdicts import TF32
from .configurations import Configuration, build_configurations
from .flops import Peak, dense_peak, encoder_flops
from .frontier import frontier
from .timing import Sync, check_counts, median_ms, synchronizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchPlan:
    """What to time and examine: candidate specs x `dtypes` x `attentions`, at each batch of `batches`, beside
    openai-whisper in torch (eager; `torch_compile`: also compiled). `whole_graph`: also the built-in as one
    graph; `traced`: also time a run with every tap to the host; `stages`: each built-in stage alone against
    openai-whisper's; `e2e`: the examination transcribes and teacher-forces (`truth`: the clip's text)."""

    model: str | Path = checkpoints.DEFAULT_MODEL
    audio: str | Path = audio.DEFAULT_CLIP
    candidates: tuple[str, ...] = (specs.DEFAULT,)
    dtypes: tuple[str, ...] = ("float32",)
    attentions: tuple[str, ...] = ("matmul",)
    batches: tuple[int, ...] = (1,)
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 2
    torch_compile: bool = False
    whole_graph: bool = False
    traced: bool = True
    stages: bool = False
    e2e: bool = False
    truth: str | None = None
    command: str = ""

    def __post_init__(self):
        check_counts(self.repeats, self.warmup)
        if not self.batches or min(self.batches) < 1:
            raise FidelityError("--batch: each batch size must be at least 1")


def measure(plan: BenchPlan) -> dict:
    """Build every configuration, measure the dense peaks, then examine and time each configuration."""
    sync = synchronizer(plan.device)  # a GPU that MAX or torch does not see: refused first
    checkpoint = checkpoints.load_checkpoint(plan.model)
    clip = audio.load_audio(Path(plan.audio), allow_silent=plan.e2e)  # --e2e on silence: refused there
    mel1 = audio.mel_windows(clip, checkpoint.dims.n_mels)[:1]  # the timed window: the clip's first
    configs, skipped = build_configurations(checkpoint, list(plan.candidates), list(plan.dtypes),
                                            list(plan.attentions), plan.device, plan.torch_compile, plan.whole_graph,
                                            plan.stages)
    try:
        flops = encoder_flops(checkpoint.dims)
        peaks = {dtype: dense_peak(dtype, plan.device, sync) for dtype in dict.fromkeys(c.dtype for c in configs)}
        fixed = tuple(b for b in dict.fromkeys(c.candidate.fixed_batch for c in configs) if b)
        references: dict = {}  # floors shared across configurations (fidelity.flow.examine.Examiner)
        rows = []
        for config in configs:
            fidelity = _fidelity(_examine(config, checkpoint, clip, references, plan))
            batches = _batches(config, plan.batches, fixed)
            speed = [time_encode(config, mel1, batch, sync, plan, flops["total"], peaks[config.dtype])
                     for batch in batches]
            rows.append({"label": config.label, "spec": config.spec, "reference": config.reference,
                         "dtype": config.dtype, "attention": config.attention,
                         "fixed_batch": config.candidate.fixed_batch, "candidate": config.candidate.describe(),
                         "fidelity": fidelity, "speed": speed})
        stages = stage_times(configs, checkpoint, mel1, plan, sync) if plan.stages else None
    finally:
        for config in configs:
            config.candidate.close()
    doc = {"model": checkpoint.name, "dims": asdict(checkpoint.dims),
           "audio": {"source": clip.source, "seconds": round(clip.seconds, 3), "timed": "its first 30 s window"},
           "device": plan.device, "machine": machine(plan.device), "versions": versions(),
           "date": time.strftime("%Y-%m-%d"), "command": plan.command,
           "timing": {"repeats": plan.repeats, "warmup": plan.warmup,
                      "what": "the encoder on a log-mel already on the device, its output left there (host "
                              "transfers excluded), median ms per call, the device synchronised"},
           "flops_per_window": flops,
           "peaks": {dtype: peak.as_dict() if peak else None for dtype, peak in peaks.items()},
           "configurations": rows, "skipped": [asdict(s) for s in skipped]}
    doc["frontier"] = frontier(doc)
    if stages is not None:
        doc["stages"] = stages
    return doc


def _batches(config: Configuration, asked: tuple[int, ...], fixed: tuple[int, ...]) -> list[int]:
    """A fixed-batch candidate at its batch; reference points at every batch a candidate runs at."""
    if config.candidate.fixed_batch:
        return [config.candidate.fixed_batch]
    return list(dict.fromkeys(asked + fixed)) if config.reference else list(asked)


def _examine(config: Configuration, checkpoint: Checkpoint, clip: audio.Clip, references: dict,
             plan: BenchPlan) -> Examination:
    """The configuration examined on the clip, every tap it offers, against floors shared by every configuration
    judged in the same precision and arithmetic (`Examiner` keeps them in `references`)."""
    request = Request(model=checkpoint, audio=clip, candidate=config.candidate, device=plan.device,
                      dtype=config.dtype, attention=config.attention or "matmul", e2e=plan.e2e, truth=plan.truth,
                      command=plan.command)
    log.info("examining %s", config.label)
    return Examiner(request, shared_references=references).examine()


def _fidelity(examination: Examination) -> dict:
    """What the speed table shows of an examination: the encoder output against its floor, the verdict."""
    post = examination.row(ENCODER_OUTPUT)
    tf32 = examination.arithmetic == TF32 and post.tf32 is not None  # judged against the TF32 floor
    ratio = post.tf32.ratio if tf32 else post.stats.noise_floor_ratio
    out = {"ln_post_floor_ratio": _finite(ratio), "arithmetic": examination.arithmetic,
           "ln_post_rel_l2": _finite(post.stats.rel_l2),
           "ln_post_verdict": post.verdict, "budget": post.budget,
           "floor_dtype": examination.setting.candidate["floor_dtype"], "taps": len(examination.rows),
           "first_divergence": examination.first_divergence, "over_budget": examination.failed}
    if examination.probe_effect is not None:  # the timed graph (probes off) against the examined one
        out["probe_effect_floor_fraction"] = examination.probe_effect.floor_fraction
        out["probe_effect_material"] = examination.probe_effect.material
    if examination.e2e is not None:
        e2e = examination.e2e.as_dict()
        teacher = e2e["teacher"]
        out.update({"kl_ratio": teacher["kl_ratio"], "kl_budget": teacher["budget"],
                    "kl_verdict": teacher["verdict"], "wer": e2e["wer"]})
        if "truth" in e2e:
            out["wer_truth"] = e2e["truth"]["wer_candidate"]
    return out


def time_encode(config: Configuration, mel1: np.ndarray, batch: int, sync: Sync, plan: BenchPlan,
                flops_per_window: int, peak: Peak | None) -> dict:
    """The encoder on `batch` copies of the window, its input already on the device and its output left there
    (`Candidate.resident`; after one untimed call that loads what it needs); with `plan.traced`, a run with
    every tap to the host too (a candidate with inner taps)."""
    candidate = config.candidate
    mel = np.repeat(mel1, batch, axis=0)
    encode = call_candidate(candidate, "resident", candidate.resident, mel)
    call_candidate(candidate, "encode", encode)
    ms = median_ms(lambda: call_candidate(candidate, "encode", encode), sync, plan.repeats, plan.warmup)
    tflops = flops_per_window * batch / (ms / 1e3) / 1e12
    row = {"batch": batch, "fixed": candidate.fixed_batch is not None, "median_ms": ms, "ms_per_window": ms / batch,
           "tflops": tflops, "peak_share": tflops / peak.tflops if peak else None}
    taps = candidate.available_taps()
    if plan.traced and taps != [ENCODER_OUTPUT]:
        def run():
            return call_candidate(candidate, "run", candidate.run, mel, taps)

        run()
        row["traced_ms"] = median_ms(run, sync, plan.repeats, plan.warmup)
    log.info("%s, batch %d: %.3g ms per window, %.3g TFLOP/s", config.label, batch, ms / batch, tflops)
    return row


def stage_times(configs: list[Configuration], checkpoint: Checkpoint, mel1: np.ndarray, plan: BenchPlan,
                sync: Sync) -> list[dict]:
    """Each stage of each built-in configuration alone, and openai-whisper's stage in each precision (eager),
    on the float32 reference's input for that stage, at each batch."""
    builtins = [c for c in configs if isinstance(c.candidate, BuiltinCandidate)]
    float32 = TorchRunner(checkpoint, "float32", plan.device)
    rows = []
    for batch in plan.batches:
        mel = np.repeat(mel1, batch, axis=0)
        inputs = float32.run(mel, builtins[0].candidate.patchable_taps())
        for dtype in dict.fromkeys(c.dtype for c in builtins):
            rows += _torch_stages(TorchRunner(checkpoint, dtype, plan.device), mel, inputs, batch, sync, plan)
        for config in builtins:
            builtin = config.candidate
            for stage in builtin.stages:
                x = to_device(mel if stage.input is None else inputs[stage.input], plan.device)
                model = builtin.models[stage.name]
                ms = median_ms(lambda: model.execute(x), sync, plan.repeats, plan.warmup)
                rows.append({"what": config.label, "stage": stage.name, "dtype": config.dtype, "batch": batch,
                             "median_ms": ms})
    return rows


def _torch_stages(runner: TorchRunner, mel: np.ndarray, inputs: dict, batch: int, sync: Sync,
                  plan: BenchPlan) -> list[dict]:
    import torch

    rows = []
    for stage in runner.stages:
        source = mel if stage.input is None else inputs[stage.input]
        x = torch.from_numpy(np.ascontiguousarray(source)).to(runner.device, runner.torch_dtype)
        fn = runner.stage_fn(stage)

        def run():
            with torch.no_grad():
                return fn(x)

        rows.append({"what": f"torch eager {runner.dtype}", "stage": stage.name, "dtype": runner.dtype,
                     "batch": batch, "median_ms": median_ms(run, sync, plan.repeats, plan.warmup)})
    return rows


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
