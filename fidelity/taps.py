"""The tap points and stages of the encoder: the one definition every runner reads.

Names follow openai-whisper's module paths (`encoder.blocks.2.attn.query`); points
with no module of their own take TransformerLens-style names (`resid_mid`,
`resid_post`). Everything is derived from the model's dimensions.

A `Stage` is a unit isolation runs on its own: the conv stem, each block's
attention and MLP sub-blocks, `ln_post`, and (for a candidate with its own front
end) `front_end`. Its last tap is its output, which is the next stage's input.
Each tap also says where openai-whisper computes it (`hook`, relative to the
stage's module), and its stage-relative name (`local`) is what the built-in MAX
graph emits, so a tap is spelled once, here.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Callable

from whisper.model import ModelDimensions

from .errors import FidelityError

FRONT_END_TAP = "frontend.mel"
FRONT_END = "front_end"
CONV_STEM = "conv_stem"
LN_POST = "ln_post"
ENCODER_OUTPUT = "encoder.ln_post"

# Where openai-whisper computes a tap, relative to its stage's module: (submodule path,
# what to capture). "output"/"input": the submodule's output/first input; "softmax": the
# softmax of MultiHeadAttention's logits; "call": computed in the stage function itself
# (the conv stem restates `AudioEncoder.forward`); None: the stage's output.
Hook = tuple[str, str] | None


@dataclass(frozen=True)
class Tap:
    """One captured intermediate: its name, stage, per-example shape and meaning."""

    name: str
    stage: str
    shape: tuple[int, ...]
    description: str
    optional: bool = False  # large taps captured only when asked for by name
    hook: Hook = None
    local: str = ""         # the name inside its stage (block-relative in a block)
    reads: tuple[str, ...] = ()  # the taps of its stage it is computed from (none: the stage's input)


@dataclass(frozen=True)
class Stage:
    """A span of the encoder run on its own: its taps in order, the tap it reads, its block."""

    name: str
    kind: str                 # front_end, conv_stem, attn, mlp, ln_post
    block: int | None
    taps: tuple[Tap, ...]
    input: str | None         # the tap it reads; None: the mel (conv stem) or the audio (front end)

    @property
    def output(self) -> str:
        return self.taps[-1].name

    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    @property
    def prefix(self) -> str:
        """What a local name is prefixed with: `encoder.blocks.2.` in a block, else nothing."""
        return f"encoder.blocks.{self.block}." if self.block is not None else ""

    def unread(self, patched: set[str]) -> set[str]:
        """Internal taps whose own value the stage output never reads when the taps in `patched` are replaced
        downstream by given values: each is patched itself, or every path from it to the output passes a
        patched tap (data flow, not tap order: patching `attn.value` does not cut `attn.query`)."""
        readers: dict[str, list[str]] = {t.name: [] for t in self.taps}
        for tap in self.taps:
            for source in tap.reads:
                readers[source].append(tap.name)
        reaches = {self.output: True}
        for tap in reversed(self.taps[:-1]):
            reaches[tap.name] = tap.name not in patched and any(reaches[r] for r in readers[tap.name])
        return {name for name, read in reaches.items() if not read}

    def full_name(self, local: str) -> str:
        """A stage-relative name as a tap name, checked against the stage's taps."""
        name = self.prefix + local
        if name not in {t.name for t in self.taps}:
            raise FidelityError(f"{local!r} is not a tap of stage {self.name}")
        return name


