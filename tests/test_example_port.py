"""The hackathon example port (examples/ports) on tiny.en and real speech: its encoder, its patch
graph (isolation), its front end, and its two historical bugs found at the right tap, in float32
and bfloat16.

Compiled graphs: the float32 patch and off graphs (shared with test_probes.py and
test_port_command.py; the conv bug runs on them too) and the bfloat16 patch graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from whisper.audio import mel_filters

from fidelity import audio
from fidelity.candidates.base import CandidateConfig
from fidelity.metrics import compare
from fidelity.reference.runner import TorchRunner
from fidelity.tolerances import budget_for

from .test_probes import load_port

STAGE_BOUNDARIES = ("encoder.positional_embedding", "resid_mid", "resid_post", "encoder.ln_post")


@pytest.fixture(scope="module")
def hackathon():
    return load_port()


@pytest.fixture(scope="module")
def port(tiny, hackathon):
    return hackathon.build(tiny, CandidateConfig())


@pytest.fixture(scope="module")
def refs(tiny, speech_mel, port):
    names = port.available_taps()
    return TorchRunner(tiny, "float64").run(speech_mel, names), TorchRunner(tiny, "float32").run(speech_mel, names)


def _ratios(out, refs, names):
    r64, floor = refs
    return {n: compare(out[n], r64[n], floor[n]).noise_floor_ratio for n in names}


def test_clean_port_is_at_the_float32_floor_on_real_speech(speech_mel, port, refs):
    names = port.available_taps()
    out = port.run(speech_mel, names)
    ratios = _ratios(out, refs, names)
    assert ratios["encoder.ln_post"] < 5, ratios["encoder.ln_post"]
    boundaries = [n for n in names if n.endswith(STAGE_BOUNDARIES)]
    assert len(boundaries) == 2 + 2 * port.dims.n_audio_layer
    assert all(ratios[n] < 10 for n in boundaries), {n: ratios[n] for n in boundaries}


def test_patch_graph_gives_each_span_its_local_error(speech_mel, port, refs):
    r64, _ = refs
    names = port.patchable_taps()
    local = _ratios(port.run_patched(speech_mel, {n: r64[n] for n in names}, names), refs, names)
    assert max(local.values()) < 10, local
    # nothing patched: the patch graph computes what the port computes
    plain = port.run_patched(speech_mel, {}, ["encoder.ln_post"])["encoder.ln_post"]
    np.testing.assert_allclose(plain, port.encode(speech_mel), atol=5e-3)


def test_a_patch_changes_only_what_is_downstream(tiny, speech_mel, port):
    names = port.patchable_taps()
    plain = port.run_patched(speech_mel, {}, names)
    cut = "encoder.blocks.0.resid_mid"
    zeros = np.zeros_like(plain[cut])
    patched = port.run_patched(speech_mel, {cut: zeros}, names)
    assert len(port._zeros) == len({(str(p.value.shape), p.value.dtype) for p in port.probes}) < len(names)
    for name in names[:names.index(cut) + 1]:  # upstream, and what the port computed at the cut
        np.testing.assert_array_equal(patched[name], plain[name], err_msg=name)
    bias = tiny.encoder_weights["encoder.blocks.0.mlp_ln.bias"]  # layer norm of a zero stream: its bias
    np.testing.assert_allclose(patched["encoder.blocks.0.mlp_ln"][0], np.broadcast_to(bias, zeros.shape[1:]),
                               atol=1e-6)
    assert not np.allclose(patched["encoder.ln_post"], plain["encoder.ln_post"], atol=1e-2)


def test_conv_average_bug_is_named_at_conv1(tiny, speech_mel, hackathon, refs):
    r64, _ = refs
    buggy = hackathon.build_conv_average(tiny, CandidateConfig())
    assert str(buggy.graph("patch")) == str(hackathon.build(tiny, CandidateConfig()).graph("patch"))  # no new graph
    names = buggy.patchable_taps()
    local = _ratios(buggy.run_patched(speech_mel, {n: r64[n] for n in names}, names), refs, names)
    assert local["encoder.conv1"] > 1e3, local["encoder.conv1"]
    assert [n for n, r in local.items() if r > 10] == ["encoder.conv1"], local


@pytest.mark.slow
def test_bfloat16_port_is_within_its_floor_and_the_conv_bug_is_named_at_conv1(tiny, speech_mel, hackathon, refs):
    config = CandidateConfig(dtype="bfloat16", probe_effect=False)  # one graph: the bfloat16 patch graph
    port = hackathon.build(tiny, config)
    names = port.available_taps()
    bf16 = (refs[0], TorchRunner(tiny, "bfloat16").run(speech_mel, names))
    budget = budget_for("encoder.ln_post", "bfloat16")
    chained = _ratios(port.run(speech_mel, names), bf16, names)
    assert chained["encoder.ln_post"] < budget, chained
    patches = {n: bf16[0][n] for n in names}
    local = _ratios(port.run_patched(speech_mel, patches, names), bf16, names)
    assert max(local.values()) < budget, local
    buggy = _ratios(hackathon.build_conv_average(tiny, config).run_patched(speech_mel, patches, names), bf16, names)
    assert buggy["encoder.conv1"] > 50 and [n for n, r in buggy.items() if r > budget] == ["encoder.conv1"], buggy


# -- the front end -------------------------------------------------------------------------------
def test_mel_filterbank_is_openai_whispers(hackathon, tiny):
    ours = hackathon.mel_filterbank(tiny.dims.n_mels)
    np.testing.assert_allclose(ours, mel_filters("cpu", tiny.dims.n_mels).numpy(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("seconds", [5, 30])
def test_front_end_matches_openai_whisper(hackathon, tiny, seconds):
    clip = audio.load_audio(audio.DEFAULT_CLIP)
    samples = clip.samples[:seconds * 16000]
    ours = hackathon.build(tiny, CandidateConfig()).front_end(samples)
    theirs = audio.mel_windows(audio.Clip(samples, "clip"), tiny.dims.n_mels)
    assert ours.shape == theirs.shape == (1, tiny.dims.n_mels, 2 * tiny.dims.n_audio_ctx)
    stats = compare(ours, theirs)
    assert stats.max_abs < 2e-4 and stats.rel_l2 < 1e-5, stats


def test_zero_padded_mel_bug_is_visible_at_the_mel_on_a_short_clip(hackathon, tiny):
    samples = audio.load_audio(audio.DEFAULT_CLIP).samples[:5 * 16000]
    buggy = hackathon.build_mel_zero_pad(tiny, CandidateConfig()).front_end(samples)
    theirs = audio.mel_windows(audio.Clip(samples, "clip"), tiny.dims.n_mels)
    stats = compare(buggy, theirs)
    assert stats.rel_l2 > 0.1, stats
    frames = 5 * 16000 // 160
    np.testing.assert_allclose(buggy[..., :frames - 2], theirs[..., :frames - 2], atol=2e-4)  # speech is the same
    assert np.all(buggy[..., frames:] == 0)  # the padding is not: zeros instead of the log-mel of silence
    assert np.all(np.abs(theirs[..., frames + 1:] - buggy[..., frames + 1:]) > 0.1)
