"""The devices a comparison can run on, and what each engine calls them: one table for every runner."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FidelityError


@dataclass(frozen=True)
class Device:
    """A workbench device name and its name in each engine (MAX picks its own `Accelerator`)."""

    name: str
    torch: str
    ctranslate2: str


_DEVICES = {d.name: d for d in (Device("cpu", "cpu", "cpu"), Device("gpu", "cuda", "cuda"))}
DEVICES = tuple(_DEVICES)


def check_device(device: str) -> str:
    """`device` if it is one the workbench knows ("cpu" or "gpu"), else one line naming the choices."""
    if device not in _DEVICES:
        raise FidelityError(f"unknown device {device!r}: choose from {', '.join(DEVICES)}")
    return device


def ctranslate2_device(device: str) -> str:
    return _DEVICES[check_device(device)].ctranslate2


def torch_device(device: str):
    """The torch device of a workbench device name, refusing "gpu" where torch sees no CUDA device."""
    import torch  # only callers that run torch pay for the import

    if check_device(device) == "gpu" and not torch.cuda.is_available():
        raise FidelityError("--device gpu: torch sees no CUDA device")
    return torch.device(_DEVICES[device].torch)
