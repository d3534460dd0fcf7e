"""The benchmark as text: one row per configuration and batch, speed beside fidelity, then the notes."""

from __future__ import annotations

from .table import _num, aligned


def verdict(fidelity: dict) -> str:
    """A configuration's fidelity in a word or three: ok, or OVER BUDGET and where."""
    if not fidelity["over_budget"]:
        return "ok, TF32 matmuls" if fidelity.get("arithmetic") == "tf32" else "ok"
    where = fidelity["first_divergence"] or f"transcripts ({fidelity.get('kl_verdict')})"
    return f"OVER BUDGET at {where}"


def batch_text(speed: dict) -> str:
    return f"{speed['batch']} fixed" if speed["fixed"] else str(speed["batch"])


def format_bench(doc: dict) -> str:
    """The speed and fidelity table (frontier members starred) and the notes under it."""
    e2e = any("kl_ratio" in row["fidelity"] for row in doc["configurations"])
    traced = any("traced_ms" in s for row in doc["configurations"] for s in row["speed"])
    header = ["configuration", "batch", "ms/window", "TFLOP/s", "% peak"] + (["traced ms"] if traced else []) + \
        ["ln_post/floor", "budget"] + (["KL/floor", "WER"] if e2e else []) + ["fidelity"]
    lines = [header]
    for row in doc["configurations"]:
        fid = row["fidelity"]
        for speed in row["speed"]:
            star = "*" if row["label"] in doc["frontier"].get(str(speed["batch"]), []) else " "
            share = speed["peak_share"]
            line = [f"{star}{row['label']}", batch_text(speed), _num(speed["ms_per_window"], ".4g"),
                    _num(speed["tflops"], ".3g"), _num(None if share is None else 100 * share, ".3g")]
            if traced:
                line.append(_num(speed.get("traced_ms"), ".4g"))
            line += [_num(fid["ln_post_floor_ratio"], ".3g"), _num(fid["budget"], "g")]
            if e2e:
                line += [_num(fid.get("kl_ratio"), ".3g"), _num(fid.get("wer"), ".3f")]
            lines.append(line + [verdict(fid)])
    return "\n".join([aligned(lines, {"configuration", "batch", "fidelity"}), *notes(doc)])


def notes(doc: dict) -> list[str]:
    """What the table's numbers are, the peaks, the frontier, what was skipped."""
    dims, flops = doc["dims"], doc["flops_per_window"]
    timing = doc["timing"]
    lines = ["* fast and faithful: no configuration within budget is both faster and closer to float64 "
             "(ln_post/floor: the encoder output's error in units of openai-whisper's own in that precision, and in "
             "float32 on a GPU in the arithmetic it runs: 'TF32 matmuls' against the TF32 floor)",
             f"{doc['model']}: {flops['total'] / 1e9:.1f} GFLOP per 30 s window ({dims['n_audio_layer']} layers, "
             f"width {dims['n_audio_state']}, {dims['n_audio_ctx']} frames); {timing['what']}, "
             f"{timing['repeats']} runs after {timing['warmup']} warm-up",
             f"device: {doc['machine']} ({doc['device']})"]
    for dtype, peak in doc["peaks"].items():
        lines.append(f"dense peak {dtype}: " + (f"{peak['tflops']:.4g} TFLOP/s ({peak['how']})" if peak
                                                 else "not measured (torch has no type for it)"))
    for row in doc["configurations"]:
        if row["fidelity"].get("probe_effect_material"):
            lines.append(f"{row['label']}: the timed graph (probes off) computes ln_post "
                         f"{row['fidelity']['probe_effect_floor_fraction']:.2g}x the floor's error away from the "
                         "examined one (every probe an output)")
    for skipped in doc["skipped"]:
        form = f" with {skipped['attention']} attention" if skipped["attention"] else ""
        lines.append(f"skipped {skipped['spec']} in {skipped['dtype']}{form}: {skipped['reason']}")
    if "stages" in doc:
        lines += ["", format_stages(doc["stages"])]
    return lines


def format_stages(rows: list[dict]) -> str:
    """Each stage alone, per encoder and batch (median ms)."""
    lines = [["what", "stage", "batch", "median ms"]]
    lines += [[r["what"], r["stage"], str(r["batch"]), _num(r["median_ms"], ".4g")] for r in rows]
    return aligned(lines, {"what", "stage"})
