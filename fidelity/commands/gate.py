"""`python -m fidelity.gate`: fail CI when a report's per-tap statistics got worse than a baseline.

Compares cosine, rel_l2, std_ratio and bias of every tap in `--report` (the
candidate against float64, which does not depend on the machine's PyTorch kernels)
against `--baseline`, with tolerances kept as data (`fidelity.tolerances.GATE_TOLERANCES`),
and checks every tap's noise-floor ratio against its absolute budget: the float32
floor moves by up to 6x between CPUs (`python -m fidelity.floor_spread`), so a
floor ratio is never compared with one recorded on another machine. Prints each tap
that got worse and by how much. Exit 0 when nothing regressed, 1 on a regression,
2 on unusable input (a missing or corrupt file, another model, another tap list),
3 on a crash. `--update` rewrites the baseline from the report, deliberately. When the
baseline has one (an --e2e report), the teacher-forced KL ratio is checked against its
budget (`fidelity.tolerances.KL_RATIO_BUDGET`) in the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from ..errors import FidelityError
from ..outputs import write_text_atomic
from ..tolerances import GATE_TOLERANCES, KL_NEGLIGIBLE, badness, kl_ratio_budget
from .cli import EXIT_FAIL, EXIT_OK, Parser, add_logging_flags, run_main, setup_logging

log = logging.getLogger("fidelity.gate")

BASELINE_VERSION = 1


def read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FidelityError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FidelityError(f"cannot read {what} {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise FidelityError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("taps"), list):
        raise FidelityError(f"{what} {path} has no list of taps: is it a fidelity report?")
    return doc


def baseline_from_report(report: dict) -> dict:
    """The statistics of a report that the gate keeps."""
    return {
        "version": BASELINE_VERSION,
        "model": report.get("model"),
        "device": report.get("device"),
        "dtype": report.get("dtype"),
        "audio": _clip_name(report),
        "reference_platform": report.get("reference_platform"),
        "taps": [{"name": row["name"], **{key: row.get(key) for key in GATE_TOLERANCES}} for row in report["taps"]],
        **teacher_baseline(report),
    }


def check(baseline: dict, report: dict) -> list[dict]:
    """Every (tap, statistic) of `report` worse than `baseline` beyond tolerance."""
    if (baseline.get("model") or {}).get("dims") != (report.get("model") or {}).get("dims"):
        raise FidelityError(f"the report is of another model ({(report.get('model') or {}).get('name')}) "
                            f"than the baseline ({(baseline.get('model') or {}).get('name')})")
    if baseline.get("audio") and baseline["audio"] != _clip_name(report):
        raise FidelityError(f"the report is of another clip ({_clip_name(report)}) than the baseline "
                            f"({baseline['audio']})")
    for key in ("device", "dtype"):
        if baseline.get(key) != report.get(key):
            raise FidelityError(f"the report's {key} is {report.get(key)}, the baseline's {baseline.get(key)}")
    names = [row["name"] for row in baseline["taps"]]
    got = {row["name"]: row for row in report["taps"]}
    if names != list(got):
        missing, extra = sorted(set(names) - set(got)), sorted(set(got) - set(names))
        raise FidelityError("the report's taps differ from the baseline's"
                            + (f"; missing: {', '.join(missing[:4])}" if missing else "")
                            + (f"; extra: {', '.join(extra[:4])}" if extra else ""))
    regressions = []
    for base in baseline["taps"]:
        row = got[base["name"]]
        for statistic, tolerance in GATE_TOLERANCES.items():
            before, after = base.get(statistic), row.get(statistic)
            if before is None:
                continue
            limit = badness(statistic, before) * tolerance["factor"] + tolerance["slack"]
            now = math.inf if after is None else badness(statistic, after)
            if now > limit:
                regressions.append({"tap": base["name"], "statistic": statistic, "baseline": before,
                                    "report": after, "limit": limit, "worse_by": now - badness(statistic, before)})
        regressions += _over_budget(row)
    return regressions


def _over_budget(row: dict) -> list[dict]:
    """A tap whose noise-floor ratio on this machine is over its budget (or not finite)."""
    ratio, budget = row.get("noise_floor_ratio"), row.get("budget")
    if budget is None:
        return []
    if ratio is not None and math.isfinite(ratio) and ratio <= budget:
        return []
    return [{"tap": row["name"], "statistic": "noise_floor_ratio", "baseline": budget, "report": ratio,
             "limit": budget, "worse_by": math.inf if ratio is None else ratio - budget, "budget": True}]


def teacher_baseline(report: dict) -> dict:
    """The teacher-forced KL ratio a baseline keeps (nothing when the report has none)."""
    teacher = (report.get("e2e") or {}).get("teacher")
    return {"teacher": {"kl_ratio": teacher["kl_ratio"]}} if teacher else {}


def check_teacher(baseline: dict, report: dict) -> list[dict]:
    """A regression when the report's teacher-forced KL ratio grew past its budget (`KL_RATIO_BUDGET`; past
    the baseline's own ratio where that was over budget already), or is missing where the baseline has one.

    The budget, not a factor on the baseline: the ratio moves ~3x between CPUs with and without AVX-512.
    """
    before = (baseline.get("teacher") or {}).get("kl_ratio")
    if before is None:
        return []
    teacher = (report.get("e2e") or {}).get("teacher") or {}
    after = teacher.get("kl_ratio")
    limit = max(kl_ratio_budget(report["dtype"]), before)
    if after is not None and (after <= limit or (teacher.get("candidate") or {}).get("kl_mean", 1.0) <= KL_NEGLIGIBLE):
        return []
    return [{"tap": "e2e.teacher", "statistic": "kl_ratio", "baseline": before, "report": after, "limit": limit,
             "worse_by": math.inf if after is None else after - before}]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.gate", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="baseline JSON (reports/baseline.json)")
    parser.add_argument("--report", type=Path, required=True, help="a report.json from compare")
    parser.add_argument("--update", action="store_true", help="rewrite the baseline from the report")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("gate", lambda: _gate(args))


def _gate(args: argparse.Namespace) -> int:
    report = read_json(args.report, "report")
    if args.update:
        if report.get("fault"):
            raise FidelityError(f"refusing to make a baseline of a run with an injected fault ({report['fault']})")
        write_text_atomic(args.baseline, json.dumps(baseline_from_report(report), indent=1) + "\n")
        log.info("baseline %s rewritten from %s (%d taps)", args.baseline, args.report, len(report["taps"]))
        return EXIT_OK
    baseline = read_json(args.baseline, "baseline")
    regressions = check(baseline, report) + check_teacher(baseline, report)
    platforms = (baseline.get("reference_platform"), report.get("reference_platform"))
    if platforms[0] != platforms[1]:
        log.info("reference kernels differ from the baseline's (%s vs %s): noise-floor ratios are checked "
                 "against their budget only", _platform(platforms[0]), _platform(platforms[1]))
    for r in regressions:
        if r.get("budget"):
            sys.stdout.write(f"REGRESSION {r['tap']}: noise_floor_ratio {_fmt(r['report'])} is over its budget "
                             f"of {r['limit']:.3g}x the noise floor\n")
            continue
        sys.stdout.write(f"REGRESSION {r['tap']}: {r['statistic']} {_fmt(r['baseline'])} -> {_fmt(r['report'])} "
                         f"(limit {r['limit']:.3g} in badness, worse by {r['worse_by']:.3g})\n")
    taps = sorted({r["tap"] for r in regressions})
    sys.stdout.write(f"gate: {len(taps)} of {len(baseline['taps'])} taps regressed\n" if regressions
                     else f"gate: all {len(baseline['taps'])} taps within tolerance of the baseline\n")
    return EXIT_FAIL if regressions else EXIT_OK


def _clip_name(report: dict) -> str | None:
    source = (report.get("audio") or {}).get("source")
    return Path(source).name if source else None


def _platform(platform: dict | None) -> str:
    if not platform:
        return "unrecorded"
    return (f"{platform.get('cpu_capability')}, oneDNN {'on' if platform.get('mkldnn') else 'off'} "
            f"(max ISA {platform.get('onednn_max_isa')}), {platform.get('threads')} threads, "
            f"torch {platform.get('torch')}")


def _fmt(value) -> str:
    return "missing" if value is None else f"{value:.6g}"


if __name__ == "__main__":
    sys.exit(main())
