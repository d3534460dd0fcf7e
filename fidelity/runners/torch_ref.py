"""The PyTorch reference: openai-whisper's own `AudioEncoder`, traced with forward hooks.

Nothing of the model is reimplemented. Taps come from hooks on the real modules
(`_HOOKS`); the two values with no module of their own are read where the next
module receives them, and conv2's GELU is `F.gelu` of the hooked conv2 output,
the call openai-whisper itself makes. Attention runs on openai-whisper's explicit
path (`disable_sdpa`), the one that exposes the attention logits.

Precision: float32 as shipped; float64 with every module in float64 (openai-whisper's
LayerNorm is run as plain `nn.LayerNorm` then, since its float32 cast would mix
dtypes); float16/bfloat16 the openai-whisper way, float32 parameters and a half input.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from whisper.model import AudioEncoder, LayerNorm, disable_sdpa

from ..checkpoints import Checkpoint
from ..devices import check_device
from ..errors import FidelityError
from ..taps import stage_output

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32,
                "bfloat16": torch.bfloat16, "float16": torch.float16}

# tap (block-relative inside blocks) -> (module path, what to capture)
_GLOBAL_HOOKS = {
    "encoder.conv1": ("conv1", "output"),
    "encoder.conv1.gelu": ("conv2", "input"),
    "encoder.conv2": ("conv2", "output"),
    "encoder.conv2.gelu": ("conv2", "gelu"),
    "encoder.positional_embedding": ("blocks.0", "input"),
    "encoder.ln_post": ("ln_post", "output"),
}
_BLOCK_HOOKS = {
    "attn_ln": ("attn_ln", "output"),
    "attn.query": ("attn.query", "output"),
    "attn.key": ("attn.key", "output"),
    "attn.value": ("attn.value", "output"),
    "attn.weights": ("attn", "softmax"),
    "attn.wv": ("attn.out", "input"),
    "attn.out": ("attn.out", "output"),
    "resid_mid": ("mlp_ln", "input"),
    "mlp_ln": ("mlp_ln", "output"),
    "mlp.0": ("mlp.0", "output"),
    "mlp.1": ("mlp.1", "output"),
    "mlp.2": ("mlp.2", "output"),
    "resid_post": ("", "output"),
}


def hook_point(tap: str) -> tuple[str, str]:
    """(module path under the encoder, capture kind) for a tap name."""
    if tap in _GLOBAL_HOOKS:
        return _GLOBAL_HOOKS[tap]
    parts = tap.split(".", 3)  # encoder, blocks, i, rest
    module, kind = _BLOCK_HOOKS[parts[3]]
    return (f"blocks.{parts[2]}" + (f".{module}" if module else "")), kind


class TorchRunner:
    """Runs openai-whisper's `AudioEncoder` in one precision and captures taps."""

    def __init__(self, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu", tf32: bool = False):
        if dtype not in TORCH_DTYPES:
            raise FidelityError(f"unknown reference dtype {dtype!r}")
        self.dtype, self.tf32 = dtype, tf32
        self.device = torch.device("cuda" if check_device(device) == "gpu" else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise FidelityError("--device gpu: torch sees no CUDA device")
        d = checkpoint.dims
        encoder = AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
        prefix = "encoder."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in checkpoint.state.items() if k.startswith(prefix)},
                                strict=True)
        encoder = encoder.to(torch.float64 if dtype == "float64" else torch.float32)
        self.encoder = encoder.to(self.device).eval()
        self.dims = d

    # -- public interface ----------------------------------------------------
    def run(self, mel: np.ndarray, taps: list[str]) -> dict[str, np.ndarray]:
        """Run the whole encoder on `mel` (batch, n_mels, frames); return the taps."""
        with self._capture(taps) as captured, torch.no_grad():
            self.encoder(self._tensor(mel))
        return _to_numpy(captured)

    def run_stages(self, inputs: dict[str, np.ndarray], taps: list[str]) -> dict[str, np.ndarray]:
        """Run block and ln_post stages on given inputs (isolation): stage -> its input.

        (The conv stem reads the mel itself, so its isolated run is its chained run.)

        A block stage is the residual step of openai-whisper's `ResidualAttentionBlock`
        (`x + attn(attn_ln(x))[0]`, `x + mlp(mlp_ln(x))`) over its real submodules.
        """
        outputs = {}
        with self._capture(taps) as captured, torch.no_grad():
            for stage, value in inputs.items():
                out = self.stage_fn(stage)(self._tensor(value))
                name = stage_output(self.dims, stage)
                if name in taps:
                    outputs[name] = out.detach()
        # A stage's output wins over a hook that saw the same tap as the *next* stage's
        # input (mlp_ln's input is resid_mid): in isolation that input is the reference's.
        captured.update(outputs)
        return _to_numpy(captured)

    # -- internals -------------------------------------------------------------
    def stage_fn(self, stage: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """One stage as a call of the real submodules (the residual adds and the conv
        stem's GELUs and positional add restate `AudioEncoder.forward`)."""
        enc = self.encoder
        if stage == "ln_post":
            return enc.ln_post
        if stage == "conv_stem":
            return lambda x: (F.gelu(enc.conv2(F.gelu(enc.conv1(x)))).permute(0, 2, 1) + enc.positional_embedding
                              ).to(x.dtype)
        _, index, part = stage.split(".")
        block = self.encoder.blocks[int(index)]
        if part == "attn":
            return lambda x: x + block.attn(block.attn_ln(x))[0]
        return lambda x: x + block.mlp(block.mlp_ln(x))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, TORCH_DTYPES[self.dtype])

    @contextlib.contextmanager
    def _capture(self, taps: list[str]):
        captured: dict[str, torch.Tensor] = {}
        handles = []
        modules = dict(self.encoder.named_modules())
        for tap in taps:
            path, kind = hook_point(tap)
            handles.append(_register(modules[path], kind, tap, captured))
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(disable_sdpa())
                stack.enter_context(_tf32(self.tf32))
                if self.dtype == "float64":
                    stack.enter_context(_layer_norm_in_input_dtype(self.encoder))
                yield captured
        finally:
            for handle in handles:
                handle.remove()


def _register(module: nn.Module, kind: str, tap: str, captured: dict):
    if kind == "input":
        return module.register_forward_pre_hook(lambda m, args: captured.__setitem__(tap, args[0].detach()))
    if kind == "output":
        return module.register_forward_hook(lambda m, args, out: captured.__setitem__(tap, out.detach()))
    if kind == "gelu":
        return module.register_forward_hook(lambda m, args, out: captured.__setitem__(tap, F.gelu(out).detach()))
    if kind == "softmax":  # MultiHeadAttention returns (out, qk logits); whisper softmaxes qk in float
        return module.register_forward_hook(
            lambda m, args, out: captured.__setitem__(tap, F.softmax(out[1].float(), dim=-1).to(out[0].dtype)))
    raise ValueError(kind)


def _to_numpy(captured: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for name, tensor in captured.items():
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        out[name] = tensor.cpu().numpy()
    return out


@contextlib.contextmanager
def _layer_norm_in_input_dtype(encoder: nn.Module):
    """Run openai-whisper's LayerNorm modules as plain `nn.LayerNorm` (float64 runs)."""
    patched = [m for m in encoder.modules() if isinstance(m, LayerNorm)]
    for module in patched:
        module.forward = nn.LayerNorm.forward.__get__(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


@contextlib.contextmanager
def _tf32(enabled: bool):
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

