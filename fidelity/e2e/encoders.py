"""The encoders the end-to-end check puts under openai-whisper's decoder, as plain encode functions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..checkpoints import Checkpoint
from ..reference.runner import TorchRunner

Encode = Callable[[np.ndarray], np.ndarray]  # mel (batch, n_mels, frames) float32 -> features (batch, ctx, width)


@dataclass(frozen=True)
class FloorEncoder:
    """openai-whisper's encoder in the candidate's precision and arithmetic, on the candidate's device:
    the end-to-end noise floor. `label` says what it is in the reports (e.g. "openai-whisper encoder,
    bfloat16 on gpu, TF32 off")."""

    encode: Encode
    label: str


def torch_encoder(checkpoint: Checkpoint, dtype: str, device: str) -> Encode:
    """openai-whisper's `AudioEncoder` in `dtype` on `device` (TF32 off), as an encode function."""
    return TorchRunner(checkpoint, dtype, device).encode


def default_floor(checkpoint: Checkpoint, dtype: str, device: str) -> FloorEncoder:
    """The floor when the caller gives none: openai-whisper's encoder in `dtype` on `device`, IEEE matmuls."""
    return FloorEncoder(torch_encoder(checkpoint, dtype, device),
                        f"openai-whisper encoder, {dtype} on {device}, TF32 off")


def memoized(encode: Encode) -> Encode:
    """`encode` that remembers its output per distinct mel (transcriptions, teacher forcing and the
    floor-noise band visit the same windows); the output keeps the encoder's own dtype."""
    cache: dict[bytes, np.ndarray] = {}

    def cached(mel: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(mel, dtype=np.float32).tobytes()).digest()
        if key not in cache:
            cache[key] = np.asarray(encode(mel))
        return cache[key]

    return cached
