"""How fragile free decoding is on this clip: the float64 reference plus noise of the floor's size.

Each draw transcribes greedily with openai-whisper's float64 encoder output perturbed,
window by window, by Gaussian noise whose RMS is the floor's own error against float64 on
that window (the floor: openai-whisper in the candidate's precision and arithmetic). The
spread of the draws' WERs against the float32 reference transcript is what errors of the
floor's size do to this clip's words; a candidate whose greedy WER is inside it is within
noise. Not a verdict: with n draws, a candidate exactly as noisy as the floor lands above
the band once in n + 1 runs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import whisper

from .encoders import Encode
from .text import error_rates
from .transcribe import DropInEncoder, Transcript, transcribe_with

log = logging.getLogger(__name__)

BAND_DRAWS = 8


@dataclass(frozen=True)
class FloorBand:
    """The greedy WERs of the floor-noise draws, and the candidate's and the floor's beside them."""

    seed: int
    wers: tuple[float, ...]               # one per draw, against the float32 reference transcript
    loops: tuple[int, ...]                # looping windows per draw (openai-whisper's compression-ratio rule)
    noise_rms: tuple[float, ...]          # per distinct window the draws encoded: the floor's RMS error there
    candidate_wer: float
    floor_wer: float
    seconds: float

    @property
    def low(self) -> float:
        return min(self.wers)

    @property
    def high(self) -> float:
        return max(self.wers)

    @property
    def within(self) -> bool:
        """The candidate's greedy WER is no worse than the worst floor-noise draw's."""
        return self.candidate_wer <= self.high

    def as_dict(self) -> dict:
        return {"computed": True, "draws": len(self.wers), "seed": self.seed,
                "noise": "Gaussian, RMS = the floor's error against float64, per window",
                "wers": [round(w, 4) for w in self.wers], "loops": list(self.loops),
                "noise_rms": [float(f"{r:.4g}") for r in self.noise_rms],
                "low": round(self.low, 4), "high": round(self.high, 4),
                "candidate_wer": round(self.candidate_wer, 4), "floor_wer": round(self.floor_wer, 4),
                "within": self.within, "seconds": round(self.seconds, 2)}


def floor_noise_band(model: whisper.Whisper, samples: np.ndarray, reference64: Encode, floor: Encode,
                     reference: Transcript, candidate: Transcript, floor_transcript: Transcript,
                     draws: int = BAND_DRAWS, seed: int = 0) -> FloorBand:
    """`draws` greedy transcriptions of `samples` with `reference64`'s features plus floor-sized noise
    (`reference64`, `floor`: memoized encoders; `reference`: the float32 reference's greedy transcript)."""
    start = time.perf_counter()
    rms: dict[bytes, float] = {}
    wers, loops = [], []
    for draw in range(draws):
        transcript = transcribe_with(model, samples, DropInEncoder(_noisy(reference64, floor, rms, seed, draw)),
                                     progress=False)
        wers.append(error_rates(reference.text, transcript.text, reference.language)["wer"])
        loops.append(len(transcript.loops))
        log.info("floor-noise draw %d: WER %.3f, %d looping window(s)", draw, wers[-1], loops[-1])
    band = FloorBand(seed, tuple(wers), tuple(loops), tuple(rms.values()),
                     error_rates(reference.text, candidate.text, reference.language)["wer"],
                     error_rates(reference.text, floor_transcript.text, reference.language)["wer"],
                     time.perf_counter() - start)
    log.info("floor-noise band: WER %.3f-%.3f over %d draws (%.1f s); the candidate's %.3f", band.low, band.high,
             draws, band.seconds, band.candidate_wer)
    return band


def _noisy(reference64: Encode, floor: Encode, rms: dict[bytes, float], seed: int, draw: int) -> Encode:
    """Draw `draw`'s encoder: each distinct window's float64 features plus one fixed Gaussian draw."""
    drawn: dict[bytes, np.ndarray] = {}

    def encode(mel: np.ndarray) -> np.ndarray:
        out = []
        for example in mel:
            key = hashlib.sha1(np.ascontiguousarray(example, dtype=np.float32).tobytes()).digest()
            if key not in drawn:
                truth = np.asarray(reference64(example[None])[0], dtype=np.float64)
                error = np.asarray(floor(example[None])[0], dtype=np.float64) - truth
                rms.setdefault(key, float(np.sqrt(np.mean(error ** 2))))
                rng = np.random.default_rng([seed, draw, int.from_bytes(key[:8], "little")])
                drawn[key] = (truth + rng.normal(0.0, rms[key], truth.shape)).astype(np.float32)
            out.append(drawn[key])
        return np.stack(out)

    return encode
