"""The one table of precisions: each name, its type in every engine, and its noise floor.

A candidate runs in a precision (`--dtype`); openai-whisper runs in float64 for the
truth and in the precision's `floor` for the noise floor. Engines name types their own
way (MAX `DType`, torch dtypes, CTranslate2 compute types); a `None` means the engine
has no such type, so no candidate on that engine serves the precision. Candidates
declare which names they serve (`fidelity.candidates.specs`); commands accept any
candidate precision here and the chosen candidate refuses what it cannot run.

Engine types are spelled as attribute names and looked up on use, so importing this
table costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FidelityError


@dataclass(frozen=True)
class Precision:
    """One precision: its name and its type in each engine (None: the engine has none)."""

    name: str
    floor: str                    # the precision openai-whisper's noise-floor run uses
    torch: str | None             # torch dtype attribute
    max: str | None               # max.dtype.DType attribute
    ctranslate2: str | None       # CTranslate2 compute type
    note: str = ""


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("float32", "float32", "float32", "float32", "float32"),
    Precision("bfloat16", "bfloat16", "bfloat16", "bfloat16", "bfloat16"),
    Precision("float16", "float16", "float16", "float16", "float16"),
    Precision("int8", "float32", None, None, "int8_float32",
              "int8 weights, float32 activations: torch has no int8 run, so the floor is float32"),
    Precision("float64", "float64", "float64", None, None, "the truth: openai-whisper only"),
)}

# What `--dtype` may name: every precision a candidate can run in (float64 is the reference's).
CANDIDATE_PRECISIONS = tuple(name for name in PRECISIONS if name != "float64")


def precision(name: str) -> Precision:
    """The named precision, or one line naming the choices."""
    if name not in PRECISIONS:
        raise FidelityError(f"unknown precision {name!r}: choose from {', '.join(CANDIDATE_PRECISIONS)}")
    return PRECISIONS[name]


def served_by(engine: str) -> tuple[str, ...]:
    """The candidate precisions an engine ('max', 'torch' or 'ctranslate2') has a type for."""
    return tuple(name for name in CANDIDATE_PRECISIONS if getattr(PRECISIONS[name], engine) is not None)


def max_dtype(name: str):
    """The MAX `DType` of a precision (FidelityError when MAX has none)."""
    from max.dtype import DType

    spelled = precision(name).max
    if spelled is None:
        raise FidelityError(f"MAX has no {name} type; MAX candidates run {', '.join(served_by('max'))}")
    return getattr(DType, spelled)


def max_precision_name(dtype) -> str | None:
    """The precision name of a MAX `DType` (None for a type outside the table, e.g. bool)."""
    return next((p.name for p in PRECISIONS.values() if p.max is not None and p.max == dtype.name), None)


def torch_dtype(name: str):
    """The torch dtype of a precision (FidelityError when torch has none)."""
    import torch

    spelled = precision(name).torch
    if spelled is None:
        raise FidelityError(f"torch has no {name} type; openai-whisper runs {', '.join(served_by('torch'))}")
    return getattr(torch, spelled)


def host_array(array: np.ndarray, name: str):
    """A contiguous host copy of `array` in precision `name`, for feeding an engine.

    numpy has no bfloat16: that one is a torch tensor (MAX and DLPack read it)."""
    if name == "bfloat16":
        import torch

        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch.bfloat16).contiguous()
    return np.ascontiguousarray(array, dtype=np.dtype(precision(name).torch or "float32"))
