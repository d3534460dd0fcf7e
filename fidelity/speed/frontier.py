"""The fast-and-faithful frontier of a benchmark document: its points by batch, and who no one beats."""

from __future__ import annotations

import math


def frontier(doc: dict) -> dict[str, list[str]]:
    """Per batch, the configurations no other within budget beats on both speed and fidelity: within budget
    themselves, and faster than every one with a lower ln_post floor ratio (the fast-and-faithful frontier)."""
    out = {}
    for batch, points in sorted(by_batch(doc).items()):
        faithful = sorted((p for p in points if p["ratio"] is not None and not p["over_budget"]),
                          key=lambda p: (p["ms_per_window"], p["ratio"]))
        best, front = math.inf, []
        for point in faithful:
            if point["ratio"] < best:
                front.append(point["label"])
                best = point["ratio"]
        out[str(batch)] = front
    return out


def by_batch(doc: dict) -> dict[int, list[dict]]:
    """The benchmark's points, one per configuration and batch, grouped by batch."""
    groups: dict[int, list[dict]] = {}
    for row in doc["configurations"]:
        for speed in row["speed"]:
            groups.setdefault(speed["batch"], []).append(
                {"label": row["label"], "reference": row["reference"], "dtype": row["dtype"],
                 "ms_per_window": speed["ms_per_window"], "ratio": row["fidelity"]["ln_post_floor_ratio"],
                 "budget": row["fidelity"]["budget"], "over_budget": row["fidelity"]["over_budget"]})
    return groups
