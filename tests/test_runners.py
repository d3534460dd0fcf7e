"""The reference and the built-in candidate on a small random-weight config: real openai-whisper
modules, real MAX graphs, through the candidate protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from whisper.model import disable_sdpa

from fidelity.candidates.base import CandidateConfig
from fidelity.candidates.max_builtin import BuiltinCandidate, MaxOptions
from fidelity.errors import FidelityError
from fidelity.flow.walk import Plan, compare_candidate
from fidelity.reference.references import References
from fidelity.reference.runner import TorchRunner
from fidelity.taps import encoder_taps, select_taps, stages


@pytest.fixture(scope="module")
def small_candidate(small):
    return BuiltinCandidate(small, CandidateConfig())


def _plan(taps, **kwargs):
    return Plan(tuple(t.name for t in taps), **kwargs)


def _names(dims, optional=False):
    return [t.name for t in encoder_taps(dims) if optional or not t.optional]


def test_hooks_capture_what_the_modules_return(small, small_mel):
    runner = TorchRunner(small, "float32")
    taps = runner.run(small_mel, _names(small.dims, optional=True))
    with torch.no_grad(), disable_sdpa():  # the tracer runs whisper's explicit attention path
        out = runner.encoder(torch.from_numpy(small_mel)).numpy()
    np.testing.assert_array_equal(taps["encoder.ln_post"], out)
    assert set(taps) == set(_names(small.dims, optional=True))
    for module in runner.encoder.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    weights = taps["encoder.blocks.1.attn.weights"]
    assert weights.shape == (1, small.dims.n_audio_head, small.dims.n_audio_ctx, small.dims.n_audio_ctx)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    block0 = runner.encoder.blocks[0]
    with torch.no_grad(), disable_sdpa():
        again = block0(torch.from_numpy(taps["encoder.positional_embedding"])).numpy()
    np.testing.assert_array_equal(again, taps["encoder.blocks.0.resid_post"])


def test_float64_run_differs_from_float32_by_rounding_only(small, small_mel):
    names = ["encoder.ln_post"]
    f32 = TorchRunner(small, "float32").run(small_mel, names)["encoder.ln_post"]
    f64 = TorchRunner(small, "float64").run(small_mel, names)["encoder.ln_post"]
    assert f64.dtype == np.float64
    rel = np.linalg.norm(f32 - f64) / np.linalg.norm(f64)
    assert 0 < rel < 1e-5


def test_isolated_torch_stages_reproduce_the_chained_run(small, small_mel):
    runner = TorchRunner(small, "float64")
    names = _names(small.dims)
    chained = runner.run(small_mel, names)
    boundaries = [s.input for s in stages(small.dims) if s.input]
    local = runner.run_patched(small_mel, {name: chained[name] for name in boundaries}, names)
    for name in names:
        np.testing.assert_array_equal(local[name], chained[name], err_msg=name)


def test_isolated_stage_outputs_are_the_stages_own(small, small_mel):
    """In float32, resid_mid must be attn's output, not the (rounded) reference input of mlp."""
    names = _names(small.dims)
    truth = TorchRunner(small, "float64").run(small_mel, names)
    boundaries = [s.input for s in stages(small.dims) if s.input]
    local = TorchRunner(small, "float32").run_patched(small_mel, {name: truth[name] for name in boundaries}, names)
    mid = "encoder.blocks.0.resid_mid"
    assert not np.array_equal(local[mid], truth[mid].astype(np.float32))
    np.testing.assert_allclose(local[mid], truth[mid], rtol=1e-4, atol=1e-5)


def test_max_candidate_is_within_budget_on_every_tap(small, small_mel, small_candidate):
    references = References(small)
    taps = select_taps(small.dims, "all")
    result = compare_candidate(small_candidate, references, small_mel, _plan(taps, isolate=True))
    bad = [(r.name, r.stats.noise_floor_ratio) for r in result.rows if r.verdict != "ok" or r.local_verdict != "ok"]
    assert not bad
    assert result.first_divergence is None
    post = result.row("encoder.ln_post").stats
    assert post.rel_l2 < 1e-5 and post.cosine > 0.999999
    # the candidate's error is float32 rounding, not zero
    assert post.rmse > 0


def test_batched_run_equals_one_by_one(small, small_mel, small_candidate):
    rng = np.random.default_rng(5)
    batch = np.concatenate([small_mel, rng.uniform(-1.5, 1.5, small_mel.shape).astype(np.float32)])
    together = small_candidate.run(batch, ["encoder.ln_post"])
    for i in range(2):
        alone = small_candidate.run(batch[i:i + 1], ["encoder.ln_post"])
        np.testing.assert_allclose(together["encoder.ln_post"][i], alone["encoder.ln_post"][0], rtol=0, atol=1e-5)


def test_weights_bind_strictly(small, small_candidate):
    def drop(weights):
        return {k: v for k, v in weights.items() if k != "encoder.blocks.1.attn.value.bias"}

    def add(weights):
        return {**weights, "encoder.blocks.0.attn.key.bias": np.zeros(small.dims.n_audio_state, np.float32)}

    with pytest.raises(FidelityError, match=r"needs weight encoder\.blocks\.1\.attn\.value\.bias"):
        BuiltinCandidate(small, CandidateConfig(), transform=drop)
    with pytest.raises(FidelityError, match=r"does not use: encoder\.blocks\.0\.attn\.key\.bias"):
        BuiltinCandidate(small, CandidateConfig(), transform=add)


def test_attention_weights_tap(small, small_mel):
    candidate = BuiltinCandidate(small, CandidateConfig(), MaxOptions(attention_weights=True))
    references = References(small)
    taps = select_taps(small.dims, "encoder.blocks.*.attn.weights")
    result = compare_candidate(candidate, references, small_mel, _plan(taps))
    assert [r.verdict for r in result.rows] == ["ok", "ok"]
