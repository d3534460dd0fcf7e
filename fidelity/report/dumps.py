"""Layer dumps: every compared tensor of the three sides, written tap by tap as the walk judges it.

`<folder>/<side>/<tap>.npy`, (windows, *shape) each, for the sides `candidate`, `reference`
(openai-whisper in the candidate's precision) and `reference64` (float64), plus meta.json.
numpy alone reads them back (`load_dumps`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import FidelityError

log = logging.getLogger(__name__)

META = "meta.json"


class DumpWriter:
    """A walk observer that writes each judged tap's sides as it passes (`fidelity.flow.walk.TapObserver`).

    Each file is a preallocated .npy filled window by window through a memory map opened only
    for that write, so nothing accumulates in memory."""

    def __init__(self, folder: Path, windows: int):
        self.folder, self.windows = Path(folder), windows
        self._shapes: dict[tuple[str, str], tuple[int, ...]] = {}

    def observe(self, window: int, result, sides: dict[str, np.ndarray | None]) -> None:
        tap = result.name
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


def write_dump_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / META).write_text(json.dumps(meta, indent=1) + "\n")


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
