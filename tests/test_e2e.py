"""The MAX encoder inside openai-whisper's transcription, on the shipped speech clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import whisper
from whisper.tokenizer import get_tokenizer

from fidelity import audio
from fidelity.candidates.base import CandidateConfig
from fidelity.candidates.max_builtin import BuiltinCandidate
from fidelity.compare import main as compare_main
from fidelity.e2e import DropInEncoder, candidate_encoder, transcribe_with
from fidelity.e2e.free import compare_transcripts
from fidelity.e2e.sensitivity import noise_sweep
from fidelity.errors import FidelityError
from fidelity.faults import FAULTS, faulty_candidate


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.whisper_model()


@pytest.fixture(scope="module")
def candidate(tiny):
    return BuiltinCandidate(tiny, CandidateConfig())


@pytest.fixture(scope="module")
def long_clip():
    return audio.load_audio(audio.DATA_DIR / "speech_long.flac")


@pytest.fixture(scope="module")
def tokenizer(model):
    return get_tokenizer(model.is_multilingual, language="en", task="transcribe")


@pytest.fixture(scope="module")
def reference_long(model, long_clip):
    return transcribe_with(model, long_clip.samples, model.encoder, progress=False)


def test_drop_in_encoder_inside_whisper_decode(model, candidate, speech_mel):
    mel = torch.from_numpy(speech_mel)
    expected = whisper.decode(model, mel, whisper.DecodingOptions(language="en", temperature=0.0, fp16=False))
    original = model.encoder
    model.encoder = candidate_encoder(candidate)
    try:
        features = model.embed_audio(mel)
        got = whisper.decode(model, mel, whisper.DecodingOptions(language="en", temperature=0.0, fp16=False))
    finally:
        model.encoder = original
    assert isinstance(model.encoder, whisper.model.AudioEncoder)
    assert features.dtype == torch.float32 and features.shape == (1, 1500, 384)
    assert [r.tokens for r in got] == [r.tokens for r in expected]


@pytest.mark.slow
def test_clean_max_transcribes_long_audio_identically(model, tokenizer, candidate, long_clip, reference_long):
    cand = transcribe_with(model, long_clip.samples, candidate_encoder(candidate), progress=False)
    truth = (audio.DATA_DIR / "speech_long.txt").read_text()
    result = compare_transcripts(tokenizer, reference_long, cand, truth)
    assert len(reference_long.decodes) >= 4  # several 30 s windows, openai-whisper's own seeking
    assert result["identical"] and result["wer"] == 0.0 and result["first_parting"] is None
    assert result["truth"]["wer_reference"] == result["truth"]["wer_candidate"] < 0.25
    assert all(s["start_diff"] == 0 and s["end_diff"] == 0 for s in result["segments"])
    assert result["timing"]["candidate"]["encoder_calls"] == len(cand.decodes)


@pytest.mark.slow
def test_a_fault_shows_where_the_transcripts_part(model, tokenizer, tiny, long_clip, reference_long):
    broken = faulty_candidate(tiny, FAULTS["missing_ln_post"], CandidateConfig())
    cand = transcribe_with(model, long_clip.samples, candidate_encoder(broken), progress=False)
    result = compare_transcripts(tokenizer, reference_long, cand)
    parting = result["first_parting"]
    assert not result["identical"] and result["wer"] > 0
    assert parting is not None and parting["reference_token"] != parting["candidate_token"]
    for side in ("reference", "candidate"):
        top = parting[f"{side}_top"]
        assert len(top) == 5 and all(t["logprob"] <= 0 for t in top)
        assert top == sorted(top, key=lambda t: -t["logprob"])
    assert parting["reference_top"][0]["token"] == parting["reference_token"] or parting["token_index"] == 0


@pytest.mark.slow
def test_noise_sweep_measures_decoder_tolerance(model, candidate, reference_long, long_clip):
    samples = long_clip.samples[: 30 * 16000]
    reference = transcribe_with(model, samples, model.encoder, progress=False)
    rows = noise_sweep(model, samples, candidate, "encoder.blocks.1.resid_post", [1e-4, 1.0], reference)
    assert [r["level"] for r in rows] == [1e-4, 1.0]
    assert rows[0]["wer"] <= rows[1]["wer"] and rows[1]["wer"] > 0
    with pytest.raises(FidelityError, match="stage output"):
        noise_sweep(model, samples, candidate, "encoder.blocks.1.attn.query", [0.1], reference)


def test_bad_ground_truth_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert compare_main(["--e2e", "--text", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "ground-truth text" in capsys.readouterr().err
    assert compare_main(["--e2e", "--text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")]) == 2
    assert compare_main(["--text", str(empty), "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    assert compare_main(["--e2e", "--sensitivity", "encoder.blocks.0.attn.query", "--out", str(tmp_path / "o")]) == 2
    assert "--sensitivity takes a stage output" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_e2e_report_in_compare(tmp_path, capsys):
    """The built-in float32 candidate through `compare --e2e`: the same words, its free transcripts beside
    the float32 floor's, and no floor-noise band to draw for a candidate with the reference's words."""
    out = tmp_path / "e2e"
    assert compare_main(["--e2e", "--layer", "encoder.ln_post", "--out", str(out), "-q"]) == 0
    e2e = json.loads((out / "report.json").read_text())["e2e"]
    assert {"reference_text", "candidate_text", "wer", "defaults", "free", "teacher"} <= set(e2e)
    assert e2e["wer"] == 0.0 and e2e["truth"]["wer_candidate"] < 0.25
    free = e2e["free"]
    assert free["floor_encoder"] == "openai-whisper float32 on cpu, IEEE float32 (TF32 off)"
    for decoding in ("greedy", "defaults"):
        for side in ("reference", "candidate", "floor"):
            row = free[decoding][side]
            assert row["wer"] == 0.0 and row["loops"] == [] and max(row["compression_ratios"]) < 2.4
    assert free["band"] == {"computed": False, "reason": "not needed: the candidate's greedy transcript has the "
                                                        "reference's words (WER 0 is in any band)"}
    assert "floor-noise band not drawn: not needed" in capsys.readouterr().out


def test_drop_in_encoder_keeps_device_and_dtype():
    encoder = DropInEncoder(lambda mel: np.ones((mel.shape[0], 3, 2), np.float32))
    out = encoder(torch.zeros(2, 4, 6, dtype=torch.float16))
    assert out.dtype == torch.float16 and out.shape == (2, 3, 2)


def test_e2e_bench_times_both_pipelines_and_checks_their_texts(tmp_path, capsys):
    from fidelity.bench import main as bench_main

    out = tmp_path / "e2e.json"
    assert bench_main(["--e2e-seconds", "30", "--repeats", "1", "--out", str(out), "-q"]) == 0
    rows = json.loads(out.read_text())["e2e"]
    assert [r["encoder"] for r in rows] == ["openai-whisper", "max"]
    for row in rows:
        assert row["audio_s"] == 30 and row["windows"] >= 1 and row["same_text"] is True and row["wer"] == 0.0
        assert 0 < row["encoder_s"] < row["wall_s"]
    assert "same text" in capsys.readouterr().out
