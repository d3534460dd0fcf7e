"""The arithmetic openai-whisper's float32 floor runs in: IEEE float32, or TF32-class matmuls.

MAX runs float32 matmuls on a GPU at TF32-class precision (inputs cut to TF32's 10-bit
mantissa, float32 accumulation), while its layer norms, GELU and softmax stay IEEE
float32. A port judged against an IEEE float32 floor there reads hundreds of floors away
in every matmul span although nothing is wrong with it: it needs a floor in the
arithmetic it actually uses. So the float32 floor runs in one of two modes:

  IEEE   every op in IEEE float32 (TF32 off)
  TF32   matmuls (linear layers, attention scores and weighted sums) with TF32 operands; the
         convolutions too only when the candidate computes its convolutions as matmuls
         (`Candidate.convolutions_as_matmuls`); everything else IEEE float32

GPUs cut float32 to TF32 in two ways: to nearest (`cvt.rna.tf32.f32`, what torch's
cuBLAS TF32 does) or by dropping the low 13 bits (truncation, what a tensor core does
with raw float32 bits). MAX on an H200 truncates: its example-port query projection
read rel_l2 3.27e-4 and std ratio 0.999754 against float64 (2026-12-03), which is
openai-whisper's with truncated operands to three digits (3.26e-4, 0.999754), where
rounding to nearest gives 1.48e-4 and 0.9999997: truncation's error is about twice
as large and shrinks every product. The TF32 floor therefore truncates, on every device
(an emulation: each matmul's float32 operands cut to 10 mantissa bits before an IEEE
float32 matmul). It is the wider of the two: a port rounding to nearest reads about half
of it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

IEEE, TF32 = "ieee", "tf32"
ARITHMETICS = (IEEE, TF32)

_DROPPED = 23 - 10                       # float32 mantissa bits TF32 drops
_HALF = 1 << (_DROPPED - 1)
_KEEP = ~((1 << _DROPPED) - 1)

# The matmul family: (function, positions of the operands to round). Linear's bias is not rounded.
_MATMULS = {F.linear: (0, 1), torch.matmul: (0, 1), torch.Tensor.matmul: (0, 1), torch.Tensor.__matmul__: (0, 1),
            torch.Tensor.__rmatmul__: (0, 1), torch.mm: (0, 1), torch.bmm: (0, 1), torch.addmm: (1, 2),
            torch.baddbmm: (1, 2)}
_CONVOLUTIONS = {F.conv1d: (0, 1), F.conv2d: (0, 1)}


def round_to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 tensor rounded to TF32's 10-bit mantissa (to nearest, ties away from zero); others unchanged."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        return tensor
    bits = tensor.contiguous().view(torch.int32)
    rounded = ((bits + _HALF) & _KEEP).view(torch.float32)
    return torch.where(torch.isfinite(tensor), rounded, tensor)


def truncate_to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 tensor cut to TF32's 10-bit mantissa (the low 13 bits dropped: toward zero); others unchanged."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        return tensor
    cut = (tensor.contiguous().view(torch.int32) & _KEEP).view(torch.float32)
    return torch.where(torch.isfinite(tensor), cut, tensor)  # a NaN stays a NaN whatever its payload


class EmulatedTF32(TorchFunctionMode):
    """Cuts the float32 operands of every matmul (and, with `convolutions`, every convolution) to TF32:
    truncated (the floor's default, as MAX's GPU kernels do) or, with `nearest`, rounded to nearest."""

    def __init__(self, convolutions: bool = False, nearest: bool = False):
        super().__init__()
        self.rounded = {**_MATMULS, **(_CONVOLUTIONS if convolutions else {})}
        self.cut = round_to_tf32 if nearest else truncate_to_tf32

    def __torch_function__(self, func, types, args=(), kwargs=None):
        positions = self.rounded.get(func)
        if positions is not None:
            args = tuple(self.cut(a) if i in positions else a for i, a in enumerate(args))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def arithmetic(mode: str, device: torch.device, convolutions: bool = False):
    """Run the block in `mode` (IEEE or TF32) on `device`; `convolutions`: TF32 convolutions too.

    TF32 is emulated on every device (truncated operands, IEEE float32 products and sums), with
    torch's own TF32 switches off so that nothing is cut twice."""
    del device  # the same emulation on every device
    if mode not in ARITHMETICS:
        raise ValueError(mode)
    with tf32_switches(False, False):
        if mode == TF32:
            with EmulatedTF32(convolutions):
                yield
        else:
            yield


@contextlib.contextmanager
def tf32_switches(matmuls: bool, convolutions: bool):
    """torch's own TF32 switches (CUDA only) set for the block, restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmuls, convolutions
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def ieee_float32():
    """torch's TF32 switches off for the block: what runs torch on a GPU and must be IEEE float32 (the decoder of
    the end-to-end check) says so."""
    return tf32_switches(False, False)


def describe(mode: str, device: str, convolutions: bool) -> str:
    """How a floor in `mode` was computed, in words (for reports)."""
    del device
    if mode == IEEE:
        return "IEEE float32 (TF32 off)"
    what = "matmuls and convolutions" if convolutions else "matmuls (convolutions IEEE)"
    return f"TF32 {what}: operands truncated to 10 mantissa bits, as MAX's GPU kernels do"
