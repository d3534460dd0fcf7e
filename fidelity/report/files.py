"""report.json, report.csv and layer dumps, each written whole or not at all."""

from __future__ import annotations

import contextlib
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from ..errors import FidelityError
from ..verdicts import capture_problems

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
        "versions": versions(),
        "reference_platform": reference_platform(),
        "isolated": comparison.isolated,
        "first_divergence": comparison.first_divergence,
        "first_divergence_chained": comparison.first_divergence_chained,
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


def write_dumps(arrays: dict[str, dict[str, np.ndarray]], folder: Path, meta: dict) -> None:
    """One .npz per side (candidate, reference, reference64), keys are tap names."""
    for side, by_tap in arrays.items():
        np.savez(folder / f"{side}.npz", **by_tap)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_dumps(folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read a dump folder back: side -> tap name -> array (numpy alone)."""
    folder = Path(folder)
    sides = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            sides[path.stem] = {key: data[key] for key in data.files}
    if not sides:
        raise FidelityError(f"no layer dumps in {folder}")
    return sides
