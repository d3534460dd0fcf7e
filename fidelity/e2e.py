"""End to end: the MAX encoder inside openai-whisper's own transcription.

`DropInEncoder` replaces `model.encoder`, so `whisper.transcribe` runs unchanged
(long-form windows, timestamps, prompts). Both sides decode with the same decoder and
options: greedily at temperature 0, or with openai-whisper's defaults (temperature
fallback). While they run, a wrapper on `model.decode` and a forward hook on the real
`model.decoder` record each window's mel, options, tokens and each step's top
log-probabilities: the first parting token comes from these, and teacher forcing
(`fidelity.teacher`) replays the recorded windows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import jiwer
import numpy as np
import torch
import whisper
from torch import nn
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer
from whisper.tokenizer import get_tokenizer

from .candidates.base import Candidate
from .errors import FidelityError
from .reference.arithmetic import tf32_switches
from .taps import stage_outputs
from .teacher import Encode, memoized, reference_windows, teacher_forced, torch_encoder

log = logging.getLogger(__name__)

TOP_K = 5
GREEDY = 0.0
# openai-whisper's defaults, passed explicitly so `DecodeRecord.skipped` follows the same rule
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
NO_SPEECH_THRESHOLD, LOGPROB_THRESHOLD = 0.6, -1.0


class DropInEncoder(nn.Module):
    """Stands in for openai-whisper's `AudioEncoder`: mel tensor in, feature tensor out."""

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray]):
        super().__init__()
        self.encode = encode

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        features = self.encode(mel.detach().to(torch.float32).cpu().numpy())
        return torch.from_numpy(features).to(device=mel.device, dtype=mel.dtype)


