"""MAX sessions and the compile cache, shared by every MAX Graph candidate.

One `InferenceSession` per device per process; compiled graphs are cached in the
process and exported as MEF files keyed by their MLIR text, so a graph compiles
once per machine.
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
