"""Teacher forcing on the real tiny.en decoder, with the real MAX candidate, on the shipped clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fidelity import audio
from fidelity.compare import main as compare_main
from fidelity.e2e import torch_encoder, transcribe_with
from fidelity.e2e.teacher import Forcing, judge, reference_windows, teacher_forced
from fidelity.errors import FidelityError
from fidelity.gate import main as gate_main
from fidelity.tolerances import KL_NEGLIGIBLE, kl_ratio_budget

FAULT = "value_bias_dropped"  # a weight change: no graph to compile


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.whisper_model()


@pytest.fixture(scope="module")
def long_reference(model):
    clip = audio.load_audio(audio.DATA_DIR / "speech_long.flac")
    return transcribe_with(model, clip.samples, model.encoder, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """compare --e2e on the shipped 30 s clip: the clean built-in candidate and a faulted one."""
    root = tmp_path_factory.mktemp("teacher")
    codes = {name: compare_main(["--e2e", "--layer", "encoder.ln_post", "--out", str(root / name), "-q", *extra])
             for name, extra in (("clean", []), ("fault", ["--fault", FAULT]))}
    return {name: (codes[name], root / name / "report.json") for name in codes}


def test_teacher_forcing_replays_the_greedy_decode_of_every_window(model, long_reference):
    """One decoder pass over the recorded prompt, sot sequence, timestamps and tokens picks, after
    openai-whisper's logit filters, the very tokens the reference's greedy decode picked."""
    windows = reference_windows(long_reference.decodes)
    assert len(windows) >= 4 and any(w.options.prompt for w in windows)
    for window in windows:
        forcing = Forcing(model, window)
        assert forcing.targets[-1] == forcing.tokenizer.eot and forcing.targets[:-1] == window.tokens
        assert any(t >= forcing.tokenizer.timestamp_begin for t in window.tokens)
        with torch.no_grad():
            features = model.encoder(torch.from_numpy(window.mel[None])).numpy()
        raw = forcing.logits(model, features)
        filtered, decisions = forcing.decisions(raw)
        assert filtered.argmax(dim=-1).tolist() == decisions.top1.tolist() == forcing.targets
        assert torch.isfinite(raw).all() and raw.shape == (len(forcing.targets), model.dims.n_vocab)
        expected = forcing.allowed.clone()  # the context's masks, less the text wherever the timestamps won
        expected[torch.from_numpy(decisions.timestamps_won), :forcing.tokenizer.timestamp_begin] = False
        assert torch.equal(torch.isfinite(filtered), expected)


def test_a_candidate_identical_to_the_reference_gives_kl_zero(model, tiny, long_reference):
    windows = reference_windows(long_reference.decodes)[:2]
    reference = torch_encoder(tiny, "float64", "cpu")
    result = teacher_forced(model, windows, reference, reference, torch_encoder(tiny, "float32", "cpu"), "float32",
                            "float32 floor")
    cand, floor = result.candidate, result.floor
    assert cand["kl_mean"] == 0.0 and cand["kl_max"] == 0.0 and cand["flip_count"] == 0
    assert cand["top1_agreement"] == 1.0 and floor["kl_mean"] > 0
    assert result.judgement["kl_ratio"] == 0.0 and result.verdict == "ok" and not result.failed
    assert result.as_dict()["floor_encoder"] == "float32 floor"


def test_builtin_float32_candidate_is_within_budget_and_a_fault_is_not(runs):
    code, path = runs["clean"]
    teacher = json.loads(path.read_text())["e2e"]["teacher"]
    assert code == 0 and teacher["verdict"] == "ok"
    assert 0 < teacher["kl_ratio"] <= teacher["budget"] == kl_ratio_budget("float32")
    assert teacher["floor"]["kl_mean"] > 0 and teacher["candidate"]["tokens"] == len(teacher["windows"][0]["tokens"])
    window = teacher["windows"][0]
    assert len(window["candidate"]["kl"]) == len(window["floor"]["kl"]) == len(window["margin"])

    code, path = runs["fault"]
    teacher = json.loads(path.read_text())["e2e"]["teacher"]
    assert code == 1 and teacher["verdict"] == "over_budget" and teacher["kl_ratio"] > teacher["budget"]
    flips = teacher["candidate"]["flips"]  # a real change: its flips are far outside the floor's noise
    assert flips and all(f["near_tie"] is False and f["margin"] > f["near_tie_threshold"] for f in flips)
    assert all(f["decided_by"] in ("timestamp_rule", "argmax") and f["floor_flips_here"] is False for f in flips)


def test_any_candidate_through_the_command_identical_to_the_floor_gives_ratio_one(tmp_path):
    """A non-MAX candidate (openai-whisper float32 behind the candidate protocol) is the floor's own
    arithmetic: teacher forcing gives it exactly the floor's KL at every token."""
    spec = f"{Path(__file__).parent / 'protocol_candidates.py'}:black_box"
    out = tmp_path / "o"
    assert compare_main(["--candidate", spec, "--e2e", "--layer", "encoder.ln_post", "--out", str(out), "-q"]) == 0
    teacher = json.loads((out / "report.json").read_text())["e2e"]["teacher"]
    assert teacher["kl_ratio"] == 1.0 and teacher["verdict"] == "ok" and teacher["candidate"]["kl_mean"] > 0
    assert all(w["candidate"]["kl"] == w["floor"]["kl"] for w in teacher["windows"])


