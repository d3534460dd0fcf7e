"""The corpus sweep's aggregate report: summary.json, worst.csv (the 15 worst), errors.csv and report.html.

Per configuration: how many clips hold (no stage over budget in isolation, and the
same transcript where transcribed), where the others first diverge, how many have a
stage output over budget when chained (error inherited and amplified, not a stage's
own), the distribution
of each stage output's noise-floor ratio across clips, the encoder output's figures,
error rates, and the worst clips with their first divergence. The HTML page is
self-contained (plots embedded), like the per-run report.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ..report.html_parts import escape as _e
from ..report.html_parts import image as _img
from ..report.html_parts import number as _fmt
from ..report.html_parts import page, plt
from ..report.html_parts import table as _table

WORST = 15
QUANTILES = (0.5, 0.9, 1.0)


def summarize(rows: pd.DataFrame, configs: list[dict]) -> dict:
    """The summary document for `rows` (the sweep's rows, as loaded) and the sweep's configurations."""
    out = {"configurations": [], "worst": [], "errors": []}
    for config in configs:
        part = rows[rows["config_hash"] == config["key"]]
        out["configurations"].append({**config, **_config_summary(part)})
    good = rows[rows["status"] == "ok"]
    out["worst"] = _records(_worst(good).head(WORST))
    out["errors"] = _records(rows[rows["status"] != "ok"][["clip_id", "path", "candidate", "dtype", "device",
                                                          "error_phase", "error"]])
    return out


def _config_summary(part: pd.DataFrame) -> dict:
    good = part[part["status"] == "ok"]
    diverged = good["first_divergence"].notna()
    e2e = good[good["transcripts_identical"].notna()]
    holds = ~diverged & (good["transcripts_identical"].fillna(True).astype(bool))
    summary = {
        "clips": int(len(part)), "ok": int(len(good)), "errors": int((part["status"] != "ok").sum()),
        "holds": int(holds.sum()), "diverged": int(diverged.sum()),
        "over_budget_chained": int(good["first_divergence_chained"].notna().sum()),
        "first_divergence": {str(k): int(v) for k, v in good["first_divergence"].value_counts().items()},
        "ln_post_cosine": _quantiles(good["ln_post_cosine"], low=True),
        "ln_post_floor_ratio": _quantiles(good["ln_post_floor_ratio"]),
        "worst_floor_ratio": _quantiles(good["worst_floor_ratio"]),
        "stages": _per_tap(good),
        "median_total_s": _num(good["total_s"].median()),
    }
    if len(e2e):
        summary["e2e"] = {"clips": int(len(e2e)), "transcripts_identical": int(e2e["transcripts_identical"].sum()),
                          "wer_vs_reference": _quantiles(e2e["wer_vs_reference"]),
                          "wer_reference_vs_truth_mean": _num(e2e["wer_reference_vs_truth"].mean()),
                          "wer_candidate_vs_truth_mean": _num(e2e["wer_candidate_vs_truth"].mean()),
                          "cer_reference_vs_truth_mean": _num(e2e["cer_reference_vs_truth"].mean()),
                          "cer_candidate_vs_truth_mean": _num(e2e["cer_candidate_vs_truth"].mean())}
    return summary


def stage_frame(good: pd.DataFrame) -> pd.DataFrame:
    """One row per (clip row, stage output): the nested `stages` column exploded."""
    if good.empty:
        return pd.DataFrame(columns=["key", "tap", "floor_ratio", "local_floor_ratio"])
    exploded = good[["key", "stages"]].explode("stages").dropna(subset=["stages"])
    flat = pd.json_normalize(exploded["stages"].tolist())
    flat.insert(0, "key", exploded["key"].to_numpy())
    return flat


def _per_tap(good: pd.DataFrame) -> dict:
    flat = stage_frame(good)
    out = {}
    for tap, group in flat.groupby("tap", sort=False):
        out[tap] = {"floor_ratio": _quantiles(group["floor_ratio"]),
                    "local_floor_ratio": _quantiles(group["local_floor_ratio"])}
    return out


def _worst(good: pd.DataFrame) -> pd.DataFrame:
    if good.empty:
        return pd.DataFrame(columns=["clip_id"])
    score = good["worst_local_floor_ratio"].where(good["worst_local_floor_ratio"].notna(), good["worst_floor_ratio"])
    ranked = good.assign(_score=score.fillna(math.inf)).sort_values("_score", ascending=False)
    columns = ["clip_id", "path", "candidate", "dtype", "device", "first_divergence", "first_divergence_chained",
               "worst_tap", "worst_floor_ratio", "worst_local_tap", "worst_local_floor_ratio", "ln_post_cosine",
               "ln_post_rel_l2", "ln_post_floor_ratio", "transcripts_identical", "wer_vs_reference",
               "wer_candidate_vs_truth", "first_parting_token", "reference_text", "candidate_text"]
    return ranked[[c for c in columns if c in ranked]]


def _quantiles(series: pd.Series, low: bool = False) -> dict:
    values = pd.to_numeric(series, errors="coerce").dropna()
    if values.empty:
        return {}
    if low:  # cosine: the low end is the bad end
        return {"min": _num(values.min()), "p10": _num(values.quantile(0.1)), "median": _num(values.median())}
    return {"median": _num(values.median()), "p90": _num(values.quantile(0.9)), "max": _num(values.max())}


def _num(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def write_report(folder, rows: pd.DataFrame, configs: list[dict], context: dict) -> dict:
    """summary.json, worst.csv, errors.csv and report.html into `folder`."""
    summary = {**context, **summarize(rows, configs)}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    good = rows[rows["status"] == "ok"]
    _worst(good).head(WORST).to_csv(folder / "worst.csv", index=False)
    rows[rows["status"] != "ok"][["clip_id", "path", "candidate", "dtype", "device", "error_phase", "error"]] \
        .to_csv(folder / "errors.csv", index=False)
    (folder / "report.html").write_text(render_html(summary, rows))
    return summary


# --- HTML ---------------------------------------------------------------------------------------------------------

def render_html(summary: dict, rows: pd.DataFrame) -> str:
    good = rows[rows["status"] == "ok"]
    parts = [f"<h1>fidelity corpus sweep: {_e(summary.get('model', ''))} on {_e(summary.get('source', ''))}</h1>",
             _meta(summary), "<h2>Does the port hold?</h2>", _config_table(summary)]
    for config in summary["configurations"]:
        part = good[good["config_hash"] == config["key"]]
        if part.empty:
            continue
        parts.append(f"<h2>{_e(config['label'])}</h2>")
        parts.append(_img(_stage_plot(part, config["label"])))
        parts.append(_img(_distribution_plot(part)))
    worst = [{"clip": r["clip_id"], "configuration": f"{r['candidate']}/{r['dtype']}/{r['device']}",
              **{k: r.get(k) for k in _WORST_SHOWN}} for r in summary["worst"]]
    parts += ["<h2>Worst clips</h2>", "<p class='note'>ranked by their worst stage-output noise-floor ratio in "
              "isolation (chained where isolation did not run); every column in worst.csv</p>", _table(worst)]
    if summary["errors"]:
        parts += [f"<h2>Errors ({len(summary['errors'])})</h2>", _table(summary["errors"])]
    return page("fidelity corpus sweep", "\n".join(parts))


_WORST_SHOWN = ("first_divergence", "worst_local_tap", "worst_local_floor_ratio", "worst_tap", "worst_floor_ratio",
                "ln_post_cosine", "transcripts_identical", "wer_vs_reference", "first_parting_token")


def _meta(summary: dict) -> str:
    keys = ("model", "source", "clips", "rows", "computed", "reused", "workers", "created", "command")
    items = [(k, summary.get(k)) for k in keys if summary.get(k) is not None]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td style='text-align:left'>{_e(v)}</td></tr>"
                               for k, v in items) + "</table>"


def _config_table(summary: dict) -> str:
    head = ["configuration", "clips", "ok", "errors", "hold", "diverged", "over budget chained",
            "first divergence (count)",
            "ln_post floor x median", "worst floor x max", "transcripts identical"]
    body = []
    for c in summary["configurations"]:
        firsts = ", ".join(f"{k} ({v})" for k, v in c["first_divergence"].items()) or "none"
        e2e = c.get("e2e")
        cells = [c["label"], c["clips"], c["ok"], c["errors"], c["holds"], c["diverged"], c["over_budget_chained"],
                 firsts,
                 _fmt(c["ln_post_floor_ratio"].get("median")), _fmt(c["worst_floor_ratio"].get("max")),
                 f"{e2e['transcripts_identical']}/{e2e['clips']}" if e2e else "-"]
        css = "good" if c["holds"] == c["clips"] else "bad"
        body.append("<tr>" + "".join(f"<td class='{css}'>{_e(v)}</td>" if i == 4 else f"<td>{_e(v)}</td>"
                                     for i, v in enumerate(cells)) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"


def _stage_plot(part: pd.DataFrame, label: str):
    """Noise-floor ratio of each stage output across clips: boxes (chained, and local where isolated)."""
    flat = stage_frame(part)
    taps = list(dict.fromkeys(flat["tap"]))
    fig, axis = plt.subplots(figsize=(12, 4.5))
    x = np.arange(len(taps))
    for column, offset, colour, name in (("floor_ratio", -0.18, "#3182bd", "chained"),
                                         ("local_floor_ratio", 0.18, "#e6550d", "local (isolated)")):
        data = [pd.to_numeric(flat.loc[flat["tap"] == t, column], errors="coerce").dropna().clip(lower=1e-3)
                .to_numpy() for t in taps]
        if not any(len(d) for d in data):
            continue
        boxes = axis.boxplot([d if len(d) else [np.nan] for d in data], positions=x + offset, widths=0.3,
                             patch_artist=True, showfliers=True, flierprops={"markersize": 3})
        for patch in boxes["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.6)
        axis.plot([], [], color=colour, lw=8, alpha=0.6, label=name)
    budget = pd.to_numeric(flat["budget"], errors="coerce").dropna()
    if len(budget):
        axis.axhline(float(budget.max()), color="k", ls=":", label="budget")
    axis.set_yscale("log")
    axis.set_xticks(x)
    axis.set_xticklabels([t.replace("encoder.", "") for t in taps], rotation=60, ha="right", fontsize=7)
    axis.set_ylabel("x float noise floor")
    axis.set_title(f"{label}: stage outputs across {len(part)} clips", fontsize=10)
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _distribution_plot(part: pd.DataFrame):
    """ln_post floor ratio histogram, first divergence counts, and (if transcribed) WER against the truth."""
    has_wer = part["wer_candidate_vs_truth"].notna().any()
    fig, axes = plt.subplots(1, 3 if has_wer else 2, figsize=(13, 3.4))
    ratio = pd.to_numeric(part["ln_post_floor_ratio"], errors="coerce").dropna()
    if len(ratio):
        axes[0].hist(ratio, bins=30, color="#3182bd")
    axes[0].set_title("encoder.ln_post noise-floor ratio", fontsize=9)
    axes[0].set_xlabel("x float noise floor", fontsize=8)
    counts = part["first_divergence"].fillna("none").value_counts()
    axes[1].barh(counts.index.astype(str), counts.to_numpy(), color="#e6550d")
    axes[1].set_title("first divergence (isolated) by stage", fontsize=9)
    axes[1].tick_params(labelsize=7)
    if has_wer:
        ref = pd.to_numeric(part["wer_reference_vs_truth"], errors="coerce")
        cand = pd.to_numeric(part["wer_candidate_vs_truth"], errors="coerce")
        axes[2].scatter(ref, cand, s=10, alpha=0.7)
        top = float(np.nanmax([ref.max(), cand.max(), 0.1]))
        axes[2].plot([0, top], [0, top], "k:", lw=1)
        axes[2].set_xlabel("WER, openai-whisper encoder", fontsize=8)
        axes[2].set_ylabel("WER, candidate encoder", fontsize=8)
        axes[2].set_title("against the ground truth, per clip", fontsize=9)
    fig.tight_layout()
    return fig
