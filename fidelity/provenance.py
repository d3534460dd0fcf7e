"""What a result depends on besides its inputs: engine versions and PyTorch's float32 kernel path."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform


def versions() -> dict[str, str]:
    """Versions of Python and of the engines every number depends on."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("max", "torch", "openai-whisper", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def reference_platform() -> dict:
    """Which float32 kernels this process's PyTorch runs: what the noise floor depends on."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
            "mkldnn": bool(torch.backends.mkldnn.enabled), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def machine(device: str) -> str:
    """The machine a timing ran on, in words."""
    if device == "gpu":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
