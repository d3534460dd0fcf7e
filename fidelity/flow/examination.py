"""What an examination gives back: built once from a finished run, read by every caller, never changed."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ..e2e import E2EResult
from ..verdicts import TapResult, arithmetic_mode
from .document import report_document
from .request import Request
from .walk import Comparison


@dataclass(frozen=True)
class Setting:
    """Where the examination ran: model, audio, candidate and engines, as the report records them."""

    model: str
    dims: dict
    audio: dict               # source, seconds, windows, window_starts
    candidate: dict           # the candidate's own description
    fault: str | None
    floors: dict              # how the truth and each floor ran, in words
    versions: dict
    reference_platform: dict


@dataclass(frozen=True)
class ProbeEffect:
    """How far observing moved a port's output (probes off against every probe an output), judged
    against the floor: `floor_fraction` is its RMS over the floor's own RMS error at the encoder output."""

    tap: str
    max_abs: float
    rel_l2: float
    rmse: float
    floor_rmse: float
    material: bool            # moves the output by a material fraction of the floor

    @property
    def floor_fraction(self) -> float:
        return self.rmse / self.floor_rmse if self.floor_rmse > 0 else float("inf")


@dataclass(frozen=True)
class Examination:
    """A finished examination: the request, the setting, the per-tap comparison and what followed it."""

    request: Request
    setting: Setting
    comparison: Comparison
    probe_effect: ProbeEffect | None = None
    e2e: E2EResult | None = None
    timings: dict = field(default_factory=dict)

    # -- views (the comparison has the per-tap ones: first_stage, internal_differences, capture_problems) --
    @property
    def rows(self) -> tuple[TapResult, ...]:
        return self.comparison.rows

    def row(self, name: str) -> TapResult:
        return self.comparison.row(name)

    @property
    def first_divergence(self) -> str | None:
        return self.comparison.first_divergence

    @property
    def arithmetic(self) -> str | None:
        """The float32 arithmetic the candidate is judged in (`verdicts.arithmetic_mode`): tf32, ieee or None."""
        return arithmetic_mode(self.rows, self.request.strict_fp32)

    @property
    def failed(self) -> bool:
        """Whether the examination found a divergence (a command exits 1): a tap over budget, or transcripts
        that differ beyond noise when teacher-forced (not merely a changed greedy transcript)."""
        return bool(self.first_divergence) or (self.e2e is not None and self.e2e.failed)

    @functools.cached_property
    def document(self) -> dict:
        """The report.json document (`fidelity.flow.document`)."""
        return report_document(self)
