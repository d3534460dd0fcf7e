"""Candidate specs: the one language every command uses to name the encoder under test.

  max               the built-in MAX Graph encoder (the default)
  max:FAULT         the built-in with a catalogued porting bug (`python -m fidelity.faults --list`)
  ctranslate2       CTranslate2's Whisper encoder on the installed model files (float32 or int8)
  PATH.py:NAME      `NAME(checkpoint, config)` in a Python file: your own port
  module:NAME       `NAME(checkpoint, config)` in an importable module

A builder returns a `fidelity.candidates.base.Candidate`. Named candidates (`max`,
`max:FAULT`, `ctranslate2`) are registered by the modules that define them
(`register`); this module knows only where to find each name (`_PROVIDER_MODULES`),
so nothing above the candidates imports the built-in one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..checkpoints import Checkpoint
from ..errors import FidelityError
from ..precisions import CANDIDATE_PRECISIONS
from .base import Candidate, CandidateConfig

log = logging.getLogger(__name__)

DEFAULT = "max"
Builder = Callable[[Checkpoint, CandidateConfig], Candidate]

# name -> the module that registers it (imported on first use)
_PROVIDER_MODULES = {
    "max": "fidelity.candidates.max_builtin",
    "max:": "fidelity.faults",
    "ctranslate2": "fidelity.candidates.ctranslate2",
}


@dataclass(frozen=True)
class Provider:
    """A named candidate: how to build it, which precisions it serves, which arguments it takes."""

    name: str                                   # "max", or "max:" for a name that takes an argument
    summary: str
    precisions: tuple[str, ...]
    build: Callable[..., Candidate]             # (checkpoint, config) or (checkpoint, config, argument)
    arguments: Callable[[], list[str]] | None = None  # the valid arguments, for a "name:" provider
    argument_name: str = "argument"             # what the argument is called ("fault")


_REGISTRY: dict[str, Provider] = {}


def register(provider: Provider) -> None:
    """Make a named candidate known (called by the module that defines it, at import)."""
    _REGISTRY[provider.name] = provider


@dataclass(frozen=True)
class Spec:
    """A parsed spec: a registered provider (with its argument), or a user's builder."""

    text: str
    provider: Provider | None = None
    argument: str | None = None
    builder: Builder | None = None

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.provider.precisions if self.provider else CANDIDATE_PRECISIONS


def parse(text: str | None) -> Spec:
    """Resolve a spec without building anything: a known name, or a builder that imports and is callable."""
    text = DEFAULT if text is None else text.strip()
    name, sep, argument = text.partition(":")
    key = f"{name}:" if sep else name
    if key in _PROVIDER_MODULES:
        provider = _provider(key)
        if provider.arguments is not None:
            known = provider.arguments()
            if argument not in known:
                raise FidelityError(f"--candidate {text}: unknown {provider.argument_name} {argument!r}; "
                                    f"known {provider.argument_name}s: {', '.join(known)}")
        return Spec(text, provider, argument or None)
    return Spec(text, builder=_load_builder(text))


def source_hash(text: str) -> str | None:
    """The content hash of the Python file a `PATH.py:NAME` spec names (part of what its results depend on),
    without importing it; None for other specs."""
    path = Path(text.rsplit(":", 1)[0])
    if path.suffix == ".py" and path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return None


def build(spec: Spec | str | None, checkpoint: Checkpoint, config: CandidateConfig) -> Candidate:
    """The candidate a spec names, built for `config`; one line (exit 2) when it cannot be."""
    spec = spec if isinstance(spec, Spec) else parse(spec)
    if config.dtype not in spec.precisions:
        raise FidelityError(f"--candidate {spec.text} runs {', '.join(spec.precisions)}, not {config.dtype}")
    if spec.provider is not None:
        args = (spec.argument,) if spec.provider.arguments is not None else ()
        return spec.provider.build(checkpoint, config, *args)
    try:
        candidate = spec.builder(checkpoint, config)
    except FidelityError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's builder failed
        log.debug("building the candidate %s failed", spec.text, exc_info=True)  # the traceback with -v
        raise FidelityError(f"--candidate {spec.text}: the builder raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(candidate, Candidate):
        raise FidelityError(f"--candidate {spec.text}: the builder returned {type(candidate).__name__}, "
                            "not a fidelity.candidates.base.Candidate")
    if (candidate.dims.n_audio_state, candidate.dims.n_audio_layer) != \
            (checkpoint.dims.n_audio_state, checkpoint.dims.n_audio_layer):
        raise FidelityError(f"--candidate {spec.text}: the candidate serves other dimensions than {checkpoint.name}")
    return candidate


def known() -> list[str]:
    """One line per named candidate, for --help texts and errors."""
    lines = []
    for key in _PROVIDER_MODULES:
        try:
            p = _provider(key)
        except ImportError as exc:  # e.g. no ctranslate2 on this machine: say so, do not fail --help
            lines.append(f"{key}: not available here ({exc})")
            continue
        lines.append(f"{p.name}{p.argument_name.upper() if p.arguments else ''}: {p.summary}")
    return lines


def _provider(key: str) -> Provider:
    if key not in _REGISTRY:
        importlib.import_module(_PROVIDER_MODULES[key])
    return _REGISTRY[key]


def _load_builder(spec: str) -> Builder:
    """The builder named by `PATH.py:NAME` or `module:NAME`, refused in one line when it does not resolve."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise FidelityError(f"--candidate {spec!r}: give {', '.join(_PROVIDER_MODULES).replace('max:', 'max:FAULT')}, "
                            "PATH.py:NAME or module:NAME")
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
