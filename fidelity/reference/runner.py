"""The reference: openai-whisper's own `AudioEncoder`, run stage by stage with hooks.

Nothing of the model is reimplemented. Each stage (`fidelity.taps.Stage`) is a call
of the real submodules: the residual step of `ResidualAttentionBlock`
(`x + attn(attn_ln(x))[0]`, `x + mlp(mlp_ln(x))`), `ln_post`, and the conv stem as
`AudioEncoder.forward` writes it. Taps come from hooks on those modules at the
points `fidelity.taps` declares; the same hooks can replace a value (`run_patched`),
so the reference patches wherever a candidate does. Attention runs on openai-whisper's
explicit path (`disable_sdpa`), the one that exposes the attention logits.

Method names are the candidate protocol's (`run`, `run_patched`, `run_stage`,
`encode`, `front_end`).

Precision: float32 as shipped (the modules share the checkpoint's float32 encoder tensors, converted
once for every runner and candidate); float64
by a float64 copy of each stage's modules made as the stage runs (openai-whisper's
LayerNorm run as plain `nn.LayerNorm`, since its float32 cast would mix dtypes), so
the truth never holds a second full copy of the weights; float16/bfloat16 the
openai-whisper way, float32 parameters and a half input.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from whisper.model import AudioEncoder, LayerNorm, disable_sdpa

from .. import audio
from ..checkpoints import Checkpoint, on_meta
from ..devices import torch_device
from ..errors import FidelityError
from ..precisions import torch_dtype
from ..provenance import reference_platform
from ..taps import CONV_STEM, ENCODER_OUTPUT, LN_POST, Stage, stages
from .arithmetic import IEEE, arithmetic

Arrays = dict[str, np.ndarray]


class _ConvStem(nn.Module):
    """The conv stem's modules (shared with the encoder), as `AudioEncoder.forward` runs them."""

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.conv1, self.conv2 = encoder.conv1, encoder.conv2
        self.register_buffer("positional_embedding", encoder.positional_embedding)

    def forward(self, x: torch.Tensor, point: Callable) -> torch.Tensor:
        x = point("encoder.conv1", self.conv1(x))
        x = point("encoder.conv1.gelu", F.gelu(x))
        x = point("encoder.conv2", self.conv2(x))
        x = point("encoder.conv2.gelu", F.gelu(x))
        return (x.permute(0, 2, 1) + self.positional_embedding).to(x.dtype)


