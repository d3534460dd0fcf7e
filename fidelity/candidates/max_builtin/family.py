"""Fault-family graphs: one compiled graph per stage kind serves every numerics fault of that kind.

A numerics fault changes a choice of `Numerics` (a GELU form, a layer-norm epsilon or
precision, the attention scaling, softmax axis or head layout, conv1's padding, ln_post
on or off). Compiled one graph per choice, the catalogue needed a graph per fault; here a
stage kind's *family* graph takes the choices as a runtime input, a float32 vector of
knobs: scalars (the epsilon, the q and k scale factors) used as they are, and one-hot
selectors choosing among variants computed side by side with `ops.where` (exact: the
chosen variant's values pass unchanged, whatever the others hold, NaN included).

Which numerics fields a kind takes at runtime, and the values they may take, are
`RUNTIME`; a fault outside them (conv2's stride, which changes the stem's output shape;
flash attention) keeps a graph of its own, built as before. The clean candidate never
uses a family graph: its stage graphs, and their cache keys, are unchanged. A family
graph's key bias is always present; openai-whisper's key has none, so a candidate without
one binds zeros (k + 0 is k).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, TensorValue, ops
from whisper.model import ModelDimensions

from .graph_ops import DTYPES, Numerics, StageBuilder

DEFAULTS = Numerics()
# Per field: the values a family graph offers (one selector each, the default first), or None for a scalar.
CHOICES: dict[str, tuple | None] = {
    "gelu": ("none", "tanh", "quick"),
    "ln_eps": None,
    "ln_dtype": ("float32", "float16", "bfloat16"),
    "qk_scale": None,
    "softmax_axis": (-1, -2),
    "key_bias": (False, True),
    "head_layout": ("heads_first", "dims_first"),
    "conv1_padding": ((1, 1), (2, 0), (0, 2)),   # the stem's length is kept: two frames of padding in all
    "ln_post": (True, False),
}
RUNTIME: dict[str, tuple[str, ...]] = {
    "conv_stem": ("gelu", "conv1_padding"),
    "attn": ("ln_eps", "ln_dtype", "qk_scale", "softmax_axis", "key_bias", "head_layout"),
    "mlp": ("ln_eps", "ln_dtype", "gelu"),
    "ln_post": ("ln_eps", "ln_dtype", "ln_post"),
}
KNOB_FIELDS = ("gelu", "ln_eps", "ln_dtype", "qk_scale", "softmax_axis", "head_layout", "conv1_padding", "ln_post")


def _width(name: str) -> int:
    return 2 if name == "qk_scale" else 1 if CHOICES[name] is None else len(CHOICES[name])


OFFSETS = dict(zip(KNOB_FIELDS, np.cumsum([0] + [_width(f) for f in KNOB_FIELDS]).tolist()))
N_KNOBS = sum(_width(f) for f in KNOB_FIELDS)


def _value(numerics: Numerics, name: str):
    value = getattr(numerics, name)
    if name == "softmax_axis":
        return value - 4 if value >= 0 else value  # the logits are (batch, heads, query, key)
    return tuple(value) if isinstance(value, list) else value


def uses_family(numerics: Numerics, kind: str) -> bool:
    """Whether stage `kind` runs on its family graph: some runtime field differs from openai-whisper's,
    and every one takes a value the family offers (matmul attention only)."""
    fields = RUNTIME[kind]
    changed = [f for f in fields if _value(numerics, f) != _value(DEFAULTS, f)]
    if not changed or (kind == "attn" and numerics.attention != "matmul"):
        return False
    return all(CHOICES[f] is None or _value(numerics, f) in CHOICES[f] for f in fields)


def structural(numerics: Numerics) -> Numerics:
    """`numerics` with every runtime field at its default: all that shapes a family graph's text."""
    return dataclasses.replace(numerics, **{f: getattr(DEFAULTS, f) for f in CHOICES})


