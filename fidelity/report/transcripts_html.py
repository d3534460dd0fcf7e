"""The end-to-end sections of report.html: the transcript diff, free decoding beside the floor with
its floor-noise band, and the teacher-forced per-token KL with every flip and what decided it."""

from __future__ import annotations

import difflib

import numpy as np

from .html_parts import escape as _e
from .html_parts import image as _img
from .html_parts import number, plt
from .transcripts_text import DECIDED_BY, band_line

_LABELS = 10  # flips labelled with their margin in the KL plot (the smallest margins); all are marked


def e2e_sections(e2e: dict) -> list[str]:
    """The page's parts for report.json's `e2e` section, headings included."""
    parts = ["<h2>Transcripts</h2>", _transcripts(e2e)]
    if "free" in e2e:
        parts += ["<h2>Free decoding beside the floor</h2>", _free(e2e["free"])]
    if "teacher" in e2e:
        parts += ["<h2>Teacher forced: next-token KL along the transcript</h2>", _teacher(e2e["teacher"])]
    return parts


def _transcripts(e2e: dict) -> str:
    ref, cand = e2e["reference_text"].split(), e2e["candidate_text"].split()
    pieces = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=ref, b=cand, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.append(_e(" ".join(ref[a0:a1])))
        if op in ("delete", "replace"):
            pieces.append(f"<del>{_e(' '.join(ref[a0:a1]))}</del>")
        if op in ("insert", "replace"):
            pieces.append(f"<ins>{_e(' '.join(cand[b0:b1]))}</ins>")
    lines = [f"<p>WER {e2e['wer']:.3f}, CER {e2e['cer']:.3f} between reference and candidate"
             + (" (identical)" if e2e["identical"] else "") + "</p>",
             f"<p class='transcript'>{' '.join(pieces) or '(no speech)'}</p>"]
    parting = e2e.get("first_parting")
    if parting:
        lines.append(f"<p>First parting: window {parting['window']}, token {parting['token_index']}: reference "
                     f"<b>{_e(parting['reference_token'])}</b>, candidate <b>{_e(parting['candidate_token'])}</b></p>")
    return "\n".join(lines)


def _free(free: dict) -> str:
    lines = [f"<p>Floor: {_e(free['floor_encoder'])}. WER against the float32 reference transcript; a window "
             f"loops when its text compresses over {free['loop_compression_ratio']:g} (openai-whisper's rule)."
             + (f" Floor not transcribed: {_e(free['floor_reason'])}." if "floor_reason" in free else "") + "</p>"]
    head = "".join(f"<th>{c}</th>" for c in ("decoding", "side", "WER", "CER", "fallbacks",
                                             "compression ratio per window", "loops", "text"))
    body = []
    for decoding in ("greedy", "defaults"):
        for side, row in free[decoding].items():
            ratios = ", ".join(number(r) for r in row["compression_ratios"])
            loops = ", ".join(map(str, row["loops"])) or "none"
            body.append(f"<tr><td>{decoding}</td><td>{_e(side)}</td><td>{row['wer']:.3f}</td>"
                        f"<td>{row['cer']:.3f}</td><td>{row['fallbacks']}</td><td>{_e(ratios)}</td>"
                        f"<td class='{'diverged' if row['loops'] else 'ok'}'>{_e(loops)}</td>"
                        f"<td style='text-align:left'>{_e(row['text'][:300])}</td></tr>")
    lines.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
    band = free["band"]
    if band.get("computed"):
        lines.append(f"<p class='{'ok' if band['within'] else 'diverged'}'>{_e(band_line(band))}. Draws: the "
                     f"float64 encoder's output plus Gaussian noise of the floor's own RMS error per window "
                     f"(seed {band['seed']}); their WERs: {_e(', '.join(f'{w:.3f}' for w in band['wers']))}; "
                     f"the floor's own greedy WER {band['floor_wer']:.3f}.</p>")
    else:
        lines.append(f"<p>Floor-noise band not drawn: {_e(band['reason'])}.</p>")
    return "\n".join(lines)


