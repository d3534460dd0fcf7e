"""`--candidate SPEC`: find a user's builder and build the candidate.

SPEC is `path/to/file.py:NAME` or `package.module:NAME`; `NAME(checkpoint, config)`
returns a `Candidate`. Weights are handed over as the openai-whisper checkpoint
(`checkpoint.state`, state-dict names and shapes); the builder maps them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Callable

from ..checkpoints import Checkpoint
from ..errors import FidelityError
from .base import Candidate, CandidateConfig

log = logging.getLogger(__name__)

BUILTIN = "fidelity.candidates.max_builtin:build"


def load_builder(spec: str) -> Callable[[Checkpoint, CandidateConfig], Candidate]:
    """The builder named by `spec`, refused in one line when it does not resolve."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise FidelityError(f"--candidate {spec!r}: give PATH.py:NAME or module:NAME")
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise FidelityError(f"--candidate {spec}: no file {path}")
        module_name = f"fidelity_candidate_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file failed to import
            sys.modules.pop(module_name, None)
            log.debug("importing %s failed", path, exc_info=True)
            raise FidelityError(f"--candidate {spec}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise FidelityError(f"--candidate {spec}: cannot import module {source} ({exc})") from exc
    builder = getattr(module, name, None)
    if not callable(builder):
        raise FidelityError(f"--candidate {spec}: {source} has no callable {name}")
    return builder


def build_candidate(spec: str, checkpoint: Checkpoint, config: CandidateConfig) -> Candidate:
    """Build the candidate `spec` names; a builder that raises or returns something else is refused."""
    builder = load_builder(spec)
    try:
        candidate = builder(checkpoint, config)
    except FidelityError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's builder failed
        log.debug("building the candidate %s failed", spec, exc_info=True)  # the traceback with -v
        raise FidelityError(f"--candidate {spec}: the builder raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(candidate, Candidate):
        raise FidelityError(f"--candidate {spec}: the builder returned {type(candidate).__name__}, "
                            "not a fidelity.candidates.base.Candidate")
    if candidate.dims.n_audio_state != checkpoint.dims.n_audio_state or \
            candidate.dims.n_audio_layer != checkpoint.dims.n_audio_layer:
        raise FidelityError(f"--candidate {spec}: the candidate serves other dimensions than {checkpoint.name}")
    return candidate