# (local name, stage part, shape(ctx, width, heads), description, hook, optional)
_Row = tuple[str, str, Callable[[int, int, int], tuple[int, ...]], str, Hook, bool]
_CONV_STEM: list[_Row] = [
    ("encoder.conv1", CONV_STEM, lambda c, w, h: (w, 2 * c), "conv1 output, channels x frames", ("", "call"), False),
    ("encoder.conv1.gelu", CONV_STEM, lambda c, w, h: (w, 2 * c), "GELU of conv1", ("", "call"), False),
    ("encoder.conv2", CONV_STEM, lambda c, w, h: (w, c), "conv2 output (stride 2)", ("", "call"), False),
    ("encoder.conv2.gelu", CONV_STEM, lambda c, w, h: (w, c), "GELU of conv2", ("", "call"), False),
    ("encoder.positional_embedding", CONV_STEM, lambda c, w, h: (c, w),
     "frames x width after adding the positional embedding (block 0 input)", None, False),
]
_BLOCK: list[_Row] = [
    ("attn_ln", "attn", lambda c, w, h: (c, w), "layer norm before attention", ("attn_ln", "output"), False),
    ("attn.query", "attn", lambda c, w, h: (c, w), "query projection (before scaling)",
     ("attn.query", "output"), False),
    ("attn.key", "attn", lambda c, w, h: (c, w), "key projection (no bias)", ("attn.key", "output"), False),
    ("attn.value", "attn", lambda c, w, h: (c, w), "value projection", ("attn.value", "output"), False),
    ("attn.weights", "attn", lambda c, w, h: (h, c, c), "softmax attention weights", ("attn", "softmax"), True),
    ("attn.wv", "attn", lambda c, w, h: (c, w), "attention output before the out projection",
     ("attn.out", "input"), False),
    ("attn.out", "attn", lambda c, w, h: (c, w), "out projection", ("attn.out", "output"), False),
    ("resid_mid", "attn", lambda c, w, h: (c, w), "residual stream after attention", None, False),
    ("mlp_ln", "mlp", lambda c, w, h: (c, w), "layer norm before the MLP", ("mlp_ln", "output"), False),
    ("mlp.0", "mlp", lambda c, w, h: (c, 4 * w), "fc1", ("mlp.0", "output"), False),
    ("mlp.1", "mlp", lambda c, w, h: (c, 4 * w), "GELU", ("mlp.1", "output"), False),
    ("mlp.2", "mlp", lambda c, w, h: (c, w), "fc2", ("mlp.2", "output"), False),
    ("resid_post", "mlp", lambda c, w, h: (c, w), "residual stream after the MLP (block output)", None, False),
]
_LN_POST: list[_Row] = [
    (ENCODER_OUTPUT, LN_POST, lambda c, w, h: (c, w), "final layer norm (encoder output)", None, False),
]


# What each tap is computed from, inside its stage (data flow; the stage input is left implicit).
_READS: dict[str, tuple[str, ...]] = {
    "encoder.conv1.gelu": ("encoder.conv1",), "encoder.conv2": ("encoder.conv1.gelu",),
    "encoder.conv2.gelu": ("encoder.conv2",), "encoder.positional_embedding": ("encoder.conv2.gelu",),
    "attn.query": ("attn_ln",), "attn.key": ("attn_ln",), "attn.value": ("attn_ln",),
    "attn.weights": ("attn.query", "attn.key"), "attn.wv": ("attn.weights", "attn.value"), "attn.out": ("attn.wv",),
    "resid_mid": ("attn.out",),
    "mlp.0": ("mlp_ln",), "mlp.1": ("mlp.0",), "mlp.2": ("mlp.1",), "resid_post": ("mlp.2",),
}


def front_end_stage(dims: ModelDimensions) -> Stage:
    """The stage of a candidate's own audio -> log-mel (compared with openai-whisper's)."""
    tap = Tap(FRONT_END_TAP, FRONT_END, (dims.n_mels, 2 * dims.n_audio_ctx),
              "log-mel from the candidate's own front end (padding to 30 s included)", local=FRONT_END_TAP)
    return Stage(FRONT_END, FRONT_END, None, (tap,), None)


def stages(dims: ModelDimensions, front_end: bool = False) -> list[Stage]:
    """Stages in execution order (with `front_end`, the candidate's own front end first)."""
    ctx, width, heads = dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head

    def taps(rows: list[_Row], part: str, stage: str, prefix: str) -> tuple[Tap, ...]:
        return tuple(Tap(prefix + local, stage, shape(ctx, width, heads), desc, optional, hook, local,
                         tuple(prefix + source for source in _READS.get(local, ())))
                     for local, row_part, shape, desc, hook, optional in rows if row_part == part)

    out = [front_end_stage(dims)] if front_end else []
    out.append(Stage(CONV_STEM, CONV_STEM, None, taps(_CONV_STEM, CONV_STEM, CONV_STEM, ""), None))
    for i in range(dims.n_audio_layer):
        for part in ("attn", "mlp"):
            name = f"blocks.{i}.{part}"
            out.append(Stage(name, part, i, taps(_BLOCK, part, name, f"encoder.blocks.{i}."), out[-1].output))
    out.append(Stage(LN_POST, LN_POST, None, taps(_LN_POST, LN_POST, LN_POST, ""), out[-1].output))
    return out