def _teacher(teacher: dict) -> str:
    cand, floor = teacher["candidate"], teacher["floor"]
    ratio = "not computed" if teacher["kl_ratio"] is None else f"{teacher['kl_ratio']:.3g}"
    thresholds = ", ".join(f"{kind} {number(value)}" for kind, value in
                           (teacher.get("near_tie_thresholds") or {}).items())
    lines = [f"<p>{cand['tokens']} tokens: mean KL candidate {cand['kl_mean']:.3g}"
             + (f", floor {floor['kl_mean']:.3g}" if floor.get("computed", True) else
                f", floor not computed ({_e(floor['reason'])})")
             + f"; KL ratio {ratio} (budget {teacher['budget']:g}): <b>{_e(teacher['verdict'])}</b>; "
             f"top-1 agreement {100 * cand['top1_agreement']:.2f}%, {cand['flip_count']} flip(s). "
             f"Floor: {_e(teacher.get('floor_encoder', ''))}. Near-tie thresholds: {_e(thresholds)}.</p>",
             _img(_kl_curve(teacher))]
    for name, stats in (("candidate", cand), ("floor", floor)):
        if stats.get("flips"):
            lines += [f"<p>{name.capitalize()} flips, each judged on the decision that parted:</p>",
                      _flip_table(stats["flips"])]
    return "\n".join(lines)


def _flip_table(flips: list[dict]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("window", "token", "context", "reference", "side", "decided by",
                                             "margin", "floor moved it", "near-tie threshold", "floor flips here",
                                             "within noise"))
    body = "".join(
        f"<tr><td>{f['window']}</td><td>{f['token_index']}</td><td>{_e(f['context'][-50:])}</td>"
        f"<td>{_e(f['reference_token'])}</td><td>{_e(f['side_token'])}</td>"
        f"<td title='{_e(DECIDED_BY.get(f.get('decided_by'), ''))}'>{_e(f.get('decided_by', 'argmax'))}</td>"
        f"<td>{number(f['margin'])}</td><td>{number(f['floor_movement'])}</td>"
        f"<td>{number(f.get('near_tie_threshold'))}</td><td>{_e(f.get('floor_flips_here'))}</td>"
        f"<td class='{'ok' if f['near_tie'] else 'diverged'}'>{_e(f['near_tie'])}</td></tr>"
        for f in flips[:200])
    return f"<table><tr>{head}</tr>{body}</table>"


def _kl_curve(teacher: dict):
    fig, axis = plt.subplots(figsize=(12, 3.8))
    offset, starts = 0, []
    flips = teacher["candidate"]["flips"]
    labelled = {(f["window"], f["token_index"]) for f in sorted(flips, key=lambda f: f["margin"] or 0)[:_LABELS]}
    for row in teacher["windows"]:
        n = len(row["tokens"])
        x = np.arange(offset, offset + n)
        for side, style in (("candidate", dict(color="#3182bd", lw=1)),
                            ("floor", dict(color="#636363", lw=0.8, ls="--"))):
            if side in row:  # KL 0 (or a rounding-negative KL) has no place on a log axis: left out
                kl = np.array([np.nan if v is None or v <= 0 else v for v in row[side]["kl"]], dtype=float)
                axis.semilogy(x, kl, label=side if not starts else None, **style)
        for flip in row["candidate"]["flips"]:
            j = offset + flip["token_index"]
            value = row["candidate"]["kl"][flip["token_index"]] or 0.0
            y = value if value > 0 else np.nan
            marker = "s" if flip.get("decided_by") == "timestamp_rule" else "v"
            axis.plot([j], [y], marker, color="#de2d26" if not flip["near_tie"] else "#fd8d3c", ms=7)
            if (flip["window"], flip["token_index"]) in labelled and value > 0:
                label = (f"{flip['reference_token']!r}->{flip['side_token']!r}\n"
                         f"{flip.get('decided_by', 'argmax')} margin {number(flip['margin'])}")
                axis.annotate(label, (j, y), fontsize=6, xytext=(2, 6), textcoords="offset points")
        starts.append(offset)
        offset += n
    for start in starts[1:]:
        axis.axvline(start - 0.5, color="k", lw=0.5, ls=":")
    axis.set_xlabel("token along the reference transcript (dotted: window boundaries; flips: v top-two gap, "
                    "square timestamp rule; red outside noise)")
    axis.set_ylabel("KL(reference || side), nats")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
