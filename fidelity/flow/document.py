"""An examination as the report.json document (what every writer and the CI gate read)."""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING

from ..verdicts import arithmetic_mode, arithmetic_summary

if TYPE_CHECKING:
    from .examination import Examination

REPORT_VERSION = 1


def report_document(examination: Examination) -> dict:
    """The report.json document of a finished examination."""
    e, setting, request = examination, examination.setting, examination.request
    candidate = dict(setting.candidate)
    if e.probe_effect is not None:
        candidate["probe_effect"] = probe_effect_entry(e.probe_effect)
    doc = {
        "version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": setting.model, "dims": setting.dims},
        "audio": setting.audio,
        "device": request.device,
        "dtype": candidate.get("dtype", request.dtype),
        "layer": request.taps,
        "tf32": request.tf32_reference,
        "fault": setting.fault,
        "capture": request.capture,
        "attention": request.attention,
        "command": request.command,
        "candidate": candidate,
        "versions": setting.versions,
        "reference_platform": setting.reference_platform,
        "isolated": e.comparison.isolated,
        "first_divergence": e.comparison.first_divergence,
        "first_divergence_chained": e.comparison.first_divergence_chained,
        "internal_differences": e.comparison.internal_differences,
        "capture_problems": e.comparison.capture_problems,
        "windows": list(e.comparison.windows),
        "timings": {k: round(v, 3) for k, v in e.timings.items()},
        "floors": setting.floors,
        "taps": [row.as_dict() for row in e.rows],
    }
    spans = arithmetic_summary(list(e.rows), e.comparison.isolated)
    if spans is not None:
        doc["arithmetic"] = {"spans": spans, "strict_fp32": request.strict_fp32,
                             "mode": arithmetic_mode(e.rows, request.strict_fp32)}
    if e.e2e is not None:
        doc["e2e"] = e.e2e.as_dict()
    return doc


def probe_effect_entry(effect) -> dict:
    fraction = effect.floor_fraction
    return {"tap": effect.tap, "max_abs": effect.max_abs, "rel_l2": effect.rel_l2, "rmse": effect.rmse,
            "floor_rmse": effect.floor_rmse, "floor_fraction": fraction if math.isfinite(fraction) else None,
            "material": effect.material,
            "verdict_about": "the probed graph (every probe an output); transcripts use the unprobed graph"}