def encoder_taps(dims: ModelDimensions) -> list[Tap]:
    """Every tap of `AudioEncoder` for these dimensions, in execution order."""
    return [tap for stage in stages(dims) for tap in stage.taps]


def stage_outputs(dims: ModelDimensions) -> list[str]:
    """The taps between stages: the residual stream after each stage, and ln_post."""
    return [stage.output for stage in stages(dims)]


def _long_forms(part: str) -> list[str]:
    """What a short name may stand for: itself, under `encoder.`, or under `encoder.blocks.`."""
    return [part, f"encoder.{part}", f"encoder.blocks.{part}"]


def _stage_taps(taps: list[Tap], part: str) -> list[Tap]:
    """The taps of the stage `part` names (`blocks.2.attn`, `2.attn`, `conv_stem`), else none."""
    for form in (part, f"blocks.{part}", part.removeprefix("encoder.")):
        hits = [t for t in taps if t.stage == form and not t.optional]
        if hits:
            return hits
    return []


def _unknown(part: str, taps: list[Tap]) -> FidelityError:
    block = re.match(r"(?:encoder\.)?(?:blocks\.)?(\d+)\.", part)
    layers = sum(1 for t in taps if t.name.endswith(".resid_post"))
    if block and int(block.group(1)) >= layers:
        return FidelityError(f"unknown tap {part!r}: block {block.group(1)} does not exist, "
                             f"the model has blocks 0..{layers - 1}")
    names = [t.name for t in taps]
    close = difflib.get_close_matches(part, names, n=3) or difflib.get_close_matches(f"encoder.{part}", names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; try --list-taps"
    return FidelityError(f"unknown tap {part!r}{hint}")


def resolve_tap(dims: ModelDimensions, text: str) -> str:
    """The full name of one tap, given its name or an unambiguous short form.

    `ln_post`, `conv1`, `blocks.2.mlp.0` and `2.mlp.0` are short for `encoder.ln_post` and so
    on; a stage name (`2.attn`, `blocks.1.mlp`, `conv_stem`) stands for that stage's output tap.
    """
    taps = encoder_taps(dims)
    names = {t.name for t in taps}
    for form in _long_forms(text.strip()):
        if form in names:
            return form
    stage = _stage_taps(taps, text.strip())
    if stage:
        return stage[-1].name
    raise _unknown(text, taps)


def select_taps(dims: ModelDimensions, selector: str) -> list[Tap]:
    """Taps chosen by `selector`: `all`, a name, a glob, a block index, a stage, or a comma list.

    Names may be short when unambiguous (`ln_post`, `conv1`, `2.mlp.0`, `blocks.*.attn.query`);
    a stage name (`2.attn`, `blocks.1.mlp`, `conv_stem`) selects that stage's taps. Optional
    taps (attention weights) come only when a selector names them: an exact name, or a glob
    containing `weights`.
    """
    taps = encoder_taps(dims)
    chosen: set[str] = set()
    for part in (p.strip() for p in selector.split(",")):
        if not part:
            continue
        if part == "all":
            hits = [t for t in taps if not t.optional]
        elif part.isdigit():
            index = int(part)
            if index >= dims.n_audio_layer:
                raise FidelityError(f"block {index} does not exist: the model has blocks 0..{dims.n_audio_layer - 1}")
            hits = [t for t in taps if t.name.startswith(f"encoder.blocks.{index}.") and not t.optional]
        elif any(ch in part for ch in "*?["):
            hits = next((found for form in _long_forms(part)
                         if (found := [t for t in taps if fnmatch.fnmatchcase(t.name, form)
                                       and (not t.optional or "weights" in part)])), [])
        else:
            hits = next(([t for t in taps if t.name == form] for form in _long_forms(part)
                         if any(t.name == form for t in taps)), []) or _stage_taps(taps, part)
        if not hits:
            raise _unknown(part, taps)
        chosen.update(t.name for t in hits)
    if not chosen:
        raise FidelityError("empty tap selection")
    return [t for t in taps if t.name in chosen]
