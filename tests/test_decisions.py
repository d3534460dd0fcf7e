"""Each flip judged on the decision that made it, on a small random-weight model openai-whisper transcribes.

The model is random except for one knob: channel 0 of the decoder's final layer norm is a
constant (weight 0, bias `BETA`), and every timestamp token's embedding carries `offset / BETA`
there, so all timestamp logits move by `offset` at every position while nothing else does.
Turning it puts openai-whisper's timestamp rule (timestamps' total probability against the
best text token) at a chosen margin at one position of the reference transcript: the case
seen on an H200, where openai-whisper's own bfloat16 encoder switched that rule at a position
whose top-two gap was 3.6 nats. Candidates are the float64 reference plus a perturbation
pushed along the gradient of one decisive quantity at one position, so each flips exactly
the decision it is meant to.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from whisper.model import ModelDimensions
from whisper.tokenizer import get_tokenizer

from fidelity import audio
from fidelity.candidates.base import Candidate
from fidelity.checkpoints import Checkpoint, random_checkpoint
from fidelity.e2e import DropInEncoder, examine_transcripts, memoized, torch_encoder, transcribe_with
from fidelity.e2e.band import floor_noise_band
from fidelity.e2e.decisions import ARGMAX, TIMESTAMP_RULE, Decisions, judge_flips
from fidelity.e2e.teacher import Forcing, force_window, reference_windows, teacher_forced
from fidelity.reference.runner import TorchRunner
from fidelity.report.transcripts_text import band_line, format_e2e
from fidelity.taps import ENCODER_OUTPUT
from fidelity.tolerances import kl_ratio_budget

# an English-only vocabulary and 30 s windows, as whisper.transcribe needs; everything else small
DIMS = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                       n_vocab=51864, n_text_ctx=64, n_text_state=64, n_text_head=2, n_text_layer=2)
DTYPE = "bfloat16"                     # the floor: openai-whisper's encoder in bfloat16 on the CPU
BETA = 100.0
TIMESTAMP_BEGIN = get_tokenizer(False).timestamp_begin
BAND_DRAWS = 3


def _knob(base: Checkpoint, offset: float) -> Checkpoint:
    state = dict(base.state)
    weight, bias = state["decoder.ln.weight"].clone(), state["decoder.ln.bias"].clone()
    embedding = state["decoder.token_embedding.weight"].clone()
    weight[0], bias[0] = 0.0, BETA
    embedding[:, 0] = 0.0
    embedding[TIMESTAMP_BEGIN:, 0] = offset / BETA
    state.update({"decoder.ln.weight": weight, "decoder.ln.bias": bias, "decoder.token_embedding.weight": embedding})
    return Checkpoint(f"random-knob-{offset:.4f}", base.dims, state)


def _forced(checkpoint: Checkpoint, samples: np.ndarray):
    model = checkpoint.whisper_model()
    window = reference_windows(transcribe_with(model, samples, model.encoder, progress=False).decodes)[0]
    mel = window.mel[None]
    features = {"reference": torch_encoder(checkpoint, "float64", "cpu")(mel),
                "floor": torch_encoder(checkpoint, DTYPE, "cpu")(mel)}
    return model, window, force_window(model, window, features)


@pytest.fixture(scope="module")
def samples():
    return audio.load_audio(audio.DATA_DIR / "speech_30s.flac").samples[: 10 * audio.SAMPLE_RATE]


@pytest.fixture(scope="module")
def near_tie(samples):
    """The knob turned so that the reference's timestamp rule, at the live position nearest its boundary,
    sits 1.4x the floor's largest movement of that rule away from it: above anything the floor moves it,
    below the near-tie threshold (2x, sqrt of the KL budget 4)."""
    base, offset = random_checkpoint(DIMS, seed=0, name="random-transcribing"), 0.0
    for _ in range(4):
        checkpoint = _knob(base, offset)
        model, window, forced = _forced(checkpoint, samples)
        margin = forced.reference.timestamp_margin
        largest_floor_move = float(np.nanmax(forced.sides["floor"].moves[TIMESTAMP_RULE]))
        j = int(np.nanargmin(np.abs(margin)))
        target = 1.4 * largest_floor_move
        if abs(abs(margin[j]) - target) < 0.1 * largest_floor_move:
            return {"checkpoint": checkpoint, "model": model, "window": window, "forced": forced, "j": j}
        offset -= margin[j] - math.copysign(target, margin[j])  # every timestamp logit moves by the offset
    pytest.fail("the timestamp knob did not settle")


def _push(model, window, features: np.ndarray, j: int, quantity) -> np.ndarray:
    """A perturbation of `features` along the gradient of `quantity(logits at target j)` that flips its sign
    (to minus half its value again: a crossing, by a margin of its own)."""
    forcing = Forcing(model, window)
    x = torch.from_numpy(features.astype(np.float32))
    start = None
    delta = torch.zeros_like(x)
    for _ in range(6):
        xa = (x + delta).requires_grad_(True)
        value = quantity(forcing, model.decoder(forcing.tokens, xa)[0, forcing.begin + j].double())
        now = value.item()
        start = now if start is None else start
        if now * start < 0 and abs(now) >= 0.4 * abs(start):
            return delta.numpy()
        value.backward()
        grad = xa.grad.double()
        delta = delta + ((-0.5 * start - now) * grad / (grad ** 2).sum()).float()
    raise AssertionError("the push did not cross")


def _timestamp_rule(forcing: Forcing, j: int):
    allowed = forcing.allowed[j]
    return lambda f, logits: (logits[TIMESTAMP_BEGIN:][allowed[TIMESTAMP_BEGIN:]].logsumexp(0)
                              - logits[:TIMESTAMP_BEGIN][allowed[:TIMESTAMP_BEGIN]].max())


class Perturbed(Candidate):
    """openai-whisper's float64 encoder plus a fixed perturbation on one window (a bfloat16 candidate)."""

    name = "float64-plus-push"

    def __init__(self, checkpoint: Checkpoint, window_mel: np.ndarray, delta: np.ndarray):
        self.dims, self.dtype, self.device = checkpoint.dims, DTYPE, "cpu"
        self.runner = TorchRunner(checkpoint, "float64")
        self.key, self.delta = window_mel.astype(np.float32).tobytes(), delta

    def available_taps(self):
        return [ENCODER_OUTPUT]

    def run(self, mel, taps):
        out = self.runner.encode(mel)
        if len(mel) == 1 and mel[0].astype(np.float32).tobytes() == self.key:
            out = out + self.delta
        return {ENCODER_OUTPUT: out.astype(np.float32)}


