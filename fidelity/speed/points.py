"""Encoders timed beside the candidates, each seen as a black-box candidate (the encoder output only),
so they are examined by the same flow as any port:

  TorchEncoder  openai-whisper's `AudioEncoder` as its users run it, eagerly or under torch.compile
  WholeGraph    the built-in MAX encoder compiled as one graph, the encoder output its only output
                (its fast path; the built-in candidate itself chains its stage graphs)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..candidates.base import ENCODER_OUTPUT, Candidate, check_batch
from ..candidates.max_builtin import BuiltinCandidate
from ..candidates.max_builtin.whole_graph import WholeEncoder
from ..checkpoints import Checkpoint
from ..reference.runner import TorchRunner


class _EncoderOnly(Candidate):
    """A candidate whose only tap is the encoder output, computed by `encode`."""

    def available_taps(self) -> list[str]:
        return [ENCODER_OUTPUT]

    def run(self, mel: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        check_batch(mel, self.dims)
        return {ENCODER_OUTPUT: self.encode(mel)} if ENCODER_OUTPUT in taps else {}


class TorchEncoder(_EncoderOnly):
    """openai-whisper's `AudioEncoder` with its float32 parameters and the input in `dtype` (openai-whisper's own
    convention), torch's default math settings, eager or under `torch.compile` (`reduce-overhead` on the GPU)."""

    def __init__(self, checkpoint: Checkpoint, dtype: str, device: str, compiled: bool = False):
        runner = TorchRunner(checkpoint, dtype, device)  # the modules, sharing the checkpoint's tensors
        self.dims, self.dtype, self.device = checkpoint.dims, dtype, device
        self.name = "torch-compile" if compiled else "torch-eager"
        self._kind, self._where = runner.torch_dtype, runner.device
        self.module = (torch.compile(runner.encoder, mode="reduce-overhead" if device == "gpu" else "default")
                       if compiled else runner.encoder)

    @property
    def convolutions_as_matmuls(self) -> bool:
        """On a GPU torch's default runs cuDNN convolutions in TF32 (`torch.backends.cudnn.allow_tf32`)."""
        return self.device == "gpu" and torch.backends.cudnn.allow_tf32

    def encode(self, mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(self._input(mel)).float().cpu().numpy()

    def resident(self, mel: np.ndarray):
        x = self._input(mel)

        def run():
            with torch.no_grad():
                return self.module(x)
        return run

    def _input(self, mel: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)).to(self._where, self._kind)

    def describe(self) -> dict:
        return {**super().describe(), "engine": f"torch {torch.__version__}",
                "mode": "torch.compile" if self.name == "torch-compile" else "eager"}


class WholeGraph(_EncoderOnly):
    """The built-in candidate's encoder (its numerics, precision, attention) as one MAX graph."""

    def __init__(self, checkpoint: Checkpoint, builtin: BuiltinCandidate):
        self.dims, self.dtype, self.device = builtin.dims, builtin.dtype, builtin.device
        self.name = f"{builtin.name}-whole-graph"
        self.options = builtin.options
        self.encoder = WholeEncoder(checkpoint, builtin.config, builtin.options)

    @property
    def compile_seconds(self) -> float:
        return self.encoder.compile_seconds

    def encode(self, mel: np.ndarray) -> np.ndarray:
        check_batch(mel, self.dims)
        return np.array(self.encoder.execute(mel)[0].to_numpy())

    def resident(self, mel: np.ndarray):
        check_batch(mel, self.dims)
        x = self.encoder.to_device(mel)
        return lambda: self.encoder.execute(x)

    def describe(self) -> dict:
        return {**super().describe(), "attention": self.options.attention, "graph": "the whole encoder, one graph"}
