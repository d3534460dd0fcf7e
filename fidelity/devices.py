"""The devices a comparison can run on, validated in one place for every runner."""

from __future__ import annotations

from .errors import FidelityError

DEVICES = ("cpu", "gpu")


def check_device(device: str) -> str:
    """`device` if it is one the workbench knows ("cpu" or "gpu"), else one line naming the choices."""
    if device not in DEVICES:
        raise FidelityError(f"unknown device {device!r}: choose from {', '.join(DEVICES)}")
    return device


def torch_device(device: str):
    """The torch device of a workbench device name, refusing "gpu" where torch sees no CUDA device."""
    import torch  # only callers that run torch pay for the import

    if check_device(device) == "gpu" and not torch.cuda.is_available():
        raise FidelityError("--device gpu: torch sees no CUDA device")
    return torch.device("cuda" if device == "gpu" else "cpu")
