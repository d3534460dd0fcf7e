"""Per-tap verdicts from statistics and budgets, and the first divergence."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .metrics import TapStats

OK, DIVERGED, NONFINITE, SHAPE, NOT_RUN = "ok", "diverged", "nonfinite", "shape_mismatch", "not_run"
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

    def as_dict(self) -> dict:
        row = {"name": self.name, "stage": self.stage, **self.stats.as_dict(),
               "budget": self.budget, "verdict": self.verdict, "window": self.window}
        if self.local is not None:
            for key, value in self.local.as_dict().items():
                if key not in ("shape",):
                    row[f"local_{key}"] = value
            row["local_verdict"] = self.local_verdict
        if self.consistency_verdict is not None:
            row["consistency_ratio"] = self.consistency if math.isfinite(self.consistency) else None
            row["consistency_verdict"] = self.consistency_verdict
        return row


def first_divergence(rows: list[TapResult], local: bool = False) -> str | None:
    """The first tap (in execution order) whose verdict fails; `local` uses isolated verdicts."""
    for row in rows:
        verdict = row.local_verdict if local else row.verdict
        if verdict is not None and verdict != OK:
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
