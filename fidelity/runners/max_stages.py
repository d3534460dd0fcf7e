"""The Whisper encoder written with `max.graph.ops`, one function per stage.

Activations are channels-last `(batch, frames, width)` inside the graph; taps are
emitted in openai-whisper's layouts (convolutions channels-first). Weights are
`Weight`s named after openai-whisper's state dict (block-relative inside a block
stage), so one compiled graph serves every checkpoint of the same shapes.

`Numerics` holds the choices a port makes (GELU form, layer-norm epsilon and
precision, attention scaling, convolution geometry...). Its defaults are
openai-whisper's; the fault catalogue changes them to reproduce real porting bugs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from max.dtype import DType
from max.graph import DeviceRef, TensorValue, Weight, ops
from whisper.model import ModelDimensions

Emit = Callable[[str, TensorValue], None]

DTYPES = {"float32": DType.float32, "bfloat16": DType.bfloat16, "float16": DType.float16}


@dataclass(frozen=True)
class Numerics:
    """Numerical choices of the candidate. Defaults reproduce openai-whisper."""

    gelu: str = "none"              # "none" (erf), "tanh" or "quick"
    ln_eps: float = 1e-5
    ln_dtype: str = "float32"       # precision of layer-norm reductions
    qk_scale: str = "split"         # "split": q and k each by d**-0.25; "q_only": q by d**-0.5; "twice"
    softmax_axis: int = -1
    key_bias: bool = False          # a key bias Weight (openai-whisper has none)
    conv_padding: int = 1
    conv2_stride: int = 2
    conv_kernel_mean: bool = False  # convolution as one tap of the kernel-averaged filter
    positional_embedding: bool = True
    ln_post: bool = True


class StageBuilder:
    """Builds stage computations inside an open `Graph`, reading weights by name."""

    def __init__(self, dims: ModelDimensions, dtype: str, device: DeviceRef, numerics: Numerics):
        self.dims, self.device, self.numerics = dims, device, numerics
        self.dtype = DTYPES[dtype]
        self._weights: dict[str, Weight] = {}

    # -- weights -----------------------------------------------------------
    def weight(self, name: str, shape: tuple[int, ...]) -> TensorValue:
        """A `Weight` in the compute dtype (created once per name)."""
        if name not in self._weights:
            self._weights[name] = Weight(name, self.dtype, shape, self.device)
        return self._weights[name]

    # -- primitives ----------------------------------------------------------
    def layer_norm(self, x: TensorValue, prefix: str) -> TensorValue:
        width = self.dims.n_audio_state
        ln_dtype = DTYPES[self.numerics.ln_dtype]
        gamma = self.weight(f"{prefix}.weight", (width,)).cast(ln_dtype)
        beta = self.weight(f"{prefix}.bias", (width,)).cast(ln_dtype)
        return ops.layer_norm(x.cast(ln_dtype), gamma, beta, self.numerics.ln_eps).cast(self.dtype)

    def linear(self, x: TensorValue, prefix: str, n_out: int, n_in: int, bias: bool = True) -> TensorValue:
        w = self.weight(f"{prefix}.weight", (n_out, n_in))
        y = x @ ops.transpose(w, 0, 1)
        if bias:
            y = y + self.weight(f"{prefix}.bias", (n_out,))
        return y

    def gelu(self, x: TensorValue) -> TensorValue:
        return ops.gelu(x, approximate=self.numerics.gelu)

    def conv1d(self, x: TensorValue, prefix: str, c_in: int, c_out: int, stride: int) -> TensorValue:
        """Kernel-3 conv1d on channels-last `x`, as im2col and one matmul."""
        kernel, pad = 3, self.numerics.conv_padding
        w = self.weight(f"{prefix}.weight", (c_out, c_in, kernel))
        length = int(x.shape[1])
        if pad:
            x = ops.pad(x, [0, 0, pad, pad, 0, 0])
        n_out = (length + 2 * pad - kernel) // stride + 1
        span = stride * (n_out - 1) + 1
        if self.numerics.conv_kernel_mean:
            # The hackathon bug: average the kernel taps, apply them at the centre frame.
            centre = x[:, 1:1 + span:stride, :]
            w_mean = ops.mean(w, axis=-1)  # (c_out, c_in, 1)
            y = centre @ ops.transpose(ops.reshape(w_mean, (c_out, c_in)), 0, 1)
        else:
            cols = ops.concat([x[:, k:k + span:stride, :] for k in range(kernel)], axis=-1)
            w_mat = ops.reshape(ops.permute(w, [2, 1, 0]), (kernel * c_in, c_out))
            y = cols @ w_mat
        return y + self.weight(f"{prefix}.bias", (c_out,))

    # -- stages --------------------------------------------------------------
    def conv_stem(self, mel: TensorValue, emit: Emit) -> TensorValue:
        d, n = self.dims, self.numerics
        x = ops.transpose(mel.cast(self.dtype), 1, 2)  # (batch, frames, mels)
        x = self.conv1d(x, "encoder.conv1", d.n_mels, d.n_audio_state, stride=1)
        emit("encoder.conv1", ops.transpose(x, 1, 2))
        x = self.gelu(x)
        emit("encoder.conv1.gelu", ops.transpose(x, 1, 2))
        x = self.conv1d(x, "encoder.conv2", d.n_audio_state, d.n_audio_state, stride=n.conv2_stride)
        emit("encoder.conv2", ops.transpose(x, 1, 2))
        x = self.gelu(x)
        emit("encoder.conv2.gelu", ops.transpose(x, 1, 2))
        pos = self.weight("encoder.positional_embedding", (d.n_audio_ctx, d.n_audio_state))
        if n.positional_embedding:
            if int(x.shape[1]) != d.n_audio_ctx:
                pos = pos[: int(x.shape[1]), :]
            x = x + pos
        emit("encoder.positional_embedding", x)
        return x

    def attention(self, x: TensorValue, prefix: str, emit: Emit) -> TensorValue:
        """`x + attn(attn_ln(x))`, as openai-whisper's `ResidualAttentionBlock`."""
        d, n = self.dims, self.numerics
        width, heads = d.n_audio_state, d.n_audio_head
        head_dim = width // heads
        h = self.layer_norm(x, f"{prefix}attn_ln")
        emit("attn_ln", h)
        q = self.linear(h, f"{prefix}attn.query", width, width)
        k = self.linear(h, f"{prefix}attn.key", width, width, bias=n.key_bias)
        v = self.linear(h, f"{prefix}attn.value", width, width)
        emit("attn.query", q)
        emit("attn.key", k)
        emit("attn.value", v)
        frames = int(x.shape[1])

        def split_heads(t: TensorValue) -> TensorValue:  # (B, T, W) -> (B, H, T, D)
            return ops.permute(ops.reshape(t, ("batch", frames, heads, head_dim)), [0, 2, 1, 3])

        q_scale, k_scale = {"split": (head_dim ** -0.25, head_dim ** -0.25),
                            "q_only": (head_dim ** -0.5, 1.0),
                            "twice": (head_dim ** -0.5, head_dim ** -0.5)}[n.qk_scale]
        qh = split_heads(q) * ops.constant(q_scale, self.dtype, self.device)
        kh = split_heads(k) * ops.constant(k_scale, self.dtype, self.device)
        logits = (qh @ ops.transpose(kh, 2, 3)).cast(DType.float32)
        weights = ops.softmax(logits, axis=n.softmax_axis).cast(self.dtype)
        emit("attn.weights", weights)
        wv = ops.permute(weights @ split_heads(v), [0, 2, 1, 3])
        wv = ops.reshape(wv, ("batch", frames, width))
        emit("attn.wv", wv)
        out = self.linear(wv, f"{prefix}attn.out", width, width)
        emit("attn.out", out)
        x = x + out
        emit("resid_mid", x)
        return x

    def mlp(self, x: TensorValue, prefix: str, emit: Emit) -> TensorValue:
        """`x + mlp(mlp_ln(x))`, as openai-whisper's `ResidualAttentionBlock`."""
        width = self.dims.n_audio_state
        h = self.layer_norm(x, f"{prefix}mlp_ln")
        emit("mlp_ln", h)
        h = self.linear(h, f"{prefix}mlp.0", 4 * width, width)
        emit("mlp.0", h)
        h = self.gelu(h)
        emit("mlp.1", h)
        h = self.linear(h, f"{prefix}mlp.2", width, 4 * width)
        emit("mlp.2", h)
        x = x + h
        emit("resid_post", x)
        return x

    def ln_post(self, x: TensorValue, emit: Emit) -> TensorValue:
        if self.numerics.ln_post:
            x = self.layer_norm(x, "encoder.ln_post")
        else:
            # Declared anyway so every variant binds the same weight set.
            self.weight("encoder.ln_post.weight", (self.dims.n_audio_state,))
            self.weight("encoder.ln_post.bias", (self.dims.n_audio_state,))
        emit("encoder.ln_post", x)
        return x
