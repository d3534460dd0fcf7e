"""The corpus sweep's one adapter into the comparison library: one clip, one configuration, one row.

Everything the sweep needs of `fidelity.pipeline`, `fidelity.e2e`, the MAX candidate
and the fault catalogue is called here and nowhere else in `fidelity.corpus`, so the
sweep follows the comparison flow when it changes (the candidate protocol) by editing
this file alone. `ClipComparer` keeps the checkpoint, the openai-whisper references,
the compiled candidate and the transcription model of each configuration for the
life of a worker; `compare_one` turns one clip into one flat row (see `rows.SCHEMA`).

Candidate specs understood today: `max` (the built-in MAX Graph encoder) and
`max:FAULT` (it with a catalogued porting bug injected, `python -m fidelity.faults --list`).
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
from .. import taps as tapmod
from ..errors import FidelityError
from .configs import Configuration

log = logging.getLogger(__name__)

BUILTIN = "max"


@dataclass(frozen=True)
class ClipInput:
    """A clip as a worker receives it: its bytes travel with it (no shared filesystem needed)."""

    clip_id: str
    path: str
    data: bytes
    text: str | None


def check_candidate(spec: str) -> None:
    """Refuse, before any work, a candidate spec this adapter cannot build.

    `max` is the built-in MAX encoder, `max:FAULT` the same with a catalogued fault; anything
    else is a builder spec (`PATH.py:NAME` or `module:NAME`), as `compare --candidate` takes.
    """
    name, _, fault = spec.partition(":")
    if name == BUILTIN:
        if fault:
            from ..faults import FAULTS  # the catalogue's names; per-model applicability is checked on build

            if fault not in FAULTS:
                raise FidelityError(f"--candidate {spec}: unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        return
    from ..candidates.loader import load_builder

    load_builder(spec)


def build_candidate(spec: str, checkpoint, config):
    """The candidate a spec names (see `check_candidate`), on `config`'s device and dtype."""
    from ..candidates.loader import build_candidate as build_from_spec
    from ..candidates.max_builtin import BuiltinCandidate
    from ..faults import faulty_candidate, get_fault

    name, _, fault = spec.partition(":")
    if name != BUILTIN:
        return build_from_spec(spec, checkpoint, config)
    if fault:
        return faulty_candidate(checkpoint, get_fault(fault, checkpoint.dims), config)
    return BuiltinCandidate(checkpoint, config)


class ClipComparer:
    """One worker's state: per configuration, the models and compiled graphs, built once."""

    def __init__(self):
        self._checkpoints: dict[str, object] = {}
        self._prepared: dict[str, dict] = {}
        self._failed: dict[str, str] = {}  # a configuration that cannot be built fails each clip at once
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def prepare(self, config: Configuration) -> dict:
        """Build everything `config` needs; returns how long each part took (seconds)."""
        if config.key in self._prepared:
            return {}
        if config.key in self._failed:
            raise FidelityError(self._failed[config.key])
        try:
            return self._build(config)
        except Exception as exc:
            self._failed[config.key] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise

    def _build(self, config: Configuration) -> dict:
        from ..candidates.base import CandidateConfig
        from ..pipeline import References

        timings = {}
        start = time.perf_counter()
        if config.model not in self._checkpoints:
            self._checkpoints[config.model] = checkpoints.load_checkpoint(config.model)
        checkpoint = self._checkpoints[config.model]
        timings["checkpoint_s"] = time.perf_counter() - start
        start = time.perf_counter()
        candidate = build_candidate(config.candidate, checkpoint, CandidateConfig(config.device, config.dtype))
        timings["candidate_s"] = time.perf_counter() - start
        timings["graph_compile_or_load_s"] = getattr(candidate, "compile_seconds", 0.0)
        start = time.perf_counter()
        references = References(checkpoint, candidate.floor_dtype, config.device)
        timings["references_s"] = time.perf_counter() - start
        model = None
        if config.e2e:
            start = time.perf_counter()
            model = checkpoint.whisper_model()
            timings["whisper_model_s"] = time.perf_counter() - start
        wanted = tapmod.stage_outputs(checkpoint.dims)
        has = set(candidate.available_taps())
        taps = [t for t in tapmod.select_taps(checkpoint.dims, ",".join(wanted)) if t.name in has]
        self._prepared[config.key] = {"checkpoint": checkpoint, "candidate": candidate, "references": references,
                                      "model": model, "taps": taps}
        return timings

    def compare_one(self, clip: ClipInput, config: Configuration) -> dict:
        """One row for `clip` under `config`; any failure becomes an error row, never an exception."""
        row = {"worker": self.worker}
        started = time.perf_counter()
        phase = "setup"
        try:
            self.prepare(config)
            state = self._prepared[config.key]
            phase = "load"
            start = time.perf_counter()
            loaded = _load(clip, allow_silent=config.e2e)
            mel = audio.mel_windows(loaded, state["checkpoint"].dims.n_mels)
            row.update(seconds=loaded.seconds, windows=len(mel), load_s=time.perf_counter() - start)
            phase = "compare"
            row.update(_stage_stats(state, mel, config.isolate, loaded.samples))
            if config.e2e:
                phase = "e2e"
                row.update(_end_to_end(state, loaded, clip.text))
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a row records any failure and the sweep goes on
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, FidelityError):
                message = f"{type(exc).__name__}: {message}"
                log.exception("clip %s failed in %s", clip.clip_id, phase)
            row.update(status="error", error=message, error_phase=phase)
        row["total_s"] = time.perf_counter() - started
        return row