def knobs(numerics: Numerics, dims: ModelDimensions) -> np.ndarray:
    """The knob vector that makes a family graph compute `numerics`."""
    out = np.zeros(N_KNOBS, np.float32)
    head_dim = dims.n_audio_state // dims.n_audio_head
    for name in KNOB_FIELDS:
        start, value = OFFSETS[name], _value(numerics, name)
        if name == "ln_eps":
            out[start] = value
        elif name == "qk_scale":
            out[start:start + 2] = [head_dim ** e for e in value]  # head_dim ** 0 is 1: t * 1 is t
        elif value in CHOICES[name]:
            out[start + CHOICES[name].index(value)] = 1
    return out


class FamilyBuilder(StageBuilder):
    """A `StageBuilder` whose runtime numerics come from the graph's knob input."""

    def __init__(self, dims: ModelDimensions, dtype: str, device: DeviceRef, numerics: Numerics,
                 knob_input: TensorValue):
        super().__init__(dims, dtype, device, structural(numerics))
        self.knob_input = knob_input

    def knob(self, name: str, index: int = 0) -> TensorValue:
        start = OFFSETS[name] + index
        return self.knob_input[start:start + 1]  # shape (1,): broadcasts against any activation

    def select(self, name: str, variants: list[TensorValue]) -> TensorValue:
        """The variant whose selector is set (the first, openai-whisper's, when none of the others is)."""
        out = variants[0]
        for i, variant in enumerate(variants[1:], start=1):
            out = ops.where(self.knob(name, i) > 0.5, variant, out)
        return out

    # -- the runtime choices ---------------------------------------------------------------
    def layer_norm(self, x: TensorValue, prefix: str) -> TensorValue:
        width = self.dims.n_audio_state
        gamma = self.weight(f"{prefix}.weight", (width,))
        beta = self.weight(f"{prefix}.bias", (width,))
        eps = self.knob("ln_eps")

        def norm(dtype: DType) -> TensorValue:
            xd = x.cast(dtype)
            centred = xd - ops.mean(xd, axis=-1)
            var = ops.mean(centred * centred, axis=-1)
            # scale = rsqrt(var + eps) * gamma, then centred * scale: in the usual order MAX 26.7 fuses the
            # whole into its layer_norm op, whose kernel fails to compile with an epsilon that is an input
            y = centred * (ops.rsqrt(var + eps.cast(dtype)) * gamma.cast(dtype)) + beta.cast(dtype)
            return y.cast(self.dtype)

        return self.select("ln_dtype", [norm(DTYPES[d]) for d in CHOICES["ln_dtype"]])

    def gelu(self, x: TensorValue) -> TensorValue:
        return self.select("gelu", [ops.gelu(x, approximate=form) for form in CHOICES["gelu"]])

    def pad(self, x: TensorValue, prefix: str, padding: tuple[int, int]) -> TensorValue:
        if prefix != "encoder.conv1":
            return super().pad(x, prefix, padding)
        return self.select("conv1_padding", [super(FamilyBuilder, self).pad(x, prefix, p)
                                             for p in CHOICES["conv1_padding"]])

    def split_heads(self, t: TensorValue, frames: int) -> TensorValue:
        heads = self.dims.n_audio_head
        head_dim = self.dims.n_audio_state // heads
        return self.select("head_layout", [
            ops.permute(ops.reshape(t, ("batch", frames, heads, head_dim)), [0, 2, 1, 3]),
            ops.permute(ops.reshape(t, ("batch", frames, head_dim, heads)), [0, 3, 1, 2])])

    def scaled(self, t: TensorValue, which: int) -> TensorValue:
        return t * self.knob("qk_scale", which).cast(self.dtype)

    def softmax(self, logits: TensorValue) -> TensorValue:
        over_queries = ops.transpose(ops.softmax(ops.transpose(logits, -2, -1), axis=-1), -2, -1)
        return self.select("softmax_axis", [ops.softmax(logits, axis=-1), over_queries])

    @property
    def key_bias(self) -> bool:
        return True

    def ln_post(self, x: TensorValue, emit) -> TensorValue:
        x = self.select("ln_post", [self.layer_norm(x, "encoder.ln_post"), x])
        emit("encoder.ln_post", x)
        return x
