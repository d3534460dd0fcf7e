"""The fault catalogue's proof: each fault examined with isolation, and whether the stage named is the right one."""

from __future__ import annotations

import time

from ..audio import Clip
from ..flow.examine import Examiner
from ..flow.request import Request
from ..reference.references import References
from . import Fault


def localize(checkpoint, references: References, clip: Clip, fault: Fault | None, device: str = "cpu",
             dtype: str = "float32") -> dict:
    """Examine the built-in candidate (with `fault`, or clean) with isolation: the stage named, how far ln_post moved.

    `references` are shared by every fault (one set of reference runs for the catalogue)."""
    dims = checkpoint.dims
    start = time.perf_counter()
    request = Request(model=checkpoint, audio=clip, candidate=f"max:{fault.name}" if fault else "max",
                      isolate=True, device=device, dtype=dtype, probe_effect=False)
    comparison = Examiner(request, references).examine().comparison
    stage = comparison.first_stage
    expected = fault.expected(dims) if fault else None
    internal = [found["stage"] for found in comparison.internal_differences]
    post = comparison.row("encoder.ln_post")
    if fault is not None and fault.internal and stage is None and internal:
        # A key bias shifts every key's logit by the same q.b for a query, which the softmax cancels:
        # the stage output is sound, and the workbench names the stage as an internal difference.
        stage, how = internal[0], "internal difference"
    else:
        how = "divergence" if stage else None
    return {
        "fault": fault.name if fault else "clean",
        "description": fault.description if fault else "the clean candidate",
        "expected": expected,
        "localized": stage,
        "how": how,
        "internal_differences": internal,
        "first_tap": comparison.first_divergence,
        "first_tap_chained": comparison.first_divergence_chained,
        "correct": stage == expected,
        "ln_post_cosine": post.stats.as_dict()["cosine"],
        "ln_post_rel_l2": post.stats.as_dict()["rel_l2"],
        "ln_post_verdict": post.verdict,
        "seconds": round(time.perf_counter() - start, 2),
    }
