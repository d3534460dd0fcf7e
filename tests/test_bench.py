"""`python -m fidelity.bench`: a port's speed beside its fidelity, on tiny.en and the shipped clip (CPU).

One benchmark run serves most tests: the example MAX port, CTranslate2 and the built-in with a
weight fault (`max:value_bias_dropped`), beside openai-whisper in torch, with each stage timed
and flash attention asked for (the built-in refuses it on a CPU: skipped and listed).
Compiled MAX graphs: only those other tests compile (the example port's `off` and `observe`
graphs, the built-in's tiny.en float32 stage graphs; a weight fault compiles nothing new).
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest

from fidelity.bench import main as bench_main
from fidelity.candidates.ctranslate2 import CTranslate2Candidate
from fidelity.checkpoints import load_checkpoint
from fidelity.speed.flops import encoder_flops
from fidelity.speed.frontier import frontier

from .conftest import SMALL_DIMS

PORT = "examples/ports/hackathon_port.py:build"
FAULT = "max:value_bias_dropped"
QUICK = ["--repeats", "2", "--warmup", "0"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(exit status, stdout, the JSON document, the HTML page) of one benchmark run."""
    folder = tmp_path_factory.mktemp("bench")
    out, html = folder / "bench.json", folder / "bench.html"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = bench_main(["--candidate", PORT, "--candidate", "ctranslate2", "--candidate", FAULT,
                             "--dtype", "float32,int8", "--attention", "matmul,flash", "--stages",
                             "--out", str(out), "--html", str(html),
                             *QUICK, "-q"])
    return status, stdout.getvalue(), json.loads(out.read_text()), html.read_text()


def _config(doc: dict, label_start: str) -> dict:
    return next(row for row in doc["configurations"] if row["label"].startswith(label_start))


def _table_line(text: str, label_start: str) -> str:
    return next(line for line in text.splitlines() if line.lstrip("* ").startswith(label_start))


@pytest.mark.parametrize("label", ["hackathon-port", "ctranslate2-float32"])
def test_a_faithful_candidate_prints_speed_and_fidelity_together(bench, label):
    status, text, doc, _ = bench
    assert status == 0
    row = _config(doc, label)
    fidelity, (speed,) = row["fidelity"], row["speed"]
    assert not fidelity["over_budget"] and fidelity["first_divergence"] is None
    assert 0.1 < fidelity["ln_post_floor_ratio"] < 5          # a float32 port sits at its float32 floor
    assert speed["batch"] == 1 and speed["median_ms"] > 0
    flops = encoder_flops(load_checkpoint("tiny.en").dims)["total"]
    assert speed["tflops"] == pytest.approx(flops / (speed["median_ms"] / 1e3) / 1e12)
    assert speed["peak_share"] == pytest.approx(speed["tflops"] / doc["peaks"]["float32"]["tflops"])
    line = _table_line(text, label)
    assert line.endswith("ok") and f"{speed['ms_per_window']:.4g}" in line
    assert f"{fidelity['ln_post_floor_ratio']:.3g}" in line


def test_the_port_is_examined_at_every_probe_and_timed_with_them_too(bench):
    _, _, doc, _ = bench
    row = _config(doc, "hackathon-port")
    assert row["fidelity"]["taps"] > 50                      # every probe judged, not only the output
    assert row["speed"][0]["traced_ms"] > 0                  # and a run with every probe an output timed
    assert "traced_ms" not in _config(doc, "ctranslate2")["speed"][0]  # a black box has nothing more to copy


def test_a_wrong_candidate_is_over_budget_in_the_table_and_the_plot(bench):
    _, text, doc, page = bench
    row = _config(doc, "max-builtin+value_bias_dropped")
    assert row["fidelity"]["over_budget"] and row["fidelity"]["ln_post_floor_ratio"] > row["fidelity"]["budget"]
    assert row["fidelity"]["first_divergence"] == "encoder.blocks.0.attn.value"
    assert "OVER BUDGET at encoder.blocks.0.attn.value" in _table_line(text, "max-builtin+value_bias_dropped")
    assert row["label"] not in doc["frontier"]["1"]
    assert re.search(r"<td[^>]*>max-builtin\+value_bias_dropped[^<]*</td>.*?<td class='bad'>OVER BUDGET", page)
    assert page.count("data:image/png;base64,") == 1


def test_reference_points_and_the_frontier(bench):
    _, _, doc, _ = bench
    eager = _config(doc, "torch eager float32")
    assert eager["reference"] and not eager["fidelity"]["over_budget"]
    assert eager["fidelity"]["ln_post_floor_ratio"] < 5     # openai-whisper's own encoder (SDPA) near its floor
    front = doc["frontier"]["1"]
    points = {row["label"]: (row["speed"][0]["ms_per_window"], row["fidelity"]["ln_post_floor_ratio"])
              for row in doc["configurations"] if not row["fidelity"]["over_budget"]}
    assert front and set(front) <= set(points)
    for label, (ms, ratio) in points.items():  # nothing within budget is both faster and closer than a member
        for member in front:
            assert not (ms < points[member][0] and ratio < points[member][1]), (label, member)


