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
from .max_graph import STAGE_KINDS, CandidateConfig, block_prefix, compiled_stage, session_for, stage_kind

log = logging.getLogger(__name__)

WeightTransform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def weight_registry(names: list[str], weights: dict[str, np.ndarray], prefix: str, dtype: str) -> dict:
    """The weights a stage graph declares, taken strictly from `weights` under `prefix`."""
    registry = {}
    for name in names:
        key = prefix + name
        if key not in weights:
            raise FidelityError(f"the MAX graph needs weight {key}, which the checkpoint does not have")
        registry[name] = host_weight(weights[key], dtype)
    return registry


def host_weight(array: np.ndarray, dtype: str):
    """A contiguous host array in the graph's weight dtype (torch carries bfloat16)."""
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
        self.compiled = {kind: compiled_stage(self.dims, kind, self.config) for kind in STAGE_KINDS}
        self.models = {}
        used: set[str] = set()
        for stage in stage_names(self.dims):
            compiled = self.compiled[stage_kind(stage)]
            prefix = block_prefix(stage)
            self.models[stage] = compiled.bind(
                weight_registry(compiled.weight_names, weights, prefix, self.config.dtype))
            used.update(prefix + name for name in compiled.weight_names)
        unused = sorted(set(weights) - used)
        if unused:
            raise FidelityError(f"checkpoint weights the MAX graph does not use: {', '.join(unused[:5])}")
        _, self._device = session_for(self.config.device)

    @property
    def compile_seconds(self) -> float:
        return sum(c.compile_seconds for c in self.compiled.values())

    def run(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        """Chained run on `mel` (batch, n_mels, frames): every tap, as numpy float32."""
        taps: dict[str, np.ndarray] = {}
        x = self._to_device(mel)
        for stage in stage_names(self.dims):
            outputs = self.models[stage].execute(x)
            x = outputs[-1]
            taps.update(self._collect(stage, outputs))
        return taps

    def run_isolated(self, mel: np.ndarray, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each stage on the given input (stage name -> its input); the conv stem on `mel`."""
        taps: dict[str, np.ndarray] = {}
        for stage in stage_names(self.dims):
            source = mel if stage == "conv_stem" else inputs[stage]
            outputs = self.models[stage].execute(self._to_device(source))
            taps.update(self._collect(stage, outputs))
        return taps

    def _collect(self, stage: str, outputs) -> dict[str, np.ndarray]:
        names = self.compiled[stage_kind(stage)].tap_names
        prefix = block_prefix(stage)
        return {prefix + name: np.asarray(out.to_numpy()) for name, out in zip(names, outputs)}

    def _to_device(self, array: np.ndarray):
        array = np.ascontiguousarray(array, dtype=np.float32)
        if self.config.device == "cpu":
            return array
        return Buffer.from_numpy(array).to(self._device)
