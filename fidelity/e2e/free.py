"""Free decoding: what each encoder's own transcript says, and where it parts from the reference's.

The reference transcript is openai-whisper's float32 encoder under the same decoder. The
candidate's transcript is compared with it (greedy: the first parting token, per-window and
per-segment figures; openai-whisper's default decoding: text and fallbacks), and so is the
floor's (openai-whisper's encoder in the candidate's precision), beside it: each side's WER
against the reference, each kept window's compression ratio, loops flagged by openai-whisper's
own rule (`fidelity.e2e.text.LOOP_COMPRESSION_RATIO`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .band import FloorBand
from .text import LOOP_COMPRESSION_RATIO, error_rates
from .transcribe import DEFAULT_TEMPERATURES, DecodeRecord, Transcript


def compare_transcripts(tokenizer, reference: Transcript, candidate: Transcript, truth: str | None = None) -> dict:
    """Greedy transcripts: texts, error rates, the first parting token and per-segment figures of both sides."""
    out = {
        "reference_text": reference.text,
        "candidate_text": candidate.text,
        "identical": reference.text == candidate.text,
        **error_rates(reference.text, candidate.text, reference.language),
        "speech_detected": bool(reference.text or candidate.text),
        "first_parting": first_parting(reference.decodes, candidate.decodes, tokenizer),
        "windows": [_window(r, c) for r, c in zip(reference.decodes, candidate.decodes)],
        "window_count": {"reference": len(reference.decodes), "candidate": len(candidate.decodes)},
        "segments": _segments(reference.segments, candidate.segments),
        "timing": {side: {"seconds": round(t.seconds, 2), "encoder_seconds": round(t.encoder_seconds, 2),
                          "encoder_share": round(t.encoder_seconds / t.seconds, 3) if t.seconds else None,
                          "encoder_calls": t.encoder_calls}
                   for side, t in (("reference", reference), ("candidate", candidate))},
    }
    if truth is not None:
        out["truth"] = {"text": truth, **_against_truth(truth, reference, candidate)}
    return out


def compare_defaults(reference: Transcript, candidate: Transcript, truth: str | None) -> dict:
    """The defaults-decoding transcripts of both sides, their WER/CER and their fallbacks."""
    out = {"temperatures": list(DEFAULT_TEMPERATURES), "condition_on_previous_text": True,
           "reference_text": reference.text, "candidate_text": candidate.text,
           "identical": reference.text == candidate.text,
           **error_rates(reference.text, candidate.text, reference.language),
           "fallbacks": {"reference": reference.fallbacks, "candidate": candidate.fallbacks}}
    if truth is not None:
        out["truth"] = _against_truth(truth, reference, candidate)
    return out


def _against_truth(truth: str, reference: Transcript, candidate: Transcript) -> dict:
    """WER and CER of both sides against the ground truth (normalised for the reference's language)."""
    return {f"{rate}_{side}": value for side, t in (("reference", reference), ("candidate", candidate))
            for rate, value in error_rates(truth, t.text, reference.language).items()}


def side_summary(transcript: Transcript, reference: Transcript) -> dict:
    """One side's free transcript beside the reference's in the same decoding: WER/CER against it, each
    kept window's compression ratio, the windows that loop, the fallbacks and the time it took."""
    return {"text": transcript.text, **error_rates(reference.text, transcript.text, reference.language),
            "compression_ratios": [_round(d.compression_ratio) for d in transcript.kept],
            "loops": transcript.loops, "fallbacks": transcript.fallbacks, "seconds": round(transcript.seconds, 2)}


@dataclass(frozen=True)
class FreeDecoding:
    """Every side's free transcripts beside the reference's (greedy and default decoding), and the
    floor-noise band of the greedy WER (None: `band_reason` says why)."""

    floor_encoder: str
    greedy: dict[str, dict]           # side ("reference", "candidate", "floor") -> `side_summary`
    defaults: dict[str, dict]
    band: FloorBand | None
    band_reason: str | None = None
    floor_reason: str | None = None   # why the floor's transcripts are missing, if they are

    def as_dict(self) -> dict:
        out = {"loop_compression_ratio": LOOP_COMPRESSION_RATIO, "floor_encoder": self.floor_encoder,
               "greedy": self.greedy, "defaults": self.defaults,
               "band": self.band.as_dict() if self.band else {"computed": False, "reason": self.band_reason}}
        if self.floor_reason:
            out["floor_reason"] = self.floor_reason
        return out


def free_decoding(transcripts: dict[str, tuple[Transcript, Transcript]], floor_encoder: str,
                  floor_reason: str | None, band: FloorBand | None, band_reason: str | None) -> FreeDecoding:
    """`transcripts`: side -> (greedy, defaults) transcripts, "reference" among them."""
    ref_greedy, ref_default = transcripts["reference"]
    return FreeDecoding(floor_encoder,
                        {side: side_summary(greedy, ref_greedy) for side, (greedy, _) in transcripts.items()},
                        {side: side_summary(default, ref_default) for side, (_, default) in transcripts.items()},
                        band, band_reason, floor_reason)


def first_parting(reference: list[DecodeRecord], candidate: list[DecodeRecord], tokenizer) -> dict | None:
    """The first window and token where the two decodes differ, with each side's top tokens there."""
    for index, (ref, cand) in enumerate(zip(reference, candidate)):
        if ref.tokens == cand.tokens:
            continue
        step = next((j for j, (a, b) in enumerate(zip(ref.tokens, cand.tokens)) if a != b),
                    min(len(ref.tokens), len(cand.tokens)))

        def token_text(tokens, j):
            return tokenizer.decode_with_timestamps([tokens[j]]) if j < len(tokens) else "<|endoftext|>"

        def top(record):
            if step >= len(record.steps):
                return []
            return [{"token": tokenizer.decode_with_timestamps([t]), "logprob": round(lp, 4)}
                    for t, lp in record.steps[step]]

        return {"window": index, "token_index": step,
                "context": tokenizer.decode_with_timestamps(ref.tokens[:step])[-120:],
                "reference_token": token_text(ref.tokens, step), "candidate_token": token_text(cand.tokens, step),
                "reference_top": top(ref), "candidate_top": top(cand)}
    if len(reference) != len(candidate):
        return {"window": min(len(reference), len(candidate)), "token_index": 0, "context": "",
                "reference_token": "", "candidate_token": "", "reference_top": [], "candidate_top": [],
                "note": "one side decoded more windows"}
    return None


def _window(ref: DecodeRecord, cand: DecodeRecord) -> dict:
    return {side: {"avg_logprob": _round(r.avg_logprob), "no_speech_prob": _round(r.no_speech_prob),
                   "compression_ratio": _round(r.compression_ratio), "tokens": len(r.tokens)}
            for side, r in (("reference", ref), ("candidate", cand))}


def _segments(reference: list[dict], candidate: list[dict]) -> list[dict]:
    rows = []
    for index in range(max(len(reference), len(candidate))):
        ref = reference[index] if index < len(reference) else None
        cand = candidate[index] if index < len(candidate) else None
        row = {"index": index, "reference": ref, "candidate": cand}
        if ref and cand:
            row["start_diff"] = round(cand["start"] - ref["start"], 3)
            row["end_diff"] = round(cand["end"] - ref["end"], 3)
        rows.append(row)
    return rows


def _round(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)
