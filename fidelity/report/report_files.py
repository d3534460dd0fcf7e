"""report.json and report.csv: the examination's document, as JSON and as one CSV row per tap."""

from __future__ import annotations

import csv
import json
from pathlib import Path

MARKER = "report.json"
CSV_COLUMNS = ["name", "stage", "shape", "cosine", "rel_l2", "max_abs", "max_abs_at", "bias", "std_ratio",
               "sqnr_db", "p99_abs", "rmse", "noise_floor", "noise_floor_ratio", "budget", "verdict", "window"]


def write_report(doc: dict, folder: Path) -> None:
    """report.json and report.csv into `folder`."""
    (folder / "report.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    with open(folder / "report.csv", "w", newline="") as handle:
        extra = sorted({k for row in doc["taps"] for k in row} - set(CSV_COLUMNS))
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS + extra)
        writer.writeheader()
        for row in doc["taps"]:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()})
