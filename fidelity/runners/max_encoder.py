"""The whole MAX encoder as one graph: the fast path for transcription and benchmarks.

Built from the same `StageBuilder` functions as the traced stage graphs, with
weights under their full openai-whisper names, and only the requested taps as
outputs (by default `encoder.ln_post`).
"""

from __future__ import annotations

import numpy as np
from max.driver import Buffer
from max.dtype import DType
from max.graph import Graph

from ..checkpoints import Checkpoint
from ..taps import encoder_taps
from .max_graph import CandidateConfig, compile_graph, device_ref, session_for, stage_input_type, to_device
from .max_runner import MaxRunner, WeightTransform, weight_registry
from .max_stages import StageBuilder


def build_encoder_graph(dims, config: CandidateConfig, outputs: tuple[str, ...]):
    """(graph, output names in order, weight names) for the whole encoder."""
    emitted, values = [], []

    def emitter(prefix: str):
        def emit(name, value):
            full = prefix + name
            if full in outputs:
                emitted.append(full)
                values.append(value.cast(DType.float32))
        return emit

    with Graph(f"whisper_encoder_{config.device}_{config.dtype}",
               input_types=[stage_input_type(dims, "conv_stem", config.device)]) as graph:
        builder = StageBuilder(dims, config.dtype, device_ref(config.device), config.numerics)
        x = builder.conv_stem(graph.inputs[0].tensor, emitter(""))
        for i in range(dims.n_audio_layer):
            prefix = f"encoder.blocks.{i}."
            x = builder.attention(x, prefix, emitter(prefix))
            x = builder.mlp(x, prefix, emitter(prefix))
        builder.ln_post(x, emitter(""))
        graph.output(*values)
    return graph, emitted, list(builder._weights)


def compile_encoder(dims, config: CandidateConfig, outputs: tuple[str, ...]):
    """(compiled model, output names, weight names, compile seconds) for the whole encoder."""
    graph, output_names, weight_names = build_encoder_graph(dims, config, tuple(outputs))
    compiled, seconds, _ = compile_graph(graph, "encoder", config.device)
    return compiled, output_names, weight_names, seconds


class MaxEncoder:
    """One compiled graph for the whole encoder; call it on a mel batch."""

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig | None = None,
                 outputs: tuple[str, ...] = ("encoder.ln_post",), transform: WeightTransform | None = None):
        self.config = config or CandidateConfig()
        self.dims = checkpoint.dims
        self.compiled, self.output_names, weight_names, self.compile_seconds = compile_encoder(
            self.dims, self.config, tuple(outputs))
        weights = dict(checkpoint.encoder_weights)
        if transform is not None:
            weights = transform(weights)
        registry = weight_registry(weight_names, weights, "", self.config)
        session, _ = session_for(self.config.device)
        self.model = session.init(self.compiled, weights_registry=registry)

    def execute(self, mel: np.ndarray | Buffer) -> list[Buffer]:
        """Run on a mel batch (numpy, or a Buffer already on the device); device buffers out."""
        if isinstance(mel, np.ndarray):
            mel = self.to_device(mel)
        return self.model.execute(mel)

    def __call__(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        return {name: out.to_numpy() for name, out in zip(self.output_names, self.execute(mel))}

    def to_device(self, array: np.ndarray):
        return to_device(array, self.config.device)


class FusedCaptureRunner(MaxRunner):
    """A traced candidate whose chained run is one whole-encoder graph with every tap an output.

    This is how a naive tracer captures taps. Isolated runs still use the stage
    graphs, which is what lets the tap-consistency check recompute each stage from
    the captured input and catch a capture that disagrees with its own consumer.
    """

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig | None = None,
                 transform: WeightTransform | None = None):
        super().__init__(checkpoint, config, transform)
        names = tuple(t.name for t in encoder_taps(self.dims) if self.config.attention_weights or not t.optional)
        self.fused = MaxEncoder(checkpoint, self.config, names, transform)

    @property
    def compile_seconds(self) -> float:
        return super().compile_seconds + self.fused.compile_seconds

    def run(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.array(value) for name, value in self.fused(mel).items()}
