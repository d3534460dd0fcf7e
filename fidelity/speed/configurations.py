"""What a benchmark times and examines: candidate specs x precisions x attention forms, built up front.

Every candidate is built before anything is timed, so a spec that does not resolve or a
precision a candidate does not serve is refused (one line, exit 2) before minutes of
work. An attention form is tried only on a candidate that offers the choice (it names
its form in `describe()`, as the built-in does); a form a configuration refuses (flash
attention outside bfloat16 on the GPU with MAX 26.7) is skipped and reported, as long as
another form of that candidate and precision builds.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ..candidates import specs
from ..candidates.base import Candidate, CandidateConfig
from ..candidates.max_builtin import BuiltinCandidate
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
    attention: str
    reason: str


def build_configurations(checkpoint: Checkpoint, spec_texts: list[str], dtypes: list[str], attentions: list[str],
                         device: str, torch_compile: bool = False,
                         whole_graph: bool = False) -> tuple[list[Configuration], list[Skipped]]:
    """Reference points (openai-whisper in torch, in each asked precision's floor precision), then each spec in
    each precision and attention form; with `whole_graph`, the plain built-in (`max`) as one graph too."""
    twice = sorted({text for text in spec_texts if spec_texts.count(text) > 1})
    if twice:
        raise FidelityError(f"--candidate {twice[0]} is given twice")
    parsed = [specs.parse(text) for text in spec_texts]  # every spec resolves before anything is built
    for spec in parsed:
        for dtype in dtypes:
            if dtype not in spec.precisions:
                raise FidelityError(f"--candidate {spec.text} runs {', '.join(spec.precisions)}, not {dtype}")
    if whole_graph and not any(s.provider is not None and s.provider.name == specs.DEFAULT for s in parsed):
        raise FidelityError(f"--whole-graph times the built-in candidate as one graph: add --candidate "
                            f"{specs.DEFAULT}")
    configs: list[Configuration] = []
    for dtype in dict.fromkeys(precision(d).floor for d in dtypes):
        configs.append(Configuration(f"torch eager {dtype}", "openai-whisper, torch eager",
                                     TorchEncoder(checkpoint, dtype, device), None, reference=True))
        if torch_compile:
            configs.append(Configuration(f"torch.compile {dtype}", "openai-whisper, torch.compile",
                                         TorchEncoder(checkpoint, dtype, device, compiled=True), None, reference=True))
    skipped: list[Skipped] = []
    for spec in parsed:
        for dtype in dtypes:
            built, refused = _build_forms(spec, checkpoint, dtype, attentions, device)
            configs += built
            skipped += refused
            if whole_graph and spec.provider is not None and spec.provider.name == specs.DEFAULT:
                configs += [Configuration(f"{c.label} whole graph", f"{spec.text} (one graph)",
                                          WholeGraph(checkpoint, c.candidate), c.attention)
                            for c in built if isinstance(c.candidate, BuiltinCandidate)]
    configs = _unique_labels(configs)
    for s in skipped:
        log.warning("skipped %s in %s with %s attention: %s", s.spec, s.dtype, s.attention, s.reason)
    return configs, skipped


def _build_forms(spec: specs.Spec, checkpoint: Checkpoint, dtype: str, attentions: list[str],
                 device: str) -> tuple[list[Configuration], list[Skipped]]:
    """The spec in `dtype`, once per attention form it offers; the refusals of the others."""
    built: list[Configuration] = []
    refused: list[tuple[str, FidelityError]] = []
    for attention in attentions:
        try:
            candidate = specs.build(spec, checkpoint, CandidateConfig(device, dtype, attention))
        except FidelityError as exc:
            refused.append((attention, exc))
            continue
        offers = "attention" in candidate.describe()
        named = candidate.name if candidate.name.endswith(dtype) else f"{candidate.name} {dtype}"
        label = named + (f" {attention}" if offers else "")
        built.append(Configuration(label, spec.text, candidate, attention if offers else None))
        if not offers:
            break
    if not built:
        raise refused[0][1]
    return built, [Skipped(spec.text, dtype, attention, str(exc)) for attention, exc in refused]


def _unique_labels(configs: list[Configuration]) -> list[Configuration]:
    """Candidates of two specs that call themselves the same get their spec in their label."""
    labels = [c.label for c in configs]
    return [dataclasses.replace(c, label=f"{c.label} [{c.spec}]") if labels.count(c.label) > 1 else c
            for c in configs]