def test_gate_reads_the_kl_ratio(tmp_path, runs, capsys):
    baseline = tmp_path / "baseline.json"
    assert gate_main(["--baseline", str(baseline), "--report", str(runs["clean"][1]), "--update", "-q"]) == 0
    assert json.loads(baseline.read_text())["teacher"]["kl_ratio"] > 0
    assert gate_main(["--baseline", str(baseline), "--report", str(runs["clean"][1]), "-q"]) == 0
    capsys.readouterr()
    assert gate_main(["--baseline", str(baseline), "--report", str(runs["fault"][1]), "-q"]) == 1
    assert "REGRESSION e2e.teacher: kl_ratio" in capsys.readouterr().out


def test_a_floor_that_cannot_run_is_reported_not_computed(model, tiny, long_reference):
    windows = reference_windows(long_reference.decodes)[:1]
    reference = torch_encoder(tiny, "float64", "cpu")
    candidate = torch_encoder(tiny, "float32", "cpu")
    forced = teacher_forced(model, windows, reference, candidate, None, "bfloat16", "bfloat16 floor on gpu",
                            "--device gpu: torch sees no CUDA device")
    result = forced.as_dict()
    assert result["verdict"] == "not_computed" and result["kl_ratio"] is None and not forced.failed
    assert result["floor"] == {"computed": False, "reason": "--device gpu: torch sees no CUDA device"}
    assert result["candidate"]["kl_mean"] > 0 and "floor" not in result["windows"][0]
    assert all(f["near_tie"] is None for f in result["candidate"]["flips"])


def test_no_speech_is_refused_in_one_line_and_nothing_written(tmp_path, capsys):
    rng = np.random.default_rng(0)
    soundfile.write(str(tmp_path / "noise.wav"), 0.01 * rng.standard_normal(5 * 16000), 16000)
    soundfile.write(str(tmp_path / "silence.wav"), np.zeros(5 * 16000), 16000)
    for name, message in (("noise.wav", "has no speech"), ("silence.wav", "is silent")):
        out = tmp_path / name.replace(".wav", "")
        assert compare_main(["--audio", str(tmp_path / name), "--e2e", "--layer", "encoder.ln_post",
                             "--out", str(out)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and message in err[0]
        assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_ground_truth_that_is_not_text_is_refused(tmp_path, capsys):
    binary = tmp_path / "truth.txt"
    binary.write_bytes(bytes(range(128, 256)))
    assert compare_main(["--e2e", "--text", str(binary), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read ground-truth text" in err[0]
    assert not (tmp_path / "o").exists()


def test_reference_windows_refuse_a_transcript_without_tokens(model):
    silence = np.zeros(3 * 16000, np.float32)
    transcript = transcribe_with(model, silence, model.encoder, progress=False)
    with pytest.raises(FidelityError, match="no speech"):
        reference_windows(transcript.decodes)


def test_a_ratio_of_two_rounding_noises_is_not_a_verdict():
    """Short clips in float32: both KLs are the decoder's rounding, their ratio is noise (seen 4-13x)."""
    def side(kl):
        return {"kl_mean": kl, "kl_p99": kl, "flips": []}

    tiny = judge(side(KL_NEGLIGIBLE / 300), side(KL_NEGLIGIBLE / 3000), "float32")
    assert tiny["kl_ratio"] == pytest.approx(10.0) and tiny["verdict"] == "ok" and "immaterial" in tiny["note"]
    real = judge(side(1e-3), side(1e-4), "bfloat16")
    assert real["kl_ratio"] == pytest.approx(10.0) and real["verdict"] == "over_budget"
