"""The corpus sweep, for real: Ray in the test process's machine, tiny.en, MAX and openai-whisper.

One 50-clip synthetic corpus (espeak-ng) plus a corrupt file and a manifest entry that
does not exist. The sweep (chained stage statistics, to keep it cheap) is interrupted
after its first rows, resumed over the whole corpus (the interrupted run's rows are not
recomputed), and run a third time (nothing recomputed, no Ray started). Isolation,
transcription and a fault run on three clips. Bad input is refused before anything is
written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fidelity.corpus.inputs import read_inputs
from fidelity.corpus.make_synthetic import generate
from fidelity.corpus.rows import SCHEMA, load_rows
from fidelity.errors import FidelityError

ROOT = Path(__file__).resolve().parents[1]
CLIPS = 50

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (scripts/setup.sh installs it)")


def _text(value) -> str | None:
    """A string cell, or None for a null one (pandas may give NaN)."""
    return value if isinstance(value, str) else None


def corpus_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fidelity.corpus", *args]


def run_corpus(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(corpus_cmd(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """50 synthetic clips, a corrupt .wav, and manifests over parts of it."""
    folder = tmp_path_factory.mktemp("corpus") / "synthetic"
    manifest = generate(folder, CLIPS, seed=7)
    (folder / "zz_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 50)
    lines = manifest.read_text().splitlines()
    first = folder.parent / "first.jsonl"
    first.write_text("\n".join(lines[:20]).replace('"path": "', f'"path": "{folder}/') + "\n")
    return folder


def test_inputs_folder_and_manifest(corpus, tmp_path):
    entries = read_inputs(corpus)
    assert len(entries) == CLIPS + 1 and entries[-1].clip_id == "zz_corrupt.wav"
    manifest = read_inputs(corpus / "manifest.jsonl")
    assert [e.clip_id for e in manifest][:2] == ["syn0000", "syn0001"] and manifest[0].text.endswith(".")
    csv = tmp_path / "m.csv"
    csv.write_text("id,path,text\na,missing.wav,hello\nb,other.wav,\n")
    rows = read_inputs(csv)
    assert rows[0].path == tmp_path / "missing.wav" and rows[0].text == "hello" and rows[1].text is None
    digest, data, problem = rows[0].read()
    assert data is None and "missing.wav" in problem


@pytest.mark.parametrize("content, message", [
    ("id,text\na,hello\n", "no 'path' column"),
    ('{"id": "a", "text": "hello"}\n', "no 'path' field"),
    ("", "lists no clips"),
])
def test_bad_manifests_exit_2_and_write_nothing(tmp_path, content, message):
    suffix = ".csv" if content.startswith("id,") else ".jsonl"
    manifest = tmp_path / f"manifest{suffix}"
    manifest.write_text(content)
    out = tmp_path / "out"
    result = run_corpus(str(manifest), "--out", str(out), timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_empty_folder_and_dead_address_exit_2(corpus, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no audio here")
    result = run_corpus(str(empty), "--out", str(tmp_path / "out1"), timeout=120)
    assert result.returncode == 2 and "holds no audio files" in result.stderr, result.stderr
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    result = run_corpus(str(corpus / "manifest.jsonl"), "--address", f"127.0.0.1:{port}",
                        "--out", str(tmp_path / "out2"), "-q", timeout=120)
    assert result.returncode == 2 and "does not answer" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and time.perf_counter() - start < 60
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_sweep_interrupted_resumed_and_reported(corpus, tmp_path):
    out = tmp_path / "sweep"
    missing = corpus.parent / "with_missing.jsonl"
    missing.write_text((corpus.parent / "first.jsonl").read_text() + json.dumps({"id": "gone", "path": "nope.wav"})
                       + "\n")
    # 1: the first 20 clips and a missing file, interrupted once some rows are on disk
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(corpus_cmd(str(missing), "--out", str(out), "--flush-every", "3", "--no-isolate"),
                               cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out / "rows").glob("part-*.parquet"))) >= 2:
            break
        time.sleep(1)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    first = load_rows(out / "rows")
    assert 4 <= len(first) < 21 and "gone" in set(first["clip_id"])
    assert json.loads((out / "corpus.json").read_text())["status"] == "interrupted"

    # 2: the whole folder; the interrupted run's rows are reused, not recomputed
    result = run_corpus(str(corpus), "--out", str(out), "--no-isolate")
    assert result.returncode == 1, result.stderr[-3000:]  # the corrupt file's error row
    rows = load_rows(out / "rows")
    assert list(rows.columns) == SCHEMA.names
    swept = rows[rows["clip_id"] != "gone"]
    assert len(swept) == CLIPS + 1  # every clip of the folder once, the corrupt file included
    # clip ids differ between the manifest (syn0000) and the folder (syn0000.wav); the content hash is the key
    reused = swept["run_id"].isin(set(first["run_id"]))
    assert reused.sum() == len(first) - 1  # every row of run 1 except the missing file's
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["status"] == "complete" and meta["computed"] == CLIPS + 1 - reused.sum()
    assert f"{meta['computed']} row(s) computed, {reused.sum()} reused" in result.stdout

    good = swept[swept["status"] == "ok"]
    assert len(good) == CLIPS
    corrupt = swept[swept["clip_id"] == "zz_corrupt.wav"].iloc[0]
    assert corrupt["status"] == "error" and corrupt["error_phase"] == "load"
    assert "cannot read audio" in corrupt["error"] and "zz_corrupt.wav" in corrupt["error"]
    # stage-boundary statistics: every block's resid_post and ln_post (chained here; isolation: the next test)
    taps = [s["tap"] for s in good.iloc[0]["stages"]]
    assert "encoder.ln_post" in taps and "encoder.blocks.3.resid_post" in taps and len(taps) == 10
    stages = pd.json_normalize([s for row in good["stages"] for s in row])
    assert (stages["floor_ratio"] > 0).all() and stages["local_floor_ratio"].isna().all()
    assert (stages["cosine"] > 0.99999).all() and (good["ln_post_floor_ratio"] < 10).all()
    # without isolation the first divergence is the chained one: the first stage output over budget (the clean
    # float32 encoder has a few clips whose last block's chained error passes 10 floors; isolated, it never does)
    for _, row in good.iterrows():
        over = [s["tap"] for s in row["stages"] if s["verdict"] != "ok"]
        assert _text(row["first_divergence_tap"]) == (over[0] if over else None)
        assert _text(row["first_divergence_chained"]) == _text(row["first_divergence_tap"])
    diverged = int(good["first_divergence"].notna().sum())
    assert (good["candidate_s"] > 0).all() and (good["total_s"] >= good["candidate_s"]).all()
    assert good["e2e"].eq(False).all() and good["reference_text"].isna().all()

    report = out / "report"
    summary = json.loads((report / "summary.json").read_text())
    config = summary["configurations"][0]
    assert (config["clips"], config["ok"], config["errors"]) == (CLIPS + 1, CLIPS, 1)
    assert (config["holds"], config["diverged"]) == (CLIPS - diverged, diverged)
    assert set(config["stages"]) == set(taps)
    assert [e["clip_id"] for e in summary["errors"]] == ["zz_corrupt.wav"]
    worst = pd.read_csv(report / "worst.csv")
    assert len(worst) == 15 and worst["worst_floor_ratio"].is_monotonic_decreasing
    page = (report / "report.html").read_text()
    assert page.count("<img") == 2 and "zz_corrupt.wav" in page

    # 3: nothing left to do: no row recomputed, Ray not started, the report rewritten
    result = run_corpus(str(corpus), "--out", str(out), "--no-isolate", timeout=300)
    assert "0 row(s) computed, 51 reused" in result.stdout, result.stderr[-2000:]
    assert len(load_rows(out / "rows")) == len(rows) + 0 and "Ray" not in result.stderr


def test_e2e_and_a_fault_on_a_few_clips(corpus, tmp_path):
    manifest = tmp_path / "three.jsonl"
    lines = (corpus / "manifest.jsonl").read_text().splitlines()[:3]
    manifest.write_text("\n".join(lines).replace('"path": "', f'"path": "{corpus}/') + "\n")
    out = tmp_path / "e2e"
    result = run_corpus(str(manifest), "--out", str(out), "--e2e", "--candidate", "max",
                        "--candidate", "max:value_bias_dropped")
    assert result.returncode == 1, result.stderr[-3000:]  # the fault diverges
    rows = load_rows(out / "rows")
    assert len(rows) == 6 and (rows["status"] == "ok").all(), rows["error"].tolist()
    clean, faulty = rows[rows["candidate"] == "max"], rows[rows["candidate"] == "max:value_bias_dropped"]
    assert clean["first_divergence"].isna().all() and clean["transcripts_identical"].all()
    assert (clean["worst_local_floor_ratio"] < 10).all()
    local = pd.json_normalize([s for row in rows["stages"] for s in row])["local_floor_ratio"]
    assert local.notna().all()
    assert (clean["wer_vs_reference"] == 0).all()
    assert (faulty["first_divergence"] == "blocks.0.attn").all()
    assert clean["wer_reference_vs_truth"].notna().all() and clean["cer_candidate_vs_truth"].notna().all()
    assert (clean["teacher_kl_mean"] >= 0).all() and clean["teacher_verdict"].isin(["ok", "not_computed"]).all()
    assert (faulty["teacher_kl_mean"] > clean["teacher_kl_mean"].max()).all()
    summary = json.loads((out / "report" / "summary.json").read_text())
    by_label = {c["candidate"]: c for c in summary["configurations"]}
    assert by_label["max"]["holds"] == 3 and by_label["max:value_bias_dropped"]["holds"] == 0
    assert by_label["max:value_bias_dropped"]["first_divergence"] == {"blocks.0.attn": 3}


def test_a_candidate_by_spec_that_is_not_max(corpus, tmp_path):
    """CTranslate2's encoder (ln_post only, no patching) through the same sweep, without isolation."""
    manifest = tmp_path / "two.jsonl"
    lines = (corpus / "manifest.jsonl").read_text().splitlines()[:2]
    manifest.write_text("\n".join(lines).replace('"path": "', f'"path": "{corpus}/') + "\n")
    out = tmp_path / "ct2"
    result = run_corpus(str(manifest), "--out", str(out), "--no-isolate",
                        "--candidate", "fidelity.candidates.ctranslate2:build")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = load_rows(out / "rows")
    assert len(rows) == 2 and (rows["status"] == "ok").all(), rows["error"].tolist()
    assert (rows["ln_post_floor_ratio"] < 10).all() and (rows["ln_post_cosine"] > 0.99999).all()
    refused = run_corpus(str(manifest), "--out", str(tmp_path / "o"), "--candidate", "no_such_module:build",
                         timeout=120)
    assert refused.returncode == 2 and not (tmp_path / "o").exists()


