"""openai-whisper in float64 (the truth) and in the candidate's precision (the noise floors), stage by stage."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..checkpoints import Checkpoint
from ..taps import Stage
from .arithmetic import IEEE, TF32, describe
from .runner import TorchRunner
from .store import ReferenceStore, array_digest

Arrays = dict[str, np.ndarray]

TRUTH, FLOOR, TF32_FLOOR = "truth", "floor", "tf32_floor"


class References:
    """openai-whisper in float64 (the truth) and in the candidate's precision (the floor).

    `tf32_reference`: the floor's matmuls and convolutions in TF32 (`compare --tf32 on`).
    `tf32_floor`: also a float32 floor whose matmuls run TF32-class (`fidelity.reference.arithmetic`),
    its convolutions too with `tf32_convolutions`, so each span's arithmetic can be named.
    `cache_bytes` > 0 keeps reference results per (window, stage, patches) up to that many
    bytes, for comparing several candidates (the fault catalogue) against one set of runs.
    `store` keeps every stage run on disk, keyed by content (`fidelity.reference.store`): a clip's
    truth and floors are computed once across reruns, configurations and resumed sweeps."""

    def __init__(self, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu",
                 tf32_reference: bool = False, cache_bytes: int = 0, tf32_floor: bool = False,
                 tf32_convolutions: bool = False, store: ReferenceStore | None = None):
        self.dims = checkpoint.dims
        self.checkpoint = checkpoint
        self.store = store
        self.runners = {TRUTH: TorchRunner(checkpoint, "float64", "cpu"),
                        FLOOR: TorchRunner(checkpoint, dtype, device, TF32 if tf32_reference else IEEE,
                                           tf32_convolutions=tf32_reference)}
        if tf32_floor:
            self.runners[TF32_FLOOR] = TorchRunner(checkpoint, dtype, device, TF32, tf32_convolutions)
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple, Arrays] = {}
        self._cached = 0

    @property
    def truth(self) -> TorchRunner:
        return self.runners[TRUTH]

    @property
    def floor(self) -> TorchRunner:
        return self.runners[FLOOR]

    @property
    def floor_sides(self) -> tuple[str, ...]:
        """The floors measured: the floor verdicts are judged against, then the TF32 floor if measured."""
        return tuple(side for side in self.runners if side != TRUTH)

    def describe(self) -> dict[str, str]:
        """How each side runs, in words (for reports)."""
        out = {}
        for side, runner in self.runners.items():
            device = "gpu" if runner.device.type == "cuda" else "cpu"
            how = describe(runner.arithmetic, device, runner.tf32_convolutions) if runner.dtype == "float32" else ""
            out[side] = f"openai-whisper {runner.dtype} on {device}" + (f", {how}" if how else "")
        return out

    def run_stage(self, side: str, stage: Stage, x: np.ndarray, taps: set[str], key: tuple,
                  patches: Arrays | None = None) -> Arrays:
        """`side` (TRUTH, FLOOR or TF32_FLOOR) run on one stage; `key` names the input (for the cache)."""
        cache_key = (side, stage.name, key, tuple(sorted(taps)), tuple(sorted(patches or {})))
        if cache_key in self._cache:
            return self._cache[cache_key]
        stored = self._stored_key(side, stage, x, taps, patches) if self.store is not None else None
        out = self.store.get(stored) if stored else None
        if out is None:
            out = self.runners[side].run_stage(stage, x, taps, patches)
            if stored:
                self.store.put(stored, out)
        size = sum(a.nbytes for a in out.values())
        if self._cached + size <= self.cache_bytes:
            self._cache[cache_key] = out
            self._cached += size
        return out

    def _stored_key(self, side: str, stage: Stage, x: np.ndarray, taps: set[str], patches: Arrays | None) -> str:
        """The content key of one stage run: weights, how the side runs, the stage, the taps, input and patches."""
        wanted = sorted(t for t in stage.tap_names if t in set(taps))  # what the run returns, besides the output
        material = {"model": self.checkpoint.encoder_digest, "runner": self.runners[side].identity(),
                    "stage": stage.name, "taps": wanted, "patches": sorted(patches or {})}
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode())
        array_digest(digest, x)
        for name in sorted(patches or {}):
            array_digest(digest, np.asarray(patches[name]))
        return digest.hexdigest()
