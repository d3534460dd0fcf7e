"""Arithmetic modes: a float32 port whose matmuls run TF32-class is named so and judged against a TF32 floor.

On a GPU MAX's float32 matmuls run TF32-class; CI has no GPU, so the candidate here is openai-whisper's
encoder with every matmul's operands cut to TF32's 10-bit mantissa (toward zero, as MAX's are on an H200) by an
implementation of its own (tests/protocol_candidates.py), and the workbench's TF32 floor is its emulation
(`--tf32-floor on`). A narrow random-weight model that reads real 30 s windows (1500 frames, width 64,
2 blocks) on the shipped clip; torch only, no MAX graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from whisper.model import ModelDimensions

from fidelity.checkpoints import random_checkpoint, save_checkpoint
from fidelity.reference.arithmetic import EmulatedTF32, round_to_tf32, truncate_to_tf32

ROOT = Path(__file__).resolve().parents[1]
SPEC = "tests/protocol_candidates.py"


NARROW = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                         n_vocab=64, n_text_ctx=16, n_text_state=64, n_text_head=2, n_text_layer=1)


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "narrow.pt"
    save_checkpoint(random_checkpoint(NARROW, seed=2, name="narrow"), path)
    return path


def compare(small_pt, tmp_path, builder: str, *flags: str) -> tuple[int, dict, str]:
    out = tmp_path / f"{builder}{len(flags)}"
    done = subprocess.run([sys.executable, "-m", "fidelity.compare", "--candidate", f"{SPEC}:{builder}", "--isolate",
                           "--model", str(small_pt), "--tf32-floor", "on", "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads((out / "report.json").read_text()), done.stdout


def test_rounding_is_tf32s():
    x = torch.tensor([1.0, 1 + 2 ** -11, 1 + 3 * 2 ** -12, -(1 + 2 ** -11), 3.14159265, 1e-30, float("inf")])
    assert round_to_tf32(x).tolist() == [1.0, 1 + 2 ** -10, 1 + 2 ** -10, -(1 + 2 ** -10), 3.140625, pytest.approx(
        1e-30, rel=2 ** -10), float("inf")]
    values = torch.randn(10000) * 100
    mantissa, _ = torch.frexp(round_to_tf32(values))
    assert torch.all(mantissa * 2048 == torch.round(mantissa * 2048))  # 10 stored bits (11 with the implicit one)
    assert torch.all((round_to_tf32(values) - values).abs() <= values.abs() * 2 ** -11)


def test_truncation_drops_the_low_13_bits():
    x = torch.tensor([1.0, 1 + 2 ** -11, 1 + 2 ** -10 + 2 ** -11, -(1 + 2 ** -11), 3.14159265, float("inf")])
    assert truncate_to_tf32(x).tolist() == [1.0, 1.0, 1 + 2 ** -10, -1.0, 3.140625, float("inf")]
    nan_in_low_bits = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)  # a NaN whose payload is cut
    assert torch.isnan(truncate_to_tf32(nan_in_low_bits)).all()
    values = torch.randn(10000) * 100
    cut = truncate_to_tf32(values)
    assert torch.all(cut.abs() <= values.abs()) and torch.all((values - cut).abs() < values.abs() * 2 ** -10)


def test_emulation_cuts_matmul_operands_and_leaves_convolutions_ieee():
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    nearest, truncated = round_to_tf32(x) @ round_to_tf32(w).T, truncate_to_tf32(x) @ truncate_to_tf32(w).T
    with EmulatedTF32(nearest=True):
        assert torch.equal(torch.nn.functional.linear(x, w), nearest)
    with EmulatedTF32():
        assert torch.equal(torch.nn.functional.linear(x, w), truncated)
        kernel = torch.randn(2, 4, 3)
        assert torch.equal(torch.nn.functional.conv1d(x[None], kernel), torch.nn.functional.conv1d(x[None], kernel))
    assert not torch.equal(x @ w.T, round_to_tf32(x) @ round_to_tf32(w).T)


def test_tf32_matmuls_are_named_and_green_by_default_red_when_strict(small_pt, tmp_path):
    code, doc, stdout = compare(small_pt, tmp_path, "tf32_matmuls")
    assert code == 0 and doc["first_divergence"] is None, stdout
    rows = {r["name"]: r for r in doc["taps"]}
    query = rows["encoder.blocks.0.attn.query"]
    assert query["arithmetic"] == "tf32" and query["local_tf32_floor_ratio"] < 3
    assert query["local_noise_floor_ratio"] > 10 * query["local_tf32_floor_ratio"]  # far over the IEEE floor
    assert rows["encoder.conv1"]["arithmetic"] == "ieee"  # its convolutions stay IEEE
    assert rows["encoder.blocks.0.attn_ln"]["arithmetic"] == "ieee"
    spans = doc["arithmetic"]["spans"]
    assert doc["arithmetic"]["mode"] == "tf32" and "neither" not in spans
    assert "encoder.blocks.0.mlp.0" in spans["tf32"]["taps"]
    assert "arithmetic: matmuls run as TF32" in stdout and "TF32" in doc["floors"]["tf32_floor"]

    code, doc, stdout = compare(small_pt, tmp_path, "tf32_matmuls", "--strict-fp32")
    assert code == 1 and doc["first_divergence"] == "encoder.blocks.0.attn.query"
    assert "--strict-fp32" in stdout


def test_a_convolution_bug_is_named_at_conv1_in_both_modes(small_pt, tmp_path):
    for flags in ((), ("--strict-fp32",)):
        code, doc, _ = compare(small_pt, tmp_path, "tf32_conv_average", *flags)
        assert code == 1 and doc["first_divergence"] == "encoder.conv1"
        conv1 = next(r for r in doc["taps"] if r["name"] == "encoder.conv1")
        assert conv1["arithmetic"] is None and conv1["local_tf32_floor_ratio"] > 1e3
