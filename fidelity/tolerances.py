"""Error budgets, as data: how many times the reference's own noise floor a tap may show.

The floor of a tap is the error of openai-whisper run in the candidate's precision
against openai-whisper in float64. A candidate in float32 on the CPU sits at about
1-3x that floor; a budget of 10x leaves room for a different but sound order of
operations while still catching a changed epsilon or GELU form. Per-tap overrides
are globs over tap names, checked in order.
"""

from __future__ import annotations

import fnmatch

NOISE_FLOOR_BUDGET: dict[str, float] = {
    "float32": 10.0,
    "bfloat16": 10.0,
    "float16": 10.0,
}

# (tap glob, candidate dtype or "*", budget)
TAP_OVERRIDES: list[tuple[str, str, float]] = []

# Tap consistency: recomputing a stage from the candidate's own captured input must
# reproduce the captured taps to within this many noise floors. A faithful capture
# reproduces itself (0.0 exactly for the staged capture, on the CPU and on an H200);
# a whole-graph bfloat16 capture on an H200 put some taps 6-9 floors away from their
# own recomputation, which is a capture problem and not the port's numerics.
CONSISTENCY_BUDGET = 2.0


def budget_for(tap: str, dtype: str) -> float:
    """The noise-floor-ratio budget of `tap` for a candidate in `dtype`."""
    for pattern, for_dtype, budget in TAP_OVERRIDES:
        if fnmatch.fnmatchcase(tap, pattern) and for_dtype in ("*", dtype):
            return budget
    return NOISE_FLOOR_BUDGET[dtype]


# The CI gate: how much worse than the baseline a statistic may get before it is a
# regression. A statistic regresses when its badness exceeds
#   baseline badness * factor + slack
# where badness is the statistic turned into "bigger is worse".
# Only statistics of the candidate against float64 are compared with the baseline:
# they do not depend on PyTorch's float32 kernels, so they hold across machines (the
# committed baseline, recorded on a CPU without AVX-512, and a run on an AVX-512 CPU
# agree on every tap's rel_l2 to within 4%). The noise-floor ratio is left out on
# purpose: its denominator, PyTorch's own float32 error, moves by up to 6x with the
# kernel path (`python -m fidelity.floor_spread`: conv2 1.31e-7 with AVX-512 oneDNN,
# 7.89e-7 with AVX2), so the gate checks it against its absolute budget instead.
GATE_TOLERANCES: dict[str, dict[str, float]] = {
    "cosine": {"factor": 2.0, "slack": 1e-9},             # badness: 1 - cosine
    "rel_l2": {"factor": 1.5, "slack": 1e-7},
    "std_ratio": {"factor": 2.0, "slack": 1e-5},          # badness: |std_ratio - 1|
    "bias": {"factor": 2.0, "slack": 1e-6},               # badness: |bias|
}


def badness(statistic: str, value: float) -> float:
    """A statistic as a number where larger means further from the reference."""
    if statistic == "cosine":
        return 1.0 - value
    if statistic == "std_ratio":
        return abs(value - 1.0)
    if statistic == "bias":
        return abs(value)
    return value


# End to end, teacher forced (fidelity.e2e.teacher): the candidate's mean KL(float64 reference ||
# candidate) of the decoder's next-token distributions, as a multiple of the same KL of
# openai-whisper's encoder in the candidate's precision (the transcript-level noise floor).
# Measured on the 2-core CPU (AVX-512), tiny.en, float32, the built-in MAX candidate:
# speech_long.flac (368 tokens) 1.32 (p99 1.77; per window 0.92-2.17), speech_30s.flac (94
# tokens) 1.31; with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 1.18 and 0.66. In float32
# the float32 decoder's own rounding is a large part of both KLs, so the ratio stays near 1;
# a fault is far away (value_bias_dropped: 1.6e9 on speech_30s). KL grows with the square of
# the feature error: a budget of 4 is about 2x the floor's error, 3x the largest ratio seen.
KL_RATIO_BUDGET: dict[str, float] = {
    "float32": 4.0,
    "bfloat16": 4.0,
    "float16": 4.0,
}


# Below this mean next-token KL (nats per token) a candidate's transcript-level difference
# is immaterial whatever its ratio to the floor: in float32 both KLs are the float32
# decoder's own rounding (about 1e-11), and on a short clip with a few dozen tokens their
# ratio is a ratio of two rounding noises (a clean MAX candidate read 4-13x on some
# 1-3 s synthetic clips). 1e-8 is a thousand times that rounding and ten thousand times
# below bfloat16's floor (about 1e-4); the value_bias_dropped fault reads about 1e-2.
KL_NEGLIGIBLE = 1e-8


def kl_ratio_budget(dtype: str) -> float:
    """The teacher-forced KL-ratio budget of a candidate in `dtype`."""
    return KL_RATIO_BUDGET[dtype]
