"""The built-in candidate's weights: taken strictly from the checkpoint, copied to the graph's device."""

from __future__ import annotations

from typing import Callable

import numpy as np
from max.driver import Buffer

from ...errors import FidelityError
from ...precisions import host_array
from ..base import CandidateConfig
from ..max_engine import session_for

WeightTransform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def weight_registry(names: list[str], weights: dict[str, np.ndarray], prefix: str, config: CandidateConfig) -> dict:
    """The weights a graph declares, taken strictly from `weights` under `prefix`, copied to its device.

    MAX owns the copies, so no host array's lifetime matters once they have run."""
    registry, sources = {}, []
    device = session_for(config.device)[1]
    for name in names:
        key = prefix + name
        if key not in weights:
            raise FidelityError(f"the MAX graph needs weight {key}, which the checkpoint does not have")
        source = host_array(weights[key], config.dtype)
        sources.append(source)  # alive until the copies below have run (they may be queued)
        registry[name] = Buffer.from_dlpack(source).copy(device)
    device.synchronize()
    return registry
