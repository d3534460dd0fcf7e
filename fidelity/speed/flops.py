"""The encoder's arithmetic per 30 s window, from the model's dimensions, and the device's dense peak.

FLOPs count a multiply-add as two, matmuls and convolutions only (layer norms, GELU,
softmax and additions are a fraction of a percent). With ctx = n_audio_ctx frames and
width = n_audio_state:
  conv stem    2 * (2 ctx) * n_mels * 3 * width  +  2 * ctx * width * 3 * width
  per block    projections 8 ctx width^2 (q, k, v, out), attention 4 ctx^2 width
               (scores and the weighted sum), MLP 16 ctx width^2
tiny.en: 36.9 GFLOP per window.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from whisper.model import ModelDimensions

from ..precisions import precision, torch_dtype
from .timing import Sync, fastest_ms

log = logging.getLogger(__name__)

# The peak matmul grows from PEAK_MIN_N until one product takes PEAK_TARGET_S or it reaches PEAK_MAX_N;
# its rate is the best of PEAK_REPEATS runs (a peak, and the least disturbed by other work on the machine).
PEAK_MIN_N, PEAK_MAX_N, PEAK_TARGET_S = 512, 8192, 0.1
PEAK_REPEATS, PEAK_WARMUP = 5, 2


def encoder_flops(dims: ModelDimensions) -> dict[str, int]:
    """FLOPs of one window through the encoder, by part, and their `total`."""
    ctx, width, layers = dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_layer
    parts = {"conv_stem": 2 * (2 * ctx) * dims.n_mels * 3 * width + 2 * ctx * width * 3 * width,
             "projections": layers * 8 * ctx * width ** 2,
             "attention": layers * 4 * ctx ** 2 * width,
             "mlp": layers * 16 * ctx * width ** 2}
    return {**parts, "total": sum(parts.values())}


@dataclass(frozen=True)
class Peak:
    """The dense matmul rate measured on the device in one precision."""

    dtype: str
    tflops: float
    how: str

    def as_dict(self) -> dict:
        return asdict(self)


def dense_peak(dtype: str, device: str, sync: Sync) -> Peak | None:
    """The rate of a large square torch matmul in `dtype` on `device` (best of PEAK_REPEATS runs);
    None for a precision torch has no type for (int8), whose peak is not measured."""
    import torch

    from ..devices import torch_device

    if precision(dtype).torch is None:
        return None
    where, kind = torch_device(device), torch_dtype(dtype)
    n = PEAK_MIN_N
    with torch.no_grad():
        while True:
            a = torch.randn(n, n, device=where).to(kind)
            b = torch.randn(n, n, device=where).to(kind)
            if fastest_ms(lambda: a @ b, sync, 3, 1) / 1e3 >= PEAK_TARGET_S or n >= PEAK_MAX_N:
                break
            n *= 2
        ms = fastest_ms(lambda: a @ b, sync, PEAK_REPEATS, PEAK_WARMUP)
    tf32 = " (TF32 matmuls on)" if device == "gpu" and dtype == "float32" and torch.backends.cuda.matmul.allow_tf32 \
        else ""
    peak = Peak(dtype, 2 * n ** 3 / (ms / 1e3) / 1e12, f"torch matmul {n}x{n}x{n} in {dtype} on {device}{tf32}")
    log.info("dense peak in %s: %.3g TFLOP/s (%s)", dtype, peak.tflops, peak.how)
    return peak
