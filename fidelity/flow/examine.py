"""One request in, one examination out: `examine(request)`, or an `Examiner` kept for many clips.

The flow, in order: the request's checkpoint, taps and clip are checked and loaded; the
candidate is built from its spec (compiling what it needs); openai-whisper gives the
truth and the floor; the walk judges every planned tap (`fidelity.flow.walk`); a port's
probe effect is judged against the floor; with `e2e`, both encoders transcribe and
the decoder is teacher-forced (`fidelity.e2e`). Nothing here writes a file: callers
hand observers to keep arrays (dumps, error maps) and write the examination's document.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import audio, checkpoints
from .. import taps as tapmod
from ..candidates import specs
from ..candidates.base import Candidate, CapabilityError
from ..devices import torch_device
from ..e2e import E2EResult, FloorEncoder, examine_transcripts
from ..errors import FidelityError
from ..provenance import reference_platform, versions
from ..reference.references import FLOOR, TF32_FLOOR, References
from ..reference.store import ReferenceStore
from ..verdicts import TF32, arithmetic_mode
from .examination import Examination, ProbeEffect, Setting
from .request import Request
from .walk import Comparison, Plan, TapObserver, call_candidate, compare_candidate

log = logging.getLogger(__name__)

# reference runs kept in memory when examiners share their floors and no folder keeps them (a bench's configurations)
SHARED_REFERENCE_BYTES = 1 << 30

# Observing moves a port's output; at this fraction of the floor's own error or more it is material.
MATERIAL_PROBE_EFFECT = 0.25


def examine(request: Request, observers: Sequence[TapObserver] = (),
            on_comparison: Callable[[Comparison], None] | None = None) -> Examination:
    """Examine the request's clip (see `Examiner.examine`)."""
    return Examiner(request).examine(observers=observers, on_comparison=on_comparison)


