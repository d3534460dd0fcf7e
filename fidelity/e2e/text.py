"""Transcript text: the workbench's one normaliser choice and its one WER/CER function."""

from __future__ import annotations

import functools

import jiwer
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

# openai-whisper's `compression_ratio_threshold` (transcribe's default): a window whose text
# gzip-compresses better than this is "too repetitive", a loop; openai-whisper retries it hotter.
LOOP_COMPRESSION_RATIO = 2.4


@functools.lru_cache(maxsize=None)
def normalizer(language: str | None):
    """openai-whisper's English normaliser for English text (as its English evaluations use), its basic
    one for any other language."""
    return EnglishTextNormalizer() if language in (None, "en") else BasicTextNormalizer()


def error_rates(reference: str, hypothesis: str, language: str | None = "en") -> dict:
    """WER and CER of `hypothesis` against `reference`, both normalised for `language`
    (the transcript's language, openai-whisper's code; None: English)."""
    normalize = normalizer(language)
    reference, hypothesis = normalize(reference), normalize(hypothesis)
    if not reference.strip():
        value = 0.0 if not hypothesis.strip() else 1.0
        return {"wer": value, "cer": value}
    return {"wer": float(jiwer.wer(reference, hypothesis)), "cer": float(jiwer.cer(reference, hypothesis))}


def is_loop(compression_ratio: float) -> bool:
    """openai-whisper's own rule for a repetitive (looping) window."""
    return compression_ratio > LOOP_COMPRESSION_RATIO
