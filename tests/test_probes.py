"""Probes in a user's MAX graph, and layouts.

Graph tests use the hackathon example port on tiny.en (the graphs test_example_port.py
compiles anyway: a new graph costs minutes here, its shapes matter less than its count);
refusals and layouts trace or convert on the small random config and compile nothing.
Patching is tested in test_example_port.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from max.graph import ops

from fidelity.candidates.base import ENCODER_OUTPUT, CandidateConfig
from fidelity.candidates.max_port import MaxPort
from fidelity.commands.cli import run_main
from fidelity.errors import FidelityError
from fidelity.layouts import parse_layout
from fidelity.metrics import compare
from fidelity.probe import probe
from fidelity.reference.runner import TorchRunner
from fidelity.taps import encoder_taps

PORT = Path(__file__).resolve().parents[1] / "examples" / "ports" / "hackathon_port.py"


def load_port(name: str = "hackathon_port"):
    """A fresh module object of the example port (as `--candidate FILE:build` loads it)."""
    spec = importlib.util.spec_from_file_location(name, PORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def port(tiny):
    return load_port().build(tiny, CandidateConfig())


def _tap(dims, name):
    return next(t for t in encoder_taps(dims) if t.name == name)


# -- probes off ----------------------------------------------------------------------------------
def test_probes_off_build_the_same_graph_and_output(tiny, speech_mel, port):
    bare = load_port("hackathon_port_without_probes")
    bare.probe = lambda name, x, layout=None: x  # the same code with every probe call taken out
    d = tiny.dims
    without = MaxPort(tiny, CandidateConfig(), bare.encoder_body(d.n_audio_layer, d.n_audio_head),
                      inputs=bare.weight_inputs(tiny.encoder_weights, d.n_audio_layer),
                      name="hackathon-port", graph_name="hackathon_encoder")
    assert str(port.graph("off")) == str(without.graph("off"))
    assert "select" not in str(port.graph("off")) and len(port.probes) > 20
    np.testing.assert_array_equal(port.encode(speech_mel), without.encode(speech_mel))


def test_probe_outside_the_workbench_returns_its_argument():
    marker = object()
    assert probe("encoder.ln_post", marker) is marker
    assert probe("not a tap", marker, layout="nonsense") is marker  # nothing is checked outside


# -- observe -------------------------------------------------------------------------------------
def test_observe_returns_every_probe_in_canonical_layout(tiny, speech_mel, port):
    names = port.available_taps()
    assert names == [t.name for t in encoder_taps(tiny.dims) if not t.optional]
    out = port.run(speech_mel, names)
    r64 = TorchRunner(tiny, "float64").run(speech_mel, names)
    assert set(out) == set(names)
    for name in names:  # every layout converted: each tap close to openai-whisper's
        assert out[name].shape == r64[name].shape, name
        assert compare(out[name], r64[name]).rel_l2 < 1e-4, name
    effect = port.probe_effect(speech_mel)
    assert 0 <= effect.max_abs < 1e-2 and effect.rel_l2 < 1e-4, effect


# -- refusals ------------------------------------------------------------------------------------
def _port_with(small, body):
    return MaxPort(small, CandidateConfig(), body, name="bad-port")


@pytest.mark.parametrize("body, message", [
    (lambda mel: probe("encoder.blocks.9.resid_post", ops.permute(mel, [0, 2, 1])), "encoder.blocks.9.resid_post"),
    (lambda mel: probe("encoder.blocks.0.attn_ln", probe("encoder.blocks.0.attn_ln", mel[:, :64, :96])),
     "encoder.blocks.0.attn_ln is used twice"),
    (lambda mel: probe("encoder.conv1", mel, layout="btc"), "layout 'btc'"),
    (lambda mel: probe("encoder.conv1", mel, layout="bxy"), "permutation"),
])
def test_bad_probes_are_refused_at_build_time(small, body, message):
    with pytest.raises(FidelityError, match=message.replace(".", r"\.").replace("(", r"\(")):
        _port_with(small, body)


def test_bad_probe_is_one_line_and_exit_2(small, capsys):
    code = run_main("compare", lambda: _port_with(small, lambda mel: probe("encoder.nope", mel)))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "encoder.nope" in err


def test_port_without_probes_cannot_patch(small):
    bare = _port_with(small, lambda mel: ops.permute(mel, [0, 2, 1]))
    assert bare.patchable_taps() == [] and bare.available_taps() == [ENCODER_OUTPUT]
    with pytest.raises(FidelityError, match="no probes"):
        bare.graph("patch")


# -- layouts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tap, letters, make", [
    ("encoder.conv1", "btc", lambda c: c.transpose(0, 2, 1)),
    ("encoder.conv1", "tc", lambda c: c[0].T),
    ("encoder.blocks.1.attn.query", "bhtd", lambda c: c.reshape(c.shape[0], c.shape[1], 3, -1).transpose(0, 2, 1, 3)),
    ("encoder.blocks.1.attn.wv", "thd", lambda c: c[0].reshape(c.shape[1], 3, -1)),
    ("encoder.blocks.1.resid_post", "bct", lambda c: c.transpose(0, 2, 1)),
    ("encoder.blocks.1.attn.weights", "bqhk", lambda c: c.transpose(0, 2, 1, 3)),
])
def test_layouts_convert_both_ways(small, tap, letters, make):
    t = _tap(small.dims, tap)
    rng = np.random.default_rng(0)
    canonical = rng.standard_normal((1, *t.shape)).astype(np.float32)
    theirs = make(canonical)
    layout = parse_layout(t, letters, theirs.shape, small.dims)
    np.testing.assert_array_equal(layout.to_canonical(theirs), canonical)
    np.testing.assert_array_equal(layout.from_canonical(canonical), theirs)


def test_per_head_layout_matches_openai_whisper_head_split(small):
    """openai-whisper splits width as view(batch, frames, heads, -1): channel = head * head_dim + d."""
    t = _tap(small.dims, "encoder.blocks.0.attn.query")
    heads, head_dim = small.dims.n_audio_head, small.dims.n_audio_state // small.dims.n_audio_head
    canonical = np.arange(np.prod(t.shape), dtype=np.float32).reshape(1, *t.shape)
    theirs = parse_layout(t, "bhtd", (1, heads, t.shape[0], head_dim), small.dims).from_canonical(canonical)
    np.testing.assert_array_equal(theirs[0, 2, 5, :], canonical[0, 5, 2 * head_dim:3 * head_dim])


@pytest.mark.parametrize("tap, letters, shape, message", [
    ("encoder.conv1", "btc", ("batch", 96, 128), "axis 'c' \\(width\\) has 128"),
    ("encoder.blocks.0.attn.query", "bhtd", ("batch", 4, 64, 24), "axis 'h' \\(heads\\) has 4"),
    ("encoder.blocks.0.mlp.0", "bhtd", ("batch", 3, 64, 128), "only a tap of width 96"),
    ("encoder.blocks.0.attn_ln", "btc", ("batch", 64), "3 axes declared"),
])
def test_layouts_that_do_not_fit_are_refused(small, tap, letters, shape, message):
    with pytest.raises(FidelityError, match=f"{tap}.*{letters}.*{message}"):
        parse_layout(_tap(small.dims, tap), letters, shape, small.dims)


def test_wrong_frame_count_is_a_finding_not_an_error(small):
    t = _tap(small.dims, "encoder.conv2")
    layout = parse_layout(t, "btc", ("batch", 32, 96), small.dims)  # a stride bug halves the frames
    assert layout.to_canonical(np.zeros((1, 32, 96), np.float32)).shape == (1, 96, 32)
