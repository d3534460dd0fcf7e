"""The whole built-in MAX encoder as one graph: the fast path for transcription and benchmarks,
and the `fused` capture (every tap an output of one graph, as a naive tracer captures them).

Built from the same `StageBuilder` functions as the stage graphs, with weights under
their full openai-whisper names, and only the requested taps as outputs.
"""

from __future__ import annotations

import numpy as np
from max.driver import Buffer
from max.dtype import DType
from max.graph import Graph

from ...checkpoints import Checkpoint
from ...taps import ENCODER_OUTPUT
from ..base import CandidateConfig
from ..max_engine import compile_graph, device_ref, session_for, to_device
from .graph_ops import StageBuilder
from .stage_graphs import MaxOptions, check_options, stage_input_type
from .weights import WeightTransform, weight_registry


def build_encoder_graph(dims, config: CandidateConfig, options: MaxOptions, outputs: tuple[str, ...]):
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
        builder = StageBuilder(dims, config.dtype, device_ref(config.device), options.numerics)
        x = builder.conv_stem(graph.inputs[0].tensor, emitter(""))
        for i in range(dims.n_audio_layer):
            prefix = f"encoder.blocks.{i}."
            x = builder.attention(x, prefix, emitter(prefix))
            x = builder.mlp(x, prefix, emitter(prefix))
        builder.ln_post(x, emitter(""))
        graph.output(*values)
    return graph, emitted, list(builder._weights)


def compile_encoder(dims, config: CandidateConfig, options: MaxOptions, outputs: tuple[str, ...]):
    """(compiled model, output names, weight names, compile seconds) for the whole encoder."""
    graph, output_names, weight_names = build_encoder_graph(dims, config, options, tuple(outputs))
    compiled, seconds, _ = compile_graph(graph, "encoder", config.device)
    return compiled, output_names, weight_names, seconds


class WholeEncoder:
    """One compiled graph for the whole encoder; call it on a mel batch."""

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig | None = None,
                 options: MaxOptions | None = None, outputs: tuple[str, ...] = (ENCODER_OUTPUT,),
                 transform: WeightTransform | None = None):
        self.config, self.options = config or CandidateConfig(), options or MaxOptions()
        check_options(self.config, self.options)
        self.dims = checkpoint.dims
        self.compiled, self.output_names, weight_names, self.compile_seconds = compile_encoder(
            self.dims, self.config, self.options, tuple(outputs))
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
