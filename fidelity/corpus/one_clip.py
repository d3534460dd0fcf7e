"""The corpus sweep's worker side: one clip, one configuration, one row, through the examination library.

`ClipComparer` keeps one `fidelity.flow.examine.Examiner` per configuration for the life
of a worker (the checkpoint, the compiled candidate and the openai-whisper references
are loaded once); `compare_one` examines one clip with it and turns the examination into
one flat row (see `rows.SCHEMA`). Candidate specs are the one language of
`fidelity.candidates.specs`, as for `compare --candidate`.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import audio, checkpoints
from ..errors import FidelityError
from ..flow.examination import Examination
from ..flow.examine import Examiner
from ..flow.request import Request
from ..taps import stage_outputs
from .configs import Configuration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipInput:
    """A clip as a worker receives it: its bytes travel with it (no shared filesystem needed)."""

    clip_id: str
    path: str
    data: bytes
    text: str | None


class ClipComparer:
    """One worker's state: per configuration, an examiner (models and compiled graphs), built once.

    Configurations whose references run alike share one set of runners; with `reference_cache`
    (a folder, beside the rows) every reference run is kept by content, so a clip's truth and floors are
    computed once across configurations, workers and resumed sweeps."""

    def __init__(self, reference_cache: str | Path | None = None):
        self.reference_cache = reference_cache
        self._checkpoints: dict[str, checkpoints.Checkpoint] = {}
        self._references: dict = {}  # shared by this worker's examiners
        self._examiners: dict[str, Examiner] = {}
        self._failed: dict[str, str] = {}  # a configuration that cannot be built fails each clip at once
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def prepare(self, config: Configuration) -> dict:
        """Build everything `config` needs; returns how long each part took (seconds)."""
        if config.key in self._examiners:
            return {}
        if config.key in self._failed:
            raise FidelityError(self._failed[config.key])
        try:
            return self._build(config)
        except Exception as exc:
            self._failed[config.key] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise

    def _build(self, config: Configuration) -> dict:
        start = time.perf_counter()
        if config.model not in self._checkpoints:
            self._checkpoints[config.model] = checkpoints.load_checkpoint(config.model)
        timings = {"checkpoint_s": time.perf_counter() - start}
        start = time.perf_counter()
        checkpoint = self._checkpoints[config.model]
        # a row records every stage output (a port's own front end adds frontend.mel)
        request = Request(model=checkpoint, audio=None, candidate=config.candidate,
                          taps=",".join(stage_outputs(checkpoint.dims)), device=config.device, dtype=config.dtype,
                          isolate=config.isolate, probe_effect=False, e2e=config.e2e,
                          band_draws=0,  # a row has no band columns
                          reference_cache=self.reference_cache)
        examiner = Examiner(request, shared_references=self._references)
        timings["examiner_s"] = time.perf_counter() - start
        timings["graph_compile_or_load_s"] = examiner.candidate.compile_seconds
        self._examiners[config.key] = examiner
        return timings

    def compare_one(self, clip: ClipInput, config: Configuration) -> dict:
        """One row for `clip` under `config`; any failure becomes an error row, never an exception."""
        row = {"worker": self.worker}
        started = time.perf_counter()
        phase = "setup"
        try:
            self.prepare(config)
            examiner = self._examiners[config.key]
            phase = "load"
            start = time.perf_counter()
            loaded = _load(clip, allow_silent=config.e2e)
            row.update(seconds=loaded.seconds, windows=len(audio.window_starts(loaded)),
                       load_s=time.perf_counter() - start)
            phase = "compare"
            examination = examiner.examine(loaded, truth=clip.text)
            row.update(stage_row(examination))
            if examination.e2e is not None:
                row.update(e2e_row(examination.e2e.as_dict()), e2e_s=examination.timings["e2e_s"])
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a row records any failure and the sweep goes on
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, FidelityError):
                message = f"{type(exc).__name__}: {message}"
                log.exception("clip %s failed in %s", clip.clip_id, phase)
            row.update(status="error", error=message, error_phase=phase)
        row["total_s"] = time.perf_counter() - started
        return row


def _load(clip: ClipInput, allow_silent: bool) -> audio.Clip:
    """Decode the clip's bytes with `fidelity.audio` (which reads files), naming the user's path in errors."""
    suffix = Path(clip.path).suffix or ".audio"
    with tempfile.TemporaryDirectory(prefix="fidelity-clip-") as tmp:
        path = Path(tmp) / f"clip{suffix}"
        path.write_bytes(clip.data)
        try:
            loaded = audio.load_audio(path, allow_silent=allow_silent)
        except FidelityError as exc:
            raise FidelityError(str(exc).replace(str(path), clip.path)) from None
    return audio.Clip(loaded.samples, clip.path)


def stage_row(examination: Examination) -> dict:
    """The row's stage-boundary statistics, first divergence and timings."""
    stages = []
    for result in examination.rows:
        stats = result.as_dict()
        stages.append({"tap": result.name, "stage": result.stage, "cosine": stats["cosine"],
                       "rel_l2": stats["rel_l2"], "floor_ratio": stats["noise_floor_ratio"],
                       "verdict": result.verdict, "local_floor_ratio": stats.get("local_noise_floor_ratio"),
                       "local_verdict": result.local_verdict, "budget": result.budget})
    post = next(s for s in stages if s["tap"] == "encoder.ln_post")
    worst = max(stages, key=lambda s: _badness(s["floor_ratio"]))
    timings = examination.timings
    out = {
        "stages": stages,
        "first_divergence": examination.comparison.first_stage,
        "first_divergence_tap": examination.first_divergence,
        "first_divergence_chained": examination.comparison.first_divergence_chained,
        "ln_post_cosine": post["cosine"], "ln_post_rel_l2": post["rel_l2"], "ln_post_floor_ratio": post["floor_ratio"],
        "worst_tap": worst["tap"], "worst_floor_ratio": worst["floor_ratio"],
        "candidate_s": timings["candidate_s"], "reference_s": timings["reference_s"],
        "metrics_s": timings["metrics_s"], "candidate_cpu_s": timings["candidate_cpu_s"],
        "reference_cpu_s": timings["reference_cpu_s"], "metrics_cpu_s": timings["metrics_cpu_s"],
    }
    if examination.comparison.isolated:
        local_worst = max(stages, key=lambda s: _badness(s["local_floor_ratio"]))
        out.update(worst_local_tap=local_worst["tap"], worst_local_floor_ratio=local_worst["local_floor_ratio"])
    return out