@pytest.fixture(scope="module")
def switched(near_tie, samples):
    """The whole end-to-end check of a candidate whose only change is the timestamp rule at the near tie."""
    model, window, j = near_tie["model"], near_tie["window"], near_tie["j"]
    features = torch_encoder(near_tie["checkpoint"], "float64", "cpu")(window.mel[None])
    delta = _push(model, window, features, j, _timestamp_rule(Forcing(model, window), j))
    candidate = Perturbed(near_tie["checkpoint"], window.mel, delta[0])
    return examine_transcripts(near_tie["checkpoint"], samples, candidate, model=model)


def test_the_decisions_reproduce_openai_whispers_filters(near_tie):
    """What the context allows, minus the text tokens wherever the timestamp rule fired, is exactly what
    openai-whisper's filters leave; the rule fires where its margin is positive."""
    model, window = near_tie["model"], near_tie["window"]
    forcing = Forcing(model, window)
    logits = forcing.logits(model, torch_encoder(near_tie["checkpoint"], "float64", "cpu")(window.mel[None]))
    filtered, decisions = forcing.decisions(logits)
    expected = forcing.allowed.clone()
    expected[torch.from_numpy(decisions.timestamps_won), :TIMESTAMP_BEGIN] = False
    assert torch.equal(torch.isfinite(filtered), expected)
    live = ~np.isnan(decisions.timestamp_margin)
    assert live.sum() > len(live) // 2 and decisions.timestamps_won.any() and not decisions.timestamps_won.all()
    assert np.array_equal(decisions.timestamps_won[live], decisions.timestamp_margin[live] > 0)
    assert filtered.argmax(dim=-1).tolist() == forcing.targets  # the greedy decode, replayed


