"""Run the MAX candidate: bind weights to the compiled stages, execute chained or isolated."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from max.driver import Buffer

from ..checkpoints import Checkpoint
from ..errors import FidelityError
from ..taps import stage_names
from .max_graph import STAGE_KINDS, CandidateConfig, CompiledStage, block_prefix, session_for, stage_kind, to_device

log = logging.getLogger(__name__)

WeightTransform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def weight_registry(names: list[str], weights: dict[str, np.ndarray], prefix: str, config: CandidateConfig) -> dict:
    """The weights a graph declares, taken strictly from `weights` under `prefix`, copied to its device.

    MAX owns the copies, so no host array's lifetime matters once they have run."""
    registry, sources = {}, []
    device = session_for(config.device)[1]
    for name in names:
        key = prefix + name
        if key not in weights:
            raise FidelityError(f"the MAX graph needs weight {key}, which the checkpoint does not have")
        source = host_array(weights[key], config.dtype)
        sources.append(source)  # alive until the copies below have run (they may be queued)
        registry[name] = Buffer.from_dlpack(source).copy(device)
    device.synchronize()
    return registry


def host_array(array: np.ndarray, dtype: str):
    """A contiguous host array in the graph's weight dtype (torch carries bfloat16, numpy has none)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch.bfloat16).contiguous()
    return np.ascontiguousarray(array, dtype=np.float16 if dtype == "float16" else np.float32)


class MaxRunner:
    """The MAX Graph encoder, one compiled graph per stage kind, every tap an output."""

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig | None = None,
                 transform: WeightTransform | None = None):
        self.config = config or CandidateConfig()
        self.dims = checkpoint.dims
        weights = dict(checkpoint.encoder_weights)
        if transform is not None:
            weights = transform(weights)
        self.compiled = {kind: CompiledStage(self.dims, kind, self.config) for kind in STAGE_KINDS}
        self.models = {}
        used: set[str] = set()
        for stage in stage_names(self.dims):
            compiled = self.compiled[stage_kind(stage)]
            prefix = block_prefix(stage)
            self.models[stage] = compiled.bind(
                weight_registry(compiled.weight_names, weights, prefix, self.config))
            used.update(prefix + name for name in compiled.weight_names)
        unused = sorted(set(weights) - used)
        if unused:
            raise FidelityError(f"checkpoint weights the MAX graph does not use: {', '.join(unused[:5])}")

    @property
    def compile_seconds(self) -> float:
        return sum(c.compile_seconds for c in self.compiled.values())

    def run(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        """Chained run on `mel` (batch, n_mels, frames): every tap, as numpy float32.

        If a stage's output cannot feed the next stage (a wrong stride, say), the chain
        stops there and the later taps are missing.
        """
        taps: dict[str, np.ndarray] = {}
        x = self._to_device(mel)
        expected = (self.dims.n_audio_ctx, self.dims.n_audio_state)
        for stage in stage_names(self.dims):
            if stage != "conv_stem" and tuple(x.shape[1:]) != expected:
                log.warning("chain stops before %s: it needs frames x width %s, the candidate made %s",
                            stage, expected, tuple(x.shape[1:]))
                break
            outputs = self.models[stage].execute(x)
            x = outputs[-1]
            taps.update(self._collect(stage, outputs))
        return taps

    def encode(self, mel: np.ndarray, perturb: Callable[[str, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """The encoder output alone (no taps copied out), for transcription.

        `perturb(tap, value)` may replace each stage's output before the next stage
        reads it (the sensitivity sweep adds noise this way).
        """
        x = self._to_device(mel)
        for stage in stage_names(self.dims):
            x = self.models[stage].execute(x)[-1]
            if perturb is not None:
                name = block_prefix(stage) + self.compiled[stage_kind(stage)].tap_names[-1]
                x = self._to_device(perturb(name, np.array(x.to_numpy())))
        return np.array(x if isinstance(x, np.ndarray) else x.to_numpy())

    def run_isolated(self, mel: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each stage on the given input (stage name -> its input); the conv stem on `mel`.

        Stages missing from `inputs` are skipped."""
        taps: dict[str, np.ndarray] = {}
        for stage in stage_names(self.dims):
            if stage != "conv_stem" and stage not in inputs:
                continue
            source = mel if stage == "conv_stem" else inputs[stage]
            outputs = self.models[stage].execute(self._to_device(source))
            taps.update(self._collect(stage, outputs))
        return taps

    def _collect(self, stage: str, outputs) -> dict[str, np.ndarray]:
        names = self.compiled[stage_kind(stage)].tap_names
        prefix = block_prefix(stage)
        return {prefix + name: np.array(out.to_numpy()) for name, out in zip(names, outputs)}

    def _to_device(self, array: np.ndarray):
        return to_device(array, self.config.device)