def e2e_row(e2e: dict) -> dict:
    """The row's end-to-end columns (transcripts, error rates, teacher-forced statistics)."""
    teacher = e2e["teacher"]
    out = {"reference_text": e2e["reference_text"], "candidate_text": e2e["candidate_text"],
           "transcripts_identical": e2e["identical"], "wer_vs_reference": e2e["wer"], "cer_vs_reference": e2e["cer"],
           "first_parting_token": _parting(e2e.get("first_parting")),
           "teacher_kl_mean": teacher["candidate"]["kl_mean"], "teacher_kl_max": teacher["candidate"]["kl_max"],
           "teacher_kl_ratio": teacher.get("kl_ratio"), "teacher_flips": teacher["candidate"]["flip_count"],
           "teacher_verdict": teacher.get("verdict")}
    truth = e2e.get("truth")
    if truth is not None:
        for side in ("reference", "candidate"):
            out[f"wer_{side}_vs_truth"], out[f"cer_{side}_vs_truth"] = truth[f"wer_{side}"], truth[f"cer_{side}"]
    return out


def _parting(parting: dict | None) -> str | None:
    if not parting:
        return None
    return (f"window {parting['window']} token {parting['token_index']}: "
            f"{parting['reference_token']!r} -> {parting['candidate_token']!r}")


def _badness(value) -> float:
    return float("inf") if value is None else float(value)
