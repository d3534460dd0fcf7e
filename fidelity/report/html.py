"""report.html: one self-contained page (images embedded) that people read.

Header (model, audio, device, dtype, versions, date), the divergence curve across
taps (chained, and local when isolation ran), error histograms of the worst taps, a
time x channel heat map of one tap's error, the per-tap table with coloured
verdicts, and with --e2e the transcript diff and the teacher-forced per-token KL
along the transcript (candidate and floor, flips marked with their margins). A small script marks the body
with how many images rendered, for the browser test.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import LogNorm

from .error_maps import EDGES, ErrorMap
from .html_parts import escape as _e
from .html_parts import image as _img
from .html_parts import page, plt
from .html_parts import table as html_table
from .table import arithmetic_lines
from .transcripts_html import e2e_sections


def render_html(doc: dict, maps: dict[str, ErrorMap], heatmap_tap: str | None = None) -> str:
    """The whole page as a string; `maps` are the walk's error maps (`fidelity.report.error_maps`)."""
    rows = doc["taps"]
    heat = heatmap_tap or doc.get("first_divergence") or rows[-1]["name"]
    parts = [f"<h1>fidelity report: {_e(doc['model']['name'])} on {_e(doc['audio']['source'])}</h1>",
             _meta(doc), "<h2>Divergence across taps</h2>", _img(_curve(doc))]
    worst = sorted((r for r in rows if r["name"] in maps), key=lambda r: -(r["noise_floor_ratio"] or math.inf))[:3]
    if worst:
        parts += ["<h2>Error histograms of the worst taps</h2>", _img(_histograms(worst, maps))]
    if heat in maps:
        parts += [f"<h2>Where the error sits: {_e(heat)}</h2>", _img(_heatmap(maps[heat]))]
    parts += ["<h2>Per-tap statistics</h2>", _table(doc)]
    if "e2e" in doc:
        parts += e2e_sections(doc["e2e"])
    return page(f"fidelity: {doc['model']['name']}", "\n".join(parts))


def _meta(doc: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items())
    items = [("model", f"{doc['model']['name']} ({doc['model']['dims']['n_audio_layer']} layers, "
                       f"width {doc['model']['dims']['n_audio_state']})"),
             ("audio", f"{doc['audio']['source']} ({doc['audio']['seconds']} s, {doc['audio']['windows']} window(s))"),
             ("candidate", (doc.get("candidate") or {}).get("name", "max-builtin")),
             ("device / dtype", f"{doc['device']} / {doc['dtype']}"), ("fault", doc.get("fault") or "none"),
             ("first divergence", doc.get("first_divergence") or "none"),
             ("internal differences", "; ".join(f"{d['stage']}: {', '.join(d['taps'])} (output {d['output']} "
                                                f"within budget)" for d in doc.get("internal_differences") or [])
              or "none"),
             ("capture problems", ", ".join(doc.get("capture_problems") or []) or "none"),
             *((f"floor ({side})", how) for side, how in (doc.get("floors") or {}).items()),
             ("arithmetic", " ".join(arithmetic_lines(doc.get("arithmetic"))) or "not classified (one floor)"),
             ("versions", versions), ("created", doc.get("created", "")), ("command", doc.get("command", ""))]
    return "<table class='meta'>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</table>"


def _series(rows: list[dict], key: str, transform=lambda v: v) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else transform(r[key]) for r in rows], dtype=float)


def _curve(doc: dict):
    rows = doc["taps"]
    x = np.arange(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    top.semilogy(x, _series(rows, "rel_l2"), "o-", ms=3, label="rel L2 (chained)")
    top.semilogy(x, np.maximum(_series(rows, "cosine", lambda c: 1 - c), 1e-16), "s-", ms=3,
                 label="1 - cosine (chained)")
    bottom.semilogy(x, _series(rows, "noise_floor_ratio"), "o-", ms=3, label="noise-floor ratio (chained)")
    if doc.get("isolated"):
        top.semilogy(x, _series(rows, "local_rel_l2"), "^--", ms=3, label="rel L2 (local)")
        bottom.semilogy(x, _series(rows, "local_noise_floor_ratio"), "^--", ms=3, label="noise-floor ratio (local)")
    bottom.semilogy(x, _series(rows, "budget"), "k:", label="budget")
    for axis in (top, bottom):
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=8, loc="upper left")
    bottom.set_xticks(x)
    bottom.set_xticklabels([r["name"].replace("encoder.", "") for r in rows], rotation=90, fontsize=6)
    bottom.set_ylabel("x float noise floor")
    fig.tight_layout()
    return fig


def _histograms(worst: list[dict], maps: dict[str, ErrorMap]):
    fig, axes = plt.subplots(1, len(worst), figsize=(4 * len(worst), 3), squeeze=False)
    for axis, row in zip(axes[0], worst):
        counts = maps[row["name"]].counts
        used = np.flatnonzero(counts)
        if used.size:
            span = slice(used[0], used[-1] + 1)
            axis.stairs(counts[span], EDGES[used[0]:used[-1] + 2], fill=True, color="#3182bd")
            axis.set_xscale("log")
        axis.set_title(f"{row['name'].replace('encoder.', '')}\n{row['noise_floor_ratio'] or float('nan'):.2f}x floor",
                       fontsize=8)
        axis.set_xlabel("|candidate - float64|", fontsize=8)
    fig.tight_layout()
    return fig


def _heatmap(error_map: ErrorMap):
    error = error_map.heat
    fig, axis = plt.subplots(figsize=(12, 3.5))
    image = axis.imshow(error.T, aspect="auto", origin="lower", cmap="magma",
                        extent=(0, error_map.frames, 0, error_map.channels),
                        norm=LogNorm(vmin=max(float(error[error > 0].min(initial=1e-12)), 1e-12),
                                                       vmax=max(float(error.max()), 1e-11)))
    axis.set_xlabel("frame (time)")
    axis.set_ylabel("channel")
    if error.shape != (error_map.frames, error_map.channels):
        frames, channels = (-(-n // m) for n, m in zip((error_map.frames, error_map.channels), error.shape))
        axis.set_title(f"each cell: the largest error over {frames} frame(s) x {channels} channel(s)", fontsize=8)
    fig.colorbar(image, ax=axis, label="|candidate - float64|")
    fig.tight_layout()
    return fig


def _table(doc: dict) -> str:
    columns = ["name", "shape", "cosine", "rel_l2", "max_abs", "bias", "std_ratio", "noise_floor_ratio", "verdict"]
    if doc.get("isolated"):
        columns += ["local_noise_floor_ratio", "local_verdict"]
    if any("arithmetic" in r for r in doc["taps"]):
        columns += ["local_tf32_floor_ratio" if doc.get("isolated") else "tf32_floor_ratio", "arithmetic"]
    if any("consistency_verdict" in r for r in doc["taps"]):
        columns += ["consistency_ratio", "consistency_verdict"]
    return html_table(doc["taps"], columns, lambda column, value: value if column.endswith("verdict") else None)
