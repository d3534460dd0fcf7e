"""Compact pictures of where each tap's error sits, kept while the walk passes (for the HTML report).

For every judged tap, at its worst window: a histogram of |candidate - float64| over fixed
log-spaced bins, and a time x channel map of the error max-pooled to a bounded size. Memory
stays a few hundred KB per tap whatever the model's size (large-v3's full error arrays
would hold gigabytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..flow.walk import worse

EDGES = np.logspace(-16, 4, 201)   # |error| bins, shared by every histogram
MAX_FRAMES, MAX_CHANNELS = 400, 128


@dataclass(frozen=True)
class ErrorMap:
    """One tap's error at its worst window: `counts` over `EDGES`, and `heat` (frames x channels, pooled)."""

    tap: str
    window: int
    counts: np.ndarray
    heat: np.ndarray
    frames: int               # frames (rows) of the error before pooling
    channels: int


class ErrorMaps:
    """A walk observer (`fidelity.flow.walk.TapObserver`) keeping each tap's `ErrorMap`."""

    def __init__(self):
        self.maps: dict[str, ErrorMap] = {}
        self._stats = {}

    def observe(self, window: int, result, sides: dict[str, np.ndarray | None]) -> None:
        stats = result.stats
        candidate, truth = sides.get("candidate"), sides["reference64"]
        if candidate is None or not (stats.ran and stats.shape_ok and stats.finite):
            return
        if result.name in self._stats and not worse(stats, self._stats[result.name]):
            return
        error = np.abs(candidate[0].astype(np.float64) - truth[0]).astype(np.float32)
        self._stats[result.name] = stats
        oriented = _oriented(result.name, error)
        self.maps[result.name] = ErrorMap(result.name, window, np.histogram(error, bins=EDGES)[0],
                                          _pool(_pool(oriented, MAX_FRAMES, axis=0), MAX_CHANNELS, axis=1),
                                          *oriented.shape)


def _oriented(tap: str, error: np.ndarray) -> np.ndarray:
    """Frames x channels (attention weights: queries x keys, mean over heads)."""
    if error.ndim == 3:
        return error.mean(axis=0)
    return error.T if tap.startswith("encoder.conv") else error  # conv taps are channels x frames


def _pool(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Max over runs of consecutive entries along `axis`, so that at most `size` remain."""
    n = array.shape[axis]
    if n <= size:
        return array
    step = -(-n // size)
    pad = step * -(-n // step) - n
    padded = np.pad(np.moveaxis(array, axis, 0), [(0, pad)] + [(0, 0)] * (array.ndim - 1))
    pooled = padded.reshape(-1, step, *padded.shape[1:]).max(axis=1)
    return np.moveaxis(pooled, 0, axis)
