"""Precision and device paths: what runs on a CPU is run; GPU-only paths refuse clearly or skip."""

from __future__ import annotations

import numpy as np
import pytest
from max.driver import accelerator_count

from fidelity.bench import main as bench_main
from fidelity.candidates.base import CandidateConfig
from fidelity.candidates.max_builtin import BuiltinCandidate, MaxOptions, Numerics
from fidelity.compare import main as compare_main
from fidelity.errors import FidelityError
from fidelity.flow.walk import Plan, compare_candidate
from fidelity.reference.references import References
from fidelity.sweep import main as sweep_main
from fidelity.taps import select_taps
from fidelity.verdicts import capture_problems

NO_GPU = accelerator_count() == 0


def _plan(dims, **kwargs):
    return Plan(tuple(t.name for t in select_taps(dims, "all")), **kwargs)


@pytest.mark.slow
def test_bfloat16_candidate_is_judged_against_the_bfloat16_floor(small, small_mel):
    candidate = BuiltinCandidate(small, CandidateConfig(dtype="bfloat16"))
    result = compare_candidate(candidate, References(small, "bfloat16"), small_mel, _plan(small.dims))
    post = result.row("encoder.ln_post").stats
    assert 1e-4 < post.rel_l2 < 5e-2            # bfloat16 rounding, not float32's
    assert post.noise_floor > 1e-4              # the floor is torch in bfloat16, not float32
    assert all(r.verdict == "ok" for r in result.rows)


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a GPU")
def test_gpu_requests_on_a_cpu_machine_fail_clearly(capsys, tmp_path):
    for main, args in ((compare_main, ["--device", "gpu", "--layer", "encoder.ln_post", "--out", str(tmp_path / "o")]),
                       (sweep_main, ["--device", "gpu", "--dtypes", "float32"]),
                       (bench_main, ["--device", "gpu", "--repeats", "1"])):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("no CUDA device" in err[0] or "no accelerator" in err[0]), err
    assert not (tmp_path / "o").exists()


def test_flash_attention_is_gpu_only(small):
    with pytest.raises(FidelityError, match="flash attention runs on the GPU only"):
        BuiltinCandidate(small, CandidateConfig(dtype="bfloat16"), MaxOptions(numerics=Numerics(attention="flash")))


def test_flash_attention_in_float16_is_refused_before_compiling(capsys, tmp_path):
    # MAX 26.7's kernel fails to compile in float16 (modular/modular#6887): say so at once.
    out = tmp_path / "run"
    assert compare_main(["--attention", "flash", "--dtype", "float16", "--layer", "encoder.ln_post",
                         "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bfloat16 only" in err[0] and "6887" in err[0], err
    assert not out.exists()


def test_flash_attention_cannot_give_attention_weights(capsys):
    assert compare_main(["--attention", "flash", "--dtype", "bfloat16",
                         "--layer", "encoder.blocks.0.attn.weights"]) == 2
    assert "never forms the attention weights" in capsys.readouterr().err


@pytest.mark.skipif(NO_GPU, reason="needs a GPU that MAX can use; CI has none")
def test_gpu_bfloat16_candidate(small, small_mel):
    candidate = BuiltinCandidate(small, CandidateConfig(device="gpu", dtype="bfloat16"))
    result = compare_candidate(candidate, References(small, "bfloat16", "gpu"), small_mel,
                               _plan(small.dims, consistency=True))
    assert all(r.consistency_verdict == "ok" for r in result.rows)


@pytest.mark.slow
def test_fused_capture_agrees_with_its_stages_on_cpu(small, small_mel):
    candidate = BuiltinCandidate(small, CandidateConfig(), MaxOptions(capture="fused"))
    assert not candidate.runs_by_stage
    result = compare_candidate(candidate, References(small), small_mel, _plan(small.dims, consistency=True))
    assert all(r.verdict == "ok" and r.consistency_verdict == "ok" for r in result.rows)


class _WholeRun(BuiltinCandidate):
    """The built-in candidate seen as a tracer that captures a whole run at once."""

    @property
    def runs_by_stage(self) -> bool:
        return False


class _CorruptCapture(_WholeRun):
    """A tracer that records one tap wrongly (as the bfloat16 whole-graph capture on an H100 did)."""

    def run(self, mel, names):
        taps = super().run(mel, names)
        taps["encoder.blocks.0.mlp.1"] = taps["encoder.blocks.0.mlp.1"] * 1.01
        return taps


def test_consistency_check_names_a_bad_capture(small, small_mel):
    result = compare_candidate(_CorruptCapture(small, CandidateConfig()), References(small), small_mel,
                               _plan(small.dims, consistency=True))
    assert capture_problems(result.rows) == ["encoder.blocks.0.mlp.1"]
    assert result.row("encoder.blocks.0.mlp.1").verdict == "diverged"   # numerically it looks wrong too
    assert result.row("encoder.blocks.0.mlp.2").verdict == "ok"         # but its consumer is fine


class _CorruptStageOutput(_WholeRun):
    """A tracer that records the attention sub-block's output (the MLP's input) with noise."""

    def run(self, mel, names):
        taps = super().run(mel, names)
        mid = taps["encoder.blocks.0.resid_mid"]
        noise = np.random.default_rng(0).standard_normal(mid.shape).astype(mid.dtype)
        taps["encoder.blocks.0.resid_mid"] = mid + 0.01 * mid.std() * noise
        return taps


def test_consistency_names_the_bad_input_not_its_consumers(small, small_mel):
    result = compare_candidate(_CorruptStageOutput(small, CandidateConfig()), References(small), small_mel,
                               _plan(small.dims, consistency=True))
    assert capture_problems(result.rows) == ["encoder.blocks.0.resid_mid"]
    consumers = [r for r in result.rows if r.stage == "blocks.0.mlp"]
    assert any(r.consistency_verdict == "bad_input" for r in consumers)  # recomputed from the noisy copy
    assert all(r.consistency_verdict in ("ok", "bad_input") for r in consumers)
