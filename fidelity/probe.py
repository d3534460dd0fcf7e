"""Probes: mark a tap inside your own MAX Graph code, `x = probe("encoder.blocks.3.resid_post", x)`.

Outside the workbench `probe` returns `x` and adds nothing to the graph: a port with
probes compiles to the same graph (same MLIR text, same output) as without them.

While the workbench traces a port's graph function (`fidelity.candidates.max_port`)
it records each probe:
  * record: the probe is noted (name, value, layout) and the graph is left as it is
    (the port's own graph, probes off);
  * patch: downstream of the probe the graph reads `where(gate, fed value, x)`, where
    the fed value and the boolean gate are new graph inputs, and the workbench makes
    `x` (computed from patched upstream) an output. With every gate off this graph
    observes every probe; with every probe patchable, the same compiled graph gives
    every span between two probes its own local error.

Names come from the tap list (`fidelity.taps.encoder_taps`, `--list-taps`). A name not in
it, a name used twice in one graph, or a layout that does not fit the tensor is a
`FidelityError`. `layout` declares the tensor's axes when they are not the tap's
canonical ones (`"btc"` channels-last conv output, `"bhtd"` per-head attention; see
`fidelity.layouts`).
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from dataclasses import dataclass, field

from max.dtype import DType
from max.graph import TensorType, TensorValue, ops
from whisper.model import ModelDimensions

from .errors import FidelityError
from .layouts import Layout, parse_layout
from .taps import encoder_taps

MODES = ("record", "patch")


@dataclass
class Probe:
    """One probe as traced: its tap, the port's value there, and that value's layout."""

    name: str
    value: TensorValue
    layout: Layout

    def input_types(self) -> list[TensorType]:
        """The patch graph's inputs for this probe: the fed value (the port's layout and dtype) and its gate."""
        v = self.value
        return [TensorType(v.dtype, v.shape, device=v.device), TensorType(DType.bool, [], device=v.device)]


@dataclass
class Trace:
    """The probes of one graph being traced by the workbench."""

    mode: str
    dims: ModelDimensions
    patch_inputs: list = field(default_factory=list)   # patch mode: (value, gate) graph inputs per probe
    expected: list = field(default_factory=list)       # patch mode: probe names in the record trace's order
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self):
        self.taps = {tap.name: tap for tap in encoder_taps(self.dims)}

    def record(self, name: str, x: TensorValue, layout: str | None) -> TensorValue:
        if name not in self.taps:
            close = difflib.get_close_matches(str(name), list(self.taps), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else "; see --list-taps"
            raise FidelityError(f"probe name {name!r} is not a tap of this model{hint}")
        if any(p.name == name for p in self.probes):
            raise FidelityError(f"probe {name} is used twice in one graph: each tap may be probed once")
        given, x = x, TensorValue(x)
        shape = [int(d) if _static(d) else str(d) for d in x.shape]
        probe = Probe(name, x, parse_layout(self.taps[name], layout, shape, self.dims))
        index = len(self.probes)
        self.probes.append(probe)
        if self.mode == "record":
            return given
        if index >= len(self.expected) or self.expected[index] != name:
            want = self.expected[index] if index < len(self.expected) else "no further probe"
            raise FidelityError(f"the port's graph function probes differently on a second trace "
                                f"({name} where the first trace had {want}): it must build the same graph each time")
        value, gate = self.patch_inputs[index]
        if list(value.shape) != list(x.shape) or value.dtype != x.dtype:
            raise FidelityError(f"probe {name} changed shape or dtype between two traces of the port's graph")
        return ops.where(gate, value, x)


_ACTIVE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("fidelity_probe_trace", default=None)


def probe(name: str, x, layout: str | None = None):
    """Mark `x` as the tap `name` (in `layout`, default the tap's canonical one with a batch axis).

    Returns `x` unchanged outside the workbench; under it, what downstream code must use.
    """
    trace = _ACTIVE.get()
    if trace is None:
        return x
    return trace.record(name, x, layout)


@contextlib.contextmanager
def tracing(trace: Trace):
    """Record probes into `trace` while the block runs (the workbench's side of `probe`)."""
    if trace.mode not in MODES:
        raise ValueError(trace.mode)
    token = _ACTIVE.set(trace)
    try:
        yield trace
    finally:
        _ACTIVE.reset(token)


def _static(dim) -> bool:
    try:
        int(dim)
        return True
    except (TypeError, ValueError):
        return False
