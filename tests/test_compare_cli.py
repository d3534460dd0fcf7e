"""`python -m fidelity.compare` on the real tiny.en and the shipped speech clips."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from fidelity.audio import DATA_DIR
from fidelity.compare import main
from fidelity.report.dumps import load_dumps

REQUIRED = {"name", "shape", "cosine", "rel_l2", "max_abs", "bias", "std_ratio", "noise_floor_ratio", "verdict"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "report"
    dump = out.parent / "dump"
    code = main(["--out", str(out), "--dump", str(dump), "--layer", "all", "-q"])
    return code, out, dump


def test_every_tap_of_tiny_en_is_within_the_noise_floor_budget(default_run):
    code, out, _ = default_run
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["first_divergence"] is None
    assert doc["model"]["dims"]["n_audio_layer"] == 4
    assert len(doc["taps"]) == 5 + 12 * 4 + 1
    for row in doc["taps"]:
        assert REQUIRED <= set(row)
        assert row["verdict"] == "ok", row["name"]
        assert row["noise_floor_ratio"] <= 10.0
    post = doc["taps"][-1]
    assert post["name"] == "encoder.ln_post"
    assert post["rel_l2"] <= 1e-5 and post["cosine"] >= 0.999999
    with open(out / "report.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == [t["name"] for t in doc["taps"]]


def test_dumps_load_with_numpy_and_agree_with_the_report(default_run):
    _, out, dump = default_run
    sides = load_dumps(dump)
    assert set(sides) == {"candidate", "reference", "reference64"}
    doc = json.loads((out / "report.json").read_text())
    for row in doc["taps"]:
        cand, truth = sides["candidate"][row["name"]], sides["reference64"][row["name"]]
        assert list(cand.shape) == row["shape"]
        rel = np.linalg.norm(cand.astype(np.float64) - truth) / np.linalg.norm(truth)
        assert rel == pytest.approx(row["rel_l2"], rel=1e-6)
    plain = np.load(dump / "candidate" / "encoder.ln_post.npy")  # numpy alone, no fidelity code
    assert plain.shape == tuple(doc["taps"][-1]["shape"]) and plain.dtype == np.float32


def test_long_audio_is_compared_window_by_window(tmp_path):
    out = tmp_path / "long"
    assert main(["--audio", str(DATA_DIR / "speech_long.flac"), "--layer", "encoder.ln_post,0",
                 "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["audio"]["windows"] == 4 and len(doc["windows"]) == 4
    assert all(w["ln_post"]["verdict"] == "ok" for w in doc["windows"])
    assert {row["window"] for row in doc["taps"]} <= {0, 1, 2, 3}


@pytest.mark.parametrize("args, message", [
    (["--audio", "missing.wav"], "audio file not found: missing.wav"),
    (["--layer", "encoder.blocks.9.attn_ln"], "unknown tap"),
    (["--layer", "12"], "block 12 does not exist"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--dtype", "float8"], "invalid choice: 'float8'"),
    (["--model", "nothing.pt"], "checkpoint file not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = _run([*args, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert [line for line in err if "error" in line] == [line for line in err if message in line]
    assert len([line for line in err if "error" in line]) == 1
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_silent_short_and_corrupt_audio(tmp_path, capsys):
    soundfile.write(str(tmp_path / "silent.wav"), np.zeros(48000), 16000)
    soundfile.write(str(tmp_path / "short.wav"), 0.1 * np.ones(4000), 16000)
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + bytes(100))
    for name, message in (("silent.wav", "is silent"), ("short.wav", "at least 1 s"),
                          ("corrupt.flac", "cannot read audio")):
        assert main(["--audio", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    assert main(["--layer", "encoder.ln_post", "--out", str(keep), "-q"]) == 2
    assert "not an earlier fidelity output" in capsys.readouterr().err
    assert (keep / "notes.txt").read_text() == "precious"


def test_other_commands_refuse_an_unusable_out_before_any_work(tmp_path, capsys):
    from fidelity.bench import main as bench_main
    from fidelity.faults.__main__ import main as faults_main
    from fidelity.sweep import main as sweep_main

    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    for run, args, message in ((faults_main, ["--out", str(keep)], "not an earlier fidelity output"),
                               (sweep_main, ["--out", str(keep)], "not an earlier fidelity output"),
                               (bench_main, ["--out", str(keep)], "is a folder"),
                               (bench_main, ["--out", str(keep / "notes.txt" / "b.json")], "is a file")):
        assert run([*args, "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]
    assert (keep / "notes.txt").read_text() == "precious"


def test_module_entry_point_and_help():
    done = subprocess.run([sys.executable, "-m", "fidelity.compare", "--layer", "nope"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("compare: error: unknown tap 'nope'")
    shown = subprocess.run([sys.executable, "-m", "fidelity.compare", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--isolate" in shown.stdout and "noise floor" in shown.stdout



def _run(args: list[str]) -> int:
    """main(), with argparse's own exit (usage errors) turned into its code."""
    try:
        return main(args)
    except SystemExit as exc:
        return exc.code
