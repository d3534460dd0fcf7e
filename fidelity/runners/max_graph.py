"""The MAX Graph candidate: compiled stage graphs, chained or isolated.

Four stage kinds (conv stem, attention sub-block, MLP sub-block, ln_post) are each
compiled once and initialised once per block with that block's weights, so the
compile count does not grow with the number of layers. Every tap of a stage is a
graph output. A chained run feeds each stage the previous stage's output; an
isolated run feeds each stage the reference's input for it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from max.driver import CPU, Accelerator, Buffer, accelerator_count
from max.dtype import DType
from max.engine import InferenceSession, Model
from max.graph import DeviceRef, Graph, TensorType
from whisper.model import ModelDimensions

from ..checkpoints import cache_dir
from ..devices import check_device
from ..errors import FidelityError
from .max_stages import DTYPES, FLASH_DTYPES, Numerics, StageBuilder

log = logging.getLogger(__name__)

STAGE_KINDS = ("conv_stem", "attn", "mlp", "ln_post")


def stage_kind(stage: str) -> str:
    return stage.rsplit(".", 1)[-1] if stage.startswith("blocks.") else stage


def block_prefix(stage: str) -> str:
    """`blocks.2.attn` -> `encoder.blocks.2.`; empty for the global stages."""
    return "encoder." + stage.rsplit(".", 1)[0] + "." if stage.startswith("blocks.") else ""


@dataclass(frozen=True)
class CandidateConfig:
    """What defines a compiled candidate (besides the checkpoint's dimensions)."""

    device: str = "cpu"
    dtype: str = "float32"
    numerics: Numerics = field(default_factory=Numerics)
    attention_weights: bool = False

    def __post_init__(self):
        check_device(self.device)
        if self.dtype not in DTYPES:
            raise FidelityError(f"unknown dtype {self.dtype!r}: choose from {', '.join(DTYPES)}")
        if self.numerics.attention == "flash":
            if self.dtype not in FLASH_DTYPES:
                raise FidelityError(f"flash attention compiles in {', '.join(FLASH_DTYPES)} only with MAX 26.7 "
                                    f"(float16: modular/modular#6887); use --attention matmul for {self.dtype}")
            if self.device != "gpu":
                raise FidelityError("flash attention runs on the GPU only (--device gpu)")


_SESSIONS: dict[str, tuple[InferenceSession, object]] = {}


def session_for(device: str) -> tuple[InferenceSession, object]:
    """One InferenceSession per device per process."""
    if device not in _SESSIONS:
        if device == "gpu":
            if accelerator_count() == 0:
                raise FidelityError("--device gpu: MAX sees no accelerator on this machine")
            dev = Accelerator()
        else:
            dev = CPU()
        _SESSIONS[device] = (InferenceSession(devices=[dev]), dev)
    return _SESSIONS[device]


def to_device(array: np.ndarray, device: str):
    """A float32 host array as a graph input: itself on the CPU, a device Buffer on the GPU."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if device == "cpu":
        return array
    return Buffer.from_numpy(array).to(session_for(device)[1])


def device_ref(device: str) -> DeviceRef:
    return DeviceRef.GPU(0) if device == "gpu" else DeviceRef.CPU()


def stage_input_type(dims: ModelDimensions, kind: str, device: str) -> TensorType:
    if kind == "conv_stem":
        shape = ["batch", dims.n_mels, 2 * dims.n_audio_ctx]
    else:
        shape = ["batch", dims.n_audio_ctx, dims.n_audio_state]
    return TensorType(DType.float32, shape, device=device_ref(device))


def build_stage_graph(dims: ModelDimensions, kind: str, config: CandidateConfig) -> tuple[Graph, list[str], list[str]]:
    """A graph for one stage kind: (graph, emitted tap names, weight names)."""
    emitted: list[str] = []
    outputs = []

    def emit(name, value):
        if name == "attn.weights" and not config.attention_weights:
            return
        emitted.append(name)
        outputs.append(value.cast(DType.float32))

    name = f"whisper_{kind}_{config.device}_{config.dtype}"
    with Graph(name, input_types=[stage_input_type(dims, kind, config.device)]) as graph:
        builder = StageBuilder(dims, config.dtype, device_ref(config.device), config.numerics)
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
    """One stage kind, compiled once; `bind` makes a runnable model per weight set."""

    def __init__(self, dims: ModelDimensions, kind: str, config: CandidateConfig):
        self.kind, self.config = kind, config
        graph, self.tap_names, self.weight_names = build_stage_graph(dims, kind, config)
        self.compiled, self.compile_seconds, self.from_cache = compile_graph(graph, kind, config.device)

    def bind(self, registry: dict[str, object]) -> Model:
        session, _ = session_for(self.config.device)
        return session.init(self.compiled, weights_registry=registry)


_COMPILED: dict[str, object] = {}


def compile_graph(graph: Graph, label: str, device: str):
    """Compile `graph` once per process and once per machine.

    Compiled graphs are keyed by their MLIR text (every op, shape, dtype, constant and
    weight name), the MAX version and the device, and exported as MEF files, so a
    later run loads them instead of compiling. Returns (compiled model, seconds spent,
    whether it was already compiled).
    """
    key = hashlib.sha256(f"{max_version()}|{device}|{graph}".encode()).hexdigest()[:24]
    if key in _COMPILED:
        return _COMPILED[key], 0.0, True
    session, _ = session_for(device)
    path = mef_dir() / f"{label}-{key}.mef"
    start = time.perf_counter()
    if path.is_file():
        try:
            _COMPILED[key] = session.compile(path)
            return _COMPILED[key], time.perf_counter() - start, True
        except Exception as exc:  # a stale or truncated file: compile afresh
            log.warning("ignoring unusable cached graph %s (%s)", path, str(exc).splitlines()[0])
    log.info("compiling MAX graph %s on %s (a minute or more on a CPU unless MAX has it cached)", label, device)
    try:
        with _progress(f"still compiling {label}"):
            compiled = session.compile(graph)
    except Exception as exc:  # MAX raises plain RuntimeErrors
        raise FidelityError(f"MAX failed to compile {label}: {str(exc).splitlines()[0]}") from exc
    seconds = time.perf_counter() - start
    log.info("compiled %s in %.1f s", label, seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    compiled.export_mef(tmp)
    tmp.replace(path)
    _COMPILED[key] = compiled
    return compiled, seconds, False


@contextlib.contextmanager
def _progress(message: str, every: float = 20.0):
    """Log `message` with the elapsed time every `every` seconds until the block ends."""
    done = threading.Event()
    start = time.perf_counter()

    def tick():
        while not done.wait(every):
            log.info("%s (%.0f s)", message, time.perf_counter() - start)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def mef_dir() -> Path:
    return cache_dir() / "mef" / f"max-{max_version()}"


@functools.cache
def max_version() -> str:
    return importlib.metadata.version("max")
