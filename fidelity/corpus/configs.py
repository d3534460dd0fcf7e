"""Configurations of a corpus sweep and their hashes (half of each row's key).

A configuration is what a row's numbers depend on besides the clip: the model, the
candidate spec (`fidelity.candidates.specs`), dtype, device, whether
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

from ..candidates import specs
from ..errors import FidelityError
from ..provenance import versions

KEY_VERSION = 2  # bump when a row's meaning changes, so old rows are recomputed (2: a port's front end is judged)


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
                    "candidate_source": specs.source_hash(self.candidate), "versions": versions()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.candidate}/{self.dtype}/{self.device}"

    def describe(self) -> dict:
        return {"key": self.key, "label": self.label, "model": self.model, "candidate": self.candidate,
                "dtype": self.dtype, "device": self.device, "isolate": self.isolate, "e2e": self.e2e}


def build_configurations(model: str, candidates: list[str], dtypes: list[str], device: str, isolate: bool,
                         e2e: bool) -> list[Configuration]:
    """Every (candidate, dtype) pair on `device`, in a stable order; a spec that does not resolve, or a
    precision its candidate does not serve, is refused before any work."""
    if not candidates:
        raise FidelityError("--candidate: empty")
    if not dtypes:
        raise FidelityError("--dtypes: empty list")
    for candidate in candidates:
        served = specs.parse(candidate).precisions
        unknown = [d for d in dtypes if d not in served]
        if unknown:
            raise FidelityError(f"--dtypes: {candidate} does not run {', '.join(unknown)}; it runs {', '.join(served)}")
    return [Configuration(model, c, d, device, isolate, e2e) for c, d in itertools.product(candidates, dtypes)]
