"""Probes in a user's MAX graph, the compile plan of a port, fixed-batch ports, and layouts.

Graph tests use the hackathon example port on tiny.en (its float32 patch and off graphs, which
test_example_port.py and test_port_command.py compile too: a new graph costs minutes here, its
shapes matter less than its count); one fixed-batch conv stem on the small random config compiles
one small graph; refusals and layouts trace or convert on the small config and compile nothing.
Patching is tested in test_example_port.py.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from max.graph import ops

from fidelity.candidates import max_engine
from fidelity.candidates.base import ENCODER_OUTPUT, CandidateConfig
from fidelity.candidates.max_engine import compile_summary, mlir_text, recording_compiles
from fidelity.candidates.max_port import MaxPort, _fill
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


def test_a_graph_keeps_its_cache_key_when_other_graphs_are_traced(tiny):
    port = load_port().build(tiny, CandidateConfig())
    key = mlir_text(port.graph("off"))
    load_port().build(tiny, CandidateConfig()).graph("patch")  # MAX counts the ops traced since, in the text
    assert mlir_text(port.graph("off")) == key


def test_probe_outside_the_workbench_returns_its_argument():
    marker = object()
    assert probe("encoder.ln_post", marker) is marker
    assert probe("not a tap", marker, layout="nonsense") is marker  # nothing is checked outside


# -- observe (the patch graph, every gate off) -----------------------------------------------------
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


# -- the compile plan --------------------------------------------------------------------------------
def test_one_graph_answers_and_the_unprobed_one_waits_for_the_probe_effect(tiny, speech_mel, port):
    fresh = load_port().build(tiny, CandidateConfig())  # the graphs are compiled already: the process has them
    with recording_compiles() as events:
        fresh.run(speech_mel, ["encoder.conv1"])
        fresh.run_patched(speech_mel, {}, ["encoder.conv1"])
        assert [e.label for e in events] == ["hackathon_encoder-patch"] and list(fresh.compile_log) == ["patch"]
        fresh.probe_effect(speech_mel)
    assert [e.label for e in events] == ["hackathon_encoder-patch", "hackathon_encoder-off"]
    assert all(e.source == "process" and e.seconds == 0 for e in events)
    assert compile_summary(events) == {"graphs": 2, "compiled": 0, "seconds": 0.0}
    assert fresh.describe()["encode_graph"] == "the port's own graph (probes off)"
    assert [e.label for e in max_engine.compile_events()[-2:]] == [e.label for e in events]


def test_without_the_probe_effect_one_graph_does_everything(tiny, speech_mel, port):
    fresh = load_port().build(tiny, CandidateConfig(probe_effect=False))
    assert fresh.probe_effect(speech_mel) is None
    np.testing.assert_array_equal(fresh.encode(speech_mel), fresh.run(speech_mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT])
    assert list(fresh.compile_log) == ["patch"]
    assert "probed graph" in fresh.describe()["encode_graph"]


def test_a_compile_shows_one_progress_line_with_its_elapsed_time(caplog):
    with caplog.at_level(logging.INFO, logger=max_engine.__name__):
        with max_engine._progress("compiling g-patch on cpu (graph 1 of 2 for p)", "why", every=0.05):
            time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "compiling g-patch on cpu (graph 1 of 2 for p) (why)"
    assert lines[-1] == "compiling g-patch on cpu (graph 1 of 2 for p) ... 0 s, done"
    assert all(line.startswith("compiling g-patch on cpu (graph 1 of 2 for p) ... ") for line in lines[1:])


# -- a port written for a fixed batch ----------------------------------------------------------------
def fixed_batch_stem(dims):
    """A conv stem written for a batch of 1 everywhere, as some public ports are (shapes from the dims)."""
    frames, ctx, n_mels, width = 2 * dims.n_audio_ctx, dims.n_audio_ctx, dims.n_mels, dims.n_audio_state

    def body(mel, c1w, c1b, c2w, c2b, pos, ln_g, ln_b):
        x = ops.reshape(ops.permute(mel, [0, 2, 1]), (1, 1, frames, n_mels))
        x = ops.reshape(ops.conv2d(x, c1w, padding=(0, 0, 1, 1), bias=c1b), (1, frames, width))
        x = ops.gelu(probe("encoder.conv1", x, layout="btc"))
        x = ops.conv2d(ops.reshape(x, (1, 1, frames, width)), c2w, stride=(1, 2), padding=(0, 0, 1, 1), bias=c2b)
        x = probe("encoder.conv2.gelu", ops.gelu(ops.reshape(x, (1, ctx, width))), layout="btc")
        return ops.layer_norm(probe("encoder.positional_embedding", x + pos), ln_g, ln_b, 1e-5)

    return body


def _fixed_batch_port(small, **options):
    weights = load_port().weight_inputs(small.encoder_weights, small.dims.n_audio_layer)
    return MaxPort(small, CandidateConfig(probe_effect=False), fixed_batch_stem(small.dims),
                   inputs=weights[:5] + weights[-2:], name="batch-one-port", **options)


def test_fixed_batch_port_is_refused_with_the_whole_diagnostic(small):
    with pytest.raises(FidelityError) as refused:
        _fixed_batch_port(small)
    text = str(refused.value)
    assert text.startswith("batch-one-port: building its MAX graph failed at ") and "test_probes.py:" in text
    assert "Failed to create op 'ReshapeOp'" in text and "Dim('batch')" in text  # the op and its input
    assert "input and output number of elements must match" in text  # MAX's reason
    assert "MaxPort(..., batch=N)" in text


def test_fixed_batch_port_runs_unedited_a_window_at_a_time(small, small_mel):
    port = _fixed_batch_port(small, batch=1)
    mel = np.concatenate([small_mel, small_mel[:, :, ::-1]])  # two windows
    names = port.available_taps()
    both = port.run(mel, names)
    r64 = TorchRunner(small, "float64").run(mel, port.patchable_taps())
    for name in port.patchable_taps():  # the stem computes openai-whisper's taps, window by window
        assert both[name].shape == r64[name].shape and compare(both[name], r64[name]).rel_l2 < 1e-5, name
    second = port.run(mel[1:], names)
    for name in names:
        np.testing.assert_array_equal(both[name][1:], second[name], err_msg=name)
    patched = port.run_patched(mel, {"encoder.conv2.gelu": r64["encoder.conv2.gelu"]}, names)
    assert compare(patched["encoder.positional_embedding"], r64["encoder.positional_embedding"]).rel_l2 < 1e-6
    np.testing.assert_array_equal(port.encode(mel), both[ENCODER_OUTPUT])
    assert list(port.compile_log) == ["patch"] and port.describe()["batch"] == 1


def test_a_short_last_chunk_is_filled_with_its_last_window():
    chunk = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_fill(chunk, 4), [[0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]])
    assert _fill(chunk, 2) is chunk


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
