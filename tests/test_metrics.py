"""Metrics against cases whose answers follow from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fidelity.metrics import compare, percentile_99
from fidelity.verdicts import DIVERGED, NONFINITE, OK, SHAPE, judge

rng = np.random.default_rng(0)
REF = rng.normal(size=(4, 50)).astype(np.float64)


def test_identical_is_perfect():
    s = compare(REF.copy(), REF)
    assert s.cosine == pytest.approx(1.0) and s.rel_l2 == 0 and s.max_abs == 0 and s.sqnr_db == math.inf


def test_scaled_candidate():
    s = compare(2 * REF, REF)
    assert s.std_ratio == pytest.approx(2.0)
    assert s.rel_l2 == pytest.approx(1.0)
    assert s.cosine == pytest.approx(1.0)
    assert s.sqnr_db == pytest.approx(0.0, abs=1e-9)


def test_shift_shows_as_bias_and_location_of_max():
    cand = REF + 0.5
    cand[2, 7] += 3.0
    s = compare(cand, REF)
    assert s.bias == pytest.approx(0.5 + 3.0 / REF.size)
    assert s.max_abs == pytest.approx(3.5) and s.max_abs_at == (2, 7)
    assert s.p99_abs == pytest.approx(0.5)


def test_orthogonal_and_opposite():
    a = np.array([1.0, 0.0])
    b = np.array([0.0, 1.0])
    assert compare(a, b).cosine == pytest.approx(0.0)
    assert compare(-a, a).cosine == pytest.approx(-1.0)


def test_noise_floor_ratio_is_rmse_over_floor_rmse():
    floor_ref = REF + 1e-3
    cand = REF + 5e-3
    s = compare(cand, REF, floor_ref)
    assert s.noise_floor == pytest.approx(1e-3)
    assert s.noise_floor_ratio == pytest.approx(5.0)
    assert judge(s, 10.0) == OK and judge(s, 4.0) == DIVERGED


def test_exact_floor_uses_a_relative_minimum():
    s = compare(REF + 1e-12, REF, REF)
    assert math.isfinite(s.noise_floor_ratio) and s.noise_floor == 0.0


def test_shape_mismatch_and_nan():
    assert judge(compare(REF[:, :-1], REF, REF), 10.0) == SHAPE
    bad = REF.copy()
    bad[0, 0] = np.nan
    assert judge(compare(bad, REF, REF), 10.0) == NONFINITE
    assert compare(bad, REF, REF).as_dict()["cosine"] is None


@pytest.mark.parametrize("n", [1, 2, 7, 4095, 4096, 5001, 1500 * 384])
@pytest.mark.parametrize("pattern", ["normal", "ties", "strided", "sparse"])
def test_percentile_99_is_numpys_value(n, pattern):
    """The 99th percentile found among the values over a sampled threshold is numpy's, to the last bit,
    including values in step with the sample and a threshold the sample sets too high (the fallback)."""
    rng = np.random.default_rng(n)
    values = np.abs(rng.standard_normal(n))
    if pattern == "ties":
        values = np.round(values * 4) / 4
    elif pattern == "strided":  # large values exactly where the sample looks
        values[::61] *= 1000
    elif pattern == "sparse":  # 0.5% ones among zeros: the sample's threshold is 0
        values = np.zeros(n)
        values[rng.integers(0, n, size=max(1, n // 200))] = 1.0
    assert percentile_99(values.copy()) == float(np.percentile(values, 99))
