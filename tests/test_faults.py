"""Isolation names the stage that broke: the whole fault catalogue on tiny.en and real speech."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fidelity.candidates.base import CandidateConfig
from fidelity.compare import main as compare_main
from fidelity.errors import FidelityError
from fidelity.faults import CATALOGUE, FAULTS, faulty_candidate, get_fault
from fidelity.faults.proof import localize
from fidelity.flow.walk import Plan, compare_candidate
from fidelity.reference.references import References
from fidelity.taps import select_taps

SUBTLE = ("gelu_tanh", "ln_eps_1e-6")


@pytest.fixture(scope="module")
def tiny_references(tiny):
    return References(tiny, cache_bytes=2 << 30)


def test_clean_candidate_is_localized_to_nothing(tiny, speech_clip, tiny_references):
    result = localize(tiny, tiny_references, speech_clip, None)
    assert result["localized"] is None and result["correct"]


@pytest.mark.parametrize("fault", [f.name for f in CATALOGUE])
def test_every_fault_is_localized_to_its_stage(tiny, speech_clip, tiny_references, fault):
    result = localize(tiny, tiny_references, speech_clip, FAULTS[fault])
    assert result["localized"] == result["expected"], result
    if fault in SUBTLE:  # invisible to an end-of-encoder cosine check
        assert result["ln_post_cosine"] > 0.9999


def test_isolation_separates_local_from_inherited_error(small, small_mel):
    """q/k swapped in block 1 of 2: everything after it diverges, but only that stage is to blame."""
    fault = FAULTS["qk_weights_swapped"]
    assert fault.expected(small.dims) == "blocks.1.attn"
    candidate = faulty_candidate(small, fault, CandidateConfig())
    plan = Plan(tuple(t.name for t in select_taps(small.dims, "all")), isolate=True)
    result = compare_candidate(candidate, References(small), small_mel, plan)
    assert result.first_divergence == "encoder.blocks.1.attn.query"
    after = [r for r in result.rows if r.stage in ("blocks.1.mlp", "ln_post")]
    assert all(r.verdict == "diverged" for r in after)          # inherited
    assert all(r.local_verdict == "ok" for r in after)          # not their own doing
    before = [r for r in result.rows if r.stage in ("conv_stem", "blocks.0.attn", "blocks.0.mlp")]
    assert all(r.verdict == "ok" and r.local_verdict == "ok" for r in before)


def test_unknown_and_inapplicable_faults(tiny, capsys):
    assert compare_main(["--fault", "gremlins", "--layer", "encoder.ln_post"]) == 2
    err = capsys.readouterr().err
    assert "unknown fault 'gremlins'" in err and "missing_ln_post" in err
    one_head = dataclasses.replace(tiny.dims, n_audio_head=1)
    with pytest.raises(FidelityError, match="does not apply to this model: the model has one head"):
        get_fault("heads_split_wrong", one_head)


def test_compare_isolate_reports_local_and_inherited(tmp_path, capsys):
    out = tmp_path / "iso"
    code = compare_main(["--isolate", "--fault", "gelu_tanh", "--out", str(out), "-q"])
    assert code == 1
    doc = json.loads((out / "report.json").read_text())
    assert doc["isolated"] and doc["fault"] == "gelu_tanh"
    assert doc["first_divergence"] == "encoder.conv1.gelu"
    row = next(r for r in doc["taps"] if r["name"] == "encoder.blocks.1.attn_ln")
    assert {"local_noise_floor_ratio", "local_cosine", "local_verdict"} <= set(row)
    table = capsys.readouterr().out
    assert "local_floor_x" in table and "first divergence by local error" in table


def test_a_fault_that_cancels_at_the_stage_output_is_an_internal_difference(tiny, speech_clip, tiny_references):
    """A key bias shifts every logit of a query by the same amount; the softmax cancels it."""
    result = localize(tiny, tiny_references, speech_clip, FAULTS["key_bias"])
    assert result["first_tap"] is None and result["how"] == "internal difference"
    assert result["localized"] == result["expected"] in result["internal_differences"]
