"""The end-to-end section of `compare`'s terminal output, from report.json's `e2e` section."""

from __future__ import annotations

from .table import _num

DECIDED_BY = {"timestamp_rule": "the timestamp rule (total timestamp probability against the best text token)",
              "argmax": "the top-two gap"}


def format_e2e(e2e: dict) -> str:
    """The transcript comparison in a few lines."""
    lines = ["", "end to end (openai-whisper decoder, greedy, temperature 0):",
             f"  reference: {e2e['reference_text'] or '(no speech)'}",
             f"  candidate: {e2e['candidate_text'] or '(no speech)'}",
             f"  WER {e2e['wer']:.3f}, CER {e2e['cer']:.3f} between them"
             + (" (identical)" if e2e["identical"] else "")]
    if "truth" in e2e:
        lines.append(_truth_line(e2e["truth"]))
    parting = e2e.get("first_parting")
    if parting:
        lines.append(f"  first parting: window {parting['window']}, token {parting['token_index']} after "
                     f"{parting['context'][-60:]!r}: reference {parting['reference_token']!r}, "
                     f"candidate {parting['candidate_token']!r}")
        for side in ("reference", "candidate"):
            top = ", ".join(f"{t['token']!r} {t['logprob']:.2f}" for t in parting[f"{side}_top"])
            lines.append(f"    {side} top: {top}")
    if not e2e["speech_detected"]:
        lines.append("  no speech detected on either side")
    for row in e2e.get("sensitivity", {}).get("rows", []):
        lines.append(f"  noise {row['level']:g} x RMS at {e2e['sensitivity']['tap']}: WER {row['wer']:.3f}")
    if "defaults" in e2e:
        lines += format_defaults(e2e["defaults"])
    if "free" in e2e:
        lines += format_free(e2e["free"])
    if "teacher" in e2e:
        lines += format_teacher(e2e["teacher"])
    return "\n".join(lines)


def _truth_line(truth: dict) -> str:
    return (f"  against the ground truth: WER reference {truth['wer_reference']:.3f}, candidate "
            f"{truth['wer_candidate']:.3f}; CER reference {truth['cer_reference']:.3f}, "
            f"candidate {truth['cer_candidate']:.3f}")


def format_defaults(defaults: dict) -> list[str]:
    """Decoding as users run it: openai-whisper's default temperature fallback."""
    lines = ["", "openai-whisper's default decoding (temperature fallback, conditioned on previous text):"]
    if defaults["identical"]:
        lines.append(f"  both: {defaults['reference_text'] or '(no speech)'}")
    else:
        lines += [f"  reference: {defaults['reference_text'] or '(no speech)'}",
                  f"  candidate: {defaults['candidate_text'] or '(no speech)'}"]
    lines.append(f"  WER {defaults['wer']:.3f}, CER {defaults['cer']:.3f} between them"
                 + (" (identical)" if defaults["identical"] else "")
                 + f"; windows retried at a higher temperature: reference {defaults['fallbacks']['reference']}, "
                 f"candidate {defaults['fallbacks']['candidate']}")
    if "truth" in defaults:
        lines.append(_truth_line(defaults["truth"]))
    return lines


def format_free(free: dict) -> list[str]:
    """Every side's free transcript beside the floor's, loops flagged, and the floor-noise band."""
    lines = ["", f"free decoding beside the floor ({free['floor_encoder']}); WER against the float32 reference "
                 f"transcript, a loop is a window compressing over {free['loop_compression_ratio']:g}:"]
    if "floor_reason" in free:
        lines.append(f"  floor: not transcribed ({free['floor_reason']})")
    for decoding in ("greedy", "defaults"):
        sides = free[decoding]
        cells = [f"{side} {_free_side(sides[side], decoding)}" for side in ("candidate", "floor") if side in sides]
        if sides["reference"]["loops"]:
            cells.append(f"reference {_loops(sides['reference'])}")
        lines.append(f"  {decoding + ':':9s} " + "; ".join(cells))
    floor = free["greedy"].get("floor")
    if floor and floor["text"] != free["greedy"]["reference"]["text"]:
        lines.append(f"  floor, greedy: {floor['text'] or '(no speech)'}")
    band = free["band"]
    if band.get("computed"):
        lines.append(f"  {band_line(band)} ({band['seconds']:.0f} s)")
    else:
        lines.append(f"  floor-noise band not drawn: {band['reason']}")
    return lines


