"""Tensor layouts of a port's internals, and their conversion to a tap's canonical layout.

A layout is a string of axis letters, one per axis of the port's tensor:
  * `b` batch (may be absent: a batch-less tensor holds one example);
  * `t` frames and `c` channels for the conv and residual-stream taps, where `c` may be
    split into `h` heads and `d` head_dim (channel `h * head_dim + d`, as
    openai-whisper's `view(..., n_head, -1)` splits it);
  * `h`, `q`, `k` (heads, query frames, key frames) for attention weights.

Canonical layouts (`fidelity.taps`, per example): conv taps `ct` (width, frames),
attention weights `hqk`, every other tap `tc` (frames, width). So a channels-last conv
output is `btc`, per-head attention `bhtd`, a batch-less residual `tc`.

Conversion is numpy on the host: `to_canonical` before comparing, `from_canonical` for
a patch value before it is fed back into the port's graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from whisper.model import ModelDimensions

from .errors import FidelityError
from .taps import Tap


def canonical_letters(tap: Tap) -> str:
    """The tap's canonical per-example layout."""
    if tap.name.endswith(".weights"):
        return "hqk"
    if tap.name.startswith("encoder.conv"):
        return "ct"
    return "tc"


@dataclass(frozen=True)
class Layout:
    """A checked layout of one probed tensor: converts to and from the tap's canonical layout."""

    tap: str
    letters: str          # the port's axes
    canonical: str        # canonical axes with the batch in front ("b" + canonical_letters)
    sizes: dict           # letter -> size for the split letters h/d (the model's heads and head_dim)

    @property
    def batched(self) -> bool:
        return "b" in self.letters

    @property
    def identity(self) -> bool:
        return self.letters == self.canonical

    def _expanded(self) -> str:
        """Canonical letters with `c` split into `hd` when the port splits it."""
        if "h" in self.letters and "c" in self.canonical and "c" not in self.letters:
            return self.canonical.replace("c", "hd")
        return self.canonical

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """The port's tensor (its layout) -> (batch, *canonical shape)."""
        if self.identity:
            return array
        letters = self.letters if self.batched else "b" + self.letters
        if not self.batched:
            array = array[np.newaxis]
        expanded = self._expanded()
        out = np.transpose(array, [letters.index(ch) for ch in expanded])
        if expanded != self.canonical:
            i = expanded.index("h")
            out = out.reshape(out.shape[:i] + (out.shape[i] * out.shape[i + 1],) + out.shape[i + 2:])
        return np.ascontiguousarray(out)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """(batch, *canonical shape) -> the port's tensor, for feeding a patch."""
        if self.identity:
            return array
        expanded = self._expanded()
        if expanded != self.canonical:
            i = self.canonical.index("c")
            array = array.reshape(array.shape[:i] + (self.sizes["h"], self.sizes["d"]) + array.shape[i + 1:])
        letters = self.letters if self.batched else "b" + self.letters
        out = np.transpose(array, [expanded.index(ch) for ch in letters])
        if not self.batched:
            if out.shape[0] != 1:
                raise FidelityError(f"probe {self.tap} is batch-less (layout {self.letters!r}): "
                                    f"it can take one window at a time, not {out.shape[0]}")
            out = out[0]
        return np.ascontiguousarray(out)


def parse_layout(tap: Tap, layout: str | None, shape: Sequence[object], dims: ModelDimensions) -> Layout:
    """Check `layout` (None: canonical with a batch axis) against the tap and the tensor's shape.

    `shape` holds ints for static dims and anything else (a symbolic name) for dynamic ones.
    A layout that cannot describe this tensor (wrong letters, wrong rank, a width, head count or
    head_dim that is not the model's) is a `FidelityError` naming tap, layout and shape. A wrong
    number of frames is not: that is the port computing something wrong, a finding.
    """
    canon = "b" + canonical_letters(tap)
    letters = canon if layout is None else layout
    shown = "(" + ", ".join(str(s) for s in shape) + ")"

    def refuse(why: str) -> FidelityError:
        return FidelityError(f"probe {tap.name}: layout {letters!r} does not fit its tensor of shape {shown}: {why} "
                             f"(canonical layout {canon!r}; see fidelity.layouts)")

    core = canon[1:]
    allowed = [core]
    if "c" in core:
        allowed.append(core.replace("c", "hd"))
    given = letters.replace("b", "", 1) if letters.count("b") == 1 else letters
    if not isinstance(letters, str) or sorted(given) not in [sorted(a) for a in allowed]:
        options = " or ".join(repr(a) for a in allowed)
        raise refuse(f"its axes must be a permutation of {options}, optionally with a batch axis 'b'")
    if len(shape) != len(letters):
        raise refuse(f"{len(letters)} axes declared, the tensor has {len(shape)}")
    width, heads = dims.n_audio_state, dims.n_audio_head
    if "h" in letters and "c" in core and tap.shape[core.index("c")] != width:
        raise refuse(f"only a tap of width {width} splits into heads x head_dim")
    expected = {"c": tap.shape[core.index("c")] if "c" in core else None, "h": heads, "d": width // heads}
    for letter, size in zip(letters, shape):
        want = expected.get(letter)
        if want is not None and isinstance(size, (int, np.integer)) and int(size) != want:
            name = {"c": "width", "h": "heads", "d": "head_dim"}[letter]
            raise refuse(f"axis {letter!r} ({name}) has {size}, the model has {want}")
    return Layout(tap.name, letters, canon, {"h": heads, "d": width // heads})
