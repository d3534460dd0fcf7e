"""The walk: a candidate and a plan -> per-tap statistics and verdicts, stage by stage.

`compare_candidate(candidate, references, mel, plan)` walks the encoder stage by
stage, window by window: at each stage it runs the reference (`fidelity.reference`:
float64 truth and the candidate's-precision floor) and, for a candidate that
`runs_by_stage`, the candidate, judges that stage's taps and drops their arrays,
keeping only what the next stage reads. A candidate that runs only as a whole is run
once per window and its taps are consumed stage by stage. What a caller wants to keep
of the arrays (dumps, error maps) it takes from them as they pass, as an observer.

Isolation works the same for every candidate: each of its patchable taps is
replaced by the float64 reference value (`run_patched`, or a stage run on the
reference's input), and the reference in the candidate's precision is patched at
the same taps, so each tap's local error is the error of the span that ends there.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ..candidates.base import Candidate, CapabilityError
from ..errors import CandidateCrash, FidelityError
from ..metrics import FloorRatio, TapStats, against_floor, compare, not_run, rmse_between
from ..reference.references import FLOOR, TF32_FLOOR, TRUTH, References
from ..taps import FRONT_END_TAP, Stage, front_end_stage, stages
from ..tolerances import CONSISTENCY_BUDGET, budget_for
from ..verdicts import (
    TapResult,
    blame_bad_inputs,
    capture_problems,
    first_divergence,
    internal_differences,
    judge_arithmetic,
    judge_consistency,
)

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Plan:
    """What to compare.

    `taps`: tap names to judge (execution order); `isolate`: also each tap's local error;
    `consistency`: recompute each span from the candidate's own captured input and flag
    captured taps it does not reproduce; `strict_fp32`: where a TF32-matmul floor is measured,
    a span over the IEEE float32 floor diverges even when it is within the TF32 one.
    """

    taps: tuple[str, ...]
    isolate: bool = False
    consistency: bool = False
    strict_fp32: bool = False


class TapObserver(Protocol):
    """Takes what it wants of each judged tap's arrays as the walk passes (dumps, error maps).

    `sides`: "candidate" (None when the candidate did not produce the tap), "reference" (openai-whisper
    in the floor's precision) and "reference64" (float64), each (1, *shape) for window `window`."""

    def observe(self, window: int, result: TapResult, sides: dict[str, np.ndarray | None]) -> None: ...


@dataclass(frozen=True)
class Comparison:
    """Per-tap results over all windows (each tap's worst window) and per-window summaries."""

    rows: tuple[TapResult, ...]
    windows: tuple[dict, ...]
    isolated: bool
    outputs: dict[str, str]  # stage -> its output tap
    timings: dict = field(default_factory=dict)  # candidate, reference, metrics: _s (wall), _cpu_s (CPU)
    cut: frozenset[str] = frozenset()  # isolation: internal taps the stage output did not read (patched after)

    def row(self, name: str) -> TapResult:
        return next(r for r in self.rows if r.name == name)

    @property
    def first_divergence(self) -> str | None:
        """With isolation, the first tap whose *local* error is over budget; else the first failing tap.
        Taps of a stage whose output is within budget (and read them) are internal differences instead."""
        return first_divergence(list(self.rows), self.isolated, self.outputs, self.cut)

    @property
    def first_divergence_chained(self) -> str | None:
        return first_divergence(list(self.rows), False, self.outputs)

    @property
    def first_stage(self) -> str | None:
        """The stage of the first divergence (what isolation localizes)."""
        first = self.first_divergence
        return self.row(first).stage if first else None

    @property
    def internal_differences(self) -> list[dict]:
        return internal_differences(list(self.rows), self.outputs, self.isolated, self.cut)

    @property
    def capture_problems(self) -> list[str]:
        return capture_problems(list(self.rows))


def check_plan(candidate: Candidate, plan: Plan) -> None:
    """Refuse, before any work, a plan the candidate cannot serve."""
    if plan.isolate and len(candidate.patchable_taps()) < 2:
        raise CapabilityError(f"--isolate needs a candidate with two or more patchable taps; {candidate.name} has "
                              f"{len(candidate.patchable_taps())} (add probes, see README 'Bring your own port')")
    offered = set(candidate.available_taps()) | ({FRONT_END_TAP} if candidate.has_front_end else set())
    if not set(plan.taps) & offered:
        raise CapabilityError(f"candidate {candidate.name} offers none of the selected taps; it has "
                              f"{', '.join(sorted(offered)[:6])}")


def compare_candidate(candidate: Candidate, references: References, mel: np.ndarray, plan: Plan,
                      samples: np.ndarray | None = None, observers: Sequence[TapObserver] = ()) -> Comparison:
    """Judge the planned taps of `candidate` on every window of `mel` (windows, n_mels, frames).

    A candidate with its own front end is run on the mel it computes from `samples`
    (16 kHz), compared with `mel` (openai-whisper's) at `frontend.mel`; the reference
    always reads `mel`. Each judged tap's arrays pass every observer before they are dropped.
    """
    check_plan(candidate, plan)
    if references.floor.dtype != candidate.floor_dtype:
        raise FidelityError(f"the noise floor runs in {references.floor.dtype}, candidate {candidate.name} is judged "
                            f"against {candidate.floor_dtype}: build References(checkpoint, candidate.floor_dtype)")
    dims = references.dims
    front = candidate.has_front_end
    if front and samples is None:
        raise FidelityError(f"candidate {candidate.name} has its own front end: give the audio samples")
    walk = ([front_end_stage(dims)] if front else []) + stages(dims)
    offered = set(candidate.available_taps()) | ({FRONT_END_TAP} if front else set())
    taps = [t for s in walk for t in s.taps if t.name in set(plan.taps) and t.name in offered]
    timings = {f"{part}{unit}": 0.0 for part in ("candidate", "reference", "metrics") for unit in ("_s", "_cpu_s")}
    cand_mel = call_candidate(candidate, "front_end", candidate.front_end, samples) if front else None
    truth_mel = references.truth.front_end(samples) if front else None
    best: dict[str, TapResult] = {}
    windows = []
    outputs = {s.name: s.output for s in walk}
    cut = _cut(walk, set(candidate.patchable_taps())) if plan.isolate else frozenset()
    for index in range(len(mel)):
        walker = _Window(candidate, references, plan, taps, timings, observers, index)
        own_mel = None
        if front:
            own_mel = cand_mel[index:index + 1] if index < len(cand_mel) else None
            walker.front_end(own_mel, truth_mel[index:index + 1], mel[index:index + 1])
        rows = walker.walk(mel[index:index + 1], own_mel)
        windows.append({"index": index, "first_divergence": first_divergence(rows, plan.isolate, outputs, cut),
                        "ln_post": _summary(rows, "encoder.ln_post")})
        for row in rows:
            if row.name not in best or worse(row.stats, best[row.name].stats):
                best[row.name] = row
        log.info("window %d/%d compared", index + 1, len(mel))
    return Comparison(tuple(best[t.name] for t in taps), tuple(windows), plan.isolate, outputs, timings, cut)


def _now() -> tuple[float, float]:
    """Wall seconds, and CPU seconds of every thread of this process (which a busy machine does not inflate)."""
    return time.perf_counter(), time.process_time()


def _cut(walk: list[Stage], patchable: set[str]) -> frozenset[str]:
    """Internal taps whose value the isolated stage output never reads, by data flow (a probed port patches
    every probe, the built-in only stage inputs, another candidate what it declares)."""
    return frozenset(name for stage in walk for name in stage.unread(patchable))


def call_candidate(candidate: Candidate, action: str, fn, *args):
    """Call into the candidate; what it raises (other than a refusal) is its crash, never a divergence."""
    try:
        return fn(*args)
    except FidelityError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the user's code is reported as its crash
        raise CandidateCrash(f"candidate {candidate.name} crashed in {action}") from exc


class _Window:
    """One window's walk through the stages: run, judge, drop."""

    def __init__(self, candidate: Candidate, references: References, plan: Plan, taps, timings: dict,
                 observers: Sequence[TapObserver], index: int):
        self.candidate, self.refs, self.plan, self.timings, self.observers, self.index = (
            candidate, references, plan, timings, observers, index)
        self.wanted = {t.name for t in taps}
        self.taps = taps
        self.patchable = set(candidate.patchable_taps()) if plan.isolate else set()
        self.front = candidate.has_front_end
        self.rows: list[TapResult] = []

    def front_end(self, own: np.ndarray | None, truth: np.ndarray, reference_mel: np.ndarray) -> None:
        """The candidate's own log-mel against openai-whisper's (float64 truth; its float32 mel as the floor)."""
        stage = front_end_stage(self.refs.dims)
        cand = {FRONT_END_TAP: own} if own is not None else {}
        floors = {FLOOR: {FRONT_END_TAP: reference_mel}}
        self._judge(stage, cand, {FRONT_END_TAP: truth}, floors, cand if self.plan.isolate else None,
                    floors if self.plan.isolate else None, None)

    def walk(self, mel: np.ndarray, own_mel: np.ndarray | None) -> list[TapResult]:
        if self.front and own_mel is not None and own_mel.shape != mel.shape:
            log.warning("the candidate's front end made a mel of shape %s, the encoder reads %s: its chain stops "
                        "there (isolation still runs it on openai-whisper's mel)", own_mel.shape[1:], mel.shape[1:])
        cand_mel = own_mel if self.front else mel
        if cand_mel is not None and cand_mel.shape != mel.shape:
            cand_mel = None  # a front end that broke the chain: later taps are not run
        key = hash(mel.tobytes())
        staged = self.candidate.runs_by_stage
        whole = None if staged else self._whole_runs(mel, cand_mel, key)
        sides = self.refs.floor_sides
        truth_x = mel
        floor_x = dict.fromkeys(sides, mel)
        floor_local_x = dict.fromkeys(sides, mel)
        cand_x, cand_local_x = cand_mel, mel  # isolation: the conv stem reads openai-whisper's mel
        for stage in stages(self.refs.dims):
            need = self._need(stage)
            start = _now()
            truth = self.refs.run_stage(TRUTH, stage, truth_x, need, (key, "chained"))
            floors = {side: self.refs.run_stage(side, stage, floor_x[side], need, (key, "chained"))
                      for side in sides}
            floor_locals = None
            if self.plan.isolate:
                inner = {p: truth[p] for p in stage.tap_names if p in self.patchable and p != stage.output}
                floor_locals = {side: self.refs.run_stage(side, stage, floor_local_x[side], need,
                                                          (key, "local", stage.input in self.patchable), inner)
                                for side in sides}
            self._spent("reference", start)
            start = _now()
            if staged:
                cand = self._stage(stage, cand_x, need, "run_stage")
                cand_local = self._stage(stage, cand_local_x, need, "run_stage (isolated)") \
                    if self.plan.isolate else None
                recomputed = self._stage(stage, cand_x, need, "run_stage (recompute)") \
                    if self.plan.consistency and cand_x is not None else None
            else:
                cand, cand_local, recomputed = (_take(part, stage) if part is not None else None for part in whole)
            self._spent("candidate", start)
            self._judge(stage, cand or {}, truth, floors, cand_local, floor_locals, recomputed)
            truth_x = truth[stage.output]
            floor_x = {side: floors[side][stage.output] for side in sides}
            cand_x = (cand or {}).get(stage.output)
            if self.plan.isolate:
                patched = stage.output in self.patchable
                floor_local_x = {side: truth_x if patched else floor_locals[side][stage.output] for side in sides}
                cand_local_x = truth_x if patched else (cand_local or {}).get(stage.output)
        if self.plan.consistency:
            self.rows = blame_bad_inputs(self.rows, {s.name: s.input for s in stages(self.refs.dims)})
        return self.rows

    def _spent(self, part: str, start: tuple[float, float]) -> None:
        """Add the wall and CPU seconds since `start` to `part` (candidate, reference or metrics)."""
        wall, cpu = _now()
        self.timings[f"{part}_s"] += wall - start[0]
        self.timings[f"{part}_cpu_s"] += cpu - start[1]

    def _need(self, stage: Stage) -> set[str]:
        """What each side computes at `stage`: the planned and patchable taps there, and its output."""
        return (self.wanted | self.patchable) & set(stage.tap_names) | {stage.output}

    def _stage(self, stage: Stage, x: np.ndarray | None, need: set[str], action: str) -> Arrays | None:
        """A stage run of a stage-running candidate; None when its chain broke before (no input)."""
        if x is None:
            return None
        if stage.input is not None and tuple(x.shape[1:]) != (self.refs.dims.n_audio_ctx, self.refs.dims.n_audio_state):
            log.warning("chain stops before %s: it needs frames x width %s, the candidate made %s", stage.name,
                        (self.refs.dims.n_audio_ctx, self.refs.dims.n_audio_state), tuple(x.shape[1:]))
            return None
        return call_candidate(self.candidate, action, self.candidate.run_stage, stage, x, sorted(need))

    def _whole_runs(self, mel: np.ndarray, cand_mel: np.ndarray, key) -> tuple:
        """(chained, isolated, recomputed) tap dicts of a candidate that runs only as a whole."""
        names = sorted(self.wanted | self.patchable | {s.output for s in stages(self.refs.dims)})
        start = _now()
        chained = (call_candidate(self.candidate, "run", self.candidate.run, cand_mel, names)
                   if cand_mel is not None else {})
        local = recomputed = None
        if self.plan.isolate:
            self._spent("candidate", start)
            start = _now()
            truth, x = {}, mel  # the float64 value of each patched tap: the stage runs the walk makes (a kept
            for stage in stages(self.refs.dims):  # reference run is found again there)
                run = self.refs.run_stage(TRUTH, stage, x, self._need(stage), (key, "chained"))
                x = run[stage.output]
                truth.update({k: v for k, v in run.items() if k in self.patchable})
            self._spent("reference", start)
            start = _now()
            local = call_candidate(self.candidate, "run_patched", self.candidate.run_patched, mel, truth, names)
        if self.plan.consistency and cand_mel is not None:
            patchable = set(self.candidate.patchable_taps())
            own = {k: v for k, v in chained.items() if k in patchable}
            recomputed = call_candidate(self.candidate, "run_patched", self.candidate.run_patched, cand_mel, own, names)
        self._spent("candidate", start)
        return chained, local, recomputed

    def _judge(self, stage: Stage, cand: Arrays, truth: Arrays, floors: dict[str, Arrays],
               cand_local: Arrays | None, floor_locals: dict[str, Arrays] | None, recomputed: Arrays | None) -> None:
        """Each planned tap of `stage`: its statistics against the floor (and, where measured, the TF32 floor),
        chained and isolated, its verdicts and arithmetic; then every observer sees its arrays."""
        start = _now()
        dtype, strict = self.candidate.floor_dtype, self.plan.strict_fp32
        names = [tap.name for tap in stage.taps if tap.name in self.wanted]
        isolated = cand_local is not None and floor_locals is not None
        pool = _statistics_pool()  # each tap's statistics, chained and isolated, side by side (numpy frees the GIL)
        chained = {name: pool.submit(_judged, cand, truth, floors, name) for name in names}
        locals_ = {name: pool.submit(_judged, cand_local, truth, floor_locals, name) for name in names} \
            if isolated else {}
        for name in names:
            budget = budget_for(name, dtype)
            stats, tf32 = chained[name].result()
            verdict, arithmetic = judge_arithmetic(stats, tf32, budget, strict)
            local = local_tf32 = local_verdict = None
            if isolated:
                local, local_tf32 = locals_[name].result()
                local_verdict, arithmetic = judge_arithmetic(local, local_tf32, budget, strict)
            ratio = _consistency(recomputed, cand, name, stats) if recomputed is not None else None
            result = TapResult(name, stage.name, stats, budget, verdict, self.index, local, local_verdict, ratio,
                               judge_consistency(ratio, CONSISTENCY_BUDGET) if ratio is not None else None,
                               tf32, local_tf32, arithmetic)
            self.rows.append(result)
            for observer in self.observers:
                observer.observe(self.index, result, {"candidate": cand.get(name), "reference": floors[FLOOR][name],
                                                      "reference64": truth[name]})
        self._spent("metrics", start)


@functools.cache
def _statistics_pool() -> ThreadPoolExecutor:
    """Threads for the statistics: as many as the CPUs this process is given (Ray sets OMP_NUM_THREADS)."""
    return ThreadPoolExecutor(int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1,
                              thread_name_prefix="fidelity-stats")


def _judged(cand: Arrays, truth: Arrays, floors: dict[str, Arrays], name: str) -> tuple[TapStats, FloorRatio | None]:
    """A tap's statistics against the floor, and its error against the TF32 floor where that is measured."""
    if name not in cand:
        return not_run(truth[name].shape), None
    stats = compare(cand[name], truth[name], floors[FLOOR][name])
    tf32 = against_floor(stats, floors[TF32_FLOOR][name], truth[name]) if TF32_FLOOR in floors else None
    return stats, tf32


def _take(arrays: Arrays, stage: Stage) -> Arrays:
    """A stage's taps, removed from a whole run's results (so they are freed once judged)."""
    return {name: arrays.pop(name) for name in stage.tap_names if name in arrays}


def _consistency(recomputed: Arrays, captured: Arrays, name: str, stats: TapStats) -> float | None:
    """RMS gap between a captured tap and its recomputation, in units of the tap's noise floor."""
    if name not in recomputed or name not in captured or recomputed[name].shape != captured[name].shape:
        return None
    gap = rmse_between(recomputed[name], captured[name])
    floor = stats.noise_floor if math.isfinite(stats.noise_floor) and stats.noise_floor > 0 else 0.0
    if floor == 0.0:
        return 0.0 if gap == 0.0 else math.inf
    return gap / floor


def worse(a: TapStats, b: TapStats) -> bool:
    """Whether `a` is further from the reference than `b`, in noise floors (a failed tap is worst)."""
    def badness(s: TapStats) -> float:
        if not s.ran or not s.shape_ok or not s.finite or math.isnan(s.noise_floor_ratio):
            return math.inf
        return s.noise_floor_ratio
    return badness(a) > badness(b)


def _summary(rows: list[TapResult], name: str) -> dict | None:
    for row in rows:
        if row.name == name:
            return {"cosine": row.stats.as_dict()["cosine"], "rel_l2": row.stats.as_dict()["rel_l2"],
                    "verdict": row.verdict}
    return None