class _Timed(nn.Module):
    """Wraps an encoder and adds up the time spent in it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner(mel)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


@dataclass
class DecodeRecord:
    """One call of `model.decode` (one 30 s window at one temperature): what went in, what came out."""

    steps: list[list[tuple[int, float]]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = float("nan")
    no_speech_prob: float = float("nan")
    compression_ratio: float = float("nan")
    temperature: float = 0.0
    mel: np.ndarray | None = None                      # (n_mels, frames) float32, the decoded segment
    options: whisper.DecodingOptions | None = None     # prompt, timestamps, temperature as decoded

    @property
    def skipped(self) -> bool:
        """Left out of the transcript as silence (openai-whisper's no-speech rule)."""
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and not self.avg_logprob > LOGPROB_THRESHOLD


@dataclass
class Transcript:
    text: str
    segments: list[dict]
    decodes: list[DecodeRecord]
    seconds: float
    encoder_seconds: float
    encoder_calls: int
    temperature: float | tuple = GREEDY

    @property
    def fallbacks(self) -> int:
        """Decodes retried at a higher temperature (0 for greedy decoding)."""
        return sum(1 for d in self.decodes if d.temperature > 0)


@contextlib.contextmanager
def _recording(model: whisper.Whisper):
    records: list[DecodeRecord] = []
    original = model.decode

    def decode(mel, options=whisper.DecodingOptions(), **kwargs):
        record = DecodeRecord(mel=mel.detach().to(torch.float32).cpu().numpy().reshape(mel.shape[-2:]),
                              options=options)
        records.append(record)
        result = original(mel, options, **kwargs)
        single = result[0] if isinstance(result, list) else result
        record.tokens, record.text = list(single.tokens), single.text
        record.avg_logprob, record.no_speech_prob = single.avg_logprob, single.no_speech_prob
        record.compression_ratio, record.temperature = single.compression_ratio, single.temperature
        return result

    def hook(module, args, logits):
        if records:
            logprobs = torch.log_softmax(logits[0, -1].float(), dim=-1)
            top = logprobs.topk(TOP_K)
            records[-1].steps.append([(int(i), float(v)) for v, i in zip(top.values, top.indices)])

    handle = model.decoder.register_forward_hook(hook)
    model.decode = decode
    try:
        yield records
    finally:
        del model.decode
        handle.remove()


def transcribe_with(model: whisper.Whisper, samples: np.ndarray, encoder: nn.Module,
                    progress: bool = True, temperature: float | tuple = GREEDY, seed: int = 0) -> Transcript:
    """`whisper.transcribe` with `encoder` in place of `model.encoder`, on the model's device, in float32.

    `temperature` GREEDY decodes greedily at temperature 0; DEFAULT_TEMPERATURES is openai-whisper's
    default fallback (sampling seeded with `seed`, the same for every encoder). Prompts
    (condition_on_previous_text) and timestamps are openai-whisper's defaults either way.
    """
    original = model.encoder
    timed = _Timed(encoder)
    model.encoder = timed
    torch.manual_seed(seed)
    try:
        with _recording(model) as records, tf32_switches(False, False):
            start = time.perf_counter()
            result = whisper.transcribe(model, samples, temperature=temperature, fp16=False,
                                        no_speech_threshold=NO_SPEECH_THRESHOLD, logprob_threshold=LOGPROB_THRESHOLD,
                                        language="en" if not model.is_multilingual else None,
                                        verbose=False if progress else None)
            seconds = time.perf_counter() - start
    finally:
        model.encoder = original
    segments = [{key: seg[key] for key in ("id", "seek", "start", "end", "text", "avg_logprob",
                                           "compression_ratio", "no_speech_prob")} for seg in result["segments"]]
    return Transcript(result["text"].strip(), segments, records, seconds, timed.seconds, timed.calls, temperature)


def max_encoder(runner: Candidate, perturb=None) -> DropInEncoder:
    """A candidate as a drop-in encoder (its `encode`; `perturb` only for the built-in MAX candidate)."""
    if perturb is None:
        return DropInEncoder(runner.encode)
    return DropInEncoder(lambda mel: runner.encode(mel, perturb))


def compare_transcripts(model: whisper.Whisper, reference: Transcript, candidate: Transcript,
                        truth: str | None = None) -> dict:
    """Texts, error rates, the first parting token and per-segment figures of both sides."""
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language="en",
                              task="transcribe")
    normalize = BasicTextNormalizer() if model.is_multilingual else EnglishTextNormalizer()
    ref_norm, cand_norm = normalize(reference.text), normalize(candidate.text)
    out = {
        "reference_text": reference.text,
        "candidate_text": candidate.text,
        "identical": reference.text == candidate.text,
        **error_rates(ref_norm, cand_norm),
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
        truth_norm = normalize(truth)
        ref_truth, cand_truth = error_rates(truth_norm, ref_norm), error_rates(truth_norm, cand_norm)
        out["truth"] = {"text": truth, "wer_reference": ref_truth["wer"], "wer_candidate": cand_truth["wer"],
                        "cer_reference": ref_truth["cer"], "cer_candidate": cand_truth["cer"]}
    return out


def error_rates(reference: str, hypothesis: str) -> dict:
    """WER and CER of `hypothesis` against `reference` (normalised texts)."""
    if not reference.strip():
        value = 0.0 if not hypothesis.strip() else 1.0
        return {"wer": value, "cer": value}
    return {"wer": float(jiwer.wer(reference, hypothesis)), "cer": float(jiwer.cer(reference, hypothesis))}


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


def noise_sweep(model: whisper.Whisper, samples: np.ndarray, runner: Candidate, tap: str,
                levels: list[float], reference_text: str, seed: int = 0) -> list[dict]:
    """Transcribe with Gaussian noise of `level` x the tap's RMS added to a stage output."""
    outputs = stage_outputs(runner.dims)
    if tap not in outputs:
        raise FidelityError(f"--sensitivity takes a stage output: {', '.join(outputs)}")
    normalize = BasicTextNormalizer() if model.is_multilingual else EnglishTextNormalizer()
    rows = []
    for level in levels:
        rng = np.random.default_rng(seed)

        def perturb(name, value, level=level, rng=rng):
            if name != tap:
                return value
            scale = level * float(np.sqrt(np.mean(value.astype(np.float64) ** 2)))
            return (value + rng.normal(0.0, scale, value.shape)).astype(np.float32)

        text = transcribe_with(model, samples, max_encoder(runner, perturb), progress=False).text
        rates = error_rates(normalize(reference_text), normalize(text))
        rows.append({"level": level, **rates, "text": text})
        log.info("noise %.0e x RMS at %s: WER %.3f", level, tap, rates["wer"])
    return rows


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


def decoding_as_users_run_it(model: whisper.Whisper, samples: np.ndarray, encoder: nn.Module,
                             greedy: Transcript | None = None) -> tuple[Transcript, Transcript]:
    """(greedy temperature 0, openai-whisper's defaults) transcripts of one encoder.

    The defaults start every window at temperature 0 with the same options, so when no
    window falls back to a higher temperature both are the same run and it is done once.
    """
    default = transcribe_with(model, samples, encoder, progress=False, temperature=DEFAULT_TEMPERATURES)
    if greedy is None:
        greedy = default if not default.fallbacks else transcribe_with(model, samples, encoder, progress=False)
    return greedy, default


def compare_defaults(model: whisper.Whisper, reference: Transcript, candidate: Transcript,
                     truth: str | None) -> dict:
    """The defaults-decoding transcripts of both sides, their WER/CER and their fallbacks."""
    normalize = BasicTextNormalizer() if model.is_multilingual else EnglishTextNormalizer()
    ref_norm, cand_norm = normalize(reference.text), normalize(candidate.text)
    out = {"temperatures": list(DEFAULT_TEMPERATURES), "condition_on_previous_text": True,
           "reference_text": reference.text, "candidate_text": candidate.text,
           "identical": reference.text == candidate.text, **error_rates(ref_norm, cand_norm),
           "fallbacks": {"reference": reference.fallbacks, "candidate": candidate.fallbacks}}
    if truth is not None:
        truth_norm = normalize(truth)
        out["truth"] = {f"{rate}_{side}": value for side, norm in (("reference", ref_norm), ("candidate", cand_norm))
                        for rate, value in error_rates(truth_norm, norm).items()}
    return out


def end_to_end(model: whisper.Whisper, checkpoint, samples: np.ndarray, encode: Encode, truth: str | None,
               device: str = "cpu", dtype: str = "float32") -> dict:
    """The whole end-to-end comparison of a candidate `encode(mel) -> features` with openai-whisper.

    `model` is openai-whisper on `device` (the decoder every side shares). Greedy and
    default-decoding transcripts of both sides, then teacher forcing over the greedy
    reference transcript with the candidate and with openai-whisper's encoder in `dtype`
    on `device` (the floor). A clip with no speech is refused before the candidate runs.
    """
    encode = memoized(encode)
    log.info("transcribing %.1f s with openai-whisper's encoder", len(samples) / whisper.audio.SAMPLE_RATE)
    ref_greedy, ref_default = decoding_as_users_run_it(model, samples, model.encoder)
    windows = reference_windows(ref_greedy.decodes)
    log.info("transcribing with the candidate encoder")
    cand_greedy, cand_default = decoding_as_users_run_it(model, samples, DropInEncoder(encode))
    result = compare_transcripts(model, ref_greedy, cand_greedy, truth)
    result["defaults"] = compare_defaults(model, ref_default, cand_default, truth)
    try:
        floor, reason = torch_encoder(checkpoint, dtype, device), None
    except FidelityError as exc:  # e.g. no CUDA device for torch: a limit, reported
        floor, reason = None, str(exc)
    result["teacher"] = teacher_forced(model, windows, torch_encoder(checkpoint, "float64", "cpu"), encode,
                                       floor, dtype, reason)
    result["teacher"]["floor_encoder"] = f"openai-whisper encoder, {dtype} on {device}, TF32 off"
    return result

