"""What a benchmark times and examines: candidate specs x precisions x attention forms, built up front.

Every candidate is built before anything is timed, so a spec that does not resolve, or a
candidate that serves none of the asked precisions, is refused (one line, exit 2) before
minutes of work. An attention form is tried only on a candidate that offers the choice (it
names its form in `describe()`, as the built-in does). A precision or form one candidate
refuses while it builds in others (a float32-only port in a float32,bfloat16 run; flash
attention outside bfloat16 on the GPU with MAX 26.7) is skipped and listed, so one run can
put every configuration in one table.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ..candidates import specs
from ..candidates.base import Candidate, CandidateConfig
from ..checkpoints import Checkpoint
from ..errors import FidelityError
from ..precisions import precision
from .points import TorchEncoder, WholeGraph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Configuration:
    """One encoder timed and examined: a built candidate in one precision and attention form."""

    label: str                 # what tables and plots call it
    spec: str                  # the candidate spec it was built from, or what the reference point is
    candidate: Candidate
    attention: str | None      # None: the candidate has no attention choice
    reference: bool = False    # openai-whisper in torch: a reference point, not a candidate

    @property
    def dtype(self) -> str:
        return self.candidate.dtype


@dataclass(frozen=True)
class Skipped:
    """A configuration asked for that does not build, and why."""

    spec: str
    dtype: str
    attention: str | None      # None: whatever the form
    reason: str


def build_configurations(checkpoint: Checkpoint, spec_texts: list[str], dtypes: list[str], attentions: list[str],
                         device: str, torch_compile: bool = False, whole_graph: bool = False,
                         stages: bool = False) -> tuple[list[Configuration], list[Skipped]]:
    """Reference points (openai-whisper in torch, in each asked precision's floor precision), then each spec in
    each precision and attention form; with `whole_graph`, the plain built-in (`max`) as one graph too.
    `stages`: the caller times the built-in's stages (refused unless a built-in spec, `max` or `max:FAULT`, is
    among them)."""
    twice = sorted({text for text in spec_texts if spec_texts.count(text) > 1})
    if twice:
        raise FidelityError(f"--candidate {twice[0]} is given twice")
    parsed = [specs.parse(text) for text in spec_texts]  # every spec resolves before anything is built
    for spec in parsed:
        if not set(dtypes) & set(spec.precisions):
            raise FidelityError(f"--candidate {spec.text} runs {', '.join(spec.precisions)}, not {', '.join(dtypes)}")
    if whole_graph and not any(_is_builtin(spec) for spec in parsed):
        raise FidelityError(f"--whole-graph times the built-in candidate as one graph: add --candidate "
                            f"{specs.DEFAULT}")
    if stages and not any(spec.provider is not None and spec.provider.name.startswith(specs.DEFAULT)
                          for spec in parsed):
        raise FidelityError(f"--stages times the built-in candidate's stages: add --candidate {specs.DEFAULT}")
    configs: list[Configuration] = []
    for dtype in dict.fromkeys(precision(d).floor for d in dtypes):
        configs.append(Configuration(f"torch eager {dtype}", "openai-whisper, torch eager",
                                     TorchEncoder(checkpoint, dtype, device), None, reference=True))
        if torch_compile:
            configs.append(Configuration(f"torch.compile {dtype}", "openai-whisper, torch.compile",
                                         TorchEncoder(checkpoint, dtype, device, compiled=True), None, reference=True))
    skipped: list[Skipped] = []
    for spec in parsed:
        built, refused = _build_spec(spec, checkpoint, dtypes, attentions, device)
        configs += built
        skipped += refused
        if whole_graph and _is_builtin(spec):
            configs += [Configuration(f"{c.label} whole graph", f"{spec.text} (one graph)",
                                      WholeGraph(checkpoint, c.candidate), c.attention) for c in built]
    configs = _unique_labels(configs)
    for s in skipped:
        log.warning("skipped %s in %s%s: %s", s.spec, s.dtype, f" with {s.attention} attention" if s.attention else "",
                    s.reason)
    return configs, skipped


def _build_spec(spec: specs.Spec, checkpoint: Checkpoint, dtypes: list[str], attentions: list[str],
                device: str) -> tuple[list[Configuration], list[Skipped]]:
    """The spec in each precision, once per attention form it offers, and what it refuses; refused in one line
    when it builds in none of them."""
    built: list[Configuration] = []
    refused: list[tuple[str, str | None, FidelityError]] = []
    for dtype in dtypes:
        if dtype not in spec.precisions:  # refused by name, whatever the form
            refused.append((dtype, None, FidelityError(f"runs {', '.join(spec.precisions)}, not {dtype}")))
            continue
        failed = []
        for attention in attentions:
            try:
                candidate = specs.build(spec, checkpoint, CandidateConfig(device, dtype, attention))
            except FidelityError as exc:
                failed.append((dtype, attention, exc))
                continue
            offers = "attention" in candidate.describe()
            named = candidate.name if candidate.name.endswith(dtype) else f"{candidate.name} {dtype}"
            built.append(Configuration(named + (f" {attention}" if offers else ""), spec.text, candidate,
                                       attention if offers else None))
            if not offers:
                break
        if len(failed) == len(attentions) and len({str(exc) for *_, exc in failed}) == 1:
            failed = [(dtype, None, failed[0][2])]  # one refusal of the precision, whatever the form
        refused += failed
    if not built:
        raise next(exc for dtype, _, exc in refused if dtype in spec.precisions)  # its builder's own refusal
    return built, [Skipped(spec.text, dtype, attention, str(exc)) for dtype, attention, exc in refused]


def _is_builtin(spec: specs.Spec) -> bool:
    """The plain built-in candidate (`max`, no fault)."""
    return spec.provider is not None and spec.provider.name == specs.DEFAULT


def _unique_labels(configs: list[Configuration]) -> list[Configuration]:
    """Candidates of two specs that call themselves the same get their spec in their label."""
    labels = [c.label for c in configs]
    return [dataclasses.replace(c, label=f"{c.label} [{c.spec}]") if labels.count(c.label) > 1 else c
            for c in configs]
