"""report.json, report.csv and layer dumps, each written whole or not at all."""

from __future__ import annotations

import contextlib
import csv
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from ..errors import FidelityError
from ..verdicts import capture_problems

log = logging.getLogger(__name__)

REPORT_VERSION = 1
CSV_COLUMNS = ["name", "stage", "shape", "cosine", "rel_l2", "max_abs", "max_abs_at", "bias", "std_ratio",
               "sqnr_db", "p99_abs", "rmse", "noise_floor", "noise_floor_ratio", "budget", "verdict", "window"]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("max", "torch", "openai-whisper", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def reference_platform() -> dict:
    """Which float32 kernels this process's PyTorch runs: what the noise floor depends on."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
            "mkldnn": bool(torch.backends.mkldnn.enabled), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def build_report(comparison, context: dict) -> dict:
    """The report.json document for a comparison and its run context."""
    taps = [row.as_dict() for row in comparison.rows]
    doc = {
        "version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **context,
        "candidate": comparison.candidate,
        "versions": versions(),
        "reference_platform": reference_platform(),
        "isolated": comparison.isolated,
        "first_divergence": comparison.first_divergence,
        "first_divergence_chained": comparison.first_divergence_chained,
        "internal_differences": comparison.internal_differences,
        "capture_problems": capture_problems(comparison.rows),
        "windows": comparison.windows,
        "timings": {k: round(v, 3) for k, v in comparison.timings.items()},
        "taps": taps,
    }
    return doc


@contextlib.contextmanager
def atomic_dir(target: Path, marker: str):
    """Yield a temporary sibling of `target`; on success it replaces `target`.

    An existing `target` is replaced only if it holds `marker` (an earlier run's
    output), so a user's unrelated folder is never removed. On failure nothing is left.
    """
    target = Path(target)
    ensure_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def ensure_replaceable(target: Path, marker: str) -> None:
    """Refuse a target that exists and is neither empty nor an earlier output holding `marker`."""
    target = Path(target)
    _ensure_under_folder(target)
    if target.exists() and not (target / marker).exists():
        if not target.is_dir() or any(target.iterdir()):
            raise FidelityError(f"{target} exists and is not an earlier fidelity output; choose another path")


def ensure_writable_file(path: Path) -> None:
    """Refuse, before any work, an output file path that is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise FidelityError(f"{path} is a folder; give a file name")
    _ensure_under_folder(path)


def _ensure_under_folder(path: Path) -> None:
    """Refuse a path whose nearest existing ancestor is not a folder (it could never be created)."""
    parent = next((p for p in Path(path).absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise FidelityError(f"cannot write {path}: {parent} is a file, not a folder")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(doc: dict, folder: Path) -> None:
    """report.json and report.csv into `folder`."""
    (folder / "report.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    with open(folder / "report.csv", "w", newline="") as handle:
        extra = sorted({k for row in doc["taps"] for k in row} - set(CSV_COLUMNS))
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS + extra)
        writer.writeheader()
        for row in doc["taps"]:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()})


class DumpWriter:
    """Writes compared tensors as they are judged: `<side>/<tap>.npy`, (windows, *shape) each.

    Sides are `candidate`, `reference` (openai-whisper in the candidate's precision) and
    `reference64` (float64). Each file is preallocated .npy filled window by window through a
    memory map opened only for that write, so nothing accumulates in memory; `np.load` reads
    them back."""

    def __init__(self, folder: Path, windows: int):
        self.folder, self.windows = Path(folder), windows
        self._shapes: dict[tuple[str, str], tuple[int, ...]] = {}

    def write(self, window: int, tap: str, sides: dict[str, np.ndarray | None]) -> None:
        for side, array in sides.items():
            if array is None:
                continue
            path = self.folder / side / f"{tap}.npy"
            shape = self._shapes.get((side, tap))
            if shape is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                shape = self._shapes[(side, tap)] = array.shape[1:]
                target = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=(self.windows, *shape))
            elif shape != array.shape[1:]:
                log.warning("dump of %s %s: window %d has shape %s, not %s; not written", side, tap, window,
                            array.shape[1:], shape)
                continue
            else:
                target = np.load(path, mmap_mode="r+")
            target[window] = array[0]
            target.flush()
            del target

    def close(self) -> None:
        self._shapes.clear()


def write_dump_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_dumps(folder: str | Path, mmap: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Read a dump folder back: side -> tap name -> array (numpy alone: `np.load` of each .npy)."""
    folder = Path(folder)
    sides = {}
    for side in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        sides[side.name] = {path.name[:-len(".npy")]: np.load(path, mmap_mode="r" if mmap else None)
                            for path in sorted(side.glob("*.npy"))}
    if not any(sides.values()):
        raise FidelityError(f"no layer dumps in {folder}")
    return sides
