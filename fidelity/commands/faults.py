"""`python -m fidelity.faults`: prove the workbench on the fault catalogue.

Runs the clean candidate and every catalogued fault with isolation against one set
of reference runs, and prints, per fault, the stage expected, the stage the
workbench named, whether that is right, and how far the fault moves ln_post.
Writes faults.json. Exit 0 when every fault (and the clean run) is named correctly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .. import audio, checkpoints
from ..errors import FidelityError
from ..faults import CATALOGUE, FAULTS, get_fault
from ..faults.proof import localize
from ..outputs import atomic_dir, ensure_replaceable
from ..provenance import versions
from ..reference.references import References
from .cli import EXIT_FAIL, EXIT_OK, Parser, add_logging_flags, run_main, setup_logging

log = logging.getLogger("fidelity.faults")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.faults", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL, help="checkpoint name or path")
    parser.add_argument("--audio", type=Path, default=audio.DEFAULT_CLIP, help="audio clip (first 30 s used)")
    parser.add_argument("--fault", default="all", help="comma list of fault names, or 'all' (default)")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument("--out", type=Path, default=Path("reports/faults"),
                        help="folder for faults.json (default reports/faults)")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("faults", lambda: _prove(args))


def _prove(args: argparse.Namespace) -> int:
    if args.list:
        for fault in CATALOGUE:
            sys.stdout.write(f"{fault.name:30s} {fault.description}\n")
        return EXIT_OK
    ensure_replaceable(args.out, "faults.json")  # before minutes of runs, not after
    checkpoint = checkpoints.load_checkpoint(args.model)
    dims = checkpoint.dims
    names = list(FAULTS) if args.fault == "all" else [n.strip() for n in args.fault.split(",") if n.strip()]
    chosen, skipped = [], []
    for name in names:
        if name in FAULTS and FAULTS[name].applies(dims):
            skipped.append({"fault": name, "skipped": FAULTS[name].applies(dims)})
            if args.fault != "all":
                get_fault(name, dims)  # raises with the reason
        else:
            chosen.append(get_fault(name, dims))
    loaded = audio.load_audio(args.audio)
    clip = audio.Clip(loaded.samples[:audio.N_SAMPLES], loaded.source)  # the first 30 s window
    references = References(checkpoint, cache_bytes=2 << 30)  # one set of reference runs for every fault
    started = time.perf_counter()
    results = [localize(checkpoint, references, clip, None)]
    for index, fault in enumerate(chosen, 1):
        log.info("fault %d/%d: %s", index, len(chosen), fault.name)
        try:
            results.append(localize(checkpoint, references, clip, fault))
        except FidelityError as exc:  # e.g. MAX cannot compile the faulty graph: record it, go on
            log.error("fault %s could not be run: %s", fault.name, exc)
            results.append({"fault": fault.name, "description": fault.description,
                            "expected": fault.expected(dims), "localized": None, "correct": False,
                            "error": str(exc), "ln_post_cosine": None, "ln_post_rel_l2": None})
    doc = {"model": checkpoint.name, "audio": clip.source, "versions": versions(),
           "seconds": round(time.perf_counter() - started, 1), "faults": results, "skipped": skipped}
    with atomic_dir(args.out, "faults.json") as folder:
        (folder / "faults.json").write_text(json.dumps(doc, indent=1) + "\n")
    sys.stdout.write(format_results(results) + "\n")
    wrong = [r["fault"] for r in results if not r["correct"]]
    log.info("%d of %d localized correctly in %.0f s; wrote %s", len(results) - len(wrong), len(results),
             doc["seconds"], args.out / "faults.json")
    return EXIT_FAIL if wrong else EXIT_OK


def format_results(results: list[dict]) -> str:
    header = f"{'fault':30s} {'expected':16s} {'named':16s} {'right':5s} {'ln_post cosine':>15s} {'rel_l2':>9s}"
    lines = [header, "-" * len(header)]
    for r in results:
        cosine = "-" if r["ln_post_cosine"] is None else f"{r['ln_post_cosine']:.9f}"
        rel = "-" if r["ln_post_rel_l2"] is None else f"{r['ln_post_rel_l2']:.2e}"
        named = str(r["localized"]) + (" (i)" if r.get("how") == "internal difference" else "")
        lines.append(f"{r['fault']:30s} {str(r['expected']):16s} {named:16s} "
                     f"{'yes' if r['correct'] else 'NO':5s} {cosine:>15s} {rel:>9s}")
    if any(r.get("how") == "internal difference" for r in results):
        lines.append("(i): an internal difference: the stage's output is within budget, an internal tap is not")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
