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
    arithmetic = any("arithmetic" in row for row in doc["taps"])
    if isolated:
        header += ["local_floor_x", "local_verdict"]
    if arithmetic:
        header += ["local_tf32_x" if isolated else "tf32_x", "arith"]
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
        if arithmetic:
            line += [_num(row.get("local_tf32_floor_ratio" if isolated else "tf32_floor_ratio"), ".2f"),
                     row.get("arithmetic") or "neither"]
        if consistency:
            line += [_num(row.get("consistency_ratio"), ".2f"), (row.get("consistency_verdict") or "-")]
        lines.append(line)
    return aligned(lines, {"tap", "shape", "verdict", "local_verdict", "arith", "capture"})


def aligned(lines: list[list[str]], left: set[str]) -> str:
    """Rows of cells (the first row the header) as aligned text; columns named in `left` flush left."""
    header = lines[0]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
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
    lines += arithmetic_lines(doc.get("arithmetic"))
    post = next((r for r in doc["taps"] if r["name"] == "encoder.ln_post"), None)
    floor_dtype = (doc.get("candidate") or {}).get("floor_dtype") or doc.get("dtype", "")
    if post and post["cosine"] is not None:
        tf32 = (f", {post['tf32_floor_ratio']:.2f}x the TF32-matmul floor"
                if post.get("tf32_floor_ratio") is not None else "")
        lines.append(f"encoder.ln_post: cosine {post['cosine']:.9f}, rel_l2 {post['rel_l2']:.2e}, "
                     f"{post['noise_floor_ratio']:.2f}x the {floor_dtype} noise floor{tf32}")
    effect = (doc.get("candidate") or {}).get("probe_effect")
    if effect:
        fraction = effect.get("floor_fraction")
        judged = ("" if fraction is None else
                  f": {fraction:.2g}x the floor's own error there"
                  + (" - MATERIAL: the taps and verdicts are of the probed graph, the transcripts of the unprobed one"
                     if effect.get("material") else ", immaterial"))
        lines.append(f"probe effect on {effect['tap']}: max |off - on| {effect['max_abs']:.2e}, rel_l2 "
                     f"{effect['rel_l2']:.2e} (probes off against every probe an output){judged}")
    timings = doc.get("timings") or {}
    if timings.get("compile_s", 0) >= 1 and timings.get("total_s"):
        compiled, total = timings["compile_s"], timings["total_s"]
        lines.append(f"compiling took {compiled:.0f} s of this {total:.0f} s run; with its graphs cached a rerun "
                     f"takes about {max(total - compiled, 0):.0f} s")
    return "\n".join(lines)


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


def arithmetic_lines(arithmetic: dict | None) -> list[str]:
    """Which float32 arithmetic each span runs in, when a TF32-matmul floor was measured."""
    if not arithmetic or not arithmetic.get("spans"):
        return []
    spans = arithmetic["spans"]
    parts = []
    if "tf32" in spans:
        s = spans["tf32"]
        parts.append(f"matmuls run as TF32 in {s['spans']} span(s): within {_times(s['worst_tf32_ratio'])} the "
                     f"TF32 floor, up to {_times(s['worst_ieee_ratio'])} the IEEE float32 one")
    if "ieee" in spans:
        ieee = spans["ieee"]
        parts.append(f"{ieee['spans']} span(s) IEEE float32 (within {_times(ieee['worst_ieee_ratio'])})")
    if "neither" in spans:
        parts.append(f"{spans['neither']['spans']} span(s) in neither arithmetic: "
                     f"{', '.join(spans['neither']['taps'][:4])}")
    rule = ("--strict-fp32: a TF32-class span is a divergence" if arithmetic.get("strict_fp32")
            else "each span judged against its own arithmetic's floor; --strict-fp32 demands IEEE")
    return [f"arithmetic: {'; '.join(parts)} ({rule})"]