def _load(clip: ClipInput, allow_silent: bool):
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


def _stage_stats(state: dict, mel, isolate: bool, samples) -> dict:
    from ..pipeline import compare_candidate, plan_for

    comparison = compare_candidate(state["candidate"], state["references"], mel,
                                   plan_for(state["taps"], isolate=isolate), samples)
    stages = []
    for result in comparison.rows:
        stats = result.as_dict()
        stages.append({"tap": result.name, "stage": result.stage, "cosine": stats["cosine"],
                       "rel_l2": stats["rel_l2"], "floor_ratio": stats["noise_floor_ratio"],
                       "verdict": result.verdict, "local_floor_ratio": stats.get("local_noise_floor_ratio"),
                       "local_verdict": result.local_verdict, "budget": result.budget})
    first = comparison.first_divergence
    chained = comparison.first_divergence_chained
    stage_of = {r.name: r.stage for r in comparison.rows}
    post = next(s for s in stages if s["tap"] == "encoder.ln_post")
    worst = max(stages, key=lambda s: _badness(s["floor_ratio"]))
    out = {
        "stages": stages,
        "first_divergence": stage_of.get(first) if first else None,
        "first_divergence_tap": first,
        "first_divergence_chained": chained,
        "ln_post_cosine": post["cosine"], "ln_post_rel_l2": post["rel_l2"], "ln_post_floor_ratio": post["floor_ratio"],
        "worst_tap": worst["tap"], "worst_floor_ratio": worst["floor_ratio"],
        "candidate_s": comparison.timings["candidate_s"], "reference_s": comparison.timings["reference_s"],
        "metrics_s": comparison.timings["metrics_s"],
    }
    if isolate:
        local_worst = max(stages, key=lambda s: _badness(s["local_floor_ratio"]))
        out.update(worst_local_tap=local_worst["tap"], worst_local_floor_ratio=local_worst["local_floor_ratio"])
    return out


def _end_to_end(state: dict, clip, truth: str | None) -> dict:
    from ..e2e import examine_transcripts

    start = time.perf_counter()
    # no floor-noise band: the row has no column for it, and it costs 8 more transcriptions per clip
    result = examine_transcripts(state["checkpoint"], clip.samples, state["candidate"], truth=truth,
                                 model=state["model"], band_draws=0)
    greedy, teacher = result.greedy, result.teacher.as_dict()
    out = {"reference_text": greedy["reference_text"], "candidate_text": greedy["candidate_text"],
           "transcripts_identical": greedy["identical"], "wer_vs_reference": greedy["wer"],
           "cer_vs_reference": greedy["cer"],
           "first_parting_token": _parting(greedy.get("first_parting"))}
    if truth is not None:
        for side in ("reference", "candidate"):
            for rate in ("wer", "cer"):
                out[f"{rate}_{side}_vs_truth"] = greedy["truth"][f"{rate}_{side}"]
    out.update(teacher_kl_mean=teacher["candidate"]["kl_mean"], teacher_kl_max=teacher["candidate"]["kl_max"],
               teacher_kl_ratio=teacher.get("kl_ratio"), teacher_flips=teacher["candidate"]["flip_count"],
               teacher_verdict=teacher.get("verdict"))
    out["e2e_s"] = time.perf_counter() - start
    return out


def _parting(parting: dict | None) -> str | None:
    if not parting:
        return None
    return (f"window {parting['window']} token {parting['token_index']}: "
            f"{parting['reference_token']!r} -> {parting['candidate_token']!r}")


def _badness(value) -> float:
    return float("inf") if value is None else float(value)
