"""Per-tap verdicts from statistics and budgets, the arithmetic each span runs in, and the first divergence."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Collection

from .metrics import FloorRatio, TapStats

OK, DIVERGED, NONFINITE, SHAPE, NOT_RUN = "ok", "diverged", "nonfinite", "shape_mismatch", "not_run"
IEEE, TF32 = "ieee", "tf32"  # a float32 span's arithmetic: IEEE float32, or TF32-class matmuls
INCONSISTENT = "inconsistent"  # a captured tap its own consumer does not reproduce: a capture problem
BAD_INPUT_CAPTURE = "bad_input"  # not reproduced, but recomputed from a captured input that is itself a problem


def judge(stats: TapStats, budget: float) -> str:
    """`ok` when the error is within `budget` times the noise floor."""
    if not stats.ran:
        return NOT_RUN
    if not stats.shape_ok:
        return SHAPE
    if not stats.finite:
        return NONFINITE
    ratio = stats.noise_floor_ratio
    if math.isnan(ratio) or ratio > budget:
        return DIVERGED
    return OK


@dataclass(frozen=True)
class TapResult:
    """One row of a report: a tap, its statistics, budget and verdict."""

    name: str
    stage: str
    stats: TapStats
    budget: float
    verdict: str
    window: int = 0
    local: TapStats | None = None      # isolation: the stage run on the reference's input
    local_verdict: str | None = None
    consistency: float | None = None   # recomputed-from-own-input vs captured, in noise floors
    consistency_verdict: str | None = None
    tf32: FloorRatio | None = None        # the error against the TF32-matmul floor (float32, when measured)
    local_tf32: FloorRatio | None = None
    arithmetic: str | None = None        # IEEE or TF32 (local when isolated); None: neither, or not classified

    def as_dict(self) -> dict:
        row = {"name": self.name, "stage": self.stage, **self.stats.as_dict(),
               "budget": self.budget, "verdict": self.verdict, "window": self.window}
        if self.local is not None:
            for key, value in self.local.as_dict().items():
                if key not in ("shape",):
                    row[f"local_{key}"] = value
            row["local_verdict"] = self.local_verdict
        for prefix, second in (("", self.tf32), ("local_", self.local_tf32)):
            if second is not None:
                row[f"{prefix}tf32_floor"] = _finite(second.floor)
                row[f"{prefix}tf32_floor_ratio"] = _finite(second.ratio)
        if self.tf32 is not None or self.local_tf32 is not None:
            row["arithmetic"] = self.arithmetic
        if self.consistency_verdict is not None:
            row["consistency_ratio"] = self.consistency if math.isfinite(self.consistency) else None
            row["consistency_verdict"] = self.consistency_verdict
        return row


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def judge_arithmetic(stats: TapStats, tf32: FloorRatio | None, budget: float, strict: bool) -> tuple[str, str | None]:
    """(verdict, arithmetic) of a float32 span measured against an IEEE and a TF32-matmul floor.

    Within budget of the IEEE floor: `ok`, IEEE. Over it but within budget of the TF32 floor: TF32-class,
    `ok` unless `strict` (IEEE float32 demanded). Over both: a divergence in neither arithmetic."""
    verdict = judge(stats, budget)
    if tf32 is None:
        return verdict, None
    if verdict == OK:
        return OK, IEEE
    if verdict == DIVERGED and math.isfinite(tf32.ratio) and tf32.ratio <= budget:
        return (DIVERGED if strict else OK), TF32
    return verdict, None


def arithmetic_mode(rows, strict: bool) -> str | None:
    """The arithmetic a float32 candidate is judged in: TF32 when some span runs TF32-class and IEEE is not
    demanded, IEEE when spans were measured against both floors otherwise; None when no TF32 floor ran."""
    if not any(r.tf32 is not None or r.local_tf32 is not None for r in rows):
        return None
    return TF32 if not strict and any(r.arithmetic == TF32 for r in rows) else IEEE


def arithmetic_summary(rows: list[TapResult], local: bool) -> dict | None:
    """Which spans run in which float32 arithmetic, and how far each is from its floors (None: not measured)."""
    measured = [r for r in rows if (r.local_tf32 if local else r.tf32) is not None]
    if not measured:
        return None
    out = {}
    for mode in (TF32, IEEE, None):
        part = [r for r in measured if r.arithmetic == mode]
        if not part:
            continue
        stats = [(r.local if local else r.stats) for r in part]
        second = [(r.local_tf32 if local else r.tf32) for r in part]
        out[mode or "neither"] = {
            "spans": len(part), "taps": [r.name for r in part],
            "worst_ieee_ratio": _finite(max(s.noise_floor_ratio for s in stats)),
            "worst_tf32_ratio": _finite(max(t.ratio for t in second)),
        }
    return out


def _verdict(row: TapResult, local: bool) -> str | None:
    return row.local_verdict if local else row.verdict


def internal_differences(rows: list[TapResult], outputs: dict[str, str], local: bool = False,
                         cut: Collection[str] = ()) -> list[dict]:
    """Stages whose output (`outputs`: stage -> its output tap) is within budget while internal taps are not.

    Stage boundaries are the contract: an internal tap may differ for a sound reason (heads
    relabelled consistently, another layout), so such a stage is a warning naming the taps,
    not a divergence. With `local`, taps in `cut` (whose value the isolated stage output never
    read: a patch at or after them fed the reference instead) are not excused by that output."""
    by_name = {row.name: row for row in rows}
    found = []
    for stage, output in outputs.items():
        if output not in by_name or _verdict(by_name[output], local) != OK:
            continue
        taps = [row.name for row in rows if row.stage == stage and row.name != output
                and _verdict(row, local) not in (None, OK) and not (local and row.name in cut)]
        if taps:
            found.append({"stage": stage, "output": output, "taps": taps})
    return found


def first_divergence(rows: list[TapResult], local: bool = False, outputs: dict[str, str] | None = None,
                     cut: Collection[str] = ()) -> str | None:
    """The first tap (in execution order) whose verdict fails; `local` uses isolated verdicts.

    With `outputs` (stage -> output tap), taps of a stage whose output is within budget are
    internal differences, not divergences (see `internal_differences` for `cut`)."""
    excused = {tap for found in internal_differences(rows, outputs or {}, local, cut) for tap in found["taps"]}
    for row in rows:
        verdict = _verdict(row, local)
        if verdict is not None and verdict != OK and row.name not in excused:
            return row.name
    return None


def judge_consistency(ratio: float, budget: float) -> str:
    """`ok` when recomputing a stage from its captured input reproduces the captured tap."""
    return OK if math.isfinite(ratio) and ratio <= budget else INCONSISTENT


def blame_bad_inputs(rows: list[TapResult], stage_inputs: dict[str, str | None]) -> list[TapResult]:
    """Relabel disagreements that a badly captured stage input explains.

    A stage recomputed from a wrongly captured input disagrees with its own
    (correctly) captured taps too; only the input is the capture problem. `rows`
    are in execution order; `stage_inputs` maps a stage to the tap it reads.
    """
    problems: set[str] = set()
    out = []
    for row in rows:
        if row.consistency_verdict == INCONSISTENT:
            if stage_inputs.get(row.stage) in problems:
                row = replace(row, consistency_verdict=BAD_INPUT_CAPTURE)
            else:
                problems.add(row.name)
        out.append(row)
    return out


def capture_problems(rows: list[TapResult]) -> list[str]:
    """Captured taps that their own recomputation does not reproduce (consumers of one excluded)."""
    return [row.name for row in rows if row.consistency_verdict == INCONSISTENT]
