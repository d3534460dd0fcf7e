"""Audio in: any rate and channel count, windows of 30 s, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from fidelity.audio import load_audio, mel_windows, window_starts
from fidelity.errors import FidelityError


def _write(path, samples, rate):
    soundfile.write(str(path), samples, rate)
    return path


def test_stereo_44k_becomes_mono_16k(tmp_path):
    t = np.arange(int(2.5 * 44100)) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    clip = load_audio(_write(tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], axis=1), 44100))
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert len(clip.samples) == 40000
    # the mix halves the tone; resampling keeps its amplitude
    assert np.max(np.abs(clip.samples[1000:-1000])) == pytest.approx(0.25, rel=0.01)
    spectrum = np.abs(np.fft.rfft(clip.samples))
    assert np.argmax(spectrum) * 16000 / len(clip.samples) == pytest.approx(440, abs=1)


def test_long_audio_is_cut_into_30s_windows(tmp_path):
    rng = np.random.default_rng(0)
    clip = load_audio(_write(tmp_path / "long.flac", 0.1 * rng.standard_normal(65 * 16000), 16000))
    mel = mel_windows(clip, 80)
    assert mel.shape == (3, 80, 3000)
    assert window_starts(clip) == [0.0, 30.0, 60.0]
    assert mel_windows(clip, 128).shape == (3, 128, 3000)


def test_bad_audio_is_refused(tmp_path):
    with pytest.raises(FidelityError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF1234WAVEjunk")
    with pytest.raises(FidelityError, match="cannot read audio"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(FidelityError, match="is empty"):
        load_audio(_write(tmp_path / "empty.wav", np.zeros(0), 16000))
    with pytest.raises(FidelityError, match="at least 1 s"):
        load_audio(_write(tmp_path / "short.wav", 0.1 * np.ones(8000), 16000))
    with pytest.raises(FidelityError, match="silent"):
        load_audio(_write(tmp_path / "quiet.wav", np.zeros(32000), 16000))
    assert load_audio(tmp_path / "quiet.wav", allow_silent=True).silent
