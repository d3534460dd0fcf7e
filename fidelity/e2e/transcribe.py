"""openai-whisper's own transcription with any encoder in place of its `AudioEncoder`.

`DropInEncoder` replaces `model.encoder`, so `whisper.transcribe` runs unchanged
(long-form windows, timestamps, prompts). Every side decodes with the same decoder and
options: greedily at temperature 0, or with openai-whisper's defaults (temperature
fallback). While it runs, a wrapper on `model.decode` and a forward hook on the real
`model.decoder` record each window's mel, options, tokens and each step's top
log-probabilities: the first parting token comes from these, and teacher forcing
(`fidelity.e2e.teacher`) replays the recorded windows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import whisper
from torch import nn

from ..candidates.base import Candidate
from ..reference.arithmetic import ieee_float32
from .encoders import Encode
from .text import is_loop

log = logging.getLogger(__name__)

TOP_K = 5
GREEDY = 0.0
# openai-whisper's defaults, passed explicitly so `DecodeRecord.skipped` follows the same rule
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
NO_SPEECH_THRESHOLD, LOGPROB_THRESHOLD = 0.6, -1.0


class DropInEncoder(nn.Module):
    """Stands in for openai-whisper's `AudioEncoder`: mel tensor in, feature tensor out."""

    def __init__(self, encode: Encode):
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


@dataclass(frozen=True)
class Transcript:
    """One free transcription: its text, segments, every decode it made and what it cost."""

    text: str
    language: str                     # openai-whisper's language code, as decoded ("en" for English-only models)
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

    @property
    def kept(self) -> list[DecodeRecord]:
        """The decode each window kept: its last attempt (a retry runs hotter than the attempt it replaces,
        a new window starts again at the first temperature)."""
        kept: list[DecodeRecord] = []
        for decode in self.decodes:
            if kept and decode.temperature > kept[-1].temperature:
                kept[-1] = decode
            else:
                kept.append(decode)
        return kept

    @property
    def loops(self) -> list[int]:
        """Windows (indices into `kept`) whose kept text is a loop by openai-whisper's compression-ratio rule."""
        return [i for i, d in enumerate(self.kept) if not d.skipped and is_loop(d.compression_ratio)]


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
        with _recording(model) as records, ieee_float32():
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
    return Transcript(result["text"].strip(), result["language"], segments, records, seconds, timed.seconds,
                      timed.calls, temperature)


def candidate_encoder(candidate: Candidate, perturb=None) -> DropInEncoder:
    """A candidate as a drop-in encoder (its `encode`; `perturb` only for the built-in MAX candidate)."""
    if perturb is None:
        return DropInEncoder(candidate.encode)
    return DropInEncoder(lambda mel: candidate.encode(mel, perturb))


def decoding_as_users_run_it(model: whisper.Whisper, samples: np.ndarray,
                             encoder: nn.Module) -> tuple[Transcript, Transcript]:
    """(greedy temperature 0, openai-whisper's defaults) transcripts of one encoder.

    The defaults start every window at temperature 0 with the same options, so when no
    window falls back to a higher temperature both are the same run and it is done once.
    """
    default = transcribe_with(model, samples, encoder, progress=False, temperature=DEFAULT_TEMPERATURES)
    greedy = default if not default.fallbacks else transcribe_with(model, samples, encoder, progress=False)
    return greedy, default
