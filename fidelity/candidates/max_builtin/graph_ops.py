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
from max.graph import DeviceRef, Graph, TensorValue, Weight, ops
from whisper.model import ModelDimensions

from ...errors import FidelityError

Emit = Callable[[str, TensorValue], None]

DTYPES = {"float32": DType.float32, "bfloat16": DType.bfloat16, "float16": DType.float16}
# flash_attention_gpu in MAX 26.7 compiles for bfloat16 only: float16 fails kernel
# elaboration on Hopper (modular/modular#6887; seen here on an H100), float32 has no kernel.
FLASH_DTYPES = ("bfloat16",)


@dataclass(frozen=True)
class Numerics:
    """Numerical choices of the candidate. Defaults reproduce openai-whisper."""

    gelu: str = "none"                      # "none" (erf), "tanh" or "quick"
    ln_eps: float = 1e-5
    ln_dtype: str = "float32"               # precision of layer-norm reductions
    qk_scale: tuple[float, float] = (-0.25, -0.25)  # exponents of head_dim scaling q and k
    softmax_axis: int = -1
    key_bias: bool = False                  # a key bias Weight (openai-whisper has none)
    head_layout: str = "heads_first"        # how width splits: (heads, head_dim) or "dims_first"
    conv1_padding: tuple[int, int] = (1, 1)  # frames padded before and after
    conv2_stride: int = 2
    ln_post: bool = True
    attention: str = "matmul"               # "matmul" (softmax of q k^T), or "flash" (GPU fused kernel)


