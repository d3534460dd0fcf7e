"""Configurations of a corpus sweep and their hashes (half of each row's key).

A configuration is what a row's numbers depend on besides the clip: the model, the
candidate spec (opaque here, interpreted by `one_clip`), dtype, device, whether
stages are isolated and whether the clip is transcribed, and the versions of the
engines. A candidate spec naming a Python file (`PATH.py:NAME`) also hashes that
file's content, so editing the port recomputes its rows.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import FidelityError

KEY_VERSION = 1  # bump when a row's meaning changes, so old rows are recomputed


@dataclass(frozen=True)
class Configuration:
    model: str
    candidate: str
    dtype: str
    device: str
    isolate: bool = True
    e2e: bool = False

    @functools.cached_property
    def key(self) -> str:
        """16 hex digits identifying everything the row's numbers depend on."""
        material = {"key_version": KEY_VERSION, **asdict(self),
                    "candidate_source": _source_hash(self.candidate), "versions": engine_versions()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.candidate}/{self.dtype}/{self.device}"

    def describe(self) -> dict:
        return {"key": self.key, "label": self.label, "model": self.model, "candidate": self.candidate,
                "dtype": self.dtype, "device": self.device, "isolate": self.isolate, "e2e": self.e2e}


def build_configurations(model: str, candidates: list[str], dtypes: list[str], device: str, isolate: bool,
                         e2e: bool) -> list[Configuration]:
    """Every (candidate, dtype) pair on `device`, in a stable order."""
    from ..candidates.max_builtin import DTYPES

    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        raise FidelityError(f"--dtypes: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(DTYPES)}")
    if not candidates:
        raise FidelityError("--candidate: empty")
    return [Configuration(model, c, d, device, isolate, e2e) for c, d in itertools.product(candidates, dtypes)]


@functools.cache
def engine_versions() -> dict[str, str]:
    """The versions a row's numbers depend on (the same list a report records)."""
    from ..report.files import versions

    return versions()


def _source_hash(spec: str) -> str | None:
    path = Path(spec.rsplit(":", 1)[0])
    if path.suffix == ".py" and path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return None
