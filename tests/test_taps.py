"""The tap list follows the model's dimensions; selectors pick from it."""

from __future__ import annotations

import pytest

from fidelity.errors import FidelityError
from fidelity.taps import encoder_taps, select_taps, stages

from .conftest import SMALL_DIMS


def test_tap_list_is_derived_from_dims(tiny):
    for dims in (tiny.dims, SMALL_DIMS):
        taps = encoder_taps(dims)
        assert len(taps) == 5 + 13 * dims.n_audio_layer + 1
        assert taps[0].name == "encoder.conv1" and taps[-1].name == "encoder.ln_post"
        by_name = {t.name: t for t in taps}
        last = dims.n_audio_layer - 1
        assert by_name[f"encoder.blocks.{last}.mlp.0"].shape == (dims.n_audio_ctx, 4 * dims.n_audio_state)
        assert by_name["encoder.conv1"].shape == (dims.n_audio_state, 2 * dims.n_audio_ctx)
        assert by_name["encoder.blocks.0.attn.weights"].shape == (dims.n_audio_head, dims.n_audio_ctx,
                                                                 dims.n_audio_ctx)
        assert f"encoder.blocks.{dims.n_audio_layer}.attn_ln" not in by_name


def test_stages_chain_outputs_to_inputs():
    by_name = {stage.name: stage for stage in stages(SMALL_DIMS)}
    assert list(by_name) == ["conv_stem", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", "ln_post"]
    assert by_name["conv_stem"].input is None
    assert by_name["blocks.0.attn"].input == "encoder.positional_embedding"
    assert by_name["blocks.1.mlp"].input == by_name["blocks.1.attn"].output == "encoder.blocks.1.resid_mid"
    assert by_name["ln_post"].input == "encoder.blocks.1.resid_post"


@pytest.mark.parametrize("selector, expected", [
    ("encoder.ln_post", ["encoder.ln_post"]),
    ("1", [t.name for t in encoder_taps(SMALL_DIMS) if t.name.startswith("encoder.blocks.1.") and not t.optional]),
    ("encoder.blocks.*.attn.key", ["encoder.blocks.0.attn.key", "encoder.blocks.1.attn.key"]),
    ("encoder.blocks.0.attn.weights", ["encoder.blocks.0.attn.weights"]),
    ("encoder.ln_post,encoder.conv1", ["encoder.conv1", "encoder.ln_post"]),
])
def test_selectors(selector, expected):
    assert [t.name for t in select_taps(SMALL_DIMS, selector)] == expected


def test_all_leaves_out_attention_weights_unless_named():
    names = [t.name for t in select_taps(SMALL_DIMS, "all")]
    assert not any(n.endswith("attn.weights") for n in names)
    assert len(names) == 5 + 12 * SMALL_DIMS.n_audio_layer + 1
    assert any(t.name.endswith("weights") for t in select_taps(SMALL_DIMS, "encoder.blocks.*.attn.weights"))


def test_unknown_taps_are_refused_with_a_hint():
    with pytest.raises(FidelityError, match="did you mean encoder.ln_post"):
        select_taps(SMALL_DIMS, "encoder.ln_pots")
    with pytest.raises(FidelityError, match="block 7 does not exist"):
        select_taps(SMALL_DIMS, "7")
    with pytest.raises(FidelityError, match="unknown tap 'decoder.*'"):
        select_taps(SMALL_DIMS, "decoder.*")
