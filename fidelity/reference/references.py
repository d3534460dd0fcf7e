"""openai-whisper in float64 (the truth) and in the candidate's precision (the noise floor), stage by stage."""

from __future__ import annotations

import numpy as np

from ..checkpoints import Checkpoint
from ..taps import Stage
from .runner import TorchRunner

Arrays = dict[str, np.ndarray]


class References:
    """openai-whisper in float64 and in the candidate's precision.

    `cache_bytes` > 0 keeps reference results per (window, stage, patches) up to that many
    bytes, for comparing several candidates (the fault catalogue) against one set of runs."""

    def __init__(self, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu", tf32: bool = False,
                 cache_bytes: int = 0):
        self.dims = checkpoint.dims
        self.truth = TorchRunner(checkpoint, "float64", "cpu")
        self.floor = TorchRunner(checkpoint, dtype, device, tf32=tf32)
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple, Arrays] = {}
        self._cached = 0

    def run_stage(self, side: str, stage: Stage, x: np.ndarray, taps: set[str], key: tuple,
                  patches: Arrays | None = None) -> Arrays:
        """`side` ('truth' or 'floor') run on one stage; `key` names the input (for the cache)."""
        runner = self.truth if side == "truth" else self.floor
        cache_key = (side, stage.name, key, tuple(sorted(taps)), tuple(sorted(patches or {})))
        if cache_key in self._cache:
            return self._cache[cache_key]
        out = runner.run_stage(stage, x, taps, patches)
        size = sum(a.nbytes for a in out.values())
        if self._cached + size <= self.cache_bytes:
            self._cache[cache_key] = out
            self._cached += size
        return out
