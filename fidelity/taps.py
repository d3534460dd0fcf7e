"""The tap points of the encoder: one declarative list shared by both runners.

Names follow openai-whisper's module paths (`encoder.blocks.2.attn.query`); points
with no module of their own take TransformerLens-style names (`resid_mid`,
`resid_post`). Everything is derived from the model's dimensions.

Stages are the units isolation runs on their own: `conv_stem`, `blocks.{i}.attn`,
`blocks.{i}.mlp` and `ln_post`. Each stage's last tap is its output, which is the
next stage's input.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

from whisper.model import ModelDimensions

from .errors import FidelityError


@dataclass(frozen=True)
class Tap:
    """One captured intermediate: its name, stage, per-example shape and meaning."""

    name: str
    stage: str
    shape: tuple[int, ...]
    description: str
    optional: bool = False  # large taps captured only when asked for by name


def stage_names(dims: ModelDimensions) -> list[str]:
    """Stages in execution order."""
    blocks = [f"blocks.{i}.{part}" for i in range(dims.n_audio_layer) for part in ("attn", "mlp")]
    return ["conv_stem", *blocks, "ln_post"]


def encoder_taps(dims: ModelDimensions) -> list[Tap]:
    """Every tap of `AudioEncoder` for these dimensions, in execution order."""
    ctx, width, heads = dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head
    taps = [
        Tap("encoder.conv1", "conv_stem", (width, 2 * ctx), "conv1 output, channels x frames"),
        Tap("encoder.conv1.gelu", "conv_stem", (width, 2 * ctx), "GELU of conv1"),
        Tap("encoder.conv2", "conv_stem", (width, ctx), "conv2 output (stride 2)"),
        Tap("encoder.conv2.gelu", "conv_stem", (width, ctx), "GELU of conv2"),
        Tap("encoder.positional_embedding", "conv_stem", (ctx, width),
            "frames x width after adding the positional embedding (block 0 input)"),
    ]
    for i in range(dims.n_audio_layer):
        block, attn, mlp = f"encoder.blocks.{i}", f"blocks.{i}.attn", f"blocks.{i}.mlp"
        taps += [
            Tap(f"{block}.attn_ln", attn, (ctx, width), "layer norm before attention"),
            Tap(f"{block}.attn.query", attn, (ctx, width), "query projection (before scaling)"),
            Tap(f"{block}.attn.key", attn, (ctx, width), "key projection (no bias)"),
            Tap(f"{block}.attn.value", attn, (ctx, width), "value projection"),
            Tap(f"{block}.attn.weights", attn, (heads, ctx, ctx), "softmax attention weights", optional=True),
            Tap(f"{block}.attn.wv", attn, (ctx, width), "attention output before the out projection"),
            Tap(f"{block}.attn.out", attn, (ctx, width), "out projection"),
            Tap(f"{block}.resid_mid", attn, (ctx, width), "residual stream after attention"),
            Tap(f"{block}.mlp_ln", mlp, (ctx, width), "layer norm before the MLP"),
            Tap(f"{block}.mlp.0", mlp, (ctx, 4 * width), "fc1"),
            Tap(f"{block}.mlp.1", mlp, (ctx, 4 * width), "GELU"),
            Tap(f"{block}.mlp.2", mlp, (ctx, width), "fc2"),
            Tap(f"{block}.resid_post", mlp, (ctx, width), "residual stream after the MLP (block output)"),
        ]
    taps.append(Tap("encoder.ln_post", "ln_post", (ctx, width), "final layer norm (encoder output)"))
    return taps


def stage_output(dims: ModelDimensions, stage: str) -> str:
    """The tap that is a stage's output (and the next stage's input)."""
    return [tap.name for tap in encoder_taps(dims) if tap.stage == stage][-1]


def stage_outputs(dims: ModelDimensions) -> list[str]:
    """The taps between stages: the residual stream after each stage, and ln_post."""
    return [stage_output(dims, stage) for stage in stage_names(dims)]


def stage_input(dims: ModelDimensions, stage: str) -> str | None:
    """The tap a stage reads, or None for the conv stem (which reads the mel)."""
    stages = stage_names(dims)
    index = stages.index(stage)
    return None if index == 0 else stage_output(dims, stages[index - 1])


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
