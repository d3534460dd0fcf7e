"""Wall-time medians with the device synchronised around each run."""

from __future__ import annotations

import statistics
import time
from typing import Callable

from ..errors import FidelityError

Sync = Callable[[], None]


def check_counts(repeats: int, warmup: int) -> None:
    """Refuse timing counts that cannot give a median."""
    if repeats < 1 or warmup < 0:
        raise FidelityError("--repeats must be at least 1 and --warmup at least 0")


def median_ms(fn: Callable[[], object], sync: Sync, repeats: int, warmup: int) -> float:
    """Median wall time of `fn` in milliseconds over `repeats` runs, after `warmup` untimed runs."""
    return statistics.median(times_ms(fn, sync, repeats, warmup))


def fastest_ms(fn: Callable[[], object], sync: Sync, repeats: int, warmup: int) -> float:
    """The shortest wall time of `fn` in milliseconds over `repeats` runs, after `warmup` untimed runs."""
    return min(times_ms(fn, sync, repeats, warmup))


def times_ms(fn: Callable[[], object], sync: Sync, repeats: int, warmup: int) -> list[float]:
    """Wall times of `fn` in milliseconds, the device synchronised after each run."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def synchronizer(device: str) -> Sync:
    """Waits for all queued work on `device` of both MAX and torch (nothing to wait for on the CPU).

    Refuses in one line a GPU that MAX or torch does not see."""
    if device == "cpu":
        return lambda: None
    import torch

    from ..candidates.max_engine import session_for
    from ..devices import torch_device

    torch_device(device)
    _, accelerator = session_for(device)

    def sync() -> None:
        accelerator.synchronize()
        torch.cuda.synchronize()
    return sync