class StageBuilder:
    """Builds stage computations inside an open `Graph`, reading weights by name."""

    def __init__(self, dims: ModelDimensions, dtype: str, device: DeviceRef, numerics: Numerics):
        self.dims, self.device, self.numerics = dims, device, numerics
        self.dtype = DTYPES[dtype]
        self._weights: dict[str, Weight] = {}

    # -- weights -----------------------------------------------------------
    def weight(self, name: str, shape: tuple[int, ...]) -> TensorValue:
        """A `Weight` in the compute dtype, resident on the graph's device (bound at init)."""
        if name not in self._weights:
            self._weights[name] = Weight(name, self.dtype, shape, self.device)
        return Graph.current.add_weight(self._weights[name], force_initial_weight_on_host=False)

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

    def conv1d(self, x: TensorValue, prefix: str, c_in: int, c_out: int, stride: int,
               padding: tuple[int, int] = (1, 1)) -> TensorValue:
        """Kernel-3 conv1d on channels-last `x`, as im2col and one matmul."""
        kernel = 3
        w = self.weight(f"{prefix}.weight", (c_out, c_in, kernel))
        length = int(x.shape[1])
        x = self.pad(x, prefix, padding)
        n_out = (length + sum(padding) - kernel) // stride + 1
        span = stride * (n_out - 1) + 1
        cols = ops.concat([x[:, k:k + span:stride, :] for k in range(kernel)], axis=-1)
        # (c_out, kernel * c_in), used transposed like a Linear weight: that form takes the
        # tensor-core matmul on an H100/H200, where a plain (k, n) operand took a naive batched
        # kernel (2.1 of 4.6 ms of the bfloat16 encoder at batch 16, measured with ncu).
        w_rows = ops.reshape(ops.permute(w, [0, 2, 1]), (c_out, kernel * c_in))
        return cols @ ops.transpose(w_rows, 0, 1) + self.weight(f"{prefix}.bias", (c_out,))

    def pad(self, x: TensorValue, prefix: str, padding: tuple[int, int]) -> TensorValue:
        """`x` padded along frames before convolution `prefix`."""
        return ops.pad(x, [0, 0, padding[0], padding[1], 0, 0])

    def split_heads(self, t: TensorValue, frames: int) -> TensorValue:
        """(B, T, W) -> (B, H, T, D) in the numerics' head layout."""
        heads = self.dims.n_audio_head
        head_dim = self.dims.n_audio_state // heads
        if self.numerics.head_layout == "dims_first":
            return ops.permute(ops.reshape(t, ("batch", frames, head_dim, heads)), [0, 3, 1, 2])
        return ops.permute(ops.reshape(t, ("batch", frames, heads, head_dim)), [0, 2, 1, 3])

    def scaled(self, t: TensorValue, which: int) -> TensorValue:
        """q (`which` 0) or k (1) scaled by head_dim to the numerics' exponent."""
        exponent = self.numerics.qk_scale[which]
        head_dim = self.dims.n_audio_state // self.dims.n_audio_head
        return t if exponent == 0 else t * ops.constant(head_dim ** exponent, self.dtype, self.device)

    def softmax(self, logits: TensorValue) -> TensorValue:
        """The attention softmax over the numerics' axis."""
        axis = self.numerics.softmax_axis
        if axis in (-1, 3):
            return ops.softmax(logits, axis=-1)
        # MAX's softmax compiles for the last axis only: move the axis there and back
        return ops.transpose(ops.softmax(ops.transpose(logits, axis, -1), axis=-1), axis, -1)

    @property
    def key_bias(self) -> bool:
        return self.numerics.key_bias

    # -- stages --------------------------------------------------------------
    def conv_stem(self, mel: TensorValue, emit: Emit) -> TensorValue:
        d, n = self.dims, self.numerics
        x = ops.transpose(mel.cast(self.dtype), 1, 2)  # (batch, frames, mels)
        x = self.conv1d(x, "encoder.conv1", d.n_mels, d.n_audio_state, stride=1, padding=n.conv1_padding)
        emit("encoder.conv1", ops.transpose(x, 1, 2))
        x = self.gelu(x)
        emit("encoder.conv1.gelu", ops.transpose(x, 1, 2))
        x = self.conv1d(x, "encoder.conv2", d.n_audio_state, d.n_audio_state, stride=n.conv2_stride)
        emit("encoder.conv2", ops.transpose(x, 1, 2))
        x = self.gelu(x)
        emit("encoder.conv2.gelu", ops.transpose(x, 1, 2))
        pos = self.weight("encoder.positional_embedding", (d.n_audio_ctx, d.n_audio_state))
        frames = int(x.shape[1])
        x = x + (pos if frames == d.n_audio_ctx else pos[:frames, :])  # a wrong stride shortens the stem
        emit("encoder.positional_embedding", x)
        return x

    def attention(self, x: TensorValue, prefix: str, emit: Emit) -> TensorValue:
        """`x + attn(attn_ln(x))`, as openai-whisper's `ResidualAttentionBlock`."""
        d, n = self.dims, self.numerics
        width = d.n_audio_state
        head_dim = width // d.n_audio_head
        h = self.layer_norm(x, f"{prefix}attn_ln")
        emit("attn_ln", h)
        q = self.linear(h, f"{prefix}attn.query", width, width)
        k = self.linear(h, f"{prefix}attn.key", width, width, bias=self.key_bias)
        v = self.linear(h, f"{prefix}attn.value", width, width)
        emit("attn.query", q)
        emit("attn.key", k)
        emit("attn.value", v)
        frames = int(x.shape[1])
        if n.attention == "flash":
            wv = self._flash_attention(q, k, v, frames, head_dim)
        else:
            qh = self.scaled(self.split_heads(q, frames), 0)
            kh = self.scaled(self.split_heads(k, frames), 1)
            logits = (qh @ ops.transpose(kh, 2, 3)).cast(DType.float32)
            weights = self.softmax(logits).cast(self.dtype)
            emit("attn.weights", weights)
            wv = ops.permute(weights @ self.split_heads(v, frames), [0, 2, 1, 3])
            wv = ops.reshape(wv, ("batch", frames, width))
        emit("attn.wv", wv)
        out = self.linear(wv, f"{prefix}attn.out", width, width)
        emit("attn.out", out)
        x = x + out
        emit("resid_mid", x)
        return x

    def _flash_attention(self, q, k, v, frames: int, head_dim: int) -> TensorValue:
        """`max.nn.kernels.flash_attention_gpu` on `[batch, frames, heads, head_dim]`, one scale."""
        n, heads = self.numerics, self.dims.n_audio_head
        if n.softmax_axis not in (-1, 3) or n.head_layout != "heads_first":
            raise FidelityError("flash attention has no form for this fault")
        from max.nn.attention import MHAMaskVariant  # max.nn takes ~1 s to import: only on this path
        from max.nn.kernels import flash_attention_gpu

        shape = ("batch", frames, heads, head_dim)
        out = flash_attention_gpu(ops.reshape(q, shape), ops.reshape(k, shape), ops.reshape(v, shape),
                                  mask_variant=MHAMaskVariant.NULL_MASK,
                                  scale=head_dim ** (n.qk_scale[0] + n.qk_scale[1]))
        return ops.reshape(out, ("batch", frames, heads * head_dim))

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
