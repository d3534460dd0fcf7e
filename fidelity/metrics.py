"""Divergence statistics of a candidate tensor against a reference, in float64.

Pure numpy. The reference is the float64 run of openai-whisper; the noise floor is
what the reference itself loses in the candidate's precision (its float32, or
bfloat16/float16, run against float64). The noise-floor ratio says how many times
that unavoidable error the candidate's error is (torch `_dynamo.utils.same` judges
the same way).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

_TINY = 2.0 ** -24  # relative floor when the reference run is exact


@dataclass(frozen=True)
class TapStats:
    """How far a candidate tensor is from the reference."""

    shape: tuple[int, ...]
    cosine: float
    rel_l2: float
    max_abs: float
    max_abs_at: tuple[int, ...]
    bias: float
    std_ratio: float
    sqnr_db: float
    p99_abs: float
    rmse: float
    noise_floor: float
    noise_floor_ratio: float
    finite: bool = True
    shape_ok: bool = True
    ran: bool = True

    def as_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["max_abs_at"] = list(self.max_abs_at)
        return {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in out.items()}


def compare(candidate: np.ndarray, reference: np.ndarray, floor_reference: np.ndarray | None = None) -> TapStats:
    """Statistics of `candidate` against `reference` (float64 truth).

    `floor_reference` is the reference computed in the candidate's precision; its
    error against `reference` is the noise floor.
    """
    if candidate.shape != reference.shape:
        return mismatch(candidate.shape, reference.shape)
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    finite = bool(np.all(np.isfinite(cand)))
    if not finite:
        nan = float("nan")
        return TapStats(tuple(ref.shape), nan, nan, nan, (), nan, nan, nan, nan, nan, nan, nan, finite=False)
    err = cand - ref
    abs_err = np.abs(err)
    ref_norm, cand_norm = float(np.linalg.norm(ref)), float(np.linalg.norm(cand))
    err_sq = float(np.dot(err.ravel(), err.ravel()))
    rmse = math.sqrt(err_sq / max(err.size, 1))
    rms_ref = ref_norm / math.sqrt(max(ref.size, 1))
    noise_floor = rmse_between(floor_reference, ref) if floor_reference is not None else float("nan")
    floor_eff = max(noise_floor, _TINY * rms_ref) if math.isfinite(noise_floor) else float("nan")
    ref_std, cand_std = float(ref.std()), float(cand.std())
    flat_at = int(np.argmax(abs_err)) if err.size else 0
    max_abs = float(abs_err.flat[flat_at]) if err.size else 0.0
    bias = float(err.mean()) if err.size else 0.0
    del err
    p99 = percentile_99(abs_err.ravel()) if abs_err.size else 0.0
    return TapStats(
        shape=tuple(ref.shape),
        cosine=_cosine(cand, ref, cand_norm, ref_norm),
        rel_l2=math.sqrt(err_sq) / ref_norm if ref_norm > 0 else (0.0 if err_sq == 0 else float("inf")),
        max_abs=max_abs,
        max_abs_at=tuple(int(i) for i in np.unravel_index(flat_at, ref.shape)) if abs_err.size else (),
        bias=bias,
        std_ratio=cand_std / ref_std if ref_std > 0 else (1.0 if cand_std == 0 else float("inf")),
        sqnr_db=10 * math.log10(ref_norm ** 2 / err_sq) if err_sq > 0 and ref_norm > 0 else float("inf"),
        p99_abs=p99,
        rmse=rmse,
        noise_floor=noise_floor,
        noise_floor_ratio=rmse / floor_eff if floor_eff and math.isfinite(floor_eff) else float("nan"),
    )


@dataclass(frozen=True)
class FloorRatio:
    """A candidate's error against a second floor (the same reference in another arithmetic)."""

    floor: float   # RMS error of that floor's reference against the float64 truth
    ratio: float   # the candidate's RMS error over it


def against_floor(stats: TapStats, floor_reference: np.ndarray, reference: np.ndarray) -> FloorRatio | None:
    """`stats`' error (of a candidate against `reference`) in units of another floor; None when it did not run."""
    if not (stats.ran and stats.shape_ok and stats.finite) or floor_reference.shape != reference.shape:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    rms_ref = float(np.linalg.norm(ref)) / math.sqrt(max(ref.size, 1))
    floor = rmse_between(floor_reference, ref)
    return FloorRatio(floor, stats.rmse / max(floor, _TINY * rms_ref) if max(floor, _TINY * rms_ref) else float("nan"))


def mismatch(candidate_shape: tuple[int, ...], reference_shape: tuple[int, ...]) -> TapStats:
    """Statistics for a tap whose candidate shape differs from the reference."""
    nan = float("nan")
    return TapStats(tuple(candidate_shape), nan, nan, nan, (), nan, nan, nan, nan, nan, nan, nan, shape_ok=False)


def not_run(reference_shape: tuple[int, ...]) -> TapStats:
    """Statistics for a tap the candidate never produced (its chain broke earlier)."""
    nan = float("nan")
    return TapStats(tuple(reference_shape), nan, nan, nan, (), nan, nan, nan, nan, nan, nan, nan, ran=False)


def percentile_99(values: np.ndarray) -> float:
    """`np.percentile(values, 99)` (linear interpolation), the same value, without ordering the whole array: the
    two order statistics it interpolates are found among the values above a threshold drawn from a sample (the
    whole array is ordered only when the sample misleads). `values` (1-d, finite) may be reordered."""
    n = values.size
    virtual = (n - 1) * 0.99  # numpy's linear method: virtual index, its neighbours and the weight between them
    lo = int(math.floor(virtual))
    hi = min(lo + 1, n - 1)
    if n < _SELECT_MIN:
        return float(np.percentile(values, 99, overwrite_input=True))
    sample = np.sort(values[::_SAMPLE_STRIDE])
    threshold = sample[int(0.97 * (sample.size - 1))]
    top = values[values > threshold]
    below = n - top.size  # values at or under the threshold: the `below` smallest
    if below > lo:
        return float(np.percentile(values, 99, overwrite_input=True))
    top.sort()
    a, b, gamma = float(top[lo - below]), float(top[hi - below]), virtual - lo
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma  # numpy's _lerp


_SELECT_MIN = 4096
_SAMPLE_STRIDE = 61  # prime: not in step with any tap's width


def rmse_between(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean square of `a - b`, in float64."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return math.sqrt(float(np.dot(diff.ravel(), diff.ravel())) / max(diff.size, 1))


def _cosine(a: np.ndarray, b: np.ndarray, a_norm: float, b_norm: float) -> float:
    if a_norm == 0 or b_norm == 0:
        return 1.0 if a_norm == b_norm else 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (a_norm * b_norm))
