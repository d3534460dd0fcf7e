"""The fault catalogue: real porting bugs injected into the built-in MAX candidate, and its proof.

Each fault is either a change of the candidate's numerics (`Numerics`), run on the
stage kinds' fault-family graphs, one per kind shared by every numerics fault with the
choice a runtime input (`candidates.max_builtin.family`; conv2's stride changes the
stem's shape and keeps a graph of its own), or a change of the weights it is given (no
recompile). Where a weight change reproduces a bug exactly (x + 0 is x, a
kernel-averaged filter applied at the centre frame is the averaging convolution),
the catalogue uses it. Block-specific faults pick their block from the model's depth.

The catalogue registers itself as the candidate spec `max:FAULT` (`fidelity.candidates.specs`);
`proof.localize` runs one fault with isolation and says which stage the workbench named;
`python -m fidelity.faults` is the proof run over the catalogue.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from whisper.model import ModelDimensions

from ..candidates.base import CandidateConfig
from ..candidates.max_builtin import BuiltinCandidate, MaxOptions, options_for
from ..candidates.specs import Provider, register
from ..errors import FidelityError

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Fault:
    """A named porting bug, where the workbench should find it, and how to inject it."""

    name: str
    description: str
    expected: Callable[[ModelDimensions], str | None]     # the stage to be named; None for a control
    numerics: dict = field(default_factory=dict)            # Numerics fields to change
    weights: Callable[[Weights, ModelDimensions], Weights] | None = None
    applies: Callable[[ModelDimensions], str | None] = lambda dims: None  # a reason if it does not
    internal: bool = False  # its effect cancels at the stage output: expected as an internal difference

    def options(self, base: MaxOptions) -> MaxOptions:
        return dataclasses.replace(base, numerics=dataclasses.replace(base.numerics, **self.numerics))

    def transform(self, dims: ModelDimensions) -> Callable[[Weights], Weights] | None:
        if self.weights is None:
            return None
        return lambda w: self.weights(dict(w), dims)


def _middle(dims: ModelDimensions) -> int:
    return dims.n_audio_layer // 2


def _second(dims: ModelDimensions) -> int:
    return min(1, dims.n_audio_layer - 1)


def _stage(template: str, block: Callable[[ModelDimensions], int] | None = None):
    return lambda dims: template.format(block(dims) if block else 0)


def _kernel_mean(w: Weights, dims) -> Weights:
    for conv in ("encoder.conv1.weight", "encoder.conv2.weight"):
        mean = w[conv].mean(axis=-1)
        averaged = np.zeros_like(w[conv])
        averaged[..., 1] = mean
        w[conv] = averaged
    return w


def _zero_positional(w: Weights, dims) -> Weights:
    w["encoder.positional_embedding"] = np.zeros_like(w["encoder.positional_embedding"])
    return w


def _swap_qk(w: Weights, dims) -> Weights:
    p = f"encoder.blocks.{_middle(dims)}.attn."
    w[p + "query.weight"], w[p + "key.weight"] = w[p + "key.weight"], w[p + "query.weight"]
    return w


def _transpose_out(w: Weights, dims) -> Weights:
    name = f"encoder.blocks.{_second(dims)}.attn.out.weight"
    w[name] = np.ascontiguousarray(w[name].T)
    return w


def _key_bias_from_value(w: Weights, dims) -> Weights:
    for i in range(dims.n_audio_layer):
        w[f"encoder.blocks.{i}.attn.key.bias"] = w[f"encoder.blocks.{i}.attn.value.bias"].copy()
    return w


def _drop_value_bias(w: Weights, dims) -> Weights:
    w["encoder.blocks.0.attn.value.bias"] = np.zeros_like(w["encoder.blocks.0.attn.value.bias"])
    return w


def _swap_gamma_beta(w: Weights, dims) -> Weights:
    p = f"encoder.blocks.{dims.n_audio_layer - 1}.mlp_ln."
    w[p + "weight"], w[p + "bias"] = w[p + "bias"], w[p + "weight"]
    return w


CATALOGUE: tuple[Fault, ...] = (
    Fault("missing_ln_post", "the final layer norm is left out", _stage("ln_post"), {"ln_post": False}),
    Fault("conv_kernel_mean", "each convolution as the average of its kernel taps (the hackathon bug)",
          _stage("conv_stem"), weights=_kernel_mean),
    Fault("conv2_stride_3", "conv2 with stride 3 instead of 2 (the stem yields too few frames)",
          _stage("conv_stem"), {"conv2_stride": 3}),
    Fault("conv1_padding_shift", "conv1 padded 2 frames before and none after: output shifted one frame",
          _stage("conv_stem"), {"conv1_padding": (2, 0)}),
    Fault("missing_positional_embedding", "the positional embedding is not added (modelled as adding zeros)",
          _stage("conv_stem"), weights=_zero_positional),
    Fault("attn_scale_q_only", "q scaled by head_dim**-0.25 and k not at all (total scale off by d**0.25)",
          _stage("blocks.{}.attn"), {"qk_scale": (-0.25, 0.0)}),
    Fault("attn_scale_twice", "q and k each scaled by head_dim**-0.5 (the scale applied twice)",
          _stage("blocks.{}.attn"), {"qk_scale": (-0.5, -0.5)}),
    Fault("attn_scale_sqrt_on_q", "control, not a bug: head_dim**-0.5 on q alone equals whisper's split "
          "scaling up to rounding, so nothing should be named", lambda dims: None, {"qk_scale": (-0.5, 0.0)}),
    Fault("key_bias", "a key bias where openai-whisper has none (the value bias, a fused-split slip)",
          _stage("blocks.{}.attn"), {"key_bias": True}, weights=_key_bias_from_value, internal=True),
    Fault("softmax_wrong_axis", "softmax over the query axis instead of the key axis",
          _stage("blocks.{}.attn"), {"softmax_axis": -2}),
    Fault("heads_split_wrong", "width split as (head_dim, heads) instead of (heads, head_dim)",
          _stage("blocks.{}.attn"), {"head_layout": "dims_first"},
          applies=lambda d: "the model has one head" if d.n_audio_head == 1 else None),
    Fault("gelu_tanh", "tanh-approximated GELU instead of erf GELU", _stage("conv_stem"), {"gelu": "tanh"}),
    Fault("ln_eps_1e-6", "layer-norm epsilon 1e-6 instead of 1e-5", _stage("blocks.{}.attn"), {"ln_eps": 1e-6}),
    Fault("ln_float16", "layer-norm reductions in float16", _stage("blocks.{}.attn"), {"ln_dtype": "float16"}),
    Fault("qk_weights_swapped", "query and key weights swapped in the middle block",
          _stage("blocks.{}.attn", _middle), weights=_swap_qk),
    Fault("out_proj_transposed", "the attention out-projection weight transposed in the second block",
          _stage("blocks.{}.attn", _second), weights=_transpose_out),
    Fault("value_bias_dropped", "the value bias lost in conversion (zeros) in block 0",
          _stage("blocks.{}.attn"), weights=_drop_value_bias),
    Fault("mlp_ln_gamma_beta_swapped", "the last block's MLP layer-norm weight and bias swapped",
          lambda dims: f"blocks.{dims.n_audio_layer - 1}.mlp", weights=_swap_gamma_beta),
)

FAULTS = {fault.name: fault for fault in CATALOGUE}


def get_fault(name: str, dims: ModelDimensions) -> Fault:
    """The named fault, checked against the model's shapes."""
    if name not in FAULTS:
        raise FidelityError(f"unknown fault {name!r}; known faults: {', '.join(FAULTS)}")
    fault = FAULTS[name]
    reason = fault.applies(dims)
    if reason:
        raise FidelityError(f"fault {name} does not apply to this model: {reason}")
    return fault


def faulty_candidate(checkpoint, fault: Fault, config: CandidateConfig | None = None,
                     options: MaxOptions | None = None) -> BuiltinCandidate:
    """The built-in MAX candidate with `fault` injected."""
    config = config or CandidateConfig()
    candidate = BuiltinCandidate(checkpoint, config, fault.options(options or options_for(config)),
                                 transform=fault.transform(checkpoint.dims))
    candidate.name = f"max-builtin+{fault.name}"
    return candidate


def _build(checkpoint, config: CandidateConfig, name: str) -> BuiltinCandidate:
    return faulty_candidate(checkpoint, get_fault(name, checkpoint.dims), config)


register(Provider("max:", "the built-in MAX encoder with a catalogued porting bug", ("float32", "bfloat16", "float16"),
                  _build, arguments=lambda: list(FAULTS), argument_name="fault"))
