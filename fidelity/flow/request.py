"""One request: everything an examination depends on, frozen, built in one place by each caller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..audio import DEFAULT_CLIP, Clip
from ..candidates.base import Candidate, CandidateConfig
from ..checkpoints import DEFAULT_MODEL, Checkpoint

NOISE_LEVELS = (0.001, 0.01, 0.03, 0.1, 0.3)


@dataclass(frozen=True)
class Request:
    """What to examine and how.

    `model`: a checkpoint name or path (or a loaded `Checkpoint`); `audio`: a file (or a
    loaded `Clip`; None when clips are handed to `Examiner.examine` one by one, as a corpus
    sweep does); `candidate`: a spec (`fidelity.candidates.specs`: `max`, `max:FAULT`,
    `ctranslate2`, `PATH.py:NAME`, `module:NAME`) or a built `Candidate`; `taps`: a tap
    selector (`fidelity.taps.select_taps`); `device`, `dtype`, `attention`, `capture`: the
    candidate's configuration; `isolate`, `consistency`: what the walk adds; `tf32_floor`: also
    measure a float32 floor with TF32-class matmuls and name each span's arithmetic (None: on a GPU in
    float32, where MAX's matmuls are TF32-class; True also on the CPU, emulated); `strict_fp32`:
    demand IEEE float32 (a TF32-class span diverges); `tf32_reference`: the floor itself with TF32
    matmuls and convolutions (`--tf32 on`); `probe_effect`: build and run a port's unprobed graph
    too; `e2e`: transcribe and teacher-force, against the ground truth `truth` when given, with
    `band_draws` draws of the floor-noise band; `sensitivity`: a stage output to add noise at
    (`noise_levels`, built-in candidate); `reference_cache`: a folder keeping the reference's stage runs
    by content (`fidelity.reference.store`; None: computed anew each time); `command`: the command line,
    recorded in the report.
    """

    model: str | Path | Checkpoint = DEFAULT_MODEL
    audio: str | Path | Clip | None = DEFAULT_CLIP
    candidate: str | Candidate | None = None
    taps: str = "all"
    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "matmul"
    capture: str = "staged"
    isolate: bool = False
    consistency: bool = False
    strict_fp32: bool = False
    tf32_floor: bool | None = None
    tf32_reference: bool = False
    probe_effect: bool = True
    e2e: bool = False
    band_draws: int = 8
    truth: str | None = None
    sensitivity: str | None = None
    noise_levels: tuple[float, ...] = NOISE_LEVELS
    reference_cache: str | Path | None = None
    command: str = ""

    def candidate_config(self, attention_weights: bool) -> CandidateConfig:
        return CandidateConfig(self.device, self.dtype, self.attention, self.capture, attention_weights,
                               self.probe_effect)
