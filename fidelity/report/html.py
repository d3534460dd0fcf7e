"""report.html: one self-contained page (images embedded) that people read.

Header (model, audio, device, dtype, versions, date), the divergence curve across
taps (chained, and local when isolation ran), error histograms of the worst taps, a
time x channel heat map of one tap's error, the per-tap table with coloured
verdicts, and with --e2e the transcript diff and the teacher-forced per-token KL
along the transcript (candidate and floor, flips marked with their margins). A small script marks the body
with how many images rendered, for the browser test.
"""

from __future__ import annotations

import base64
import html
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.82em} td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left;font-family:monospace}
.ok{background:#e5f5e0}.diverged,.nonfinite,.shape_mismatch,.not_run,.inconsistent{background:#fcbba1}.bad_input{background:#fee6ce}
.meta td{text-align:left} img{max-width:100%;border:1px solid #eee}
del{background:#fcbba1;text-decoration:line-through} ins{background:#c7e9c0;text-decoration:none}
.transcript{font-family:Georgia,serif;line-height:1.5;max-width:60em}
"""

_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var rendered = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-rendered', rendered + '/' + images.length);
});
"""


def render_html(doc: dict, errors: dict[str, np.ndarray], heatmap_tap: str | None = None) -> str:
    """The whole page as a string."""
    rows = doc["taps"]
    heat = heatmap_tap or doc.get("first_divergence") or rows[-1]["name"]
    parts = [f"<h1>fidelity report: {_e(doc['model']['name'])} on {_e(doc['audio']['source'])}</h1>",
             _meta(doc), "<h2>Divergence across taps</h2>", _img(_curve(doc))]
    worst = sorted((r for r in rows if r["name"] in errors), key=lambda r: -(r["noise_floor_ratio"] or math.inf))[:3]
    if worst:
        parts += ["<h2>Error histograms of the worst taps</h2>", _img(_histograms(worst, errors))]
    if heat in errors:
        parts += [f"<h2>Where the error sits: {_e(heat)}</h2>", _img(_heatmap(heat, errors[heat]))]
    parts += ["<h2>Per-tap statistics</h2>", _table(doc)]
    if "e2e" in doc:
        from .transcripts_html import e2e_sections  # it draws with this module's helpers

        parts += e2e_sections(doc["e2e"])
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fidelity: {_e(doc['model']['name'])}"
            f"</title><style>{_STYLE}</style></head><body>{body}<script>{_CHECK_SCRIPT}</script></body></html>\n")


def _e(text) -> str:
    return html.escape(str(text))


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
             ("versions", versions), ("created", doc.get("created", "")), ("command", doc.get("command", ""))]
    return "<table class='meta'>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</table>"


def _img(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<p><img alt='plot' src='data:image/png;base64,{data}'></p>"


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


def _histograms(worst: list[dict], errors: dict[str, np.ndarray]):
    fig, axes = plt.subplots(1, len(worst), figsize=(4 * len(worst), 3), squeeze=False)
    for axis, row in zip(axes[0], worst):
        values = errors[row["name"]].ravel()
        values = values[values > 0]
        if values.size:
            bins = np.logspace(np.log10(values.min()), np.log10(values.max()) + 1e-9, 50)
            axis.hist(values, bins=bins, color="#3182bd")
            axis.set_xscale("log")
        axis.set_title(f"{row['name'].replace('encoder.', '')}\n{row['noise_floor_ratio'] or float('nan'):.2f}x floor",
                       fontsize=8)
        axis.set_xlabel("|candidate - float64|", fontsize=8)
    fig.tight_layout()
    return fig


def _heatmap(name: str, error: np.ndarray):
    if error.ndim == 3:  # attention weights: heads x queries x keys -> mean over heads
        error = error.mean(axis=0)
    elif name.startswith("encoder.conv"):  # channels x frames -> frames x channels
        error = error.T
    fig, axis = plt.subplots(figsize=(12, 3.5))
    image = axis.imshow(error.T, aspect="auto", origin="lower", cmap="magma",
                        norm=matplotlib.colors.LogNorm(vmin=max(float(error[error > 0].min(initial=1e-12)), 1e-12),
                                                       vmax=max(float(error.max()), 1e-11)))
    axis.set_xlabel("frame (time)")
    axis.set_ylabel("channel")
    fig.colorbar(image, ax=axis, label="|candidate - float64|")
    fig.tight_layout()
    return fig


def _table(doc: dict) -> str:
    columns = ["name", "shape", "cosine", "rel_l2", "max_abs", "bias", "std_ratio", "noise_floor_ratio", "verdict"]
    if doc.get("isolated"):
        columns += ["local_noise_floor_ratio", "local_verdict"]
    if any("consistency_verdict" in r for r in doc["taps"]):
        columns += ["consistency_ratio", "consistency_verdict"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in doc["taps"]:
        cells = []
        for column in columns:
            value = row.get(column)
            css = f" class='{_e(value)}'" if column.endswith("verdict") and value else ""
            cells.append(f"<td{css}>{_e(_fmt(column, value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "shape":
        return "x".join(map(str, value))
    if column == "cosine":
        return f"{value:.9f}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
