"""The example port (examples/ports/hackathon_port.py) through the real command, `python -m fidelity.compare
--candidate FILE:NAME`, on tiny.en: the clean port end to end, its two historical bugs named at the right tap,
and bad probes refused in one line.

Compiled graphs (MEF store): the example port's float32 patch and off graphs (shared with test_probes.py and
test_example_port.py; the conv bug runs on them too); the bad ports compile nothing.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import soundfile

from fidelity import audio
from fidelity.compare import main

PORT = Path(__file__).resolve().parents[1] / "examples" / "ports" / "hackathon_port.py"


def _run(out: Path, builder: str, *flags: str) -> tuple[int, dict | None]:
    code = main(["--candidate", f"{PORT}:{builder}", "--out", str(out), "-q", *flags])
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.is_file() else None


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """5 s of the shipped speech clip: its front end must pad to 30 s as openai-whisper does."""
    clip = audio.load_audio(audio.DEFAULT_CLIP)
    path = tmp_path_factory.mktemp("short") / "five_seconds.wav"
    soundfile.write(path, clip.samples[:5 * audio.SAMPLE_RATE], audio.SAMPLE_RATE)
    return path


def test_clean_port_all_taps_isolated_and_end_to_end(tmp_path, capsys):
    code, doc = _run(tmp_path / "out", "build", "--layer", "all", "--isolate", "--e2e")
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert doc["first_divergence"] is None and doc["first_divergence_chained"] is None
    names = [row["name"] for row in doc["taps"]]
    assert names[0] == "frontend.mel" and names[-1] == "encoder.ln_post"
    assert all(row["verdict"] == "ok" and row["local_verdict"] == "ok" for row in doc["taps"]), \
        [(r["name"], r["verdict"], r["local_verdict"]) for r in doc["taps"] if r["verdict"] != "ok"]
    cand = doc["candidate"]
    assert cand["name"] == "hackathon-port" and cand["front_end"] is True
    assert len(cand["probes"]) == cand["patchable"] == len(names) - 1  # every tap but the mel is probed
    effect = cand["probe_effect"]
    assert effect["tap"] == "encoder.ln_post"
    assert 0 <= effect["max_abs"] < 1e-2 and 0 <= effect["rel_l2"] < 1e-4, effect
    assert "probe effect on encoder.ln_post" in stdout
    e2e = doc["e2e"]
    assert e2e["identical"] and e2e["reference_text"], (e2e["reference_text"], e2e["candidate_text"])


@pytest.mark.slow
def test_conv_average_bug_is_localized_at_conv1(tmp_path):
    code, doc = _run(tmp_path / "out", "build_conv_average", "--layer", "all", "--isolate")
    assert code == 1
    assert doc["first_divergence"] == "encoder.conv1"
    conv1 = next(row for row in doc["taps"] if row["name"] == "encoder.conv1")
    assert conv1["stage"] == "conv_stem" and conv1["local_noise_floor_ratio"] > 1e3, conv1
    assert next(row for row in doc["taps"] if row["name"] == "frontend.mel")["verdict"] == "ok"
    # every later span, fed the float64 reference, is within budget on its own
    later = [row for row in doc["taps"] if row["stage"] != "conv_stem" and row["name"] != "frontend.mel"]
    assert later and all(row["local_verdict"] == "ok" for row in later), \
        [row["name"] for row in later if row["local_verdict"] != "ok"]


@pytest.mark.parametrize("builder, first", [("build_mel_zero_pad", "frontend.mel"), ("build", None)])
def test_front_end_is_checked_on_a_short_clip(tmp_path, short_clip, builder, first):
    code, doc = _run(tmp_path / "out", builder, "--audio", str(short_clip), "--layer", "conv_stem,ln_post",
                     "--isolate")
    assert code == (1 if first else 0)
    assert doc["first_divergence"] == first
    mel = doc["taps"][0]
    assert mel["name"] == "frontend.mel" and mel["stage"] == "front_end"
    if first:
        assert mel["noise_floor_ratio"] > 1e3 and mel["verdict"] != "ok", mel
    else:
        assert mel["verdict"] == "ok", mel


BAD_PORT = """
import numpy as np
from max.dtype import DType
from max.graph import ops

from fidelity.candidates.max_port import MaxPort
from fidelity.probe import probe


def stream(mel):  # a (batch, 1500, 384) stream of tiny.en, the shape of encoder.ln_post
    x = ops.permute(mel, [0, 2, 1])[:, :1500, :]
    return x @ ops.constant(np.ones((80, 384), np.float32), DType.float32, x.device)


def build_unknown(checkpoint, config):
    return MaxPort(checkpoint, config, lambda mel: probe("encoder.blocks.7.resid_post", stream(mel)))


def build_twice(checkpoint, config):
    body = lambda mel: probe("encoder.ln_post", probe("encoder.ln_post", stream(mel)))
    return MaxPort(checkpoint, config, body)


def build_layout(checkpoint, config):
    return MaxPort(checkpoint, config, lambda mel: probe("encoder.ln_post", stream(mel), layout="bhtd"))


def build_fixed_batch(checkpoint, config):  # written for a batch of 1, wrapped without batch=1
    d = checkpoint.dims
    return MaxPort(checkpoint, config, lambda mel: stream(ops.reshape(mel, (1, d.n_mels, 2 * d.n_audio_ctx))))
"""


@pytest.mark.parametrize("builder, message", [
    ("build_unknown", "probe name 'encoder.blocks.7.resid_post' is not a tap of this model"),
    ("build_twice", "probe encoder.ln_post is used twice in one graph"),
    ("build_layout", "probe encoder.ln_post: layout 'bhtd' does not fit"),
])
def test_bad_probes_through_the_command_are_one_line_exit_2_nothing_written(tmp_path, capsys, builder, message):
    port = tmp_path / "bad_port.py"
    port.write_text(textwrap.dedent(BAD_PORT))
    out = tmp_path / "out"
    code = main(["--candidate", f"{port}:{builder}", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("compare: error: ") and message in err, err
    assert not out.exists()


def test_fixed_batch_port_without_its_batch_shows_max_diagnostic_exit_2(tmp_path, capsys):
    port = tmp_path / "bad_port.py"
    port.write_text(textwrap.dedent(BAD_PORT))
    out = tmp_path / "out"
    code = main(["--candidate", f"{port}:build_fixed_batch", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"compare: error: max-port: building its MAX graph failed at {port}:"), err
    for line in ("Failed to create op 'ReshapeOp'", "input = TensorValue(dtype=float32, shape=[Dim('batch'), Dim(80)",
                 "new_shape = [Dim(1), Dim(80), Dim(3000)]", "input and output number of elements must match",
                 "MaxPort(..., batch=N)"):
        assert line in err, (line, err)
    assert not out.exists()
