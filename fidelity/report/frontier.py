"""The benchmark page: ms per window against the encoder output's floor ratio, one point per configuration
and batch (a panel per batch), the fast-and-faithful frontier drawn, points over budget marked; then the
table (self-contained HTML)."""

from __future__ import annotations

from ..speed.frontier import by_batch
from .html_parts import escape, image, page, plt, table
from .speed_table import batch_text, verdict
from .table import _num

COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def render_bench_html(doc: dict) -> str:
    """The whole page as a string."""
    parts = [f"<h1>fidelity bench: {escape(doc['model'])}, speed beside fidelity</h1>", _meta(doc),
             "<h2>Milliseconds per window against the distance from float64</h2>",
             "<p class='note'>Each point is one configuration (candidate, precision, attention form) at one batch: "
             "its encoder output's error against openai-whisper in float64, in units of openai-whisper's own error "
             "in that precision (the noise floor), and its median time per 30 s window. Lower left is better. "
             "Squares are openai-whisper in torch; a red cross is over budget (a tap over its floor budget or, "
             "with --e2e, transcripts beyond noise); the line joins the fast-and-faithful frontier.</p>",
             image(_plot(doc)), "<h2>Speed and fidelity</h2>", _table(doc)]
    if doc["skipped"]:
        parts += ["<h2>Skipped</h2>", table(doc["skipped"])]
    if "stages" in doc:
        parts += ["<h2>Each stage alone (median ms)</h2>", table(doc["stages"], ["what", "stage", "batch",
                                                                                 "median_ms"])]
    return page(f"fidelity bench: {doc['model']}", "\n".join(parts))


def _meta(doc: dict) -> str:
    flops = doc["flops_per_window"]
    peaks = "; ".join(f"{dtype} {peak['tflops']:.4g} TFLOP/s ({peak['how']})" if peak else f"{dtype} not measured"
                      for dtype, peak in doc["peaks"].items())
    items = [("model", f"{doc['model']}: {flops['total'] / 1e9:.1f} GFLOP per window (conv stem "
                       f"{flops['conv_stem'] / 1e9:.2f}, projections {flops['projections'] / 1e9:.2f}, attention "
                       f"{flops['attention'] / 1e9:.2f}, MLP {flops['mlp'] / 1e9:.2f})"),
             ("audio", f"{doc['audio']['source']} ({doc['audio']['seconds']} s); timed: {doc['audio']['timed']}"),
             ("device", f"{doc['machine']} ({doc['device']})"), ("dense peak", peaks),
             ("timing", f"{doc['timing']['what']}; {doc['timing']['repeats']} runs after {doc['timing']['warmup']} "
                        "warm-up"),
             ("versions", ", ".join(f"{k} {v}" for k, v in doc["versions"].items())), ("date", doc["date"]),
             ("command", doc["command"])]
    return "<table class='meta'>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                                            for k, v in items) + "</table>"


def _plot(doc: dict):
    groups = by_batch(doc)
    figure, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5), squeeze=False)
    colours = {dtype: COLOURS[i % len(COLOURS)] for i, dtype in
               enumerate(dict.fromkeys(row["dtype"] for row in doc["configurations"]))}
    for ax, (batch, points) in zip(axes[0], sorted(groups.items())):
        finite = [p["ratio"] for p in points if p["ratio"] is not None and p["ratio"] > 0]
        edge = max(finite + [p["budget"] for p in points]) * 3  # where a point with no finite ratio is drawn
        for p in points:
            no_ratio = p["ratio"] is None or p["ratio"] <= 0
            x = edge if no_ratio else p["ratio"]
            marker = "s" if p["reference"] else "o"
            ax.scatter([x], [p["ms_per_window"]], marker=marker, s=60, color=colours[p["dtype"]], zorder=3,
                       label=p["dtype"])
            if p["over_budget"]:
                ax.scatter([x], [p["ms_per_window"]], marker="x", s=140, color="#d62728", zorder=4,
                           label="over budget")
            ax.annotate(p["label"] + (" (no finite ratio)" if no_ratio else ""),
                        (x, p["ms_per_window"]), textcoords="offset points", xytext=(6, 4), fontsize=7)
        front = sorted((p for p in points if p["label"] in doc["frontier"][str(batch)]), key=lambda p: p["ratio"])
        if front:
            xs, ys = [p["ratio"] for p in front], [p["ms_per_window"] for p in front]
            ax.plot(xs, ys, color="#444", lw=1, zorder=2)
            ax.scatter(xs, ys, s=180, facecolors="none", edgecolors="#444", zorder=2, label="fast and faithful")
        budget = min(p["budget"] for p in points)
        ax.axvline(budget, color="#d62728", ls="--", lw=0.8, label="floor budget")
        ax.axvspan(budget, edge * 2, color="#d62728", alpha=0.05)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min(finite + [budget]) / 3, edge * 2)
        ax.set_xlabel("encoder output error / noise floor (ln_post)")
        ax.set_ylabel("ms per 30 s window")
        ax.set_title(f"batch {batch}")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
        ax.grid(True, which="both", alpha=0.2)
    figure.tight_layout()
    return figure


def _table(doc: dict) -> str:
    e2e = any("kl_ratio" in row["fidelity"] for row in doc["configurations"])
    records = []
    for row in doc["configurations"]:
        fid = row["fidelity"]
        for speed in row["speed"]:
            share = speed["peak_share"]
            record = {"configuration": row["label"], "spec": row["spec"], "batch": batch_text(speed),
                      "ms/window": speed["ms_per_window"], "TFLOP/s": speed["tflops"],
                      "% peak": None if share is None else 100 * share, "traced ms": speed.get("traced_ms"),
                      "ln_post/floor": _num(fid["ln_post_floor_ratio"], ".3g"), "budget": fid["budget"],
                      "frontier": "yes" if row["label"] in doc["frontier"][str(speed["batch"])] else ""}
            if e2e:
                record.update({"KL/floor": _num(fid.get("kl_ratio"), ".3g"), "WER": fid.get("wer")})
            record["fidelity"] = verdict(fid)
            records.append(record)
    return table(records, css=lambda column, value: (("bad" if str(value).startswith("OVER") else "good")
                                                     if column == "fidelity" else None))
