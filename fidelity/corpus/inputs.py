"""What a sweep reads: a folder of audio files or a manifest (CSV or JSONL), as clip entries.

A folder is searched recursively for wav/flac/ogg/mp3 (what `fidelity.audio` reads
through libsndfile); a `.txt` beside a clip is its ground truth. A manifest has one
clip per row: `path` (required; relative paths are taken from the manifest's folder),
`text` (optional ground truth) and `id` (optional; default: the path). Each entry's
content hash is the SHA-256 of its bytes; a file that cannot be read keeps a hash of
its path and the reason, and becomes an error row.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import FidelityError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class ClipEntry:
    clip_id: str
    path: Path
    text: str | None

    def read(self) -> tuple[str, bytes | None, str | None]:
        """(content hash, bytes, None) or (path hash, None, why it cannot be read)."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            digest = hashlib.sha256(f"unreadable:{self.path}".encode()).hexdigest()[:16]
            return digest, None, f"cannot read {self.path}: {exc.strerror or exc}"
        return hashlib.sha256(data).hexdigest()[:16], data, None


def read_inputs(source: Path) -> list[ClipEntry]:
    """The clips of a folder or manifest; bad input (nothing to sweep, missing columns) raises FidelityError."""
    source = Path(source)
    if source.is_dir():
        entries = _from_folder(source)
        if not entries:
            raise FidelityError(f"{source} holds no audio files ({', '.join(AUDIO_SUFFIXES)}), searched recursively")
    elif source.is_file():
        if source.suffix.lower() not in MANIFEST_SUFFIXES:
            raise FidelityError(f"{source}: give a folder of audio files or a manifest (.csv or .jsonl)")
        entries = _from_manifest(source)
        if not entries:
            raise FidelityError(f"manifest {source} lists no clips")
    else:
        raise FidelityError(f"{source} does not exist")
    ids = [e.clip_id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise FidelityError(f"{source}: clip ids must be unique; repeated: {', '.join(duplicates[:5])}")
    return entries


def _from_folder(folder: Path) -> list[ClipEntry]:
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and not p.is_dir()):
        text_file = path.with_suffix(".txt")
        text = text_file.read_text(encoding="utf-8", errors="replace").strip() if text_file.is_file() else None
        entries.append(ClipEntry(str(path.relative_to(folder)), path, text or None))
    return entries


def _from_manifest(manifest: Path) -> list[ClipEntry]:
    rows = _read_rows(manifest)
    entries = []
    for number, row in enumerate(rows, start=1):
        path = str(row.get("path") or "").strip()
        if not path:
            raise FidelityError(f"manifest {manifest}, row {number}: empty path")
        resolved = Path(path) if Path(path).is_absolute() else manifest.parent / path
        text = row.get("text")
        text = str(text).strip() if text is not None and str(text).strip() else None
        clip_id = str(row.get("id") or "").strip() or path
        entries.append(ClipEntry(clip_id, resolved, text))
    return entries


def _read_rows(manifest: Path) -> list[dict]:
    try:
        content = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FidelityError(f"cannot read manifest {manifest}: {exc}") from None
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(content.splitlines())
        if reader.fieldnames is None or "path" not in [f.strip() for f in reader.fieldnames]:
            raise FidelityError(f"manifest {manifest} has no 'path' column (columns: path, optional text, id)")
        return [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FidelityError(f"manifest {manifest}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "path" not in row:
            raise FidelityError(f"manifest {manifest}, line {number}: no 'path' field "
                                "(fields: path, optional text, id)")
        rows.append(row)
    return rows