def band_line(band: dict) -> str:
    """'WER 0.23; floor-noise band 0.00-0.31 over 8 draws: within noise'."""
    verdict = "within noise" if band["within"] else "OUTSIDE it (a warning, not a verdict)"
    return (f"candidate greedy WER {band['candidate_wer']:.2f}; floor-noise band {band['low']:.2f}-"
            f"{band['high']:.2f} over {band['draws']} draws: {verdict}")


def _free_side(side: dict, decoding: str) -> str:
    fallbacks = f", {side['fallbacks']} fallback(s)" if decoding == "defaults" else ""
    return f"WER {side['wer']:.3f}{fallbacks}, {_loops(side)}"


def _loops(side: dict) -> str:
    if not side["loops"]:
        return "no loop"
    ratios = ", ".join(f"{side['compression_ratios'][i]:.1f}" for i in side["loops"])
    return f"LOOPS in window(s) {', '.join(map(str, side['loops']))} (compression ratio {ratios})"


def format_teacher(teacher: dict) -> list[str]:
    """The teacher-forced comparison: candidate and floor KL, the ratio and its verdict, the flips."""
    cand, floor = teacher["candidate"], teacher["floor"]
    lines = ["", f"teacher forced (openai-whisper's decoder over the reference transcript, {cand['tokens']} tokens "
             f"in {len(teacher['windows'])} window(s); KL against openai-whisper's float64 encoder; floor: "
             f"{teacher.get('floor_encoder', 'openai-whisper')}):",
             "  " + _side_line("candidate", cand)]
    if floor.get("computed", True):
        lines.append("  " + _side_line("floor", floor))
    else:
        lines.append(f"  floor: not computed ({floor['reason']})")
    if teacher["kl_ratio"] is None:
        lines.append(f"  KL ratio: not computed ({teacher.get('reason', '')})")
    else:
        p99 = f" (p99 {teacher['kl_ratio_p99']:.2f})" if teacher["kl_ratio_p99"] is not None else ""
        lines.append(f"  KL ratio {teacher['kl_ratio']:.2f}{p99}, budget {teacher['budget']:g}: "
                     f"{teacher['verdict'].upper() if teacher['verdict'] != 'ok' else 'ok'}")
    thresholds = teacher.get("near_tie_thresholds") or {}
    if any(v is not None for v in thresholds.values()):
        lines.append("  near-tie thresholds (the floor's largest movement x sqrt(budget)): "
                     + ", ".join(f"{kind} {_num(value, '.3g')}" for kind, value in thresholds.items()))
    for name, stats in (("candidate", cand), ("floor", floor)):
        flips = stats.get("flips", [])
        for flip in flips[:8]:
            lines.append("  " + _flip_line(name, flip))
        if len(flips) > 8:
            lines.append(f"  ... {len(flips) - 8} more {name} flips in report.json")
    return lines


def _flip_line(side: str, flip: dict) -> str:
    if flip["near_tie"] is None:
        judged = "no floor to judge it"
    elif flip.get("floor_flips_here"):
        judged = "the floor flips here too: within noise"
    else:
        judged = "a near tie, within noise" if flip["near_tie"] else "NOT a near tie"
    decided = DECIDED_BY.get(flip.get("decided_by"), "the top-two gap")
    return (f"{side} flip: window {flip['window']}, token {flip['token_index']} after {flip['context'][-40:]!r}: "
            f"reference {flip['reference_token']!r}, {side} {flip['side_token']!r}; decided by {decided}: margin "
            f"{_num(flip['margin'], '.3g')} nats, floor moved it {_num(flip['floor_movement'], '.3g')} "
            f"(threshold {_num(flip.get('near_tie_threshold'), '.3g')}): {judged}")


def _side_line(name: str, stats: dict) -> str:
    smallest = stats["smallest_flip_margin"]
    return (f"{name}: mean KL {stats['kl_mean']:.3g}, p99 {stats['kl_p99']:.3g}, top-1 agreement "
            f"{100 * stats['top1_agreement']:.2f}%, {stats['flip_count']} flip(s)"
            + (f", smallest flipped margin {smallest:.3g} nats" if smallest is not None else ""))