class Examiner:
    """What a request needs, checked and loaded once: checkpoint, taps, clip, candidate, references.

    `references` may be shared between examiners of one checkpoint (the fault catalogue
    compares many candidates against one set of reference runs); `shared_references` is a pool,
    keyed by how the references run, that examiners of one checkpoint draw from (a corpus worker's
    configurations share one set of runners)."""

    def __init__(self, request: Request, references: References | None = None,
                 shared_references: dict | None = None):
        self.request = request
        self.checkpoint = (request.model if isinstance(request.model, checkpoints.Checkpoint)
                           else checkpoints.load_checkpoint(request.model))
        dims = self.checkpoint.dims
        selected = tapmod.select_taps(dims, request.taps)
        self.sensitivity = _check_flags(request, dims)
        self.clip = _load_clip(request.audio, request.e2e)
        log.info("model %s", self.checkpoint.summary())
        self.spec = None if isinstance(request.candidate, Candidate) else specs.parse(request.candidate)
        if self.sensitivity and (self.spec is None or self.spec.provider is None or self.spec.provider.name != "max"):
            raise FidelityError("--sensitivity perturbs the built-in candidate only: leave out --candidate")
        started = time.perf_counter()
        self.candidate = request.candidate if self.spec is None else specs.build(
            self.spec, self.checkpoint, request.candidate_config(any(t.optional for t in selected)))
        self.build_seconds = time.perf_counter() - started
        self._compiled_before = 0.0
        if request.e2e and tapmod.ENCODER_OUTPUT not in self.candidate.available_taps():
            raise CapabilityError(f"--e2e needs the encoder output ({tapmod.ENCODER_OUTPUT}); candidate "
                                  f"{self.candidate.name} does not give it")
        front = (tapmod.FRONT_END_TAP,) if self.candidate.has_front_end else ()
        self.plan = Plan(front + tuple(t.name for t in selected), request.isolate, request.consistency,
                         request.strict_fp32)
        self.references = references or self._references_from(shared_references)
        self._whisper = None

    def _references_from(self, shared: dict | None) -> References:
        """The references this candidate needs, drawn from `shared` (a pool keyed by how they run) or made."""
        request = self.request
        how = (self.checkpoint.encoder_digest, self.candidate.floor_dtype, request.device, request.tf32_reference,
               self._tf32_floor(), self.candidate.convolutions_as_matmuls, str(request.reference_cache))
        pool = shared if shared is not None else {}
        if how not in pool:
            store = ReferenceStore(request.reference_cache) if request.reference_cache is not None else None
            in_memory = SHARED_REFERENCE_BYTES if shared is not None and store is None else 0
            pool[how] = References(self.checkpoint, self.candidate.floor_dtype, request.device,
                                   tf32_reference=request.tf32_reference, tf32_floor=self._tf32_floor(),
                                   tf32_convolutions=self.candidate.convolutions_as_matmuls, store=store,
                                   cache_bytes=in_memory)
        return pool[how]

    def _tf32_floor(self) -> bool:
        """Whether to measure the TF32-matmul floor: asked for, or by default for float32 on a GPU."""
        if self.candidate.floor_dtype != "float32" or self.request.tf32_reference:
            return False
        return self.request.tf32_floor if self.request.tf32_floor is not None else self.request.device == "gpu"

    @property
    def fault(self) -> str | None:
        """The catalogued fault the candidate carries (`max:FAULT`), if any."""
        return self.spec.argument if self.spec is not None and self.spec.provider is not None else None

    def examine(self, clip: audio.Clip | None = None, observers: Sequence[TapObserver] = (),
                on_comparison: Callable[[Comparison], None] | None = None, truth: str | None = None) -> Examination:
        """Examine `clip` (default: the request's; `truth`: its ground truth, default the request's).
        `on_comparison` gets the per-tap comparison as soon as it is done, before the probe effect and
        the transcripts (a command prints its first answer)."""
        started = time.perf_counter()
        clip = clip or self.clip
        if clip is None:
            raise FidelityError("no audio to examine: give the request an audio file or pass a clip")
        mel = audio.mel_windows(clip, self.checkpoint.dims.n_mels)
        log.info("audio %s: %.1f s, %d window(s) of 30 s", clip.source, clip.seconds, len(mel))
        compiled = self.candidate.compile_seconds
        if self.references.store is not None:
            self.references.store.new_run()
        comparison = compare_candidate(self.candidate, self.references, mel, self.plan, clip.samples, observers)
        if on_comparison is not None:
            on_comparison(comparison)
        timings = dict(comparison.timings)
        timings["candidate_s"] -= self.candidate.compile_seconds - compiled  # a port compiles on its first run
        start = time.perf_counter()
        effect = self._probe_effect(mel, comparison) if self.request.probe_effect else None
        timings["probe_effect_s"] = time.perf_counter() - start
        e2e = None
        if self.request.e2e:
            start = time.perf_counter()
            e2e = self._end_to_end(clip, truth or self.request.truth, comparison)
            timings["e2e_s"] = time.perf_counter() - start
        timings["compile_s"] = self.candidate.compile_seconds - self._compiled_before
        timings["total_s"] = time.perf_counter() - started + self.build_seconds
        self.build_seconds = 0.0  # the build is counted in the first examination only
        self._compiled_before = self.candidate.compile_seconds
        return Examination(self.request, self._setting(clip, len(mel)), comparison, effect, e2e, timings)

    # -- parts -----------------------------------------------------------------------
    def _setting(self, clip: audio.Clip, windows: int) -> Setting:
        return Setting(self.checkpoint.name, asdict(self.checkpoint.dims),
                       {"source": clip.source, "seconds": round(clip.seconds, 3), "windows": windows,
                        "window_starts": audio.window_starts(clip)},
                       self.candidate.describe(), self.fault, self.references.describe(), versions(),
                       reference_platform())

    def _judged_in_tf32(self, comparison: Comparison) -> bool:
        """Whether the port is judged in TF32 arithmetic: a TF32 floor ran, some span runs TF32, IEEE not demanded."""
        return TF32_FLOOR in self.references.runners and \
            arithmetic_mode(comparison.rows, self.request.strict_fp32) == TF32

    def _probe_effect(self, mel: np.ndarray, comparison: Comparison) -> ProbeEffect | None:
        """The port's output with probes off against every probe an output, worst over the windows, judged
        against the floor's own error at the encoder output."""
        effects = [call_candidate(self.candidate, "probe_effect", self.candidate.probe_effect, mel[i:i + 1])
                   for i in range(len(mel))]
        if not effects or effects[0] is None:
            return None
        post = next((r for r in comparison.rows if r.name == tapmod.ENCODER_OUTPUT), None)
        floor = math.nan
        if post is not None:  # the floor of the arithmetic the port runs in (TF32 where any span of it is)
            floor = post.tf32.floor if self._judged_in_tf32(comparison) and post.tf32 else post.stats.noise_floor
        worst = max(effects, key=lambda e: e.rmse)
        material = not math.isfinite(floor) or worst.rmse >= MATERIAL_PROBE_EFFECT * floor
        effect = ProbeEffect(tapmod.ENCODER_OUTPUT, max(e.max_abs for e in effects), max(e.rel_l2 for e in effects),
                             worst.rmse, floor, material)
        if material:
            log.warning("observing moves %s by rms %.3g, %.2gx the floor's own error there (rms %.3g): the taps are "
                        "of the probed graph, which computes differently from the port as it runs unprobed",
                        effect.tap, effect.rmse, effect.floor_fraction, effect.floor_rmse)
        return effect

    def _end_to_end(self, clip: audio.Clip, truth: str | None, comparison: Comparison) -> E2EResult:
        """Transcripts and teacher forcing (`fidelity.e2e`), the floor in the arithmetic the comparison found."""
        candidate, request = self.candidate, self.request
        if self._whisper is None:
            self._whisper = self.checkpoint.whisper_model().to(torch_device(candidate.device))
        side = TF32_FLOOR if self._judged_in_tf32(comparison) else FLOOR
        floor = FloorEncoder(self.references.runners[side].encode, self.references.describe()[side])
        return examine_transcripts(self.checkpoint, clip.samples, candidate, truth=truth, floor=floor,
                                   sensitivity=self.sensitivity, levels=request.noise_levels,
                                   band_draws=request.band_draws, model=self._whisper)


def _check_flags(request: Request, dims) -> str | None:
    """Refuse flag combinations that cannot work, before any work; the sensitivity tap, resolved."""
    if (request.truth or request.sensitivity) and not request.e2e:
        raise FidelityError("--text and --sensitivity need --e2e")
    if not request.sensitivity:
        return None
    tap = tapmod.resolve_tap(dims, request.sensitivity)
    outputs = tapmod.stage_outputs(dims)
    if tap not in outputs:
        raise FidelityError(f"--sensitivity takes a stage output (a stage name stands for its output, e.g. "
                            f"'1.attn'): {', '.join(outputs)}")
    if not request.noise_levels or any(not 0 < x < 10 for x in request.noise_levels):
        raise FidelityError("--noise-levels must be numbers between 0 and 10")
    return tap


def _load_clip(source, e2e: bool) -> audio.Clip | None:
    if source is None or isinstance(source, audio.Clip):
        return source
    return audio.load_audio(Path(source), allow_silent=e2e)  # --e2e on silence: refused there, with its reason
