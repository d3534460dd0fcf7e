"""Your MAX Graph encoder as a candidate: wrap the function that builds its graph body.

The workbench opens the graph (input 0: the log-mel, float32 `(batch, n_mels, frames)`,
then your own inputs, e.g. weights in a fixed order), calls your function, and outputs
what it returns (the encoder output, `(batch, frames, width)`). Probes you place with
`fidelity.probe.probe` become taps. Two graphs, each compiled once per machine (MEF
store, keyed by MLIR text, MAX version and device):
  * `patch`: every probe an output and patchable at run time: `run` (every gate off)
    and `run_patched` (isolation); compiled before the first answer;
  * `off`: probes off, exactly your graph: `encode` and `probe_effect`; compiled only
    when one of them is first called. With `CandidateConfig(probe_effect=False)` it is
    never compiled: `encode` reads the patch graph with every gate off.

Instrumenting a port (weights as graph inputs; `Weight`s work too, pass `weights=`):

    from fidelity.candidates.max_port import MaxPort
    from fidelity.probe import probe

    def encoder(mel, *w):                                   # your graph body
        x = conv_stem(mel.cast(w[0].dtype), w)              # (batch, frames, width)
        x = probe("encoder.conv2.gelu", x, layout="btc")    # channels-last conv output
        for i in range(n_layers):
            x = probe(f"encoder.blocks.{i}.resid_post", block(x, w, i))
        return probe("encoder.ln_post", layer_norm(x, w))

    def build(checkpoint, config):                          # --candidate my_port.py:build
        w = checkpoint.encoder_weights                      # openai-whisper names -> float32 arrays
        return MaxPort(checkpoint, config, encoder, inputs=[w[n] for n in MY_ORDER], name="my-port")

Weights arrive by openai-whisper state-dict names and shapes; map them (transpose,
fuse, reorder) in `build`. Each input array becomes a graph input of its shape in the
candidate's dtype (`config.dtype`: float32, bfloat16 or float16) unless `input_types`
says otherwise; the mel stays float32 (cast it inside). A port written for a fixed
batch (`ops.reshape(x, (1, ...))`) passes `batch=N`: its mel input gets that static
batch and the workbench feeds it N windows at a time.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Callable, Sequence

import max.graph as max_graph
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
MODES = ("off", "patch")
_NOT_THE_PORT = (Path(max_graph.__file__).resolve().parents[1], Path(__file__).resolve().parents[1])


class MaxPort(Candidate):
    """A user's MAX Graph encoder, instrumented with probes (see the module docstring)."""

    def __init__(self, checkpoint: Checkpoint, config: CandidateConfig, graph_fn: GraphFn, *,
                 inputs: Sequence[np.ndarray] = (), input_types: Sequence[TensorType] | None = None,
                 weights: dict[str, np.ndarray] | None = None,
                 front_end: Callable[[np.ndarray], np.ndarray] | None = None,
                 batch: int | None = None, name: str = "max-port", graph_name: str | None = None):
        if config.dtype not in served_by("max"):
            raise FidelityError(f"a MAX port runs {', '.join(served_by('max'))}, not {config.dtype}")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise FidelityError(f"{name}: batch={batch!r}: give the port's fixed batch (a positive int) or None")
        self.name, self.dims, self.dtype, self.device = name, checkpoint.dims, config.dtype, config.device
        self.graph_fn, self.graph_name, self.batch = graph_fn, graph_name or name.replace("-", "_"), batch
        self.measures_probe_effect = config.probe_effect
        self._front_end = front_end
        self._device = session_for(self.device)[1]
        self._mel_type = TensorType(DType.float32, [batch or "batch", self.dims.n_mels, 2 * self.dims.n_audio_ctx],
                                    device=device_ref(self.device))
        if input_types is None:
            input_types = [TensorType(max_dtype(self.dtype), np.shape(a), device=device_ref(self.device))
                           for a in inputs]
        if len(input_types) != len(inputs):
            raise FidelityError(f"{name}: {len(inputs)} input arrays for {len(input_types)} input types")
        self.input_types = list(input_types)
        self._inputs = [self._feed(np.asarray(a), t, f"input {i}", resident=True) for i, (a, t) in
                        enumerate(zip(inputs, self.input_types))]  # copied to the device once
        self._registry = {key: self._buffer(host_array(value, self.dtype)) for key, value in (weights or {}).items()}
        self._gates = {flag: Buffer.scalar(flag, DType.bool, self._device) for flag in (False, True)}
        self._zeros: dict[tuple, object] = {}  # (shape, dtype) -> one zero feed shared by every unpatched probe
        self._graphs: dict[str, tuple[Graph, list[Probe]]] = {}
        self._models: dict[str, object] = {}
        self.compile_log: dict[str, dict] = {}
        self.probes = self._traced("off")[1]  # traced now: bad probes and build errors fail at build time

    # -- the protocol ------------------------------------------------------------
    def available_taps(self) -> list[str]:
        names = [p.name for p in self.probes]
        return names if ENCODER_OUTPUT in names else [*names, ENCODER_OUTPUT]

    def patchable_taps(self) -> list[str]:
        return [p.name for p in self.probes]

    def run(self, mel: np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        """Every asked tap, from the patch graph with every gate off (the off graph for a port without probes)."""
        check_batch(mel, self.dims)
        return self._execute("patch" if self.probes else "off", mel, {}, taps)

    def run_patched(self, mel: np.ndarray, patches: dict[str, np.ndarray],
                    taps: Sequence[str]) -> dict[str, np.ndarray]:
        check_batch(mel, self.dims)
        probes = self._traced("patch")[1]
        unknown = sorted(set(patches) - {p.name for p in probes})
        if unknown:
            raise CapabilityError(f"candidate {self.name} cannot patch {', '.join(unknown)}: it has no probe there "
                                  f"(probes: {', '.join(p.name for p in probes) or 'none'})")
        for name, value in patches.items():
            if len(value) != len(mel):
                raise FidelityError(f"patch for {name} holds {len(value)} windows, the mel batch {len(mel)}")
        return self._execute("patch", mel, patches, taps)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """The encoder output (what transcription needs): from the port's own graph (probes off), or from
        the probed graph with every gate off when the probe effect is not measured."""
        check_batch(mel, self.dims)
        return self._execute(self._encode_mode, mel, {}, [ENCODER_OUTPUT])[ENCODER_OUTPUT]

    def resident(self, mel: np.ndarray):
        """The graph `encode` runs (probes off, unless the probe effect is skipped) on a mel already on the device."""
        check_batch(mel, self.dims)
        if self.batch and len(mel) != self.batch:
            return super().resident(mel)  # a fixed-batch port runs chunk by chunk from the host
        mode = self._encode_mode
        model, probes = self._model(mode), (self._traced(mode)[1] if mode == "patch" else [])
        feeds = [self._feed(mel, self._mel_type, "mel", resident=True)]
        for p in probes:
            feeds += self._patch_feeds(p, None, 0, len(mel), len(mel))
        return lambda: model.execute(*feeds[:1], *self._inputs, *feeds[1:])

    @property
    def has_front_end(self) -> bool:
        return self._front_end is not None

    def front_end(self, samples: np.ndarray) -> np.ndarray:
        if self._front_end is None:
            return super().front_end(samples)
        return np.asarray(self._front_end(samples), dtype=np.float32)

    def describe(self) -> dict:
        encoded = ("the port's own graph (probes off)" if self._encode_mode == "off" else
                   "the probed graph, every gate off (probe_effect off: the port's own graph is not compiled)")
        return {**super().describe(), "probes": self.patchable_taps(), "batch": self.batch or "any",
                "encode_graph": encoded, "compile": self.compile_log, "compile_s": round(self.compile_seconds, 3)}

    @property
    def compile_seconds(self) -> float:
        """Seconds this port spent compiling (or loading) its graphs so far."""
        return sum(entry["seconds"] for entry in self.compile_log.values())

    # -- probe effect ----------------------------------------------------------------
    def probe_effect(self, mel: np.ndarray) -> ProbeEffect | None:
        """The encoder output with probes off against every probe an output, on `mel`; None when not
        measured (`CandidateConfig.probe_effect` False) or the port has no probes."""
        if self._encode_mode == "patch" or not self.probes:
            return None
        off = self.encode(mel).astype(np.float64)
        on = self.run(mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT].astype(np.float64)
        if off.shape != on.shape:
            raise FidelityError(f"{self.name}: the encoder output has shape {on.shape} with probes, "
                                f"{off.shape} without")
        return ProbeEffect.between(off, on)

    # -- graphs -----------------------------------------------------------------------
    @property
    def _encode_mode(self) -> str:
        return "off" if self.measures_probe_effect or not self.probes else "patch"

    @property
    def planned_modes(self) -> list[str]:
        """The graphs this port compiles, in order: the one that answers first, then the off graph if needed."""
        if not self.probes:
            return ["off"]
        return ["patch", "off"] if self._encode_mode == "off" else ["patch"]

    def graph(self, mode: str) -> Graph:
        """The traced (uncompiled) graph for `mode` (off or patch)."""
        return self._traced(mode)[0]

    def compile(self, modes: Sequence[str] | None = None) -> dict[str, dict]:
        """Compile (or load from the MEF store) the graphs for `modes` (default: the planned ones) now;
        returns `compile_log`."""
        for mode in self.planned_modes if modes is None else modes:
            self._model(mode)
        return self.compile_log

    def _traced(self, mode: str) -> tuple[Graph, list[Probe]]:
        if mode not in MODES:
            raise ValueError(mode)
        if mode not in self._graphs:
            self._graphs[mode] = self._trace(mode)
        return self._graphs[mode]

    def _trace(self, mode: str) -> tuple[Graph, list[Probe]]:
        types = [self._mel_type, *self.input_types]
        if mode == "patch":
            recorded = self.probes
            if not recorded:
                raise CapabilityError(f"candidate {self.name} has no probes to patch: add probe() calls at its "
                                      "stage boundaries (see fidelity.candidates.max_port)")
            types += [t for p in recorded for t in p.input_types()]
        name = self.graph_name if mode == "off" else f"{self.graph_name}_{mode}"
        with Graph(name, input_types=types) as graph:
            args = [value.tensor for value in graph.inputs]
            own = args[:1 + len(self.input_types)]
            trace = Trace("record" if mode == "off" else "patch", self.dims)
            if mode == "patch":
                extra = args[len(own):]
                trace.patch_inputs = [(extra[2 * i], extra[2 * i + 1]) for i in range(len(recorded))]
                trace.expected = [p.name for p in recorded]
            with tracing(trace):
                out = self._call(own)
            if mode == "off":
                graph.output(_float32(out))
                return graph, trace.probes
            if len(trace.probes) != len(recorded):
                raise FidelityError(f"{self.name}: its graph function probed {len(trace.probes)} taps on one trace "
                                    f"and {len(recorded)} on another: it must build the same graph each time")
            graph.output(_float32(out), *(_float32(p.value) for p in trace.probes))
        return graph, trace.probes

    def _call(self, args) -> TensorValue:
        try:
            out = self.graph_fn(*args)
        except FidelityError:
            raise
        except Exception as exc:
            raise self._build_failure(exc) from exc
        if not isinstance(out, TensorValue):
            raise FidelityError(f"{self.name}: its graph function must return the encoder output tensor, "
                                f"not {type(out).__name__}")
        return out

    def _build_failure(self, exc: Exception) -> FidelityError:
        """The whole of MAX's diagnostic (op, inputs, reason), where in the port it failed, and a hint for a
        fixed batch."""
        text = str(exc).strip()
        lines = "".join(f"\n    {line.rstrip()}" for line in text.splitlines()[1:] if line.strip())
        ports = [f for f in traceback.extract_tb(exc.__traceback__)
                 if not any(Path(f.filename).resolve().is_relative_to(d) for d in _NOT_THE_PORT)]
        where = f" at {ports[-1].filename}:{ports[-1].lineno}" if ports else ""
        hint = ""
        if self.batch is None and "Dim('batch')" in text:
            hint = ("\n  the mel's batch is symbolic (Dim('batch')); a port written for a fixed batch N is wrapped "
                    "with MaxPort(..., batch=N)")
        first = text.splitlines()[0] if text else ""
        return FidelityError(f"{self.name}: building its MAX graph failed{where}: {type(exc).__name__}: "
                             f"{first}{lines}{hint}")

    def _model(self, mode: str):
        if mode not in self._models:
            graph = self.graph(mode)
            plan = self.planned_modes
            purpose = f"graph {len(self._models) + 1} of {max(len(plan), len(self._models) + 1)} for {self.name}"
            compiled, seconds, cached = compile_graph(graph, f"{self.graph_name}-{mode}", self.device, purpose)
            self.compile_log[mode] = {"seconds": round(seconds, 3), "cached": cached}
            self._models[mode] = session_for(self.device)[0].init(compiled, weights_registry=self._registry)
        return self._models[mode]

    # -- data in and out ------------------------------------------------------------
    def _execute(self, mode: str, mel: np.ndarray, patches: dict[str, np.ndarray],
                 taps: Sequence[str]) -> dict[str, np.ndarray]:
        """Run `mode`'s graph on `mel`, at most `batch` windows at a time (a short last chunk is filled with
        copies of its last window, whose results are dropped); taps concatenated over the chunks."""
        probes = self._traced(mode)[1] if mode == "patch" else []
        model = self._model(mode)
        step = self.batch or len(mel)
        parts = []
        for start in range(0, len(mel), step):
            rows = min(step, len(mel) - start)
            chunk = _fill(mel[start:start + rows], step)
            feeds = [self._feed(chunk, self._mel_type, "mel")]
            for p in probes:
                feeds += self._patch_feeds(p, patches.get(p.name), start, rows, step)
            outputs = model.execute(*feeds[:1], *self._inputs, *feeds[1:])
            parts.append({k: v[:rows] for k, v in self._collect(outputs, probes, taps).items()})
        return {k: parts[0][k] if len(parts) == 1 else np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def _patch_feeds(self, p: Probe, patch: np.ndarray | None, start: int, rows: int, step: int) -> list:
        """The (value, gate) feeds of probe `p` for one chunk: the patch in the port's layout and dtype, or one
        shared zero buffer with the gate off."""
        value_type, _ = p.input_types()
        want = _concrete(value_type, step)
        if patch is None:
            key = (want, value_type.dtype)
            if key not in self._zeros:
                self._zeros[key] = self._feed(np.zeros(want, np.float32), value_type, p.name, resident=True)
            return [self._zeros[key], self._gates[False]]
        value = p.layout.from_canonical(_fill(np.asarray(patch[start:start + rows]), step))
        if tuple(value.shape) != want:
            raise FidelityError(f"patch for {p.name} has shape {tuple(value.shape)} in the port's layout "
                                f"{p.layout.letters!r}, its probe has {want}")
        return [self._feed(value, value_type, p.name), self._gates[True]]

    def _feed(self, array: np.ndarray, kind: TensorType, what: str, resident: bool = False):
        """A host array as a graph input of `kind` (dtype and device); `resident`: always a device copy."""
        want = [int(d) if _is_static(d) else None for d in kind.shape]
        if len(want) != array.ndim or any(w is not None and w != s for w, s in zip(want, array.shape)):
            raise FidelityError(f"{self.name}: {what} has shape {tuple(array.shape)}, the graph input is "
                                f"{tuple(str(d) for d in kind.shape)}")
        if max_precision_name(kind.dtype) is None:
            raise FidelityError(f"{self.name}: {what} has graph dtype {kind.dtype}, feeds take "
                                f"{', '.join(served_by('max'))}")
        host = host_array(array, max_precision_name(kind.dtype))
        if self.device == "cpu" and isinstance(host, np.ndarray) and not resident:
            return host
        return self._buffer(host)

    def _buffer(self, host):
        """A device copy of `host`; waits for it, since the copy may be queued and `host` (often a temporary
        bfloat16 tensor) freed as soon as this returns."""
        buffer = Buffer.from_dlpack(host).copy(self._device)
        self._device.synchronize()
        return buffer

    def _collect(self, outputs, probes: list[Probe], taps: Sequence[str]) -> dict[str, np.ndarray]:
        wanted = set(taps)
        result = {}
        if ENCODER_OUTPUT in wanted and all(p.name != ENCODER_OUTPUT for p in probes):
            result[ENCODER_OUTPUT] = np.array(outputs[0].to_numpy())
        for p, out in zip(probes, outputs[1:]):
            if p.name in wanted:
                result[p.name] = p.layout.to_canonical(np.array(out.to_numpy()))
        return result


def _fill(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with copies of its last row appended up to `rows` rows (a fixed-batch graph's short last chunk)."""
    if len(array) >= rows:
        return array
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


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
