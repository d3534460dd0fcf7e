"""Any candidate through the one comparison flow: whole-run and stage-running candidates, isolation by
patching, internal differences, front ends, and what a user's candidate can get wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from fidelity import audio
from fidelity.candidates.base import CandidateConfig, CapabilityError
from fidelity.candidates.max_builtin import BuiltinCandidate
from fidelity.errors import FidelityError
from fidelity.flow.examine import examine
from fidelity.flow.request import Request
from fidelity.flow.walk import Plan, compare_candidate
from fidelity.reference.references import References
from fidelity.reference.runner import TorchRunner
from fidelity.taps import encoder_taps, stages

from . import protocol_candidates

SPEC = "tests/protocol_candidates.py"


def _all(dims) -> tuple[str, ...]:
    return tuple(t.name for t in encoder_taps(dims) if not t.optional)


def relabel_heads(dims, order):
    """A weight transform: every block's heads in `order` (query/key/value rows, out columns)."""
    head_dim = dims.n_audio_state // dims.n_audio_head
    index = np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in order])

    def transform(weights):
        w = dict(weights)
        for i in range(dims.n_audio_layer):
            p = f"encoder.blocks.{i}.attn."
            for name in ("query.weight", "query.bias", "key.weight", "value.weight", "value.bias"):
                w[p + name] = np.ascontiguousarray(w[p + name][index])
            w[p + "out.weight"] = np.ascontiguousarray(w[p + "out.weight"][:, index])
        return w
    return transform


def test_reference_patches_an_internal_tap_downstream_only(small, small_mel):
    runner = TorchRunner(small, "float32")
    names = _all(small.dims)
    plain = runner.run(small_mel, names)
    query = "encoder.blocks.1.attn.query"
    patched = runner.run_patched(small_mel, {query: np.zeros_like(plain[query])}, names)
    np.testing.assert_array_equal(patched[query], plain[query])  # the value computed there, before its patch
    np.testing.assert_array_equal(patched["encoder.blocks.1.attn_ln"], plain["encoder.blocks.1.attn_ln"])
    assert not np.allclose(patched["encoder.blocks.1.attn.wv"], plain["encoder.blocks.1.attn.wv"])


def test_stage_runs_of_the_builtin_chain_to_its_whole_run(small, small_mel):
    candidate = BuiltinCandidate(small, CandidateConfig())
    names = _all(small.dims)
    whole = candidate.run(small_mel, names)
    x = small_mel
    for stage in stages(small.dims):
        part = candidate.run_stage(stage, x, names)
        for name in set(stage.tap_names) & set(names):
            np.testing.assert_array_equal(part[name], whole[name], err_msg=name)
        x = part[stage.output]
    assert candidate.patchable_taps() == [s.input for s in stages(small.dims) if s.input]


def test_a_whole_run_candidate_is_isolated_by_patching(small, small_mel):
    """openai-whisper float32 behind the protocol: every tap at the floor, chained and local."""
    candidate = protocol_candidates.whole(small, CandidateConfig())
    assert not candidate.runs_by_stage
    result = compare_candidate(candidate, References(small), small_mel,
                               Plan(_all(small.dims), isolate=True, consistency=True))
    assert result.first_divergence is None
    assert all(r.verdict == "ok" and r.local_verdict == "ok" for r in result.rows)
    assert all(r.consistency == 0.0 for r in result.rows)


def test_relabelled_heads_are_an_internal_difference_not_a_divergence(small, small_mel):
    """The issue's measured false positive: heads permuted consistently change the internal taps only."""
    order = list(reversed(range(small.dims.n_audio_head)))
    candidate = BuiltinCandidate(small, CandidateConfig(), transform=relabel_heads(small.dims, order))
    result = compare_candidate(candidate, References(small), small_mel, Plan(_all(small.dims), isolate=True))
    assert result.first_divergence is None and result.first_divergence_chained is None
    found = {d["stage"]: d["taps"] for d in result.internal_differences}
    assert set(found) == {f"blocks.{i}.attn" for i in range(small.dims.n_audio_layer)}
    for i in range(small.dims.n_audio_layer):
        p = f"encoder.blocks.{i}.attn."
        assert {p + "query", p + "key", p + "value"} <= set(found[f"blocks.{i}.attn"])
        assert result.row(f"encoder.blocks.{i}.resid_mid").local_verdict == "ok"


def test_the_isolated_cut_follows_data_flow_not_tap_order(small, small_mel):
    """A key bias the softmax cancels, in a candidate that patches its value projections: the stage output read
    the key (through the attention weights), so the key's local difference is excused by that sound output.
    By tap order the key sits before the patched value and would have been cut, then called a divergence."""
    candidate = protocol_candidates.KeyBiasPatchingValues(small, CandidateConfig())
    result = compare_candidate(candidate, References(small), small_mel, Plan(_all(small.dims), isolate=True))
    key = "encoder.blocks.0.attn.key"
    assert result.row(key).local_verdict == "diverged" and key not in result.cut
    assert "encoder.blocks.0.attn.value" in result.cut
    assert result.first_divergence is None
    assert {d["stage"] for d in result.internal_differences} == {f"blocks.{i}.attn"
                                                                 for i in range(small.dims.n_audio_layer)}


def test_isolation_needs_two_patchable_taps(small, small_mel):
    candidate = protocol_candidates.black_box(small, CandidateConfig())
    with pytest.raises(CapabilityError, match="two or more patchable taps"):
        compare_candidate(candidate, References(small), small_mel, Plan(_all(small.dims), isolate=True))
    result = compare_candidate(candidate, References(small), small_mel, Plan(_all(small.dims)))
    assert [r.name for r in result.rows] == ["encoder.ln_post"] and result.first_divergence is None


