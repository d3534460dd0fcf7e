"""Per-tap verdicts from statistics and budgets, and the first divergence."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .metrics import TapStats

OK, DIVERGED, NONFINITE, SHAPE = "ok", "diverged", "nonfinite", "shape_mismatch"


def judge(stats: TapStats, budget: float) -> str:
    """`ok` when the error is within `budget` times the noise floor."""
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

    def as_dict(self) -> dict:
        row = {"name": self.name, "stage": self.stage, **self.stats.as_dict(),
               "budget": self.budget, "verdict": self.verdict, "window": self.window}
        if self.local is not None:
            for key, value in self.local.as_dict().items():
                if key not in ("shape",):
                    row[f"local_{key}"] = value
            row["local_verdict"] = self.local_verdict
        return row


def first_divergence(rows: list[TapResult], local: bool = False) -> str | None:
    """The first tap (in execution order) whose verdict fails; `local` uses isolated verdicts."""
    for row in rows:
        verdict = row.local_verdict if local else row.verdict
        if verdict is not None and verdict != OK:
            return row.name
    return None
