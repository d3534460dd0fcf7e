"""Teacher forcing: openai-whisper's own decoder over the reference transcript, once per encoder.

For every window the reference decode kept (greedy, temperature 0), the real
`TextDecoder` reads the same token sequence the reference decode read: its prompt
(condition on previous text), its sot sequence, its timestamps, its tokens, and the
end of text. One forward pass per window per encoder gives the next-token logits at
every position on the same context, so nothing cascades. openai-whisper's own logit
filters (`DecodingTask.logit_filters`) pick each side's token as greedy decoding would.

Per token: KL(reference || side) of the decoder's next-token distributions (all tokens,
before the filters), whether the side's pick agrees with the reference's, and the
decisions behind each pick (`fidelity.e2e.decisions`: the timestamp rule, then the argmax),
so that every flip is judged on the quantity that decided it. The reference is
openai-whisper's encoder in float64 (its features cast to float32 for the decoder), as for
the per-tap noise floor; the floor is openai-whisper's encoder in the candidate's
precision and arithmetic on its device. The decoder is the same float32 model for every
side (TF32 off): only the encoder changes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import whisper
from whisper.decoding import ApplyTimestampRules, DecodingTask

from ..errors import FidelityError
from ..reference.arithmetic import ieee_float32
from ..tolerances import KL_NEGLIGIBLE, kl_ratio_budget
from .decisions import ARGMAX, KINDS, Decisions, Flip, argmax_gap, decide, floor_scales, judge_flips, movements
from .encoders import Encode

log = logging.getLogger(__name__)

REFERENCE_LABEL = "openai-whisper encoder, float64 (features cast to float32 for the decoder)"


@dataclass
class Window:
    """One window of the reference transcript: the mel it decoded, its options and its tokens."""

    index: int                        # the decode's position among the reference's windows
    mel: np.ndarray                   # (n_mels, frames) float32
    options: whisper.DecodingOptions
    tokens: list[int]


def reference_windows(decodes) -> list[Window]:
    """The windows a greedy reference transcript kept (silent ones are left out, as openai-whisper does)."""
    windows = [Window(i, d.mel, d.options, list(d.tokens)) for i, d in enumerate(decodes) if not d.skipped]
    if not any(w.tokens for w in windows):
        raise FidelityError("--e2e: the clip has no speech (the reference transcript has no tokens to compare)")
    return windows


class Forcing:
    """One window's teacher-forced decoder input, openai-whisper's logit filters for it, and what the
    context alone leaves allowed at each target position."""

    def __init__(self, model: whisper.Whisper, window: Window):
        task = DecodingTask(model, window.options)
        self.tokenizer, self.filters = task.tokenizer, task.logit_filters
        self.timestamp_rule = any(isinstance(f, ApplyTimestampRules) for f in self.filters)
        initial = list(task.initial_tokens)
        targets = list(window.tokens)
        if len(targets) < task.sample_len:  # the decode ended by choosing end of text: that is a decision too
            targets.append(task.tokenizer.eot)
        sequence = (initial + targets)[: model.dims.n_text_ctx + 1]
        self.tokens = torch.tensor([sequence[:-1]])
        self.begin = len(initial) - 1           # the position whose logits predict targets[0]
        self.targets = sequence[len(initial):]
        self.allowed = self._allowed(model.dims.n_vocab)

    def _filter(self, rows: torch.Tensor) -> torch.Tensor:
        """openai-whisper's logit filters on each target position's row, in place, as DecodingTask._main_loop
        applies them, each on its own context."""
        for i in range(len(rows)):
            context = self.tokens[:, :self.begin + i + 1]
            for logit_filter in self.filters:
                logit_filter.apply(rows[i:i + 1], context)
        return rows

    def _allowed(self, n_vocab: int) -> torch.Tensor:
        """(n_targets, n_vocab) bool: the tokens the filters leave allowed whatever the logits. The filters run
        on probe logits (text tokens 0, timestamps -1000), on which the one logit-dependent rule (timestamps'
        total probability above the best text token's) cannot fire while a text token is allowed, so every
        mask they set is one the context alone sets."""
        probe = torch.zeros(len(self.targets), n_vocab)
        probe[:, self.tokenizer.timestamp_begin:] = -1000.0
        return torch.isfinite(self._filter(probe))

    def logits(self, model: whisper.Whisper, features: np.ndarray) -> torch.Tensor:
        """The decoder's raw float32 next-token logits at each target, on the CPU (n_targets, n_vocab)."""
        device = next(model.parameters()).device
        xa = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
        with torch.no_grad(), ieee_float32():
            logits = model.decoder(self.tokens.to(device), xa)[0]
        return logits[self.begin:self.begin + len(self.targets)].float().cpu()

    def decisions(self, logits: torch.Tensor) -> tuple[torch.Tensor, Decisions]:
        """The logits after openai-whisper's filters (what greedy decoding picks from), and the decisions."""
        filtered = self._filter(logits.clone())
        return filtered, decide(logits, filtered, self.allowed, self.tokenizer.timestamp_begin, self.timestamp_rule)


@dataclass
class ForcedSide:
    """One encoder against the reference over one window."""

    kl: np.ndarray                     # KL(reference || side) per token, nats
    decisions: Decisions
    moves: dict[str, np.ndarray]       # per kind of decisive quantity: |side's value - reference's|


@dataclass
class ForcedWindow:
    window: Window
    forcing: Forcing
    reference: Decisions
    top2: np.ndarray                   # (n, 2) the reference's top two surviving tokens
    gap: np.ndarray                    # (n,) the logit gap between them
    sides: dict[str, ForcedSide]


def force_window(model: whisper.Whisper, window: Window, features: dict[str, np.ndarray]) -> ForcedWindow:
    """Teacher-force one window with each side's features ({"reference": ..., "candidate": ..., "floor": ...})."""
    forcing = Forcing(model, window)
    ref_logits = forcing.logits(model, features["reference"])
    ref_filtered, reference = forcing.decisions(ref_logits)
    top2, gap = argmax_gap(ref_filtered)
    ref_logprobs = torch.log_softmax(ref_logits.double(), dim=-1)
    ref_probs = ref_logprobs.exp()
    sides = {}
    for name, value in features.items():
        if name == "reference":
            continue
        logits = forcing.logits(model, value)
        _, decisions = forcing.decisions(logits)
        kl = (ref_probs * (ref_logprobs - torch.log_softmax(logits.double(), dim=-1))).sum(dim=-1).numpy()
        sides[name] = ForcedSide(kl, decisions, movements(reference, top2, gap, decisions, logits))
    return ForcedWindow(window, forcing, reference, top2, gap, sides)


@dataclass(frozen=True)
class TeacherResult:
    """The teacher-forced comparison, built once: per window and overall, candidate and floor, the
    floor's scales and the near-tie thresholds per kind of decisive quantity, the KL ratio and the verdict."""

    windows: tuple[dict, ...]
    candidate: dict
    floor: dict                        # overall statistics, or {"computed": False, "reason": ...}
    scales: dict[str, float | None]
    thresholds: dict[str, float | None]
    judgement: dict                    # kl_ratio, kl_ratio_p99, budget, verdict (and reason or note)
    decoder: str
    floor_encoder: str
    seconds: float

    @property
    def verdict(self) -> str:
        return self.judgement["verdict"]

    @property
    def failed(self) -> bool:
        """Whether the teacher-forced comparison makes `compare --e2e` exit 1."""
        return self.verdict in ("over_budget", "flip_outside_noise")

    def as_dict(self) -> dict:
        """The report.json `e2e.teacher` section."""
        return {"reference": REFERENCE_LABEL, "decoder": self.decoder, "floor_encoder": self.floor_encoder,
                "windows": list(self.windows), "candidate": self.candidate, "floor": self.floor,
                "floor_scale": _num(self.scales[ARGMAX], 4), "near_tie_threshold": _num(self.thresholds[ARGMAX], 4),
                "floor_scales": {k: _num(v, 4) for k, v in self.scales.items()},
                "near_tie_thresholds": {k: _num(v, 4) for k, v in self.thresholds.items()},
                "seconds": round(self.seconds, 2), **self.judgement}


def teacher_forced(model: whisper.Whisper, windows: list[Window], reference: Encode, candidate: Encode,
                   floor: Encode | None, dtype: str, floor_label: str,
                   floor_reason: str | None = None) -> TeacherResult:
    """Teacher-force every window with the float64 `reference`, the `candidate` and the `floor` (None when
    it cannot run here, `floor_reason` says why: the ratio and the near-tie judgement are then not computed)."""
    start = time.perf_counter()
    forced = []
    for window in windows:
        mel = window.mel[None]
        features = {"reference": reference(mel), "candidate": candidate(mel)}
        if floor is not None:
            features["floor"] = floor(mel)
        forced.append(force_window(model, window, features))
    scales = floor_scales([f.sides["floor"].moves for f in forced]) if floor is not None else dict.fromkeys(KINDS)
    # KL grows with the square of the feature error, the decisive quantities with the error itself
    root = math.sqrt(kl_ratio_budget(dtype))
    thresholds = {kind: None if scale is None else scale * root for kind, scale in scales.items()}
    rows, overall = [], {"candidate": [], "floor": []}
    for f in forced:
        floor_side = f.sides.get("floor")
        row = _window_head(f)
        for name, side in f.sides.items():
            judged = judge_flips(f.reference, f.gap, side.decisions, floor_side.decisions if floor_side else None,
                                 floor_side.moves if floor_side else None, thresholds, is_floor=name == "floor")
            agree = side.decisions.top1 == f.reference.top1
            flips = [_flip_dict(f, side, flip) for flip in judged]
            row[name] = {**_stats(side.kl, agree, flips), "kl": [_num(k, 4) for k in side.kl]}
            overall[name].append((side.kl, agree, flips))
        rows.append(row)
    cand = _overall(overall["candidate"])
    floor_stats = _overall(overall["floor"]) if floor is not None else {"computed": False, "reason": floor_reason}
    result = TeacherResult(tuple(rows), cand, floor_stats, scales, thresholds, judge(cand, floor_stats, dtype),
                           f"openai-whisper TextDecoder, float32 on {next(model.parameters()).device.type}",
                           floor_label, time.perf_counter() - start)
    log.info("teacher forcing: %d tokens in %d window(s), %.1f s", cand["tokens"], len(rows), result.seconds)
    return result


def judge(candidate: dict, floor: dict, dtype: str) -> dict:
    """KL ratio, its budget and the verdict: 'ok', 'over_budget', 'flip_outside_noise' or 'not_computed'."""
    budget = kl_ratio_budget(dtype)
    if not floor.get("computed", True):
        return {"kl_ratio": None, "kl_ratio_p99": None, "budget": budget, "verdict": "not_computed",
                "reason": floor["reason"]}
    if floor["kl_mean"] <= 0:
        return {"kl_ratio": None, "kl_ratio_p99": None, "budget": budget, "verdict": "not_computed",
                "reason": "the floor's KL is 0 (openai-whisper in this precision reproduces the reference exactly)"}
    ratio = candidate["kl_mean"] / floor["kl_mean"]
    p99 = candidate["kl_p99"] / floor["kl_p99"] if floor["kl_p99"] > 0 else None
    outside = [f for f in candidate["flips"] if f["near_tie"] is False]
    over = ratio > budget and candidate["kl_mean"] > KL_NEGLIGIBLE
    verdict = "over_budget" if over else "flip_outside_noise" if outside else "ok"
    out = {"kl_ratio": ratio, "kl_ratio_p99": p99, "budget": budget, "verdict": verdict}
    if ratio > budget and not over:
        out["note"] = (f"mean KL {candidate['kl_mean']:.2g} is below {KL_NEGLIGIBLE:g} nats per token: immaterial "
                       "whatever its ratio to the floor")
    return out


def _window_head(forced: ForcedWindow) -> dict:
    forcing = forced.forcing
    decode = forcing.tokenizer.decode_with_timestamps
    return {"window": forced.window.index, "tokens": [decode([t]) for t in forcing.targets],
            "margin": [_num(m, 4) for m in forced.gap],
            "timestamp_margin": [_num(m, 4) for m in forced.reference.timestamp_margin],
            "reference_matches_transcript": float(np.mean(forced.reference.top1 == np.array(forcing.targets)))}


def _flip_dict(forced: ForcedWindow, side: ForcedSide, flip: Flip) -> dict:
    forcing, j = forced.forcing, flip.index
    decode = forcing.tokenizer.decode_with_timestamps
    return {"window": forced.window.index, "token_index": j,
            "context": decode(forcing.tokens[0, forcing.begin + 1:forcing.begin + 1 + j].tolist())[-80:],
            "reference_token": decode([int(forced.reference.top1[j])]),
            "side_token": decode([int(side.decisions.top1[j])]),
            "decided_by": flip.decided_by, "margin": _num(flip.margin, 4),
            "floor_movement": _num(flip.floor_movement, 4), "near_tie_threshold": _num(flip.threshold, 4),
            "floor_flips_here": flip.floor_flips_here, "near_tie": flip.near_tie}


def _stats(kl: np.ndarray, agree: np.ndarray, flips: list[dict]) -> dict:
    margins = [f["margin"] for f in flips if f["margin"] is not None]
    return {"tokens": int(kl.size), "kl_mean": float(kl.mean()) if kl.size else 0.0,
            "kl_p99": float(np.percentile(kl, 99)) if kl.size else 0.0, "kl_max": float(kl.max()) if kl.size else 0.0,
            "top1_agreement": float(agree.mean()) if agree.size else 1.0, "flip_count": len(flips),
            "smallest_flip_margin": min(margins) if margins else None, "flips": flips}


def _overall(parts: list[tuple[np.ndarray, np.ndarray, list[dict]]]) -> dict:
    kl = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    agree = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, bool)
    return _stats(kl, agree, [f for p in parts for f in p[2]])


def _num(value, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{float(value):.{digits}g}")
