"""Whole-run wall times: transcriptions with each encoder, and `compare --layer all` in this process."""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import audio, checkpoints
from ..candidates.base import CandidateConfig
from ..candidates.max_builtin import BuiltinCandidate
from ..devices import torch_device
from ..e2e import candidate_encoder, error_rates, transcribe_with
from ..flow.examine import examine
from ..flow.request import Request
from ..reference.store import default_folder
from ..report.report_files import write_report

log = logging.getLogger(__name__)


def transcription_times(model_name: str, device: str, lengths: list[int], repeats: int) -> list[dict]:
    """Whole transcriptions of the shipped long clip tiled to each length, with openai-whisper's encoder and
    with the built-in MAX candidate's: wall time, the encoder's share (medians), same text or not, and the
    WER against openai-whisper's own transcript."""

    checkpoint = checkpoints.load_checkpoint(model_name)
    model = checkpoint.whisper_model().to(torch_device(device))
    candidate = BuiltinCandidate(checkpoint, CandidateConfig(device=device))
    source = audio.load_audio(audio.DATA_DIR / "speech_long.flac").samples
    rows = []
    for seconds in lengths:
        samples = np.resize(source, seconds * audio.SAMPLE_RATE)  # the clip tiled to length
        reference_text = None
        for side, encoder in (("openai-whisper", model.encoder), ("max", candidate_encoder(candidate))):
            runs = [transcribe_with(model, samples, encoder, progress=False) for _ in range(repeats)]
            wall = statistics.median(r.seconds for r in runs)
            enc = statistics.median(r.encoder_seconds for r in runs)
            reference_text = reference_text if reference_text is not None else runs[0].text
            rows.append({"audio_s": seconds, "encoder": side, "wall_s": round(wall, 2), "encoder_s": round(enc, 2),
                         "encoder_share": round(enc / wall, 3), "windows": runs[0].encoder_calls,
                         "same_text": all(r.text == reference_text for r in runs),
                         "wer": error_rates(reference_text, runs[0].text, runs[0].language)["wer"]})
            log.info("%d s audio, %s encoder: %.1f s wall, %.0f%% in the encoder", seconds, side, wall,
                     100 * enc / wall)
    return rows


def compare_wall(runs: int, model: str, device: str) -> dict:
    """Median wall time of the whole `compare --layer all` examination in this process: checkpoint, candidate
    (graphs from the MEF store), references (kept by content, as `compare` keeps them: the warm-up run
    computes them), metrics and the written report, after one warm-up run. Python's imports (about 1.5 s,
    once per process) are not included."""
    request = Request(model=model, device=device, reference_cache=default_folder())

    def once() -> None:
        examination = examine(request)
        with tempfile.TemporaryDirectory(prefix="fidelity-bench-") as folder:
            write_report(examination.document, Path(folder))

    once()  # warm-up: compile cache, model conversion
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return {"runs": runs, "median_s": round(statistics.median(times), 2), "all_s": [round(t, 2) for t in times],
            "what": "compare --layer all, in process (imports excluded)"}
