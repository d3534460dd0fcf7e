"""How much noise at one stage output the transcript tolerates (`--sensitivity`, built-in candidate)."""

from __future__ import annotations

import logging

import numpy as np
import whisper

from ..candidates.base import Candidate
from ..errors import FidelityError
from ..taps import stage_outputs
from .text import error_rates
from .transcribe import Transcript, candidate_encoder, transcribe_with

log = logging.getLogger(__name__)


def noise_sweep(model: whisper.Whisper, samples: np.ndarray, candidate: Candidate, tap: str,
                levels: list[float], reference: Transcript, seed: int = 0) -> list[dict]:
    """Transcribe with Gaussian noise of `level` x the tap's RMS added to a stage output; WER against
    `reference` (the float32 reference's greedy transcript)."""
    outputs = stage_outputs(candidate.dims)
    if tap not in outputs:
        raise FidelityError(f"--sensitivity takes a stage output: {', '.join(outputs)}")
    rows = []
    for level in levels:
        rng = np.random.default_rng(seed)

        def perturb(name, value, level=level, rng=rng):
            if name != tap:
                return value
            scale = level * float(np.sqrt(np.mean(value.astype(np.float64) ** 2)))
            return (value + rng.normal(0.0, scale, value.shape)).astype(np.float32)

        text = transcribe_with(model, samples, candidate_encoder(candidate, perturb), progress=False).text
        rates = error_rates(reference.text, text, reference.language)
        rows.append({"level": level, **rates, "text": text})
        log.info("noise %.0e x RMS at %s: WER %.3f", level, tap, rates["wer"])
    return rows
