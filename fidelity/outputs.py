"""Output paths every command writes to: refused before any work when unusable, written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .errors import FidelityError


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