class TorchRunner:
    """openai-whisper's `AudioEncoder` in one precision, run stage by stage, taps captured by hooks."""

    def __init__(self, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu", arithmetic: str = IEEE,
                 tf32_convolutions: bool = False):
        self.torch_dtype = torch_dtype(dtype)
        self.dtype, self.arithmetic, self.tf32_convolutions = dtype, arithmetic, tf32_convolutions
        self.device = torch_device(device)
        d = checkpoint.dims
        with on_meta():
            encoder = AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
        prefix = "encoder."
        state = {k[len(prefix):]: v for k, v in checkpoint.encoder_state.items()}
        positional = state.pop("positional_embedding")  # a buffer: assigned below
        encoder.load_state_dict(state, strict=False, assign=True)  # shares the checkpoint's float32 tensors
        encoder.register_buffer("positional_embedding", positional)
        missing = [n for n, p in encoder.named_parameters() if p.is_meta]
        if missing:
            raise FidelityError(f"checkpoint lacks encoder weights: {', '.join(missing[:5])}")
        self.encoder = encoder.to(self.device).eval()
        self.dims = d
        self.stages = stages(d)
        self._stem = _ConvStem(self.encoder)

    def identity(self) -> dict:
        """What this runner's numbers depend on besides the weights and the input (the reference cache's key)."""
        where = (f"cuda:{torch.cuda.get_device_name(self.device)}:{torch.version.cuda}" if self.device.type == "cuda"
                 else "cpu")
        arithmetic = self.arithmetic if self.arithmetic == IEEE else f"{self.arithmetic}-operands-truncated"
        return {"dtype": self.dtype, "device": where, "arithmetic": arithmetic,
                "tf32_convolutions": self.tf32_convolutions, "platform": reference_platform()}

    # -- the protocol's jobs -------------------------------------------------------
    def run(self, mel: np.ndarray, taps: Sequence[str]) -> Arrays:
        """Run the whole encoder on `mel` (batch, n_mels, frames); return the taps."""
        return self.run_patched(mel, {}, taps)

    def run_patched(self, mel: np.ndarray, patches: dict[str, np.ndarray], taps: Sequence[str]) -> Arrays:
        """The whole encoder with each tap in `patches` replaced downstream by the given value."""
        wanted, out, x = set(taps), {}, mel
        for stage in self.stages:
            captured = self.run_stage(stage, x, wanted | {stage.output}, patches)
            x = patches.get(stage.output, captured[stage.output])
            out.update({k: v for k, v in captured.items() if k in wanted})
        return out

    def patchable_taps(self) -> list[str]:
        return [t.name for s in self.stages for t in s.taps if t.hook is None or t.hook[1] != "softmax"]

    def run_stage(self, stage: Stage, x: np.ndarray, taps: Iterable[str],
                  patches: dict[str, np.ndarray] | None = None) -> Arrays:
        """One stage on `x` (the mel for the conv stem): its taps among `taps` and its output, each as
        computed there; a patched tap inside the stage is replaced downstream of where it is computed."""
        patches = patches or {}
        wanted = {t.name for t in stage.taps if t.name in set(taps)} | {stage.output}
        root = self._root(stage)
        captured: dict[str, torch.Tensor] = {}

        def point(name: str, value: torch.Tensor) -> torch.Tensor:
            if name in wanted:
                captured[name] = value.detach()
            return self._tensor(patches[name]) if name in patches else value

        handles = []
        modules = dict(root.named_modules())
        for tap in stage.taps:
            if tap.hook is None or tap.hook[1] == "call" or (tap.name not in wanted and tap.name not in patches):
                continue
            path, kind = tap.hook
            if tap.name in wanted:
                handles.append(_register(modules[path], kind, tap.name, captured))
            if tap.name in patches:
                handles.append(_register_patch(modules[path], kind, tap.name, self._tensor(patches[tap.name])))
        try:
            with self._numerics(root), torch.no_grad():
                point(stage.output, self._stage_fn(stage, root, point)(self._tensor(x)))
        finally:
            for handle in handles:
                handle.remove()
        return _to_numpy(captured)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        return self.run(mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT]

    def front_end(self, samples: np.ndarray) -> np.ndarray:
        """openai-whisper's log-mel windows of 16 kHz samples, in this runner's precision (float32 or 64)."""
        return audio.log_mel_windows(samples, self.dims.n_mels, float64=self.dtype == "float64")

    # -- internals -------------------------------------------------------------
    def _root(self, stage: Stage) -> nn.Module:
        """The module a stage's hooks are relative to; a float64 copy for the float64 truth."""
        if stage.kind == CONV_STEM:
            root = self._stem
        elif stage.kind == LN_POST:
            root = self.encoder.ln_post
        else:
            root = self.encoder.blocks[stage.block]
        return copy.deepcopy(root).to(torch.float64) if self.dtype == "float64" else root

    @staticmethod
    def _stage_fn(stage: Stage, root: nn.Module, point: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        if stage.kind == CONV_STEM:
            return lambda x: root(x, point)
        if stage.kind == "attn":
            return lambda x: x + root.attn(root.attn_ln(x))[0]
        if stage.kind == "mlp":
            return lambda x: x + root.mlp(root.mlp_ln(x))
        return root

    def stage_fn(self, stage: Stage) -> Callable[[torch.Tensor], torch.Tensor]:
        """One stage as a plain tensor function (benchmarks)."""
        root = self._root(stage)
        return self._stage_fn(stage, root, lambda name, value: value)

    def _tensor(self, array) -> torch.Tensor:
        if isinstance(array, torch.Tensor):
            return array.to(self.device, self.torch_dtype)
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self.torch_dtype)

    @contextlib.contextmanager
    def _numerics(self, root: nn.Module):
        with contextlib.ExitStack() as stack:
            stack.enter_context(disable_sdpa())
            stack.enter_context(arithmetic(self.arithmetic, self.device, self.tf32_convolutions))
            if self.dtype == "float64":
                stack.enter_context(_layer_norm_in_input_dtype(root))
            yield


def _register(module: nn.Module, kind: str, tap: str, captured: dict):
    if kind == "input":
        return module.register_forward_pre_hook(lambda m, args: captured.__setitem__(tap, args[0].detach()))
    if kind == "output":
        return module.register_forward_hook(lambda m, args, out: captured.__setitem__(tap, out.detach()))
    if kind == "softmax":  # MultiHeadAttention returns (out, qk logits); whisper softmaxes qk in float
        return module.register_forward_hook(
            lambda m, args, out: captured.__setitem__(tap, F.softmax(out[1].float(), dim=-1).to(out[0].dtype)))
    raise ValueError(kind)


def _register_patch(module: nn.Module, kind: str, tap: str, value: torch.Tensor):
    """A hook, registered after the capturing one, that hands `value` downstream instead."""
    if kind == "input":
        return module.register_forward_pre_hook(lambda m, args: (value, *args[1:]))
    if kind == "output":
        return module.register_forward_hook(lambda m, args, out: value)
    raise FidelityError(f"the reference cannot patch {tap}: openai-whisper never hands it on as a tensor")


def _to_numpy(captured: dict[str, torch.Tensor]) -> Arrays:
    out = {}
    for name, tensor in captured.items():
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        out[name] = tensor.cpu().numpy()
    return out


@contextlib.contextmanager
def _layer_norm_in_input_dtype(root: nn.Module):
    """Run openai-whisper's LayerNorm modules as plain `nn.LayerNorm` (float64 runs)."""
    patched = [m for m in root.modules() if isinstance(m, LayerNorm)]
    for module in patched:
        module.forward = nn.LayerNorm.forward.__get__(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
