"""Numerics faults of one stage kind share one compiled family graph, and each computes its own variant.

Checked against openai-whisper's own attention block and encoder (float32) with the same change
made in torch: an epsilon, weights rescaled or reordered, the softmax over the other axis, tanh
GELU, conv1's padding. On tiny.en, whose family graphs test_faults.py compiles anyway.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import whisper.model

from fidelity.candidates.max_builtin.family import uses_family
from fidelity.candidates.max_builtin.graph_ops import Numerics
from fidelity.candidates.max_builtin.stage_graphs import STAGE_KINDS, MaxOptions
from fidelity.candidates.max_engine import recording_compiles
from fidelity.faults import FAULTS, faulty_candidate
from fidelity.taps import stages

ATTN_FAULTS = ("ln_eps_1e-6", "attn_scale_twice", "heads_split_wrong", "softmax_wrong_axis")


def _change(block, fault: str, monkeypatch, dims):
    """openai-whisper's block 0 with `fault`'s change made in torch."""
    attn, head_dim, heads = block.attn, dims.n_audio_state // dims.n_audio_head, dims.n_audio_head
    if fault == "ln_eps_1e-6":
        block.attn_ln.eps = 1e-6
    elif fault == "attn_scale_twice":  # whisper scales q and k by d**-0.25: d**-0.25 more on each
        for linear in (attn.query, attn.key):
            linear.weight.data *= head_dim ** -0.25
            if linear.bias is not None:
                linear.bias.data *= head_dim ** -0.25
    elif fault == "heads_split_wrong":  # head h reads width d * heads + h: reorder rows so whisper's split does
        order = torch.arange(dims.n_audio_state).reshape(head_dim, heads).T.reshape(-1)
        for linear in (attn.query, attn.key, attn.value):
            linear.weight.data = linear.weight.data[order]
            if linear.bias is not None:
                linear.bias.data = linear.bias.data[order]
    elif fault == "softmax_wrong_axis":
        softmax = torch.nn.functional.softmax
        monkeypatch.setattr(whisper.model.F, "softmax", lambda t, dim: softmax(t, dim=-2))


def _whisper_attn(checkpoint, x: np.ndarray, fault: str | None, monkeypatch) -> np.ndarray:
    block = checkpoint.whisper_model().encoder.blocks[0]
    with monkeypatch.context() as patch:
        if fault:
            _change(block, fault, patch, checkpoint.dims)
        with torch.no_grad(), whisper.model.disable_sdpa():
            h = torch.from_numpy(x)
            return (h + block.attn(block.attn_ln(h))[0]).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_attention_faults_share_one_graph_and_compute_their_own_variants(tiny, monkeypatch):
    stage = next(s for s in stages(tiny.dims) if s.name == "blocks.0.attn")
    # a quiet residual stream (variance about 1e-5), where the layer-norm epsilon matters
    x = (0.003 * np.random.default_rng(3).standard_normal((1, tiny.dims.n_audio_ctx, tiny.dims.n_audio_state))
         ).astype(np.float32)
    clean = _whisper_attn(tiny, x, None, monkeypatch)
    outputs, graphs = {}, set()
    with recording_compiles() as events:
        for name in ATTN_FAULTS:
            candidate = faulty_candidate(tiny, FAULTS[name])
            assert candidate.compiled["attn"].knobs is not None and candidate.compiled["conv_stem"].knobs is None
            graphs.add(id(candidate.compiled["attn"].compiled))
            outputs[name] = candidate.run_stage(stage, x, [])[stage.output]
    attn = [e for e in events if e.label.startswith("attn")]
    assert graphs and len(graphs) == 1 and {e.label for e in attn} == {"attn-family"}
    assert sum(e.source != "process" for e in attn) <= 1  # the later faults found it compiled in this process
    for name, got in outputs.items():
        expected = _whisper_attn(tiny, x, name, monkeypatch)
        assert _rel(got, expected) < 1e-5, name
        assert _rel(expected, clean) > 1e-2, name  # the variant is far from openai-whisper's
    for a in ATTN_FAULTS:
        for b in ATTN_FAULTS:
            assert a == b or _rel(outputs[a], outputs[b]) > 1e-2, (a, b)


def test_which_faults_take_a_family_graph():
    numerics = {name: fault.options(MaxOptions()).numerics for name, fault in FAULTS.items() if fault.numerics}
    assert not uses_family(numerics["conv2_stride_3"], "conv_stem")  # a shorter stem: a graph of its own
    assert uses_family(numerics["conv1_padding_shift"], "conv_stem") and uses_family(numerics["gelu_tanh"], "mlp")
    assert uses_family(numerics["missing_ln_post"], "ln_post") and not uses_family(numerics["missing_ln_post"], "attn")
    assert all(uses_family(numerics[name], "attn") for name in ATTN_FAULTS + ("key_bias", "ln_float16"))
    assert not uses_family(dataclasses.replace(numerics["key_bias"], attention="flash"), "attn")
    assert not any(uses_family(Numerics(), kind) for kind in STAGE_KINDS)  # the clean candidate: its own graphs


def _whisper_encoder(checkpoint, mel: np.ndarray, fault: str | None, monkeypatch) -> np.ndarray:
    """openai-whisper's encoder (float32) with `fault`'s change made in torch."""
    encoder = checkpoint.whisper_model().encoder
    with monkeypatch.context() as patch:
        if fault == "gelu_tanh":  # the stem's F.gelu and the MLP's nn.GELU both call torch.nn.functional.gelu
            gelu = torch.nn.functional.gelu
            patch.setattr(torch.nn.functional, "gelu", lambda t, approximate="none": gelu(t, approximate="tanh"))
        elif fault == "conv1_padding_shift":  # two frames of zeros before, none after
            encoder.conv1.padding = (0,)
            encoder.conv1.register_forward_pre_hook(lambda _, args: (torch.nn.functional.pad(args[0], (2, 0)),))
        with torch.no_grad():
            return encoder(torch.from_numpy(mel)).numpy()


def test_conv_stem_faults_share_one_graph_and_compute_their_own_variants(tiny, speech_mel, monkeypatch):
    mel = speech_mel[:1]
    clean = _whisper_encoder(tiny, mel, None, monkeypatch)
    outputs, graphs = {}, set()
    for name in ("gelu_tanh", "conv1_padding_shift"):
        candidate = faulty_candidate(tiny, FAULTS[name])
        graphs.add(id(candidate.compiled["conv_stem"].compiled))
        outputs[name] = candidate.encode(mel)
        expected = _whisper_encoder(tiny, mel, name, monkeypatch)
        assert _rel(outputs[name], expected) < 1e-5, name
        assert _rel(expected, clean) > 1e-4, name
    assert len(graphs) == 1 and _rel(outputs["gelu_tanh"], outputs["conv1_padding_shift"]) > 1e-4
