"""Your MAX Graph encoder as a candidate: wrap the function that builds its graph body.

The workbench opens the graph (input 0: the log-mel, float32 `(batch, n_mels, frames)`,
then your own inputs, e.g. weights in a fixed order), calls your function, and outputs
what it returns (the encoder output, `(batch, frames, width)`). Probes you place with
`fidelity.probe.probe` become taps. Up to three graphs are compiled, each once per
machine (MEF store, keyed by MLIR text, MAX version and device):
  * `off`: probes off, exactly your graph: `encode`, and the probe effect;
  * `observe`: every probe an extra output: `run`;
  * `patch`: every probe patchable at run time: `run_patched` (isolation).

Instrumenting a port (weights as graph inputs; `Weight`s work too, pass `weights=`):

    from fidelity.candidates.max_port import MaxPort
    from fidelity.probe import probe

    def encoder(mel, *w):                                   # your graph body
        x = conv_stem(mel, w)                               # (batch, frames, width)
        x = probe("encoder.conv2.gelu", x, layout="btc")    # channels-last conv output
        for i in range(n_layers):
            x = probe(f"encoder.blocks.{i}.resid_post", block(x, w, i))
        return probe("encoder.ln_post", layer_norm(x, w))

    def build(checkpoint, config):                          # --candidate my_port.py:build
        w = checkpoint.encoder_weights                      # openai-whisper names -> float32 arrays
        return MaxPort(checkpoint, config, encoder, inputs=[w[n] for n in MY_ORDER], name="my-port")

Weights arrive by openai-whisper state-dict names and shapes; map them (transpose,
fuse, reorder) in `build`. Each input array becomes a graph input of its shape in the
candidate's dtype unless `input_types` says otherwise.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
from max.driver import Buffer
from max.dtype import DType
from max.graph import Graph, TensorType, TensorValue

from ..checkpoints import Checkpoint
from ..errors import FidelityError
from ..precisions import host_array, max_dtype, max_precision_name, served_by
from ..probe import Probe, Trace, tracing
from .base import ENCODER_OUTPUT, Candidate, CandidateConfig, CapabilityError, ProbeEffect, check_batch
from .max_engine import compile_graph, device_ref, session_for

log = logging.getLogger(__name__)

GraphFn = Callable[..., TensorValue]
MODES = ("off", "observe", "patch")


class MaxPort(Candidate):
    """A user's MAX Graph encoder, instrumented with probes (see the module docstring)."""

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig, graph_fn: GraphFn, *,
                 inputs: Sequence[np.ndarray] = (), input_types: Sequence[TensorType] | None = None,
                 weights: dict[str, np.ndarray] | None = None,
                 front_end: Callable[[np.ndarray], np.ndarray] | None = None,
                 name: str = "max-port", graph_name: str | None = None):
        if config.dtype not in served_by("max"):
            raise FidelityError(f"a MAX port runs {', '.join(served_by('max'))}, not {config.dtype}")
        self.name, self.dims, self.dtype, self.device = name, checkpoint.dims, config.dtype, config.device
        self.graph_fn, self.graph_name = graph_fn, graph_name or name.replace("-", "_")
        self._front_end = front_end
        self._device = session_for(self.device)[1]
        if input_types is None:
            input_types = [TensorType(max_dtype(self.dtype), np.shape(a), device=device_ref(self.device))
                           for a in inputs]
        if len(input_types) != len(inputs):
            raise FidelityError(f"{name}: {len(inputs)} input arrays for {len(input_types)} input types")
        self.input_types = list(input_types)
        self._inputs = [self._feed(np.asarray(a), t, f"input {i}", resident=True) for i, (a, t) in
                        enumerate(zip(inputs, self.input_types))]  # copied to the device once
        self._registry = {key: self._buffer(host_array(value, self.dtype)) for key, value in (weights or {}).items()}
        self._device.synchronize()
        self._graphs: dict[str, tuple[Graph, list[Probe]]] = {}
        self._models: dict[str, object] = {}
        self.compile_log: dict[str, dict] = {}
        self.probes = self._traced("observe")[1]  # traced now: bad probe names fail at build time

    # -- the protocol ------------------------------------------------------------
    def available_taps(self) -> list[str]:
        names = [p.name for p in self.probes]
        return names if ENCODER_OUTPUT in names else [*names, ENCODER_OUTPUT]

    def patchable_taps(self) -> list[str]:
        return [p.name for p in self.probes]

    def run(self, mel: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        check_batch(mel, self.dims)
        outputs = self._model("observe").execute(*self._mel(mel), *self._inputs)
        return self._collect(outputs, self.probes, taps)

    def run_patched(self, mel: np.ndarray, patches: dict[str, np.ndarray],
                    taps: Sequence[str]) -> dict[str, np.ndarray]:
        check_batch(mel, self.dims)
        probes = self._traced("patch")[1]
        unknown = sorted(set(patches) - {p.name for p in probes})
        if unknown:
            raise CapabilityError(f"candidate {self.name} cannot patch {', '.join(unknown)}: it has no probe there "
                                  f"(probes: {', '.join(p.name for p in probes) or 'none'})")
        feeds = []
        for p in probes:
            value_type, gate_type = p.input_types()
            if p.name in patches:
                value = p.layout.from_canonical(np.asarray(patches[p.name]))
                want = _concrete(value_type, len(mel))
                if tuple(value.shape) != want:
                    raise FidelityError(f"patch for {p.name} has shape {tuple(value.shape)} in the port's layout "
                                        f"{p.layout.letters!r}, its probe has {want}")
                feeds += [self._feed(value, value_type, p.name), self._feed(np.array(True), gate_type, p.name)]
            else:
                zeros = np.zeros(_concrete(value_type, len(mel)), dtype=np.float32)
                feeds += [self._feed(zeros, value_type, p.name), self._feed(np.array(False), gate_type, p.name)]
        outputs = self._model("patch").execute(*self._mel(mel), *self._inputs, *feeds)
        return self._collect(outputs, probes, taps)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """The encoder output from the probes-off graph (what transcription needs)."""
        check_batch(mel, self.dims)
        return np.array(self._model("off").execute(*self._mel(mel), *self._inputs)[0].to_numpy())

    @property
    def has_front_end(self) -> bool:
        return self._front_end is not None

    def front_end(self, samples: np.ndarray) -> np.ndarray:
        if self._front_end is None:
            return super().front_end(samples)
        return np.asarray(self._front_end(samples), dtype=np.float32)

    def describe(self) -> dict:
        return {**super().describe(), "probes": self.patchable_taps(), "compile": self.compile_log}

    # -- probe effect ----------------------------------------------------------------
    def probe_effect(self, mel: np.ndarray) -> ProbeEffect:
        """The encoder output with probes off against every probe an output, on `mel`."""
        off = self.encode(mel).astype(np.float64)
        on = self.run(mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT].astype(np.float64)
        if off.shape != on.shape:
            raise FidelityError(f"{self.name}: the encoder output has shape {on.shape} with probes, "
                                f"{off.shape} without")
        return ProbeEffect.between(off, on)

    # -- graphs -----------------------------------------------------------------------
    def graph(self, mode: str) -> Graph:
        """The traced (uncompiled) graph for `mode` (off, observe or patch)."""
        return self._traced(mode)[0]

    def compile(self, modes: Sequence[str] = MODES) -> dict[str, dict]:
        """Compile (or load from the MEF store) the graphs for `modes` now; returns `compile_log`."""
        for mode in modes:
            self._model(mode)
        return self.compile_log

    def _traced(self, mode: str) -> tuple[Graph, list[Probe]]:
        if mode not in MODES:
            raise ValueError(mode)
        if mode not in self._graphs:
            self._graphs[mode] = self._trace(mode)
        return self._graphs[mode]

    def _trace(self, mode: str) -> tuple[Graph, list[Probe]]:
        mel_type = TensorType(DType.float32, ["batch", self.dims.n_mels, 2 * self.dims.n_audio_ctx],
                              device=device_ref(self.device))
        types = [mel_type, *self.input_types]
        if mode == "patch":
            observed = self._traced("observe")[1]
            if not observed:
                raise CapabilityError(f"candidate {self.name} has no probes to patch: add probe() calls at its "
                                      "stage boundaries (see fidelity.candidates.max_port)")
            types += [t for p in observed for t in p.input_types()]
        name = self.graph_name if mode == "off" else f"{self.graph_name}_{mode}"
        with Graph(name, input_types=types) as graph:
            args = [value.tensor for value in graph.inputs]
            own = args[:1 + len(self.input_types)]
            if mode == "off":
                graph.output(_float32(self._call(own)))
                return graph, []
            trace = Trace(mode, self.dims)
            if mode == "patch":
                extra = args[len(own):]
                trace.patch_inputs = [(extra[2 * i], extra[2 * i + 1]) for i in range(len(observed))]
                trace.expected = [p.name for p in observed]
            with tracing(trace):
                out = self._call(own)
            if mode == "patch" and len(trace.probes) != len(observed):
                raise FidelityError(f"{self.name}: its graph function probed {len(trace.probes)} taps on one trace "
                                    f"and {len(observed)} on another: it must build the same graph each time")
            graph.output(_float32(out), *(_float32(p.value) for p in trace.probes))
        return graph, trace.probes

    def _call(self, args) -> TensorValue:
        try:
            out = self.graph_fn(*args)
        except FidelityError:
            raise
        except Exception as exc:
            raise FidelityError(f"{self.name}: building its MAX graph failed: {type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        if not isinstance(out, TensorValue):
            raise FidelityError(f"{self.name}: its graph function must return the encoder output tensor, "
                                f"not {type(out).__name__}")
        return out

    def _model(self, mode: str):
        if mode not in self._models:
            graph = self.graph(mode)
            compiled, seconds, cached = compile_graph(graph, f"{self.graph_name}-{mode}", self.device)
            self.compile_log[mode] = {"seconds": round(seconds, 3), "cached": cached}
            self._models[mode] = session_for(self.device)[0].init(compiled, weights_registry=self._registry)
        return self._models[mode]

    # -- data in and out ------------------------------------------------------------
    def _mel(self, mel: np.ndarray) -> list:
        return [self._feed(mel, TensorType(DType.float32, mel.shape, device=device_ref(self.device)), "mel")]

    def _feed(self, array: np.ndarray, kind: TensorType, what: str, resident: bool = False):
        """A host array as a graph input of `kind` (dtype and device); `resident`: always a device copy."""
        want = [int(d) if _is_static(d) else None for d in kind.shape]
        if len(want) != array.ndim or any(w is not None and w != s for w, s in zip(want, array.shape)):
            raise FidelityError(f"{self.name}: {what} has shape {tuple(array.shape)}, the graph input is "
                                f"{tuple(str(d) for d in kind.shape)}")
        if kind.dtype == DType.bool and array.ndim == 0:  # numpy 0-d arrays reach MAX as shape (1,)
            return Buffer.scalar(bool(array), DType.bool, self._device)
        if kind.dtype == DType.bool:
            host = np.ascontiguousarray(array, dtype=np.bool_)
        elif max_precision_name(kind.dtype) is not None:
            host = host_array(array, max_precision_name(kind.dtype))
        else:
            raise FidelityError(f"{self.name}: {what} has graph dtype {kind.dtype}, feeds take "
                                f"{', '.join(served_by('max'))} or bool")
        if self.device == "cpu" and isinstance(host, np.ndarray) and not resident:
            return host
        return self._buffer(host)

    def _buffer(self, host):
        return Buffer.from_dlpack(host).copy(self._device)

    def _collect(self, outputs, probes: list[Probe], taps: Sequence[str]) -> dict[str, np.ndarray]:
        wanted = set(taps)
        result = {}
        if ENCODER_OUTPUT in wanted and all(p.name != ENCODER_OUTPUT for p in probes):
            result[ENCODER_OUTPUT] = np.array(outputs[0].to_numpy())
        for p, out in zip(probes, outputs[1:]):
            if p.name in wanted:
                result[p.name] = p.layout.to_canonical(np.array(out.to_numpy()))
        return result


def _float32(value: TensorValue) -> TensorValue:
    return value if value.dtype == DType.float32 else value.cast(DType.float32)


def _is_static(dim) -> bool:
    try:
        int(dim)
        return True
    except (TypeError, ValueError):
        return False


def _concrete(kind: TensorType, batch: int) -> tuple[int, ...]:
    """The shape of a graph input with its symbolic dims (the batch) set to `batch`."""
    return tuple(int(d) if _is_static(d) else batch for d in kind.shape)
