"""The built-in MAX encoder as a `Candidate`: weights bound to compiled stage graphs.

`run` chains the stage graphs (or, with `capture="fused"`, runs one whole-encoder
graph with every tap an output); every stage input is patchable, so `run_patched`
runs each stage on the given input; `run_stage` runs one stage, which lets the
comparison flow walk the encoder stage by stage and drop arrays as it goes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable, Sequence

import numpy as np

from ...checkpoints import Checkpoint
from ...errors import FidelityError
from ...taps import CONV_STEM, Stage, stages
from ..base import Candidate, CandidateConfig
from ..max_engine import to_device
from .graph_ops import Numerics
from .stage_graphs import STAGE_KINDS, CompiledStage, MaxOptions, check_options
from .weights import WeightTransform, weight_registry
from .whole_graph import WholeEncoder

log = logging.getLogger(__name__)

Perturb = Callable[[str, np.ndarray], np.ndarray]


def options_for(config: CandidateConfig, numerics: Numerics | None = None) -> MaxOptions:
    """The built-in's options for a config's forms (attention, capture, attention weights)."""
    numerics = dataclasses.replace(numerics or Numerics(), attention=config.attention)
    return MaxOptions(numerics=numerics, attention_weights=config.attention_weights, capture=config.capture)


class BuiltinCandidate(Candidate):
    """The workbench's own MAX Graph encoder: one compiled graph per stage kind, every tap an output."""

    name = "max-builtin"

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig | None = None,
                 options: MaxOptions | None = None, transform: WeightTransform | None = None):
        self.config = config or CandidateConfig()
        self.options = options or MaxOptions()
        check_options(self.config, self.options)
        self.dims, self.dtype, self.device = checkpoint.dims, self.config.dtype, self.config.device
        self.stages = stages(self.dims)
        weights = dict(checkpoint.encoder_weights)
        if transform is not None:
            weights = transform(weights)
        first = {s.kind: s for s in reversed(self.stages)}
        self.compiled = {kind: CompiledStage(self.dims, first[kind], self.config, self.options)
                         for kind in STAGE_KINDS}
        if self.compiled["attn"].knobs is not None:  # a family graph adds a key bias: openai-whisper's is zero
            zero = np.zeros(self.dims.n_audio_state, np.float32)
            for stage in self.stages:
                if stage.kind == "attn":
                    weights.setdefault(f"{stage.prefix}attn.key.bias", zero)
        self.models = {}
        used: set[str] = set()
        for stage in self.stages:
            compiled = self.compiled[stage.kind]
            self.models[stage.name] = compiled.bind(
                weight_registry(compiled.weight_names, weights, stage.prefix, self.config))
            used.update(stage.prefix + name for name in compiled.weight_names)
        unused = sorted(set(weights) - used)
        del weights
        if unused:
            raise FidelityError(f"checkpoint weights the MAX graph does not use: {', '.join(unused[:5])}")
        self.fused = None
        if self.options.capture == "fused":
            self.fused = WholeEncoder(checkpoint, self.config, self.options, tuple(self.available_taps()),
                                      transform)
            self.name = "max-builtin-fused"

    @property
    def compile_seconds(self) -> float:
        fused = self.fused.compile_seconds if self.fused else 0.0
        return sum(c.compile_seconds for c in self.compiled.values()) + fused

    # -- the protocol ------------------------------------------------------------
    @property
    def convolutions_as_matmuls(self) -> bool:
        return True  # graph_ops.StageBuilder.conv1d: im2col and one matmul

    def available_taps(self) -> list[str]:
        return [t.name for s in self.stages for t in s.taps if self.options.attention_weights or not t.optional]

    def patchable_taps(self) -> list[str]:
        """Every stage input (the conv stem reads the mel)."""
        return [s.input for s in self.stages if s.input is not None]

    @property
    def runs_by_stage(self) -> bool:
        return self.fused is None

    def run(self, mel: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        """Chained run: every stage on the previous stage's output.

        If a stage's output cannot feed the next stage (a wrong stride, say), the chain
        stops there and the later taps are missing."""
        if self.fused is not None:
            wanted = set(taps)
            return {k: np.array(v) for k, v in self.fused(mel).items() if k in wanted}
        return self.run_patched(mel, {}, taps)

    def run_patched(self, mel: np.ndarray, patches: dict[str, np.ndarray],
                    taps: Sequence[str]) -> dict[str, np.ndarray]:
        wanted, out = set(taps), {}
        x = mel
        for stage in self.stages:
            if stage.input in patches:
                x = patches[stage.input]
            elif stage.kind != CONV_STEM and not self._fits(stage, x):
                break
            captured = self.run_stage(stage, x, wanted | {stage.output})
            x = captured[stage.output]
            out.update({k: v for k, v in captured.items() if k in wanted})
        return out

    def run_stage(self, stage: Stage, x: np.ndarray, taps: Iterable[str]) -> dict[str, np.ndarray]:
        """One stage on `x` (the mel for the conv stem): its taps among `taps`, and always its output."""
        outputs = self.models[stage.name].execute(self._to_device(x))
        wanted = set(taps) | {stage.output}
        names = [stage.prefix + local for local in self.compiled[stage.kind].local_names]
        return {name: np.array(out.to_numpy()) for name, out in zip(names, outputs) if name in wanted}

    def encode(self, mel: np.ndarray, perturb: Perturb | None = None) -> np.ndarray:
        """The encoder output alone (no taps copied out), for transcription.

        `perturb(tap, value)` may replace each stage's output before the next stage
        reads it (the sensitivity sweep adds noise this way).
        """
        x = self._to_device(mel)
        for stage in self.stages:
            x = self.models[stage.name].execute(x)[-1]
            if perturb is not None:
                x = self._to_device(perturb(stage.output, np.array(x.to_numpy())))
        return np.array(x if isinstance(x, np.ndarray) else x.to_numpy())

    def resident(self, mel: np.ndarray):
        """The stage graphs chained on device buffers (every tap of a stage stays on the device)."""
        x = self._to_device(mel)

        def run():
            y = x
            for stage in self.stages:
                y = self.models[stage.name].execute(y)[-1]
            return y
        return run

    def describe(self) -> dict:
        return {**super().describe(), "capture": self.options.capture, "attention": self.options.attention}

    # -- internals -----------------------------------------------------------------
    def _fits(self, stage: Stage, x: np.ndarray) -> bool:
        expected = (self.dims.n_audio_ctx, self.dims.n_audio_state)
        if tuple(x.shape[1:]) != expected:
            log.warning("chain stops before %s: it needs frames x width %s, the candidate made %s",
                        stage.name, expected, tuple(x.shape[1:]))
            return False
        return True

    def _to_device(self, array: np.ndarray):
        return to_device(array, self.config.device)


def build(checkpoint: Checkpoint, config: CandidateConfig) -> BuiltinCandidate:
    """The built-in encoder in the forms `config` asks for (`--candidate max`)."""
    return BuiltinCandidate(checkpoint, config, options_for(config))
