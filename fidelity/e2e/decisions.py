"""What decided each token greedy decoding picks, and how far an encoder moved it.

openai-whisper's greedy decoding picks a token through its logit filters, in
`DecodingTask.logit_filters` order: SuppressBlank (blank and end of text at the first
sampled position), SuppressTokens (a fixed list), ApplyTimestampRules; then the argmax.
Given the context, which teacher forcing gives every side alike, every mask these filters
set is decided by the context alone except one rule of ApplyTimestampRules: when the total
probability of the allowed timestamp tokens (their logsumexp) is above the best allowed
text token's, every text token is suppressed. So two decisions depend on the logits, in
this order:

  timestamp_rule  logsumexp(allowed timestamp logits) - max(allowed text logits): above 0
                  the timestamps win. The logits decide it only where both groups have an
                  allowed token; elsewhere the context does.
  argmax          the gap between the top two tokens that survive every filter.

(A difference of logits is the same difference of log-probabilities.) A flip, a position
where a side's pick is not the reference's, is judged on the first of these decisions
that parted: the reference's margin on that quantity against the near-tie threshold of
that kind of quantity, which is the floor's largest movement of it over the clip times
sqrt(KL budget) (KL grows with the square of the feature error, these quantities with the
error itself, so a candidate within its KL budget may move them that much more than the
floor does). A flip the floor makes too at the same position is within noise whatever
its margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

TIMESTAMP_RULE, ARGMAX = "timestamp_rule", "argmax"
KINDS = (TIMESTAMP_RULE, ARGMAX)


@dataclass(frozen=True)
class Decisions:
    """One encoder's decisions at every target position of one window (teacher forced)."""

    top1: np.ndarray              # (n,) the token greedy decoding picks, after every filter
    timestamps_won: np.ndarray    # (n,) bool: the timestamp rule suppressed every text token
    timestamp_margin: np.ndarray  # (n,) float64 logsumexp(timestamps) - max(text); nan where the context decides


def decide(logits: torch.Tensor, filtered: torch.Tensor, allowed: torch.Tensor, timestamp_begin: int,
           timestamp_rule: bool) -> Decisions:
    """`logits`: the decoder's raw next-token logits (n, vocab); `filtered`: the same after openai-whisper's
    filters; `allowed`: what the context alone leaves allowed (`fidelity.e2e.teacher.Forcing.allowed`);
    `timestamp_rule`: whether the decode applied ApplyTimestampRules at all."""
    raw = logits.double()
    text, stamps = allowed[:, :timestamp_begin], allowed[:, timestamp_begin:]
    live = text.any(dim=1) & stamps.any(dim=1) & timestamp_rule
    mass = raw[:, timestamp_begin:].masked_fill(~stamps, -math.inf).logsumexp(dim=1)
    best_text = raw[:, :timestamp_begin].masked_fill(~text, -math.inf).amax(dim=1)
    margin = torch.where(live, mass - best_text, torch.full_like(mass, math.nan))
    suppressed = torch.isneginf(filtered[:, :timestamp_begin]).all(dim=1)
    return Decisions(filtered.argmax(dim=-1).numpy(), (live & suppressed).numpy(), margin.numpy())


def argmax_gap(filtered: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The reference's top two surviving tokens (n, 2) and the logit gap between them (inf where one survives)."""
    top2 = filtered.topk(2, dim=-1)
    values = top2.values.double()
    gap = values[:, 0] - values[:, 1]
    return top2.indices.numpy(), torch.where(torch.isfinite(gap), gap, torch.full_like(gap, math.inf)).numpy()


def movements(reference: Decisions, top2: np.ndarray, gap: np.ndarray, side: Decisions,
              side_logits: torch.Tensor) -> dict[str, np.ndarray]:
    """How far `side` moved each decisive quantity from the reference's value, per position (nan where the
    quantity is not the logits' to decide): the timestamp rule's margin, and the gap between the
    reference's top two surviving tokens (read in the side's raw logits)."""
    raw = side_logits.double().numpy()
    rows = np.arange(len(raw))
    side_gap = raw[rows, top2[:, 0]] - raw[rows, top2[:, 1]]
    with np.errstate(invalid="ignore"):
        argmax = np.where(np.isfinite(gap), np.abs(side_gap - gap), np.nan)
    return {TIMESTAMP_RULE: np.abs(side.timestamp_margin - reference.timestamp_margin), ARGMAX: argmax}


def floor_scales(moves: list[dict[str, np.ndarray]]) -> dict[str, float | None]:
    """Per kind of quantity, the floor's largest movement of it over the clip (None where it never decided)."""
    out = {}
    for kind in KINDS:
        values = np.concatenate([m[kind] for m in moves]) if moves else np.zeros(0)
        values = values[np.isfinite(values)]
        out[kind] = float(values.max()) if values.size else None
    return out


@dataclass(frozen=True)
class Flip:
    """One position where a side's pick is not the reference's, judged on the decision that parted."""

    index: int
    decided_by: str                   # TIMESTAMP_RULE or ARGMAX
    margin: float                     # the reference's margin on that quantity
    floor_movement: float | None      # the floor's movement of the same quantity there
    threshold: float | None           # the near-tie threshold of that kind (None: no floor to judge by)
    floor_flips_here: bool | None     # the floor's own pick is not the reference's here either
    near_tie: bool | None             # within noise; None when there is no floor to judge by


def judge_flips(reference: Decisions, gap: np.ndarray, side: Decisions, floor: Decisions | None,
                floor_moves: dict[str, np.ndarray] | None, thresholds: dict[str, float | None],
                is_floor: bool = False) -> list[Flip]:
    """Every flip of `side` against `reference` in one window. `floor`/`floor_moves`: the floor's decisions
    and movements there (None when it did not run); `is_floor`: `side` is the floor itself (its flips are
    judged on their margins alone)."""
    out = []
    for j in np.flatnonzero(side.top1 != reference.top1):
        switched = (not math.isnan(reference.timestamp_margin[j])
                    and bool(side.timestamps_won[j]) != bool(reference.timestamps_won[j]))
        kind = TIMESTAMP_RULE if switched else ARGMAX
        margin = abs(float(reference.timestamp_margin[j])) if switched else float(gap[j])
        movement = float(floor_moves[kind][j]) if floor_moves is not None else None
        threshold = thresholds.get(kind)
        also = None if floor is None or is_floor else bool(floor.top1[j] != reference.top1[j])
        near = None if threshold is None or floor is None else bool(also or margin < threshold)
        out.append(Flip(int(j), kind, margin, movement, threshold, also, near))
    return out
