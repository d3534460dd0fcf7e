"""The aligned per-tap table printed by `compare`."""

from __future__ import annotations

import math


def _num(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(doc: dict) -> str:
    """Rows of report.json's `taps` as an aligned text table."""
    isolated = doc.get("isolated", False)
    header = ["tap", "shape", "cosine", "rel_l2", "max_abs", "bias", "std_ratio", "floor_x", "verdict"]
    consistency = any("consistency_verdict" in row for row in doc["taps"])
    if isolated:
        header += ["local_floor_x", "local_verdict"]
    if consistency:
        header += ["recompute_x", "capture"]
    lines = [header]
    for row in doc["taps"]:
        line = [
            row["name"],
            "x".join(str(n) for n in row["shape"]),
            _num(row["cosine"], ".9f"),
            _num(row["rel_l2"], ".2e"),
            _num(row["max_abs"], ".2e"),
            _num(row["bias"], "+.1e"),
            _num(row["std_ratio"], ".6f"),
            _num(row["noise_floor_ratio"], ".2f"),
            row["verdict"].upper() if row["verdict"] != "ok" else "ok",
        ]
        if isolated:
            line += [_num(row.get("local_noise_floor_ratio"), ".2f"), (row.get("local_verdict") or "-")]
        if consistency:
            line += [_num(row.get("consistency_ratio"), ".2f"), (row.get("consistency_verdict") or "-")]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {"tap", "shape", "verdict", "local_verdict", "capture"}
    out = []
    for n, line in enumerate(lines):
        cells = [cell.ljust(w) if header[i] in left else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_summary(doc: dict) -> str:
    """Two or three lines under the table: where it first diverged, ln_post figures."""
    lines = []
    first = doc.get("first_divergence")
    kind = "local error (isolated stages)" if doc.get("isolated") else "chained error"
    lines.append(f"first divergence by {kind}: {first or 'none'}")
    if doc.get("isolated") and doc.get("first_divergence_chained") != first:
        lines.append(f"first divergence by chained error: {doc.get('first_divergence_chained') or 'none'}")
    for found in doc.get("internal_differences", []):
        lines.append(f"warning: internal difference in {found['stage']}: its output {found['output']} is within "
                     f"budget, these taps inside it are not: {', '.join(found['taps'])} (another layout or a "
                     "consistent relabelling is not a divergence; check them if unexpected)")
    if doc.get("capture_problems"):
        lines.append(f"capture problems (a captured tap its own recomputation does not reproduce): "
                     f"{', '.join(doc['capture_problems'])}")
    post = next((r for r in doc["taps"] if r["name"] == "encoder.ln_post"), None)
    floor_dtype = (doc.get("candidate") or {}).get("floor_dtype") or doc.get("dtype", "")
    if post and post["cosine"] is not None:
        lines.append(f"encoder.ln_post: cosine {post['cosine']:.9f}, rel_l2 {post['rel_l2']:.2e}, "
                     f"{post['noise_floor_ratio']:.2f}x the {floor_dtype} noise floor")
    effect = (doc.get("candidate") or {}).get("probe_effect")
    if effect:
        lines.append(f"probe effect on {effect['tap']}: max |off - on| {effect['max_abs']:.2e}, rel_l2 "
                     f"{effect['rel_l2']:.2e} (its output with probes off against every probe an output)")
    return "\n".join(lines)
