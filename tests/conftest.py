"""Shared fixtures: the real tiny.en, a small random-weight config, and their inputs.

The small config differs from tiny.en in every dimension (128 mels, 2 layers,
width 96, 3 heads, 64 frames) so nothing passes by assuming tiny.en's shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from whisper.model import ModelDimensions

from fidelity import audio
from fidelity.checkpoints import load_checkpoint, random_checkpoint

SMALL_DIMS = ModelDimensions(n_mels=128, n_audio_ctx=64, n_audio_state=96, n_audio_head=3, n_audio_layer=2,
                             n_vocab=64, n_text_ctx=16, n_text_state=96, n_text_head=3, n_text_layer=1)


@pytest.fixture(scope="session")
def tiny():
    return load_checkpoint("tiny.en")


@pytest.fixture(scope="session")
def speech_clip():
    return audio.load_audio(audio.DEFAULT_CLIP)


@pytest.fixture(scope="session")
def speech_mel(tiny, speech_clip):
    return audio.mel_windows(speech_clip, tiny.dims.n_mels)


@pytest.fixture(scope="session")
def small():
    return random_checkpoint(SMALL_DIMS, seed=0, name="small-random")


@pytest.fixture(scope="session")
def small_mel():
    rng = np.random.default_rng(1)
    frames = 2 * SMALL_DIMS.n_audio_ctx
    # log-mel values live in about [-1.5, 1.5] after openai-whisper's scaling
    return rng.uniform(-1.5, 1.5, size=(1, SMALL_DIMS.n_mels, frames)).astype(np.float32)
