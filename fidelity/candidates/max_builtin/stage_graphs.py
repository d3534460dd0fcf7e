"""The built-in candidate's stage graphs: one compiled graph per stage kind.

Four stage kinds (conv stem, attention sub-block, MLP sub-block, ln_post) are each
compiled once and initialised once per block with that block's weights, so the
compile count does not grow with the number of layers. Every tap of a stage is a
graph output, emitted under its stage-relative name from `fidelity.taps`. A stage
kind whose numerics a fault changes at runtime runs on its fault-family graph
(`family`), shared by every such fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from max.dtype import DType
from max.engine import Model
from max.graph import Graph, TensorType
from whisper.model import ModelDimensions

from ...devices import check_device
from ...errors import FidelityError
from ...taps import Stage
from ..base import CandidateConfig
from ..max_engine import compile_graph, device_ref, session_for, to_device
from .family import N_KNOBS, FamilyBuilder, knobs, uses_family
from .graph_ops import DTYPES, FLASH_DTYPES, Numerics, StageBuilder

STAGE_KINDS = ("conv_stem", "attn", "mlp", "ln_post")
CAPTURES = ("staged", "fused")


@dataclass(frozen=True)
class MaxOptions:
    """What the built-in MAX candidate adds to the protocol's `CandidateConfig`.

    `numerics`: the port's numerical choices (openai-whisper's by default; the fault
    catalogue changes them); `attention_weights`: also emit the attention weights;
    `capture`: `staged` (a graph per stage kind) or `fused` (one whole-encoder graph
    with every tap an output, for chained runs).
    """

    numerics: Numerics = field(default_factory=Numerics)
    attention_weights: bool = False
    capture: str = "staged"

    @property
    def attention(self) -> str:
        return self.numerics.attention


def check_options(config: CandidateConfig, options: MaxOptions) -> None:
    """Refuse a configuration the built-in candidate cannot compile, before compiling."""
    check_device(config.device)
    if config.dtype not in DTYPES:
        raise FidelityError(f"unknown dtype {config.dtype!r}: choose from {', '.join(DTYPES)}")
    if options.capture not in CAPTURES:
        raise FidelityError(f"unknown capture {options.capture!r}: choose from {', '.join(CAPTURES)}")
    if options.numerics.attention == "flash":
        if config.dtype not in FLASH_DTYPES:
            raise FidelityError(f"flash attention compiles in {', '.join(FLASH_DTYPES)} only with MAX 26.7 "
                                f"(float16: modular/modular#6887); use --attention matmul for {config.dtype}")
        if options.attention_weights:
            raise FidelityError("flash attention never forms the attention weights: select other taps")
        if config.device != "gpu":
            raise FidelityError("flash attention runs on the GPU only (--device gpu)")


def stage_input_type(dims: ModelDimensions, kind: str, device: str) -> TensorType:
    if kind == "conv_stem":
        shape = ["batch", dims.n_mels, 2 * dims.n_audio_ctx]
    else:
        shape = ["batch", dims.n_audio_ctx, dims.n_audio_state]
    return TensorType(DType.float32, shape, device=device_ref(device))


def build_stage_graph(dims: ModelDimensions, stage: Stage, config: CandidateConfig,
                      options: MaxOptions) -> tuple[Graph, list[str], list[str]]:
    """A graph for `stage`'s kind: (graph, emitted stage-relative tap names, weight names).

    Emitted names are checked against the stage's taps (`fidelity.taps`). Where the numerics
    call for it (`family.uses_family`) it is the kind's family graph, whose second input is
    the knob vector (`family.knobs`)."""
    emitted: list[str] = []
    outputs = []

    def emit(local, value):
        stage.full_name(local)  # a name the tap list does not have is a bug here, not a finding
        if local.endswith("attn.weights") and not options.attention_weights:
            return
        emitted.append(local)
        outputs.append(value.cast(DType.float32))

    kind = stage.kind
    family = uses_family(options.numerics, kind)
    inputs = [stage_input_type(dims, kind, config.device)]
    if family:
        inputs.append(TensorType(DType.float32, [N_KNOBS], device=device_ref(config.device)))
    name = f"whisper_{kind}{'_family' if family else ''}_{config.device}_{config.dtype}"
    with Graph(name, input_types=inputs) as graph:
        device = device_ref(config.device)
        builder = (FamilyBuilder(dims, config.dtype, device, options.numerics, graph.inputs[1].tensor) if family
                   else StageBuilder(dims, config.dtype, device, options.numerics))
        x = graph.inputs[0].tensor
        if kind == "conv_stem":
            builder.conv_stem(x, emit)
        elif kind == "attn":
            builder.attention(x, "", emit)
        elif kind == "mlp":
            builder.mlp(x, "", emit)
        else:
            builder.ln_post(x, emit)
        graph.output(*outputs)
    return graph, emitted, list(builder._weights)


class CompiledStage:
    """One stage kind, compiled once; `bind` makes a runnable model per weight set.

    `knobs`: the knob vector a family graph runs with (None for a stage kind's own graph)."""

    def __init__(self, dims: ModelDimensions, stage: Stage, config: CandidateConfig, options: MaxOptions):
        self.kind, self.config = stage.kind, config
        graph, self.local_names, self.weight_names = build_stage_graph(dims, stage, config, options)
        self.knobs = knobs(options.numerics, dims) if uses_family(options.numerics, stage.kind) else None
        label = self.kind if self.knobs is None else f"{self.kind}-family"
        self.compiled, self.compile_seconds, self.from_cache = compile_graph(graph, label, config.device)

    def bind(self, registry: dict[str, object]) -> Model:
        session, _ = session_for(self.config.device)
        model = session.init(self.compiled, weights_registry=registry)
        return model if self.knobs is None else WithKnobs(model, to_device(self.knobs, self.config.device))


class WithKnobs:
    """A family graph's model that runs like a stage graph's: `execute(x)` passes the knobs as well."""

    def __init__(self, model: Model, knob_input):
        self.model, self.knob_input = model, knob_input

    def execute(self, x):
        return self.model.execute(x, self.knob_input)