def test_non_finite_and_wrong_shapes_are_findings(small, small_mel):
    class Broken(protocol_candidates.OpenAIWhisperCandidate):
        def run(self, mel, taps):
            out = super().run(mel, taps)
            out["encoder.blocks.1.resid_post"] = np.full_like(out["encoder.blocks.1.resid_post"], np.nan)
            pos = "encoder.positional_embedding"
            out[pos] = out[pos][:, :-3]  # a wrong frame count
            return out

    result = compare_candidate(Broken(small, CandidateConfig()), References(small), small_mel,
                               Plan(_all(small.dims)))
    assert result.row("encoder.positional_embedding").verdict == "shape_mismatch"
    assert result.row("encoder.blocks.1.resid_post").verdict == "nonfinite"
    assert result.first_divergence == "encoder.positional_embedding"


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """5 s of the shipped speech clip."""
    clip = audio.load_audio(audio.DEFAULT_CLIP)
    path = tmp_path_factory.mktemp("short") / "five_seconds.wav"
    soundfile.write(path, clip.samples[2 * audio.SAMPLE_RATE:7 * audio.SAMPLE_RATE], audio.SAMPLE_RATE)
    return path


@pytest.mark.parametrize("builder, caught", [("zero_padded_front_end", True), ("whisper_front_end", False)])
def test_front_end_is_compared_before_the_conv_stem(tiny, short_clip, builder, caught):
    candidate = getattr(protocol_candidates, builder)(tiny, CandidateConfig())
    clip = audio.load_audio(short_clip)
    mel = audio.mel_windows(clip, tiny.dims.n_mels)
    plan = Plan(("frontend.mel", "encoder.conv1", "encoder.ln_post"))
    result = compare_candidate(candidate, References(tiny), mel, plan, clip.samples)
    assert result.rows[0].name == "frontend.mel" and result.rows[0].stage == "front_end"
    if caught:
        assert result.first_divergence == "frontend.mel"
        assert result.row("frontend.mel").stats.noise_floor_ratio > 1e3
    else:
        assert result.first_divergence is None


def _compare(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "fidelity.compare", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900, env=env)


@pytest.mark.parametrize("spec, flags, message", [
    ("tests/no_such_port.py:build", [], "no file tests/no_such_port.py"),
    (f"{SPEC}:nothing_here", [], "has no callable nothing_here"),
    ("fidelity.nowhere:build", [], "cannot import module fidelity.nowhere"),
    (f"{SPEC}:raising_builder", [], "the builder raised RuntimeError: weights not found in my format"),
    (f"{SPEC}:black_box", ["--isolate"], "--isolate needs a candidate with two or more patchable taps"),
    (f"{SPEC}:no_encoder_output", ["--e2e"], "--e2e needs the encoder output"),
])
def test_bad_candidates_are_one_line_exit_2_nothing_written(tmp_path, request, spec, flags, message):
    root = request.config.rootpath
    out = tmp_path / "out"
    done = _compare("--candidate", spec, "--out", str(out), "-q", *flags, cwd=root)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()


def test_a_crash_inside_the_candidate_is_its_crash(tmp_path, request):
    out = tmp_path / "out"
    env = {**os.environ, "FIDELITY_CACHE": str(tmp_path / "cache")}
    done = _compare("--candidate", f"{SPEC}:crashing", "--out", str(out), "--layer", "ln_post", "-q",
                    cwd=request.config.rootpath, env=env)
    assert done.returncode == 3, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("compare: the candidate crashed: ZeroDivisionError: the port "
                                                 "divided by zero"), line
    logs = list((tmp_path / "cache" / "crashes").glob("compare-*.log"))
    assert len(logs) == 1 and "crashed in run" in logs[0].read_text() and "Traceback" in logs[0].read_text()
    assert not out.exists()


def test_a_user_candidate_through_the_command(tmp_path, request, short_clip):
    out = tmp_path / "out"
    done = _compare("--candidate", f"{SPEC}:zero_padded_front_end", "--audio", str(short_clip), "--isolate",
                    "--html", "--out", str(out), "-q", cwd=request.config.rootpath)
    assert done.returncode == 1, done.stderr
    doc = json.loads((out / "report.json").read_text())
    assert doc["first_divergence"] == "frontend.mel" and doc["candidate"]["name"] == "zero-padded-front-end"
    assert "first divergence by local error (isolated stages): frontend.mel" in done.stdout
    assert (out / "report.html").is_file()


def test_examine_from_python_runs_a_user_candidate_end_to_end():
    """The notebook entry point: a request in, an examination out, the candidate's encode inside whisper."""
    examination = examine(Request(candidate=f"{SPEC}:whole", taps="ln_post,2.resid_post", e2e=True))
    doc = examination.document
    assert doc["candidate"]["name"] == "openai-whisper-fp32" and examination.first_divergence is None
    assert not examination.failed
    assert [row["name"] for row in doc["taps"]] == ["encoder.blocks.2.resid_post", "encoder.ln_post"]
    assert doc["e2e"]["identical"] and doc["e2e"]["reference_text"]


def test_the_floor_is_the_candidates_floor_dtype(small, small_mel):
    class Int8(protocol_candidates.OpenAIWhisperCandidate):
        @property
        def floor_dtype(self) -> str:
            return "float32"

    candidate = Int8(small, CandidateConfig(dtype="int8"))
    result = compare_candidate(candidate, References(small, "float32"), small_mel, Plan(("encoder.ln_post",)))
    assert result.row("encoder.ln_post").budget > 0 and result.first_divergence is None
    with pytest.raises(FidelityError, match="the noise floor runs in bfloat16"):
        compare_candidate(candidate, References(small, "bfloat16"), small_mel, Plan(("encoder.ln_post",)))
