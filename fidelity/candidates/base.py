"""The candidate protocol: what the workbench needs of any encoder under test.

A candidate is an implementation of openai-whisper's `AudioEncoder` (the built-in MAX
encoder, a user's MAX Graph port, a non-MAX engine). The reference is always
openai-whisper. Every candidate returns taps by the names of `fidelity.taps`, in the
tap's canonical layout (per example: `(width, frames)` for the conv taps,
`(frames, width)` for the residual stream, `(heads, ctx, ctx)` for attention
weights), as float32 numpy arrays with a leading batch axis.

Capabilities beyond `run` are optional and declared, so the comparison flow can
refuse a plan a candidate cannot serve (one line, exit 2) before any work:
  * patching (`patchable_taps`, `run_patched`): isolation and first-divergence
    localization; each patched tap's downstream reads the given value instead of
    what the candidate computed there;
  * a front end (`front_end`): the port's own audio -> log-mel, compared with
    openai-whisper's before the conv stem.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from whisper.model import ModelDimensions

from ..devices import check_device
from ..errors import FidelityError
from ..precisions import CANDIDATE_PRECISIONS, precision
from ..taps import ENCODER_OUTPUT, Stage

ATTENTIONS = ("matmul", "flash")  # the attention forms a candidate may offer (`CandidateConfig.attention`)


@dataclass(frozen=True)
class CandidateConfig:
    """What the user asks of a candidate: where it runs, in which precision, the optional forms, and
    whether to measure the probe effect (False: a probed port skips compiling its unprobed graph, and its
    transcript comes from the probed graph).

    A builder `NAME(checkpoint, config)` receives this and may refuse what it cannot
    do by raising `FidelityError` with one line naming the problem and the fix.
    `attention` ("matmul" or "flash"), `capture` ("staged" or "fused") and
    `attention_weights` (also emit `attn.weights`) are forms a candidate may offer;
    one that has no such choice ignores them.
    """

    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "matmul"
    capture: str = "staged"
    attention_weights: bool = False
    probe_effect: bool = True

    def __post_init__(self):
        check_device(self.device)
        if precision(self.dtype).name not in CANDIDATE_PRECISIONS:
            raise FidelityError(f"a candidate cannot run in {self.dtype}: choose from "
                                f"{', '.join(CANDIDATE_PRECISIONS)}")


@dataclass(frozen=True)
class ProbeEffect:
    """How far observing moved the encoder output: taps off against every tap an output (float32)."""

    max_abs: float
    rel_l2: float
    rmse: float

    @classmethod
    def between(cls, off: np.ndarray, on: np.ndarray) -> ProbeEffect:
        """The effect of observing, from the encoder output with probes off and with every probe an output."""
        off, on = np.asarray(off, dtype=np.float64), np.asarray(on, dtype=np.float64)
        diff = on - off
        if not diff.size:
            return cls(0.0, 0.0, 0.0)
        norm, gap = float(np.linalg.norm(off)), float(np.linalg.norm(diff))
        return cls(float(np.abs(diff).max()), gap / norm if norm else gap, float(np.sqrt(np.mean(diff ** 2))))

    def as_dict(self) -> dict:
        return asdict(self)


class CapabilityError(FidelityError):
    """A plan asks a candidate for something it does not offer (no probes, no front end)."""


class Candidate(abc.ABC):
    """An encoder under test. Subclasses set `name`, `dims`, `dtype`, `device`."""

    name: str
    dims: ModelDimensions
    dtype: str
    device: str

    @property
    def floor_dtype(self) -> str:
        """The precision openai-whisper runs in to give this candidate's noise floor (`fidelity.precisions`)."""
        return precision(self.dtype).floor

    @property
    def compile_seconds(self) -> float:
        """Seconds this candidate has spent compiling so far (loads from a cache included); 0 for one that
        compiles nothing. Reports count it apart from the candidate's run time."""
        return 0.0

    @property
    def convolutions_as_matmuls(self) -> bool:
        """True when the candidate computes its convolutions as matmuls (im2col): on a GPU in float32 they then
        run TF32-class like its other matmuls, and its TF32 floor has TF32 convolutions too."""
        return False

    @abc.abstractmethod
    def available_taps(self) -> list[str]:
        """Tap names this candidate can return, in execution order; always has `encoder.ln_post`."""

    @abc.abstractmethod
    def run(self, mel: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        """Run on `mel` (batch, n_mels, 2 * n_audio_ctx), float32.

        Returns {tap: float32 array (batch, *canonical shape)} for each asked tap it has.
        A tap the candidate computed wrongly (wrong shape, non-finite) is returned as
        computed: that is a finding, not an error.
        """

    def patchable_taps(self) -> list[str]:
        """Taps whose value `run_patched` can replace; empty when the candidate cannot patch."""
        return []

    def run_patched(self, mel: np.ndarray, patches: dict[str, np.ndarray],
                    taps: Sequence[str]) -> dict[str, np.ndarray]:
        """Run with each tap in `patches` replaced, downstream of where it is computed, by the given
        value (batch, *canonical shape; the candidate casts it to its own dtype).

        Each returned tap is the value the candidate computed at that point, before its own
        patch applies, from the patched values upstream: with every stage input patched to
        the float64 reference, each stage's taps carry only that stage's own (local) error.
        """
        raise CapabilityError(f"candidate {self.name} cannot patch taps: isolation needs a candidate "
                              "with two or more probes (see README, 'Instrument your port')")

    @property
    def runs_by_stage(self) -> bool:
        """True when `run_stage` can run one stage at a time (the flow then streams, stage by stage)."""
        return False

    def run_stage(self, stage: Stage, x: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one stage (`fidelity.taps.Stage`) on `x`, its input (the mel for the conv stem).

        Returns the stage's taps among `taps`, and always its output. Optional: with it the
        comparison flow holds one stage's arrays at a time instead of the whole encoder's, and
        isolates each stage by feeding it the reference's input."""
        raise CapabilityError(f"candidate {self.name} cannot run one stage at a time")

    @property
    def fixed_batch(self) -> int | None:
        """The one batch size its encoder runs (a graph compiled for a static batch); None: any batch.
        A benchmark times such a candidate at this batch only and says so."""
        return None

    @property
    def has_front_end(self) -> bool:
        return False

    def front_end(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 samples -> (windows, n_mels, 2 * n_audio_ctx) log-mel, as the port computes
        it (padding to 30 s windows included)."""
        raise CapabilityError(f"candidate {self.name} has no front end of its own")

    def probe_effect(self, mel: np.ndarray) -> ProbeEffect | None:
        """The encoder output with taps off against taps on, on `mel`; None when observing changes nothing
        (no separate graph with tap outputs). Optional."""
        return None

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """The encoder output only (what transcription needs)."""
        return self.run(mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT]

    def resident(self, mel: np.ndarray) -> Callable[[], object]:
        """A function that runs the encoder on `mel` placed where the candidate computes, its output left there:
        what a speed benchmark times (host transfers excluded). Default: `encode` from the host each call."""
        return lambda: self.encode(mel)

    def describe(self) -> dict:
        """What a report records about the candidate."""
        return {"name": self.name, "dtype": self.dtype, "device": self.device, "floor_dtype": self.floor_dtype,
                "taps": len(self.available_taps()), "patchable": len(self.patchable_taps()),
                "front_end": self.has_front_end}

    def close(self) -> None:
        """Release engines and device memory (optional)."""


def check_batch(mel: np.ndarray, dims: ModelDimensions) -> None:
    """Refuse a mel batch of the wrong shape before a candidate sees it."""
    want = (dims.n_mels, 2 * dims.n_audio_ctx)
    if mel.ndim != 3 or tuple(mel.shape[1:]) != want:
        raise FidelityError(f"mel batch has shape {tuple(mel.shape)}, the model needs (batch, {want[0]}, {want[1]})")
