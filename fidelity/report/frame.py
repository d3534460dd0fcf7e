"""A report as a pandas DataFrame, for notebooks: one row per tap, indexed by name."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def report_frame(report: str | Path | dict) -> pd.DataFrame:
    """Per-tap statistics of a report.json (path or parsed dict) as a DataFrame."""
    doc = report if isinstance(report, dict) else json.loads(Path(report).read_text())
    frame = pd.DataFrame(doc["taps"]).set_index("name")
    frame["shape"] = frame["shape"].map(tuple)
    frame.attrs = {key: doc.get(key) for key in ("model", "device", "dtype", "fault", "first_divergence")}
    return frame
