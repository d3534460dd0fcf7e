"""The comparison flow: mel windows -> two runners -> metrics -> verdicts.

`References` runs openai-whisper in float64 (the truth) and in the candidate's
precision (the noise floor) and keeps the last window's taps, so several candidates
(the fault catalogue) are compared against one set of reference runs.
`compare_candidate` runs a MAX candidate over every window and judges each tap,
chained and, with `isolate`, stage by stage on the reference's inputs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .checkpoints import Checkpoint
from .metrics import TapStats, compare, not_run, rmse_between
from .runners.max_runner import MaxRunner
from .runners.torch_ref import TorchRunner
from .taps import Tap, encoder_taps, stage_input, stage_names
from .tolerances import CONSISTENCY_BUDGET, budget_for
from .verdicts import TapResult, blame_bad_inputs, first_divergence, judge, judge_consistency

log = logging.getLogger(__name__)


class References:
    """openai-whisper in float64 and in the candidate's precision, cached per window."""

    def __init__(self, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu", tf32: bool = False,
                 attention_weights: bool = False):
        self.dims = checkpoint.dims
        self.truth = TorchRunner(checkpoint, "float64", "cpu")
        self.floor = TorchRunner(checkpoint, dtype, device, tf32=tf32)
        self.tap_names = [t.name for t in encoder_taps(self.dims) if attention_weights or not t.optional]
        self._cache: dict[tuple, dict] = {}

    def chained(self, mel: np.ndarray) -> tuple[dict, dict]:
        """(float64 taps, floor-precision taps) of the whole encoder on `mel`."""
        key = ("chained", hash(mel.tobytes()))
        if key not in self._cache:
            self._cache.clear()
            start = time.perf_counter()
            truth = self.truth.run(mel, self.tap_names)
            floor = self.floor.run(mel, self.tap_names)
            log.info("reference float64 + %s runs: %.1f s", self.floor.dtype, time.perf_counter() - start)
            self._cache[key] = {"truth": truth, "floor": floor}
        return self._cache[key]["truth"], self._cache[key]["floor"]

    def stage_inputs(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        """Each stage's float64 reference input (the conv stem reads the mel)."""
        truth, _ = self.chained(mel)
        return {s: truth[stage_input(self.dims, s)] for s in stage_names(self.dims) if s != "conv_stem"}

    def isolated_floor(self, mel: np.ndarray) -> dict:
        """Floor-precision taps of each stage run on the float64 reference input."""
        truth, floor = self.chained(mel)
        key = ("isolated", hash(mel.tobytes()))
        cache = self._cache.setdefault(key, {})
        if "floor" not in cache:
            local = self.floor.run_stages(self.stage_inputs(mel), self.tap_names)
            local.update({t: floor[t] for t in self.tap_names if t not in local})  # conv stem: same input
            cache["floor"] = local
        return cache["floor"]


@dataclass
class Comparison:
    """Per-tap results over all windows (each tap's worst window) and per-window summaries."""

    rows: list[TapResult]
    windows: list[dict]
    isolated: bool
    timings: dict = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    errors: dict[str, np.ndarray] = field(default_factory=dict)  # tap -> |candidate - float64|, one window

    @property
    def first_divergence(self) -> str | None:
        """With isolation, the first tap whose *local* error is over budget; else the first failing tap."""
        return first_divergence(self.rows, local=self.isolated)

    @property
    def first_divergence_chained(self) -> str | None:
        return first_divergence(self.rows, local=False)

    def row(self, name: str) -> TapResult:
        return next(r for r in self.rows if r.name == name)


def compare_candidate(candidate: MaxRunner, references: References, mel: np.ndarray, taps: list[Tap],
                      isolate: bool = False, keep_arrays: bool = False, consistency: bool = False,
                      keep_errors: bool = False) -> Comparison:
    """Judge every selected tap of `candidate` on every window of `mel` (windows, n_mels, frames).

    `isolate` adds each stage's local error (the stage on the reference's input);
    `consistency` recomputes each stage from the candidate's own captured input and
    flags captured taps that their recomputation does not reproduce (a stage whose
    input is such a tap gets `bad_input` instead, not a problem of its own). `keep_errors`
    keeps each tap's absolute error (float32) from its worst window, for plots.
    """
    dtype = candidate.config.dtype
    best: dict[str, TapResult] = {}
    windows, timings = [], {"candidate_s": 0.0, "reference_s": 0.0, "metrics_s": 0.0}
    kept: dict[str, dict[str, list]] = {"candidate": {}, "reference": {}, "reference64": {}}
    errors: dict[str, np.ndarray] = {}
    for index in range(len(mel)):
        window = mel[index:index + 1]
        start = time.perf_counter()
        cand = candidate.run(window)
        cand_local = candidate.run_isolated(window, references.stage_inputs(window)) if isolate else None
        recomputed = candidate.run_isolated(window, _own_inputs(candidate, cand)) if consistency else None
        timings["candidate_s"] += time.perf_counter() - start
        start = time.perf_counter()
        truth, floor = references.chained(window)
        floor_local = references.isolated_floor(window) if isolate else None
        timings["reference_s"] += time.perf_counter() - start
        start = time.perf_counter()
        rows = []
        for tap in taps:
            budget = budget_for(tap.name, dtype)
            stats = (compare(cand[tap.name], truth[tap.name], floor[tap.name]) if tap.name in cand
                     else not_run(truth[tap.name].shape))
            local = compare(cand_local[tap.name], truth[tap.name], floor_local[tap.name]) if isolate else None
            ratio = _consistency(recomputed, cand, tap.name, stats) if consistency else None
            rows.append(TapResult(tap.name, tap.stage, stats, budget, judge(stats, budget), index,
                                  local, judge(local, budget) if local else None,
                                  ratio, judge_consistency(ratio, CONSISTENCY_BUDGET) if ratio is not None else None))
        if consistency:
            rows = blame_bad_inputs(rows, {s: stage_input(candidate.dims, s) for s in stage_names(candidate.dims)})
        timings["metrics_s"] += time.perf_counter() - start
        for row in rows:
            if row.name not in best or _worse(row.stats, best[row.name].stats):
                best[row.name] = row
                if keep_errors and row.stats.ran and row.stats.shape_ok:
                    errors[row.name] = np.abs(cand[row.name][0] - truth[row.name][0]).astype(np.float32)
        windows.append({"index": index, "first_divergence": first_divergence(rows, local=isolate),
                        "ln_post": _summary(rows, "encoder.ln_post")})
        if keep_arrays:
            for side, source in (("candidate", cand), ("reference", floor), ("reference64", truth)):
                for tap in taps:
                    kept[side].setdefault(tap.name, []).append(source[tap.name])
        log.info("window %d/%d compared", index + 1, len(mel))
    arrays = {side: {name: np.concatenate(parts) for name, parts in by_tap.items()}
              for side, by_tap in kept.items()} if keep_arrays else {}
    return Comparison([best[t.name] for t in taps], windows, isolate, timings, arrays, errors)


def _own_inputs(candidate: MaxRunner, captured: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    dims = candidate.dims
    names = {s: stage_input(dims, s) for s in stage_names(dims) if s != "conv_stem"}
    return {s: captured[name] for s, name in names.items() if name in captured}


def _consistency(recomputed: dict, captured: dict, name: str, stats: TapStats) -> float | None:
    """RMS gap between a captured tap and its recomputation, in units of the tap's noise floor."""
    if name not in recomputed or name not in captured:
        return None
    gap = rmse_between(recomputed[name], captured[name])
    floor = stats.noise_floor if math.isfinite(stats.noise_floor) and stats.noise_floor > 0 else 0.0
    if floor == 0.0:
        return 0.0 if gap == 0.0 else math.inf
    return gap / floor


def _worse(a: TapStats, b: TapStats) -> bool:
    def badness(s: TapStats) -> float:
        if not s.shape_ok or not s.finite or math.isnan(s.noise_floor_ratio):
            return math.inf
        return s.noise_floor_ratio
    return badness(a) > badness(b)


def _summary(rows: list[TapResult], name: str) -> dict | None:
    for row in rows:
        if row.name == name:
            return {"cosine": row.stats.as_dict()["cosine"], "rel_l2": row.stats.as_dict()["rel_l2"],
                    "verdict": row.verdict}
    return None