def test_a_timestamp_rule_switch_within_noise_passes(near_tie, switched):
    teacher = switched.teacher.as_dict()
    flips = teacher["candidate"]["flips"]
    assert len(flips) == 1, flips
    flip, j = flips[0], near_tie["j"]
    window = teacher["windows"][0]
    threshold = teacher["near_tie_thresholds"][TIMESTAMP_RULE]
    assert flip["token_index"] == j and flip["decided_by"] == TIMESTAMP_RULE
    assert flip["margin"] == pytest.approx(abs(window["timestamp_margin"][j]), rel=1e-3)
    scale = teacher["floor_scales"][TIMESTAMP_RULE]
    assert threshold == pytest.approx(scale * math.sqrt(kl_ratio_budget(DTYPE)), rel=1e-3)
    assert flip["floor_movement"] < flip["margin"] < threshold and flip["floor_flips_here"] is False
    assert flip["near_tie"] is True and teacher["verdict"] == "ok" and not switched.failed
    # judged on the top-two gap, as before, the same flip was outside noise
    assert window["margin"][j] > teacher["near_tie_thresholds"][ARGMAX]
    assert "decided by the timestamp rule" in format_e2e(switched.as_dict())


def test_free_decoding_beside_the_floor(switched):
    free = switched.as_dict()["free"]
    assert free["floor_encoder"] == f"openai-whisper encoder, {DTYPE} on cpu, TF32 off"
    for decoding in ("greedy", "defaults"):
        assert set(free[decoding]) == {"reference", "candidate", "floor"}
    greedy = free["greedy"]
    assert greedy["reference"]["wer"] == 0.0 and greedy["floor"]["text"]
    for side in greedy.values():  # a random decoder repeats itself: openai-whisper's rule calls it a loop
        assert side["loops"] == [i for i, r in enumerate(side["compression_ratios"]) if r > 2.4] and side["loops"]
    # the switch moved a timestamp, not a word: no band to draw
    assert greedy["candidate"]["wer"] == 0.0 and not free["band"]["computed"]
    assert free["band"]["reason"].startswith("not needed")


def test_the_floor_noise_band_of_a_clip(near_tie, samples):
    """Draws of the float64 features plus the floor's own RMS error as Gaussian noise, against a candidate
    whose noise is a hundred times the floor's."""
    checkpoint, model = near_tie["checkpoint"], near_tie["model"]
    float64 = memoized(torch_encoder(checkpoint, "float64", "cpu"))
    floor = memoized(torch_encoder(checkpoint, DTYPE, "cpu"))
    mel = near_tie["window"].mel[None]
    floor_rms = float(np.sqrt(np.mean((floor(mel).astype(np.float64) - float64(mel)) ** 2)))
    rng = np.random.default_rng(1)

    def loud(batch):
        return (float64(batch) + rng.normal(0.0, 100 * floor_rms, float64(batch).shape)).astype(np.float32)

    transcripts = [transcribe_with(model, samples, encoder, progress=False)
                   for encoder in (model.encoder, DropInEncoder(loud), DropInEncoder(floor))]
    band = floor_noise_band(model, samples, float64, floor, *transcripts, draws=BAND_DRAWS, seed=0).as_dict()
    assert band["computed"] and len(band["wers"]) == BAND_DRAWS == band["draws"]
    assert band["low"] == min(band["wers"]) and band["high"] == max(band["wers"])
    assert band["noise_rms"][0] == pytest.approx(floor_rms, rel=1e-3)
    assert band["candidate_wer"] > band["high"] and band["within"] is False
    assert band_line(band).endswith("OUTSIDE it (a warning, not a verdict)")


