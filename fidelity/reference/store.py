"""Reference runs kept on disk, keyed by content: a clip's float64 truth and floors are computed once.

An entry is one stage run of one side of the references (`References.run_stage`): its key is
the sha256 of everything the result depends on (the encoder's weights and dimensions, how the
side runs: precision, device, arithmetic, torch version and CPU kernels; the stage, the taps
asked for, the input's bytes and any patched values' bytes), so a rerun, another configuration
of the same clip or a resumed sweep finds it, and nothing else can. Each file carries the
CRC-32 of its arrays (2.5x faster to check than a sha256 on this CPU; it catches truncation
and flipped bits, which is what a cache meets): an entry that is truncated, altered or
unreadable is recomputed and replaced, never trusted. The folder is bounded: past `max_bytes` the least recently used
entries are removed. Writes are atomic (a temporary file renamed into place), so concurrent
workers may share a folder.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zlib
from pathlib import Path

import numpy as np

from ..checkpoints import cache_dir
from ..errors import FidelityError

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]

MAGIC = b"fidelity-references-2\n"
SUFFIX = ".ref"
DEFAULT_GB = 4.0  # FIDELITY_REFERENCE_CACHE_GB overrides


def default_folder() -> Path:
    """Where `compare` keeps reference runs: $FIDELITY_CACHE/references."""
    return cache_dir() / "references"


def default_max_bytes() -> int:
    text = os.environ.get("FIDELITY_REFERENCE_CACHE_GB", str(DEFAULT_GB))
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise FidelityError(f"FIDELITY_REFERENCE_CACHE_GB={text}: give a size in GiB (0 keeps nothing)")
    return int(gb * 2 ** 30)


def array_digest(digest, array: np.ndarray) -> None:
    """Feed an array's dtype, shape and bytes to a hashlib object."""
    array = np.asarray(array, order="C")
    digest.update(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(memoryview(array).cast("B") if array.size else b"")


class ReferenceStore:
    """A folder of reference entries (see the module docstring); `get` is None when an entry is absent or bad."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int | None = None):
        self.folder = Path(folder)
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.hits = self.misses = 0
        self.written = 0  # bytes written in this examination: past half the bound, no more (see `put`)
        self._size: int | None = None  # bytes in the folder, counted on the first write

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def get(self, key: str) -> Arrays | None:
        path = self.path(key)
        try:
            with open(path, "rb") as file:  # into a bytearray: the arrays are writable, as computed ones are
                data = bytearray(os.fstat(file.fileno()).st_size)
                if file.readinto(data) != len(data):
                    data = bytearray()
        except OSError:
            self.misses += 1
            return None
        arrays = _decode(data)
        if arrays is None:
            log.warning("reference cache entry %s is corrupt: recomputing it", path)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        self.hits += 1
        return arrays

    def new_run(self) -> None:
        """A new examination begins (see `put`)."""
        self.written = 0

    def put(self, key: str, arrays: Arrays) -> None:
        """Keep `arrays` under `key`. An examination whose references outgrow half the bound (a large model,
        every tap) keeps only what fits in that half: writing the rest would evict its own first entries."""
        size = sum(np.asarray(a).nbytes for a in arrays.values())
        if self.written + size > self.max_bytes // 2:
            if self.written <= self.max_bytes // 2:
                log.info("this run's reference runs outgrow half of %s's bound (%.1f GiB): the rest is not kept",
                         self.folder, self.max_bytes / 2 ** 30)
                self.written = self.max_bytes  # said once
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(key)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(tmp, "wb") as file:
                    written = _write(file, arrays)
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
            self.written += written
            if self._size is None:
                self._size = _folder_bytes(self.folder)
            else:
                self._size += written
            if self._size > self.max_bytes:
                self._size = _evict(self.folder, int(0.9 * self.max_bytes))
        except OSError as exc:  # a full or read-only disk costs the reuse, never the run
            log.warning("cannot keep reference runs in %s: %s", self.folder, exc)


def _write(file, arrays: Arrays) -> int:
    """Write an entry: magic, header length, header (names, dtypes, shapes, the payload's CRC-32), then each
    array's bytes straight from its memory (no copy of the payload is made). Returns the bytes written."""
    ordered = [np.asarray(arrays[name], order="C") for name in sorted(arrays)]
    crc = 0
    for array in ordered:
        crc = zlib.crc32(memoryview(array).cast("B") if array.size else b"", crc)
    header = [{"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "bytes": a.nbytes}
              for name, a in zip(sorted(arrays), ordered)]
    head = json.dumps({"arrays": header, "crc32": crc}).encode()
    file.write(MAGIC + len(head).to_bytes(8, "little") + head)
    for array in ordered:
        if array.size:
            file.write(memoryview(array).cast("B"))
    return len(MAGIC) + 8 + len(head) + sum(a.nbytes for a in ordered)


def _decode(data: bytearray) -> Arrays | None:
    """The arrays of an entry, or None when it is not whole and intact."""
    try:
        if not data.startswith(MAGIC):
            return None
        at = len(MAGIC)
        size = int.from_bytes(data[at:at + 8], "little")
        head = json.loads(data[at + 8:at + 8 + size])
        payload = memoryview(data)[at + 8 + size:]
        if zlib.crc32(payload) != head["crc32"]:
            return None
        out, offset = {}, 0
        for entry in head["arrays"]:
            count = int(np.prod(entry["shape"], dtype=np.int64))
            array = np.frombuffer(payload, dtype=np.dtype(entry["dtype"]), count=count, offset=offset)
            out[entry["name"]] = array.reshape(entry["shape"])
            offset += entry["bytes"]
        return out if offset == len(payload) else None
    except (ValueError, KeyError, TypeError):
        return None


def _entries(folder: Path) -> list[tuple[float, int, Path]]:
    out = []
    for path in folder.glob(f"*{SUFFIX}"):
        try:
            stat = path.stat()
        except OSError:
            continue
        out.append((stat.st_mtime, stat.st_size, path))
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(size for _, size, _ in _entries(folder))


def _evict(folder: Path, target: int) -> int:
    """Remove the least recently used entries until the folder holds at most `target` bytes; its size after."""
    entries = sorted(_entries(folder))
    total = sum(size for _, size, _ in entries)
    for _, size, path in entries:
        if total <= target:
            break
        path.unlink(missing_ok=True)
        total -= size
    return total