def test_precisions_and_forms_a_candidate_refuses_are_skipped_and_listed(bench):
    _, text, doc, _ = bench
    skipped = {(s["spec"], s["dtype"], s["attention"]): s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {(PORT, "int8", None), (FAULT, "float32", "flash"), (FAULT, "int8", None)}
    assert "not int8" in skipped[PORT, "int8", None]                      # a MAX port's precisions exclude it
    assert skipped[FAULT, "float32", "flash"].startswith("flash attention")  # float32, and no GPU here
    assert f"skipped {FAULT} in float32 with flash attention" in text
    labels = [row["label"] for row in doc["configurations"]]
    assert not any("flash" in label for label in labels)
    assert sum(label.startswith("hackathon-port") for label in labels) == 1  # a port offers no attention choice


def test_int8_is_judged_against_float32_and_has_no_measured_peak(bench):
    _, text, doc, _ = bench
    row = _config(doc, "ctranslate2-int8")
    assert row["fidelity"]["floor_dtype"] == "float32" and row["speed"][0]["peak_share"] is None
    assert doc["peaks"]["int8"] is None and "dense peak int8: not measured" in text
    assert [r["label"] for r in doc["configurations"] if r["reference"]] == ["torch eager float32"]


def test_stages_alone(bench):
    _, _, doc, _ = bench
    dims = load_checkpoint("tiny.en").dims
    by_what = {}
    for row in doc["stages"]:
        by_what.setdefault(row["what"], []).append(row["stage"])
    assert set(by_what) == {"torch eager float32", "max-builtin+value_bias_dropped float32 matmul"}
    assert all(len(stages) == 2 * dims.n_audio_layer + 2 for stages in by_what.values())
    assert all(row["median_ms"] > 0 for row in doc["stages"])


class _FixedBatch(CTranslate2Candidate):
    """CTranslate2 as if its engine were built for batches of exactly two."""

    @property
    def fixed_batch(self) -> int:
        return 2

    def encode(self, mel: np.ndarray) -> np.ndarray:
        assert len(mel) == 2, f"a fixed-batch candidate was run at batch {len(mel)}"
        return super().encode(mel)


def fixed_batch_build(checkpoint, config):
    return _FixedBatch(checkpoint, config)


def test_a_fixed_batch_candidate_runs_at_its_batch_and_the_table_says_so(tmp_path, capsys):
    out = tmp_path / "fixed.json"
    assert bench_main(["--candidate", "tests.test_bench:fixed_batch_build", "--batch", "1", "--no-traced",
                       "--out", str(out), *QUICK, "-q"]) == 0
    doc = json.loads(out.read_text())
    row = _config(doc, "ctranslate2")
    assert row["fixed_batch"] == 2 and [(s["batch"], s["fixed"]) for s in row["speed"]] == [(2, True)]
    assert [s["batch"] for s in _config(doc, "torch eager")["speed"]] == [1, 2]  # the reference beside it
    assert re.search(r"ctranslate2-float32\s+2 fixed", capsys.readouterr().out)


@pytest.mark.parametrize("args, message", [
    (["--candidate", "no_such_candidate"], "--candidate 'no_such_candidate'"),
    (["--candidate", "ctranslate2", "--dtype", "bfloat16"], "runs float32, int8, not bfloat16"),
    (["--candidate", PORT, "--dtype", "int8"], "not int8"),
    (["--candidate", PORT, "--repeats", "0"], "--repeats must be at least 1"),
    (["--candidate", PORT, "--candidate", PORT], "is given twice"),
    (["--candidate", "ctranslate2", "--whole-graph"], "add --candidate max"),
    (["--candidate", "ctranslate2", "--stages"], "add --candidate max"),
    (["--attention", "sideways"], "--attention: unknown sideways"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys, args, message):
    out, html = tmp_path / "b.json", tmp_path / "b.html"
    assert bench_main([*args, "--out", str(out), "--html", str(html), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not html.exists()


def test_flops_per_window_from_the_dimensions():
    assert encoder_flops(load_checkpoint("tiny.en").dims)["total"] / 1e9 == pytest.approx(36.94, abs=0.01)
    d = SMALL_DIMS  # 128 mels, 64 frames, width 96, 2 layers: each term by hand
    small = encoder_flops(d)
    assert small["conv_stem"] == 2 * 128 * 128 * 3 * 96 + 2 * 64 * 96 * 3 * 96
    assert small["attention"] == 2 * 4 * 64 * 64 * 96
    assert small["total"] == small["conv_stem"] + 2 * (8 + 16) * 64 * 96 * 96 + small["attention"]


def test_frontier_keeps_what_nothing_within_budget_beats():
    def row(label, ms, ratio, over=False):
        return {"label": label, "reference": False, "dtype": "float32", "speed": [{"batch": 1, "ms_per_window": ms}],
                "fidelity": {"ln_post_floor_ratio": ratio, "budget": 10.0, "over_budget": over}}

    doc = {"configurations": [row("fast-wrong", 1.0, 900.0, over=True), row("fast", 2.0, 3.0),
                              row("slow-close", 5.0, 1.0), row("dominated", 6.0, 2.0), row("no-ratio", 0.5, None),
                              row("tie-slower", 3.0, 3.0)]}
    assert frontier(doc) == {"1": ["fast", "slow-close"]}


def test_e2e_adds_the_teacher_forced_kl_ratio_and_the_wer(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert bench_main(["--candidate", "ctranslate2", "--e2e", "--no-traced", "--out", str(out), *QUICK, "-q"]) == 0
    row = _config(json.loads(out.read_text()), "ctranslate2")
    fidelity = row["fidelity"]
    assert fidelity["kl_verdict"] == "ok" and 0 < fidelity["kl_ratio"] < fidelity["kl_budget"]
    assert fidelity["wer"] == 0.0 and fidelity["wer_truth"] < 0.25  # the same words as openai-whisper's
    text = capsys.readouterr().out
    assert "KL/floor" in text.splitlines()[0]
    assert f"{fidelity['kl_ratio']:.3g}" in _table_line(text, "ctranslate2")