def test_an_argmax_flip_outside_noise_fails_whatever_the_kl(near_tie):
    """A push across a top-two gap a few times the near-tie threshold: KL within budget, verdict a flip."""
    model, window, forced = near_tie["model"], near_tie["window"], near_tie["forced"]
    threshold = 2 * float(np.nanmax(forced.sides["floor"].moves[ARGMAX]))
    live = ~np.isnan(forced.reference.timestamp_margin)
    candidates = np.flatnonzero((forced.gap > 2 * threshold) & (forced.gap < 6 * threshold)
                                & (~live | (np.abs(forced.reference.timestamp_margin) > 1.0)))
    assert candidates.size, "no top-two gap a few thresholds wide in this window"
    j = int(candidates[0])
    first, second = (int(t) for t in forced.top2[j])
    float64 = torch_encoder(near_tie["checkpoint"], "float64", "cpu")
    features = float64(window.mel[None])
    delta = _push(model, window, features, j, lambda f, logits: logits[first] - logits[second])
    floor = torch_encoder(near_tie["checkpoint"], DTYPE, "cpu")
    result = teacher_forced(model, [window], float64, lambda mel: (features + delta).astype(np.float32), floor,
                            DTYPE, "bfloat16 floor")
    flips = result.candidate["flips"]
    assert [f["token_index"] for f in flips] == [j] and flips[0]["decided_by"] == ARGMAX
    assert flips[0]["margin"] > flips[0]["near_tie_threshold"] and flips[0]["near_tie"] is False
    assert result.judgement["kl_ratio"] <= result.judgement["budget"]
    assert result.verdict == "flip_outside_noise" and result.failed


def _decisions(top1, won=(), margin=()) -> Decisions:
    n = len(top1)
    return Decisions(np.array(top1), np.array(won or [False] * n), np.array(margin or [math.nan] * n))


def test_a_flip_the_floor_makes_too_is_within_noise_whatever_its_margin():
    reference = _decisions([5, 6, 7], [False, True, False], [math.nan, 0.5, -0.3])
    gap = np.array([2.0, 3.0, 0.01])
    side = _decisions([9, 1, 8], [False, False, False], [math.nan, -0.1, -0.3])   # all three flip
    floor = _decisions([9, 6, 7], [False, True, False], [math.nan, 0.45, -0.3])  # the floor flips at 0 too
    moves = {ARGMAX: np.array([2.5, 0.01, 0.004]), TIMESTAMP_RULE: np.array([math.nan, 0.05, 0.0])}
    thresholds = {ARGMAX: 0.05, TIMESTAMP_RULE: 0.1}
    flips = judge_flips(reference, gap, side, floor, moves, thresholds)
    assert [(f.index, f.decided_by, f.margin, f.floor_flips_here, f.near_tie) for f in flips] == [
        (0, ARGMAX, 2.0, True, True),             # far from a tie, but the floor makes the same flip
        (1, TIMESTAMP_RULE, 0.5, False, False),   # the rule switched: its margin, not the top-two gap
        (2, ARGMAX, 0.01, False, True)]           # the rule held (both sides text): the top-two gap
    assert flips[1].floor_movement == 0.05 and flips[2].threshold == 0.05
    own = judge_flips(reference, gap, floor, floor, moves, thresholds, is_floor=True)
    assert [(f.index, f.floor_flips_here, f.near_tie) for f in own] == [(0, None, False)]
    blind = judge_flips(reference, gap, side, None, None, dict.fromkeys(thresholds))
    assert [f.near_tie for f in blind] == [None, None, None]
