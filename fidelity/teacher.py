"""Teacher forcing: openai-whisper's own decoder over the reference transcript, once per encoder.

For every window the reference decode kept (greedy, temperature 0), the real
`TextDecoder` reads the same token sequence the reference decode read: its prompt
(condition on previous text), its sot sequence, its timestamps, its tokens, and the
end of text. One forward pass per window per encoder gives the next-token logits at
every position on the same context, so nothing cascades. openai-whisper's own logit
filters (`DecodingTask.logit_filters`: blank, suppressed tokens, timestamp rules) are
applied at each position as greedy decoding applies them.

Per token: KL(reference || side) of the decoder's next-token distributions (all
tokens, before the filters), whether the side's top-1 (after the filters, what greedy
decoding would pick) agrees with the reference's, and the reference's margin between
its top two tokens. The reference is openai-whisper's encoder in float64 (its
features cast to float32 for the decoder), as for the per-tap noise floor; the floor
is openai-whisper's encoder in the candidate's dtype and on its device (TF32 off).
The decoder is the same float32 model for every side: only the encoder changes.

A flip is a token where the side's top-1 is not the reference's. It is "a near tie,
within noise" when the reference's top-two margin there is smaller than the floor's
own movement of that margin at the same token.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import whisper
from whisper.decoding import DecodingTask

from .checkpoints import Checkpoint
from .errors import FidelityError
from .reference.arithmetic import tf32_switches
from .reference.runner import TorchRunner
from .tolerances import KL_NEGLIGIBLE, kl_ratio_budget

log = logging.getLogger(__name__)

Encode = Callable[[np.ndarray], np.ndarray]  # mel (batch, n_mels, frames) float32 -> features (batch, ctx, width)

def memoized(encode: Encode) -> Encode:
    """`encode` that remembers its output per distinct mel (transcription and teacher forcing share windows)."""
    cache: dict[bytes, np.ndarray] = {}

    def cached(mel: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(mel, dtype=np.float32).tobytes()).digest()
        if key not in cache:
            cache[key] = np.asarray(encode(mel), dtype=np.float32)
        return cache[key]

    return cached


def torch_encoder(checkpoint: Checkpoint, dtype: str, device: str) -> Encode:
    """openai-whisper's `AudioEncoder` in `dtype` on `device` (TF32 off), as an encode function."""
    return TorchRunner(checkpoint, dtype, device).encode


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
    """One window's teacher-forced decoder input and openai-whisper's logit filters for it."""

    def __init__(self, model: whisper.Whisper, window: Window):
        task = DecodingTask(model, window.options)
        self.tokenizer, self.filters = task.tokenizer, task.logit_filters
        initial = list(task.initial_tokens)
        targets = list(window.tokens)
        if len(targets) < task.sample_len:  # the decode ended by choosing end of text: that is a decision too
            targets.append(task.tokenizer.eot)
        sequence = (initial + targets)[: model.dims.n_text_ctx + 1]
        self.tokens = torch.tensor([sequence[:-1]])
        self.begin = len(initial) - 1           # the position whose logits predict targets[0]
        self.targets = sequence[len(initial):]

    def logprobs(self, model: whisper.Whisper, features: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """At each target, on the CPU: the float64 next-token log-probabilities (n_targets, n_vocab), and
        the float32 logits after openai-whisper's logit filters (their top tokens and gaps are greedy's)."""
        device = next(model.parameters()).device
        xa = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
        with torch.no_grad(), tf32_switches(False, False):
            logits = model.decoder(self.tokens.to(device), xa)[0]
        rows = logits[self.begin:self.begin + len(self.targets)].float().cpu()
        filtered = rows.clone()
        for i in range(len(rows)):
            context = self.tokens[:, :self.begin + i + 1]
            for logit_filter in self.filters:  # in place on row i, as DecodingTask._main_loop does
                logit_filter.apply(filtered[i:i + 1], context)
        return torch.log_softmax(rows.double(), dim=-1), filtered


@dataclass
class Side:
    """Per-token figures of one encoder against the reference, over one window."""

    kl: np.ndarray          # KL(reference || side), nats
    top1: np.ndarray        # the side's top-1 token (after the logit filters)
    margin_move: np.ndarray  # |side's gap between the reference's top two - the reference's gap|


def _side(ref_probs, ref_logprobs, logprobs, filtered, top2) -> Side:
    kl = (ref_probs * (ref_logprobs - logprobs)).sum(dim=-1)
    first, second = top2.indices[:, 0:1], top2.indices[:, 1:2]
    gap = (filtered.double().gather(1, first) - filtered.double().gather(1, second))[:, 0]
    move = (gap - _gap(top2)).abs()
    return Side(kl.numpy(), filtered.argmax(dim=-1).numpy(), move.numpy())


def _gap(top2) -> torch.Tensor:
    """The log-probability gap between the top two tokens (a difference of logits: normalisation cancels)."""
    values = top2.values.double()
    return values[:, 0] - values[:, 1]


def force_window(model: whisper.Whisper, window: Window, features: dict[str, np.ndarray]) -> dict:
    """Teacher-force one window with each side's features ({"reference": ..., "candidate": ..., "floor": ...})."""
    forcing = Forcing(model, window)
    ref_logprobs, ref_filtered = forcing.logprobs(model, features["reference"])
    ref_probs = ref_logprobs.exp()
    top2 = ref_filtered.topk(2, dim=-1)
    sides = {}
    for name, value in features.items():
        if name != "reference":
            sides[name] = _side(ref_probs, ref_logprobs, *forcing.logprobs(model, value), top2)
    margin = _gap(top2).numpy()
    return {"forcing": forcing, "top1": top2.indices[:, 0].numpy(), "margin": margin, "sides": sides}


def teacher_forced(model: whisper.Whisper, windows: list[Window], reference: Encode, candidate: Encode,
                   floor: Encode | None, dtype: str, floor_reason: str | None = None) -> dict:
    """The report.json `teacher` section: per window and overall, candidate and floor, and the floor ratio.

    `floor` None means the floor could not run (`floor_reason` says why): the ratio and the
    near-tie judgement are then "not computed".
    """
    start = time.perf_counter()
    rows, flat, forced_windows = [], {"candidate": [], "floor": []}, []
    for window in windows:
        mel = window.mel[None]
        features = {"reference": reference(mel), "candidate": candidate(mel)}
        if floor is not None:
            try:
                features["floor"] = floor(mel)
            except (RuntimeError, NotImplementedError) as exc:  # torch: the dtype has no kernel on this device
                floor, floor_reason = None, f"openai-whisper's encoder cannot run in {dtype} here: {_first_line(exc)}"
                log.warning("teacher forcing floor not computed: %s", floor_reason)
        forced_windows.append((window, force_window(model, window, features)))
    raw_scale = floor_scale(forced_windows)
    # KL grows with the square of the feature error, so a candidate within its KL budget may move a
    # gap by up to sqrt(budget) times what the floor moves: flips below that are near ties.
    scale = None if raw_scale is None else raw_scale * math.sqrt(kl_ratio_budget(dtype))
    for window, forced in forced_windows:
        row = _window_head(window, forced)
        for name, side in forced["sides"].items():
            if name == "floor" and floor is None:
                continue
            flips = _flips(window.index, forced, side, forced["sides"].get("floor") if floor else None, scale)
            agree = side.top1 == forced["top1"]
            row[name] = {**_stats(side.kl, agree, flips), "kl": [_num(k, 4) for k in side.kl]}
            flat[name].append((side.kl, agree, flips))
        rows.append(row)
    report = {
        "reference": "openai-whisper encoder, float64 (features cast to float32 for the decoder)",
        "decoder": f"openai-whisper TextDecoder, float32 on {next(model.parameters()).device.type}",
        "windows": rows,
        "candidate": _overall(flat["candidate"]),
        "floor": _overall(flat["floor"]) if flat["floor"] else {"computed": False, "reason": floor_reason},
        "floor_scale": _num(raw_scale, 4),
        "near_tie_threshold": _num(scale, 4),
        "seconds": round(time.perf_counter() - start, 2),
    }
    report.update(judge(report, dtype))
    log.info("teacher forcing: %d tokens in %d window(s), %.1f s", report["candidate"]["tokens"], len(rows),
             report["seconds"])
    return report


def judge(report: dict, dtype: str) -> dict:
    """KL ratio, its budget and the verdict: 'ok', 'over_budget', 'flip_outside_noise' or 'not_computed'."""
    cand, floor = report["candidate"], report["floor"]
    budget = kl_ratio_budget(dtype)
    if not floor.get("computed", True):
        return {"kl_ratio": None, "kl_ratio_p99": None, "budget": budget, "verdict": "not_computed",
                "reason": floor["reason"]}
    if floor["kl_mean"] <= 0:
        return {"kl_ratio": None, "kl_ratio_p99": None, "budget": budget, "verdict": "not_computed",
                "reason": "the floor's KL is 0 (openai-whisper in this precision reproduces the reference exactly)"}
    ratio = cand["kl_mean"] / floor["kl_mean"]
    p99 = cand["kl_p99"] / floor["kl_p99"] if floor["kl_p99"] > 0 else None
    outside = [f for f in cand["flips"] if not f["near_tie"]]
    over = ratio > budget and cand["kl_mean"] > KL_NEGLIGIBLE
    verdict = "over_budget" if over else "flip_outside_noise" if outside else "ok"
    out = {"kl_ratio": ratio, "kl_ratio_p99": p99, "budget": budget, "verdict": verdict}
    if ratio > budget and not over:
        out["note"] = (f"mean KL {cand['kl_mean']:.2g} is below {KL_NEGLIGIBLE:g} nats per token: immaterial "
                       "whatever its ratio to the floor")
    return out


def failed(teacher: dict | None) -> bool:
    """Whether the teacher-forced comparison makes `compare --e2e` exit 1."""
    return teacher is not None and teacher["verdict"] in ("over_budget", "flip_outside_noise")


def _window_head(window: Window, forced: dict) -> dict:
    forcing = forced["forcing"]
    decode = forcing.tokenizer.decode_with_timestamps
    return {"window": window.index, "tokens": [decode([t]) for t in forcing.targets],
            "margin": [_num(m, 4) for m in forced["margin"]],
            "reference_matches_transcript": float(np.mean(forced["top1"] == np.array(forcing.targets)))}


def floor_scale(forced_windows: list) -> float | None:
    """The floor's noise scale over the clip: the largest movement of any token's top-two gap that
    openai-whisper's own encoder in the candidate's precision shows (None when the floor did not run).

    One token's movement is a single draw; fragile tokens move by the clip's largest amounts, so a
    flip is judged against what the floor does anywhere in the clip, not at that token only. On an
    H100 in bfloat16 (97 s clip) this scale was 0.147, while openai-whisper's own SDPA encoder, an
    equally valid bf16 implementation, flipped tokens at margins 0.151 and 0.161."""
    moves = [forced["sides"]["floor"].margin_move for _, forced in forced_windows if "floor" in forced["sides"]]
    if len(moves) != len(forced_windows) or not moves:
        return None
    values = np.concatenate(moves)
    return float(values.max()) if values.size else None


def _flips(index: int, forced: dict, side: Side, floor: Side | None, scale: float | None) -> list[dict]:
    forcing, out = forced["forcing"], []
    decode = forcing.tokenizer.decode_with_timestamps
    for j in np.flatnonzero(side.top1 != forced["top1"]):
        margin = float(forced["margin"][j])
        noise = float(floor.margin_move[j]) if floor is not None else None
        near = None if scale is None or not math.isfinite(scale) else margin < scale
        out.append({"window": index, "token_index": int(j),
                    "context": decode(forcing.tokens[0, forcing.begin + 1:forcing.begin + 1 + j].tolist())[-80:],
                    "reference_token": decode([int(forced["top1"][j])]), "side_token": decode([int(side.top1[j])]),
                    "margin": _num(margin, 4), "floor_movement": _num(noise, 4), "near_tie_threshold": _num(scale, 4),
                    "near_tie": near})
    return out


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


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
