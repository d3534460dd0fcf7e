"""The devices a comparison can run on, validated in one place for every runner."""

from __future__ import annotations

from .errors import FidelityError

DEVICES = ("cpu", "gpu")


def check_device(device: str) -> str:
    """`device` if it is one the workbench knows ("cpu" or "gpu"), else one line naming the choices."""
    if device not in DEVICES:
        raise FidelityError(f"unknown device {device!r}: choose from {', '.join(DEVICES)}")
    return device
