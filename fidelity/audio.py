"""Audio in: read, mix to mono, resample to 16 kHz, cut 30 s windows, log-mel.

The log-mel is openai-whisper's own `log_mel_spectrogram`, one padded 30 s window
at a time (as `whisper.decode` is fed), so both runners see the same input.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
import torch
import whisper.audio as whisper_audio
from whisper.audio import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, pad_or_trim

from .errors import FidelityError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_CLIP = DATA_DIR / "speech_30s.flac"
MIN_SECONDS = 1.0
SILENCE_PEAK = 1e-4  # below this peak amplitude a clip counts as silent


@dataclass(frozen=True)
class Clip:
    """Mono 16 kHz float32 samples and where they came from."""

    samples: np.ndarray
    source: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def silent(self) -> bool:
        return float(np.max(np.abs(self.samples))) < SILENCE_PEAK


def load_audio(path: str | Path, allow_silent: bool = False) -> Clip:
    """Read wav/flac/ogg at any rate, mono or multichannel, into a 16 kHz mono clip."""
    path = Path(path)
    if not path.is_file():
        raise FidelityError(f"audio file not found: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, ValueError) as exc:
        raise FidelityError(f"cannot read audio {path}: {exc}") from exc
    if data.size == 0:
        raise FidelityError(f"audio {path} is empty")
    samples = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly  # 1 s to import: only when resampling

        common = gcd(int(rate), SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // common, int(rate) // common).astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise FidelityError(f"audio {path} contains NaN or infinite samples")
    clip = Clip(np.ascontiguousarray(samples, dtype=np.float32), str(path))
    if clip.seconds < MIN_SECONDS:
        raise FidelityError(f"audio {path} is {clip.seconds:.2f} s long; at least {MIN_SECONDS:.0f} s is needed")
    if clip.silent and not allow_silent:
        raise FidelityError(f"audio {path} is silent (peak amplitude below {SILENCE_PEAK:g}): nothing to compare")
    return clip


def mel_windows(clip: Clip, n_mels: int) -> np.ndarray:
    """Log-mel of each 30 s window: (windows, n_mels, 3000) float32."""
    return log_mel_windows(clip.samples, n_mels)


def log_mel_windows(samples: np.ndarray, n_mels: int, float64: bool = False) -> np.ndarray:
    """openai-whisper's log-mel of each 30 s window of 16 kHz samples (the last padded with zero
    samples), float32; with `float64`, the same function computed in float64 (the front end's truth)."""
    windows = []
    for start in range(0, max(len(samples), 1), N_SAMPLES):
        chunk = pad_or_trim(np.asarray(samples[start:start + N_SAMPLES], dtype=np.float32))
        if float64:
            with _float64_mel():
                windows.append(log_mel_spectrogram(torch.from_numpy(chunk.astype(np.float64)), n_mels).numpy())
        else:
            windows.append(log_mel_spectrogram(chunk, n_mels).numpy())
    return np.stack(windows).astype(np.float64 if float64 else np.float32)


@contextlib.contextmanager
def _float64_mel():
    """openai-whisper's `log_mel_spectrogram` in float64: its window and mel filters made float64."""
    original = whisper_audio.mel_filters
    default = torch.get_default_dtype()
    whisper_audio.mel_filters = lambda device, n_mels: original(device, n_mels).double()
    torch.set_default_dtype(torch.float64)  # the Hann window
    try:
        yield
    finally:
        torch.set_default_dtype(default)
        whisper_audio.mel_filters = original


def window_starts(clip: Clip) -> list[float]:
    """Start time in seconds of each 30 s window."""
    return [start / SAMPLE_RATE for start in range(0, len(clip.samples), N_SAMPLES)]
