"""MAX sessions and the compile cache, shared by every MAX Graph candidate.

One `InferenceSession` per device per process; compiled graphs are cached in the
process and exported as MEF files keyed by their MLIR text, so a graph compiles
once per machine. Every request for a graph is recorded (`CompileEvent`: label,
seconds, compiled now or cached), so a report can say how much of a run was
compiling: `compile_events()` for the whole process, or

    with recording_compiles() as events:
        ...                                  # build and run candidates
    compile_summary(events)                  # {"graphs": 2, "compiled": 1, "seconds": 97.4}
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from max.driver import CPU, Accelerator, Buffer, accelerator_count
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph

from ..checkpoints import cache_dir
from ..errors import FidelityError

log = logging.getLogger(__name__)

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


_COMPILED: dict[str, object] = {}


@dataclass(frozen=True)
class CompileEvent:
    """One `compile_graph` call: which graph, how long it took, where it came from.

    `source`: "compiled" (MAX compiled it now), "mef" (loaded from the MEF store) or
    "process" (compiled earlier in this process: no time spent).
    """

    label: str
    device: str
    seconds: float
    source: str

    @property
    def cached(self) -> bool:
        return self.source != "compiled"

    def as_dict(self) -> dict:
        return {"label": self.label, "device": self.device, "seconds": round(self.seconds, 3), "source": self.source}


_EVENTS: list[CompileEvent] = []
_RECORDERS: list[list[CompileEvent]] = []
_EVENTS_LOCK = threading.Lock()


def compile_events() -> list[CompileEvent]:
    """Every `compile_graph` call of this process so far, oldest first."""
    with _EVENTS_LOCK:
        return list(_EVENTS)


@contextlib.contextmanager
def recording_compiles():
    """`with recording_compiles() as events:` -- `events` fills with the compiles made while the block runs."""
    events: list[CompileEvent] = []
    with _EVENTS_LOCK:
        _RECORDERS.append(events)
    try:
        yield events
    finally:
        with _EVENTS_LOCK:
            _RECORDERS[:] = [r for r in _RECORDERS if r is not events]


def compile_summary(events: list[CompileEvent]) -> dict:
    """What a report says about compiling: graphs asked for, how many MAX compiled anew, seconds spent in all."""
    return {"graphs": len(events), "compiled": sum(not e.cached for e in events),
            "seconds": round(sum(e.seconds for e in events), 3)}


def _record(event: CompileEvent) -> CompileEvent:
    with _EVENTS_LOCK:
        _EVENTS.append(event)
        for events in _RECORDERS:
            events.append(event)
    return event


def compile_graph(graph: Graph, label: str, device: str, purpose: str = ""):
    """Compile `graph` once per process and once per machine.

    Compiled graphs are keyed by their MLIR text (every op, shape, dtype, constant and
    weight name), the MAX version and the device, and exported as MEF files, so a
    later run loads them instead of compiling. A compile shows one progress line
    (`purpose` says what the graph is for, e.g. "graph 1 of 2 for my-port") and every
    call is recorded (`compile_events`, `recording_compiles`). Returns (compiled model,
    seconds spent, whether it was already compiled).
    """
    key = hashlib.sha256(f"{max_version()}|{device}|{mlir_text(graph)}".encode()).hexdigest()[:24]
    if key in _COMPILED:
        _record(CompileEvent(label, device, 0.0, "process"))
        return _COMPILED[key], 0.0, True
    session, _ = session_for(device)
    path = mef_dir() / f"{label}-{key}.mef"
    start = time.perf_counter()
    if path.is_file():
        try:
            _COMPILED[key] = session.compile(path)
            seconds = _record(CompileEvent(label, device, time.perf_counter() - start, "mef")).seconds
            log.debug("loaded %s from the MEF store in %.2f s", label, seconds)
            return _COMPILED[key], seconds, True
        except Exception as exc:  # a stale or truncated file: compile afresh
            log.warning("ignoring unusable cached graph %s (%s)", path, str(exc).splitlines()[0])
    what = f"compiling {label} on {device}" + (f" ({purpose})" if purpose else "")
    try:
        with _progress(what, "MAX compiles a new graph in 1-4 min on a CPU; later runs load it from the MEF store"):
            compiled = session.compile(graph)
    except Exception as exc:  # MAX raises plain RuntimeErrors
        raise FidelityError(f"MAX failed to compile {label}: {str(exc).splitlines()[0]}") from exc
    seconds = _record(CompileEvent(label, device, time.perf_counter() - start, "compiled")).seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    compiled.export_mef(tmp)
    tmp.replace(path)
    _COMPILED[key] = compiled
    return compiled, seconds, False


def mlir_text(graph: Graph) -> str:
    """The graph's MLIR text without MAX's `counter` attribute, a process-wide count of traced ops that MAX
    prints on every graph: the same graph traced after another one would otherwise get a new key."""
    return _COUNTER.sub("", str(graph))


_COUNTER = re.compile(r" ?\{counter = \d+ : i64\}")


@contextlib.contextmanager
def _progress(what: str, why: str, every: float = 30.0):
    """One progress line while the block runs: `what ... N s`.

    On a terminal the line is rewritten in place each second; otherwise (a log file, CI)
    it is logged at the start with `why`, every `every` seconds, and once done.
    """
    if not log.isEnabledFor(logging.INFO):
        yield
        return
    live = sys.stderr.isatty()
    done = threading.Event()
    start = time.perf_counter()

    def line() -> str:
        return f"{time.strftime('%H:%M:%S')} INFO {what} ... {time.perf_counter() - start:.0f} s"

    def tick():
        while not done.wait(1.0 if live else every):
            if live:
                sys.stderr.write("\r" + line())
                sys.stderr.flush()
            else:
                log.info("%s ... %.0f s", what, time.perf_counter() - start)

    if live:
        sys.stderr.write(line())
        sys.stderr.flush()
    else:
        log.info("%s (%s)", what, why)
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if live:
            sys.stderr.write("\r" + line() + ", done\n")
            sys.stderr.flush()
        else:
            log.info("%s ... %.0f s, done", what, time.perf_counter() - start)


def mef_dir() -> Path:
    return cache_dir() / "mef" / f"max-{max_version()}"


@functools.cache
def max_version() -> str:
    return importlib.metadata.version("max")
