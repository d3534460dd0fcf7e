"""CTranslate2's Whisper encoder as a candidate: the real engine on the real tiny.en files.

Budgets from measurement on the shipped clip (2-core x86 CPU, ctranslate2 4.8.5, see the
module docstring of fidelity.candidates.ctranslate2): float32 sits at 1.01x the float32
noise floor (rel L2 1.6e-6); int8 (int8_float32) at rel L2 4.6e-2, cosine 0.9989. The
float32 budget (5x the floor, rel L2 1e-5) leaves room for the ~3x that torch's float32
error moves between CPUs with and without AVX-512.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fidelity import audio
from fidelity.candidates.base import ENCODER_OUTPUT, CandidateConfig
from fidelity.candidates.ctranslate2 import CTranslate2Candidate, build, build_int8
from fidelity.checkpoints import random_checkpoint
from fidelity.e2e import DropInEncoder, transcribe_with
from fidelity.errors import FidelityError
from fidelity.metrics import compare
from fidelity.reference.runner import TorchRunner


@pytest.fixture(scope="module")
def reference(tiny, speech_mel):
    """ln_post of openai-whisper in float64 (truth) and float32 (floor)."""
    return {dtype: TorchRunner(tiny, dtype).run(speech_mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT]
            for dtype in ("float64", "float32")}


@pytest.fixture(scope="module")
def float32(tiny):
    return build(tiny, CandidateConfig())


def test_float32_sits_at_the_noise_floor(float32, speech_mel, reference):
    out = float32.run(speech_mel, [ENCODER_OUTPUT, "encoder.blocks.0.resid_post"])
    assert list(out) == [ENCODER_OUTPUT]  # a black box: the encoder output only
    stats = compare(out[ENCODER_OUTPUT], reference["float64"], reference["float32"])
    assert stats.shape == (1, 1500, 384) and stats.finite
    assert stats.noise_floor_ratio < 5.0 and stats.rel_l2 < 1e-5, stats
    assert float32.available_taps() == [ENCODER_OUTPUT] and float32.patchable_taps() == []
    assert float32.floor_dtype == "float32"


def test_int8_is_further_away_than_float32(tiny, float32, speech_mel, reference):
    int8 = build_int8(tiny, CandidateConfig())
    assert int8.dtype == "int8" and int8.floor_dtype == "float32"
    assert "float32" in int8.describe()["floor_note"] and int8.describe()["compute_type"] == "int8_float32"
    near = compare(float32.encode(speech_mel), reference["float64"], reference["float32"])
    far = compare(int8.encode(speech_mel), reference["float64"], reference["float32"])
    assert far.rel_l2 > 100 * near.rel_l2 and far.noise_floor_ratio > 100, (near, far)
    assert 1e-3 < far.rel_l2 < 0.2 and far.cosine > 0.99, far  # quantised, still the same encoder


def test_float32_transcribes_like_openai_whisper(tiny, float32):
    model = tiny.whisper_model()
    samples = audio.load_audio(audio.DEFAULT_CLIP).samples
    ours = transcribe_with(model, samples, DropInEncoder(float32.encode), progress=False)
    theirs = transcribe_with(model, samples, model.encoder, progress=False)
    assert ours.text == theirs.text and "side by side" in ours.text


def test_other_weights_are_refused(tiny):
    with pytest.raises(FidelityError, match="encoder tensors differ from the CTranslate2 model"):
        build(random_checkpoint(tiny.dims, seed=3, name="tiny.en"), CandidateConfig())
    state = dict(tiny.state)
    state["encoder.blocks.1.mlp.0.bias"] = state["encoder.blocks.1.mlp.0.bias"].float() + 1e-2
    with pytest.raises(FidelityError, match=r"1 encoder tensors differ .*blocks\.1\.mlp\.0\.bias"):
        build(dataclasses.replace(tiny, state=state), CandidateConfig())


def test_float32_copy_of_the_same_weights_is_accepted(tiny, speech_mel):
    state = {key: value.to(torch.float32) for key, value in tiny.state.items()}
    candidate = build(dataclasses.replace(tiny, state=state), CandidateConfig())
    assert np.isfinite(candidate.encode(speech_mel)).all()


def test_refusals_are_one_line(tiny, small):
    with pytest.raises(FidelityError, match="no CTranslate2 model is known for 'small-random'"):
        build(small, CandidateConfig())
    with pytest.raises(FidelityError, match="runs dtype float32, int8, not 'bfloat16'"):
        build(tiny, CandidateConfig(dtype="bfloat16"))
    with pytest.raises(FidelityError, match="drop --dtype float16"):
        build_int8(tiny, CandidateConfig(dtype="float16"))
    with pytest.raises(FidelityError, match="not a CTranslate2 model folder"):
        CTranslate2Candidate(tiny, CandidateConfig(), model_dir=audio.DATA_DIR)


def test_other_head_count_is_refused(tiny):
    dims = dataclasses.replace(tiny.dims, n_audio_head=4)  # same shapes, other attention
    with pytest.raises(FidelityError, match=r"another encoder: n_audio_head 6 \(checkpoint 4\)"):
        build(dataclasses.replace(tiny, dims=dims), CandidateConfig())
