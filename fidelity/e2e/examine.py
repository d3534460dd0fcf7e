"""The end-to-end examination of one candidate on one clip, built once into an `E2EResult`.

Sides, all under openai-whisper's float32 decoder on the candidate's device:
  reference  openai-whisper's float32 encoder (the free transcripts' reference),
  candidate  the encoder under test,
  floor      openai-whisper's encoder in the candidate's precision and arithmetic (`FloorEncoder`),
  float64    openai-whisper's encoder in float64 on the CPU (teacher forcing's reference, and the
             centre of the floor-noise band).
Free decoding (greedy and openai-whisper's defaults) of the reference, the candidate and the
floor; teacher forcing over the reference's greedy transcript; the floor-noise band of the
greedy WER; optionally a noise sweep at one stage output of the built-in candidate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import whisper
from whisper.tokenizer import get_tokenizer

from .. import audio
from ..candidates.base import Candidate
from ..checkpoints import Checkpoint
from ..devices import torch_device
from ..errors import CandidateCrash, FidelityError
from .band import BAND_DRAWS, floor_noise_band
from .encoders import Encode, FloorEncoder, default_floor, memoized, torch_encoder
from .free import FreeDecoding, compare_defaults, compare_transcripts, free_decoding
from .sensitivity import noise_sweep
from .teacher import TeacherResult, reference_windows, teacher_forced
from .transcribe import DropInEncoder, decoding_as_users_run_it

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class E2EResult:
    """Everything `--e2e` found, built once. `as_dict()` is report.json's `e2e` section (the greedy
    comparison's keys at its top); `failed` is whether it makes `compare` exit 1: only the teacher-forced
    verdict (KL ratio over budget, or a flip outside noise), never merely a changed free transcript."""

    greedy: dict                 # `free.compare_transcripts`: reference against candidate, greedy
    defaults: dict               # `free.compare_defaults`: the same with openai-whisper's default decoding
    free: FreeDecoding           # every side's free transcripts, and the floor-noise band
    teacher: TeacherResult
    sensitivity: dict | None = None

    @property
    def failed(self) -> bool:
        return self.teacher.failed

    def as_dict(self) -> dict:
        out = {**self.greedy, "defaults": self.defaults, "free": self.free.as_dict(), "teacher": self.teacher.as_dict()}
        if self.sensitivity is not None:
            out["sensitivity"] = self.sensitivity
        return out


def examine_transcripts(checkpoint: Checkpoint, samples: np.ndarray, candidate: Candidate, *,
                        truth: str | None = None, floor: FloorEncoder | None = None, sensitivity: str | None = None,
                        levels: tuple[float, ...] | list[float] = (), band_draws: int = BAND_DRAWS, seed: int = 0,
                        model: whisper.Whisper | None = None) -> E2EResult:
    """Transcribe `samples` (16 kHz mono float32) with every side, teacher-force, and judge the candidate.

    `floor`: openai-whisper in the candidate's precision on its device (default: `TorchRunner` in
    `candidate.floor_dtype` on `candidate.device`, TF32 off); `truth`: the ground-truth text;
    `sensitivity`, `levels`: a stage output of the built-in candidate and the noise levels to sweep
    there; `band_draws`: draws of the floor-noise band (0: none; drawn only when the candidate's greedy
    words differ from the reference's); `model`: openai-whisper already on the candidate's device
    (default: built from `checkpoint`). A clip with no speech is refused before the candidate runs.
    """
    if len(samples) == 0 or float(np.max(np.abs(samples))) < audio.SILENCE_PEAK:
        raise FidelityError(f"--e2e: the audio is silent (peak amplitude below {audio.SILENCE_PEAK:g}): "
                            "no speech to transcribe")
    model = model or checkpoint.whisper_model().to(torch_device(candidate.device))
    encode = memoized(_guarded(candidate))
    log.info("transcribing %.1f s with openai-whisper's encoder", len(samples) / whisper.audio.SAMPLE_RATE)
    transcripts = {"reference": decoding_as_users_run_it(model, samples, model.encoder)}
    reference = transcripts["reference"][0]
    windows = reference_windows(reference.decodes)
    log.info("transcribing with the candidate encoder")
    transcripts["candidate"] = decoding_as_users_run_it(model, samples, DropInEncoder(encode))
    floor_encode, floor_label, floor_reason = _floor(checkpoint, candidate, floor, windows[0].mel[None])
    if floor_encode is not None:
        log.info("transcribing with the floor encoder (%s)", floor_label)
        transcripts["floor"] = decoding_as_users_run_it(model, samples, DropInEncoder(floor_encode))
    float64 = memoized(torch_encoder(checkpoint, "float64", "cpu"))
    teacher = teacher_forced(model, windows, float64, encode, floor_encode, candidate.floor_dtype, floor_label,
                             floor_reason)
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language="en",
                              task="transcribe")
    greedy = compare_transcripts(tokenizer, reference, transcripts["candidate"][0], truth)
    band_reason = _why_no_band(floor_reason, band_draws, greedy["wer"])
    band = None if band_reason else floor_noise_band(model, samples, float64, floor_encode, reference,
                                                     transcripts["candidate"][0], transcripts["floor"][0],
                                                     band_draws, seed)
    sweep = None
    if sensitivity:
        sweep = {"tap": sensitivity, "rows": noise_sweep(model, samples, candidate, sensitivity, list(levels),
                                                         reference, seed)}
    return E2EResult(greedy, compare_defaults(transcripts["reference"][1], transcripts["candidate"][1], truth),
                     free_decoding(transcripts, floor_label, floor_reason, band, band_reason), teacher, sweep)


def _why_no_band(floor_reason: str | None, draws: int, candidate_wer: float) -> str | None:
    """Why the floor-noise band is not drawn (None: it is). A candidate with the reference's words is
    within any band: its draws (8 more transcriptions) would answer no question."""
    if floor_reason:
        return floor_reason
    if draws <= 0:
        return "no floor-noise draws asked for"
    if candidate_wer == 0:
        return "not needed: the candidate's greedy transcript has the reference's words (WER 0 is in any band)"
    return None


def _guarded(candidate: Candidate) -> Encode:
    """The candidate's `encode`, where anything but a `FidelityError` is the candidate's crash."""
    def encode(mel: np.ndarray) -> np.ndarray:
        try:
            return candidate.encode(mel)
        except FidelityError:
            raise
        except Exception as exc:  # noqa: BLE001 - the candidate's encode failed inside whisper
            raise CandidateCrash(f"candidate {candidate.name} crashed in encode (--e2e)") from exc

    return encode


def _floor(checkpoint: Checkpoint, candidate: Candidate, floor: FloorEncoder | None,
           mel: np.ndarray) -> tuple[Encode | None, str, str | None]:
    """(memoized floor encode or None, its label, why it cannot run): the floor is tried on `mel` first."""
    dtype, device = candidate.floor_dtype, candidate.device
    if floor is None:
        try:
            floor = default_floor(checkpoint, dtype, device)
        except FidelityError as exc:  # e.g. no CUDA device for torch: a limit, reported
            return None, f"openai-whisper encoder, {dtype} on {device}", str(exc)
    encode = memoized(floor.encode)
    try:
        encode(mel)
    except (RuntimeError, NotImplementedError) as exc:  # torch: the dtype has no kernel on this device
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        log.warning("the end-to-end floor cannot run: %s", line)
        return None, floor.label, f"{floor.label} cannot run here: {line}"
    return encode, floor.label, None


def read_truth(path: Path | None, audio_path: Path) -> str | None:
    """The ground-truth text: --text, or the text shipped beside a shipped clip."""
    if path is None:
        shipped = audio_path.with_suffix(".txt")
        return shipped.read_text().strip() if audio_path.parent == audio.DATA_DIR and shipped.is_file() else None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FidelityError(f"cannot read ground-truth text {path}: {exc}") from exc
    if not text:
        raise FidelityError(f"ground-truth text {path} is empty")
    return text


def parse_levels(text: str) -> tuple[float, ...]:
    """--noise-levels: a comma list of noise RMS fractions (their range is checked with the request)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise FidelityError(f"--noise-levels: {text!r} is not a comma list of numbers") from None