def test_unknown_candidate_and_dtype_are_bad_input(corpus, tmp_path):
    result = run_corpus(str(corpus), "--candidate", "max:no_such_fault", "--out", str(tmp_path / "o"), timeout=120)
    assert result.returncode == 2 and "unknown fault" in result.stderr
    result = run_corpus(str(corpus), "--dtypes", "float8", "--out", str(tmp_path / "o"), timeout=120)
    assert result.returncode == 2 and "--dtypes" in result.stderr
    assert not (tmp_path / "o").exists()


def test_generator_refuses_zero():
    with pytest.raises(FidelityError):
        generate(Path("/nonexistent/never"), 0)


def test_worker_plan_per_device():
    from fidelity.corpus.engine import RayOptions, check_reachable, plan_workers

    assert plan_workers(RayOptions(), {"CPU": 2.0}) == (2, {"num_cpus": 1})
    assert plan_workers(RayOptions(), {"CPU": 8.0, "memory": 10 * 2 ** 30}) == (3, {"num_cpus": 1})  # memory bound
    assert plan_workers(RayOptions(address="10.0.0.1:6379"), {"CPU": 64.0}) == (32, {"num_cpus": 2})
    assert plan_workers(RayOptions(workers=3, cpus_per_worker=1), {"CPU": 8.0}) == (3, {"num_cpus": 1})
    assert plan_workers(RayOptions(device="gpu"), {"CPU": 16.0, "GPU": 2.0}) == (2, {"num_gpus": 1, "num_cpus": 8})
    with pytest.raises(FidelityError, match="no GPUs"):
        plan_workers(RayOptions(device="gpu"), {"CPU": 16.0})
    with pytest.raises(FidelityError, match="HOST:PORT"):
        check_reachable("nonsense")
