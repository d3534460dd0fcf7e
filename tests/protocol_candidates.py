"""Small candidates of the tests' own, loaded by `--candidate tests/protocol_candidates.py:NAME`.

`OpenAIWhisperCandidate` is openai-whisper's encoder in float32 behind the candidate
protocol: a real non-MAX candidate that runs only as a whole (no `run_stage`), whose
taps can all be patched. The others vary it: a black box with the encoder output only,
one that crashes, one whose front end pads short clips with zeros in log-mel space, one
whose matmuls run TF32-class (and the same with a convolution bug).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim

from fidelity.candidates.base import Candidate, CandidateConfig
from fidelity.reference.runner import TorchRunner
from fidelity.taps import ENCODER_OUTPUT


class OpenAIWhisperCandidate(Candidate):
    """openai-whisper's `AudioEncoder` (float32, CPU) as a candidate; `taps` limits what it offers."""

    name = "openai-whisper-fp32"

    def __init__(self, checkpoint, config: CandidateConfig, taps: list[str] | None = None, patchable: bool = True):
        self.runner = TorchRunner(checkpoint, "float32", "cpu")
        self.dims, self.dtype, self.device = checkpoint.dims, config.dtype, config.device
        self._taps = taps or [t.name for s in self.runner.stages for t in s.taps if not t.optional]
        self._patchable = patchable

    def available_taps(self) -> list[str]:
        return list(self._taps)

    def run(self, mel, taps):
        return self.runner.run(mel, [t for t in taps if t in self._taps])

    def patchable_taps(self):
        return [t for t in self.runner.patchable_taps() if t in self._taps] if self._patchable else []

    def run_patched(self, mel, patches, taps):
        return self.runner.run_patched(mel, patches, [t for t in taps if t in self._taps])


class Crashing(OpenAIWhisperCandidate):
    name = "crashing"

    def run(self, mel, taps):
        raise ZeroDivisionError("the port divided by zero")


class ZeroPaddedFrontEnd(OpenAIWhisperCandidate):
    """openai-whisper's log-mel of the clip alone, then padded with zeros in log-mel space (a port's bug)."""

    name = "zero-padded-front-end"

    @property
    def has_front_end(self) -> bool:
        return True

    def front_end(self, samples: np.ndarray) -> np.ndarray:
        windows = []
        for start in range(0, len(samples), N_SAMPLES):
            chunk = samples[start:start + N_SAMPLES]
            mel = log_mel_spectrogram(chunk, self.dims.n_mels).numpy()[:, :N_FRAMES]
            windows.append(np.pad(mel, ((0, 0), (0, N_FRAMES - mel.shape[1]))))
        return np.stack(windows).astype(np.float32)


class WhisperFrontEnd(ZeroPaddedFrontEnd):
    """The same front end done right: the samples padded to 30 s before the STFT."""

    name = "whisper-front-end"

    def front_end(self, samples: np.ndarray) -> np.ndarray:
        windows = []
        for start in range(0, len(samples), N_SAMPLES):
            windows.append(log_mel_spectrogram(pad_or_trim(samples[start:start + N_SAMPLES]), self.dims.n_mels).numpy())
        return np.stack(windows).astype(np.float32)


class _TF32Operands(TorchFunctionMode):
    """Cuts the float32 operands of linear layers and matmuls to TF32's 10-bit mantissa, toward zero, as MAX's
    GPU kernels do (frexp: an implementation of its own, not the workbench's bit arithmetic)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.linear, torch.Tensor.matmul, torch.matmul):  # `a @ b` reaches a mode as Tensor.matmul
            args = tuple(_tf32(a) if i < 2 else a for i, a in enumerate(args))
        return func(*args, **(kwargs or {}))


def _tf32(x):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        return x
    mantissa, exponent = torch.frexp(x)  # x = mantissa * 2**exponent, |mantissa| in [0.5, 1)
    return torch.ldexp(torch.trunc(mantissa * 2048) / 2048, exponent)


class TF32Matmuls(OpenAIWhisperCandidate):
    """A float32 port whose matmuls run TF32-class (as MAX's do on a GPU); its convolutions stay IEEE."""

    name = "tf32-matmuls"

    def run(self, mel, taps):
        with _TF32Operands():
            return super().run(mel, taps)

    def run_patched(self, mel, patches, taps):
        with _TF32Operands():
            return super().run_patched(mel, patches, taps)


class KeyBiasPatchingValues(OpenAIWhisperCandidate):
    """A key bias where openai-whisper has none (the softmax cancels it: the stage output is sound), in a
    candidate that can patch only its stage outputs and the value projections."""

    name = "key-bias-patching-values"

    def __init__(self, checkpoint, config):
        super().__init__(checkpoint, config)
        bias = torch.linspace(-1, 1, checkpoint.dims.n_audio_state)
        for block in self.runner.encoder.blocks:
            block.attn.key.register_forward_hook(lambda module, args, out: out + bias.to(out.dtype))

    def patchable_taps(self):
        return [t for t in super().patchable_taps() if t.endswith((".attn.value", "resid_mid", "resid_post",
                                                                   "positional_embedding"))]


def whole(checkpoint, config):
    return OpenAIWhisperCandidate(checkpoint, config)


def black_box(checkpoint, config):
    return OpenAIWhisperCandidate(checkpoint, config, taps=[ENCODER_OUTPUT], patchable=False)


def no_encoder_output(checkpoint, config):
    return OpenAIWhisperCandidate(checkpoint, config, taps=["encoder.conv1", "encoder.conv2"])


def crashing(checkpoint, config):
    return Crashing(checkpoint, config)


def raising_builder(checkpoint, config):
    raise RuntimeError("weights not found in my format")


def zero_padded_front_end(checkpoint, config):
    return ZeroPaddedFrontEnd(checkpoint, config)


def whisper_front_end(checkpoint, config):
    return WhisperFrontEnd(checkpoint, config)


def tf32_matmuls(checkpoint, config):
    return TF32Matmuls(checkpoint, config)


def tf32_conv_average(checkpoint, config):
    """The TF32-matmul port with a convolution bug: conv1 as the average of its kernel taps (its filter / 3)."""
    state = dict(checkpoint.state)
    state["encoder.conv1.weight"] = state["encoder.conv1.weight"] / 3
    return TF32Matmuls(dataclasses.replace(checkpoint, state=state), config)
