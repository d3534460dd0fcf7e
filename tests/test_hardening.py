"""Hardening: a gate that holds on any CPU, crash and bad-input paths, short tap names, devices.

Each command runs for real (a subprocess where the environment must differ, such as
PyTorch's kernel path) and is checked for its exit status, its one line, and that
nothing was written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fidelity.candidates.base import CandidateConfig
from fidelity.checkpoints import random_checkpoint, save_checkpoint
from fidelity.commands import cli
from fidelity.errors import CandidateCrash, FidelityError
from fidelity.reference.runner import TorchRunner
from fidelity.taps import resolve_tap, select_taps

from .conftest import SMALL_DIMS

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "reports" / "baseline.json"

# PyTorch's float32 kernels as a machine without AVX-512, and with no wide vectors at all,
# would pick them: the noise floor moves by up to 6x between these (fidelity.floor_spread).
OTHER_KERNEL_PATHS = {
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "DEFAULT": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def command(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=900)


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("capability", sorted(OTHER_KERNEL_PATHS))
def test_committed_baseline_accepts_a_clean_run_under_another_reference_kernel_path(tmp_path, capability):
    out = tmp_path / "report"
    done = command("fidelity.compare", "--layer", "all", "--out", str(out), "-q", env=OTHER_KERNEL_PATHS[capability])
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["reference_platform"]["cpu_capability"] == capability  # the kernel path really changed
    gated = command("fidelity.gate", "--baseline", str(BASELINE), "--report", str(out / "report.json"))
    assert gated.returncode == 0, gated.stdout + gated.stderr
    assert "within tolerance" in gated.stdout


def test_gate_fails_a_tap_over_its_noise_floor_budget_whatever_the_baseline(tmp_path):
    baseline = json.loads(BASELINE.read_text())
    report = {key: baseline[key] for key in ("model", "device", "dtype")}
    report["audio"] = {"source": baseline["audio"]}
    report["taps"] = [{**row, "noise_floor_ratio": 1.0, "budget": 10.0} for row in baseline["taps"]]
    report["taps"][3]["noise_floor_ratio"] = 12.5
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    done = command("fidelity.gate", "--baseline", str(BASELINE), "--report", str(path))
    assert done.returncode == 1
    assert f"REGRESSION {baseline['taps'][3]['name']}: noise_floor_ratio 12.5 is over its budget" in done.stdout


def test_out_under_a_regular_file_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("precious")
    done = command("fidelity.compare", "--out", str(blocker / "run"), "--layer", "ln_post")
    assert done.returncode == 2
    assert "is a file, not a folder" in one_line(done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and blocker.read_text() == "precious"


def test_a_crash_is_one_line_exit_3_and_a_crash_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FIDELITY_CACHE", str(tmp_path))

    def body():
        raise KeyError("boom")

    assert cli.run_main("compare", body) == cli.EXIT_CRASH
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("compare: crashed: KeyError") and "not a divergence" in line
    logs = list((tmp_path / "crashes").glob("compare-*.log"))
    assert len(logs) == 1 and "KeyError: 'boom'" in logs[0].read_text()

    def candidate_body():
        try:
            raise ValueError("graph input 3 has the wrong shape")
        except ValueError as exc:
            raise CandidateCrash("the candidate raised") from exc

    assert cli.run_main("compare", candidate_body) == cli.EXIT_CRASH
    assert capsys.readouterr().err.startswith("compare: the candidate crashed: ValueError: graph input 3")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_bad_input(tmp_path, bad):
    checkpoint = random_checkpoint(SMALL_DIMS, seed=3)
    checkpoint.state["encoder.blocks.1.mlp.0.weight"][2, 5] = bad
    path = tmp_path / "broken.pt"
    save_checkpoint(checkpoint, path)
    out = tmp_path / "report"
    done = command("fidelity.compare", "--model", str(path), "--out", str(out))
    assert done.returncode == 2
    line = one_line(done)
    assert "encoder.blocks.1.mlp.0.weight" in line and "non-finite" in line
    assert not out.exists()


def test_short_tap_names_resolve_everywhere_a_tap_is_named():
    assert [t.name for t in select_taps(SMALL_DIMS, "ln_post")] == ["encoder.ln_post"]
    assert [t.name for t in select_taps(SMALL_DIMS, "conv1,blocks.1.mlp.0")] == ["encoder.conv1",
                                                                                  "encoder.blocks.1.mlp.0"]
    assert [t.name for t in select_taps(SMALL_DIMS, "1.attn")][-1] == "encoder.blocks.1.resid_mid"
    assert all(".attn.query" in t.name for t in select_taps(SMALL_DIMS, "blocks.*.attn.query"))
    assert resolve_tap(SMALL_DIMS, "ln_post") == "encoder.ln_post"
    assert resolve_tap(SMALL_DIMS, "1.mlp.0") == "encoder.blocks.1.mlp.0"
    assert resolve_tap(SMALL_DIMS, "0.attn") == "encoder.blocks.0.resid_mid"  # a stage stands for its output
    with pytest.raises(FidelityError, match="did you mean encoder.ln_post"):
        resolve_tap(SMALL_DIMS, "ln_postt")
    with pytest.raises(FidelityError, match="block 7 does not exist"):
        select_taps(SMALL_DIMS, "7.attn")


def test_short_tap_names_on_the_command_line(tmp_path):
    out = tmp_path / "report"
    done = command("fidelity.compare", "--layer", "ln_post,conv1", "--html", "--heatmap-tap", "conv1",
                   "--out", str(out), "-q")
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "report.json").read_text())
    assert [t["name"] for t in doc["taps"]] == ["encoder.conv1", "encoder.ln_post"]
    refused = command("fidelity.compare", "--layer", "ln_post", "--sensitivity", "2.mlp.0", "--e2e",
                      "--out", str(tmp_path / "other"))
    assert refused.returncode == 2 and "--sensitivity takes a stage output" in one_line(refused)
    assert not (tmp_path / "other").exists()


def test_one_device_validation_for_the_reference_and_every_candidate():
    checkpoint = random_checkpoint(SMALL_DIMS, seed=0)
    for make in (lambda: TorchRunner(checkpoint, "float32", "cuda"), lambda: CandidateConfig(device="cuda")):
        with pytest.raises(FidelityError, match="unknown device 'cuda': choose from cpu, gpu"):
            make()
    if not torch.cuda.is_available():
        with pytest.raises(FidelityError, match="torch sees no CUDA device"):
            TorchRunner(checkpoint, "float32", "gpu")


def test_bench_names_the_flag_it_refuses(tmp_path):
    done = command("fidelity.bench", "--e2e-seconds", "0", "--out", str(tmp_path / "b.json"))
    assert done.returncode == 2
    line = one_line(done)
    assert "--e2e-seconds" in line and "--batch" not in line
    assert not (tmp_path / "b.json").exists()
