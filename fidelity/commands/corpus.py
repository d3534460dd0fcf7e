"""`python -m fidelity.corpus`: does the port hold on my data? The comparison over a corpus, on Ray.

For every clip of a folder (recursive; wav/flac/ogg/mp3, a .txt beside a clip is its
ground truth) or manifest (CSV or JSONL: path, optional text, optional id) and every
configuration (candidate x dtype, on one device), one row: cosine, relative L2 and
noise-floor ratio at each stage output (each block's resid_mid and resid_post, and
ln_post), the first divergence with stages isolated, with --e2e the transcripts of
both encoders compared (WER/CER against each other and the ground truth), timings,
and the error if the clip failed. Rows go to OUT/rows/*.parquet as they finish; a
second run over the same OUT skips every (clip content, configuration) already
there, so an interrupted sweep resumes. The aggregate report goes to OUT/report/
(summary.json, worst.csv, errors.csv, report.html).

Ray starts inside this process unless --address names a running cluster.
Exit status: 0 when every clip holds, 1 when one diverged, changed its transcript
or failed (see its error row), 2 on bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import sys
import time
from pathlib import Path

from .. import checkpoints
from ..candidates import specs
from ..corpus import rows as rowstore
from ..corpus.configs import Configuration, build_configurations
from ..corpus.inputs import ClipEntry, read_inputs
from ..corpus.one_clip import ClipInput
from ..errors import FidelityError
from ..outputs import atomic_dir, ensure_replaceable, write_text_atomic
from .cli import EXIT_FAIL, EXIT_OK, Parser, add_logging_flags, run_main, setup_logging

log = logging.getLogger("fidelity.corpus")

MARKER = "corpus.json"
REFERENCES_DIR = "references"  # reference runs kept by content, beside the rows (fidelity.reference.store)
DEFAULT_OUT = Path("reports") / "corpus"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.corpus", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path, metavar="SOURCE",
                        help="a folder of audio files or a manifest (.csv/.jsonl); several are swept together")
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL,
                        help="checkpoint, as for compare (default tiny.en)")
    parser.add_argument("--candidate", action="append", default=None, metavar="SPEC",
                        help="encoder under test, as compare --candidate takes it; repeat for several: 'max' (the "
                             "built-in MAX Graph encoder, the default), 'max:FAULT' (with a catalogued porting bug), "
                             "'ctranslate2', PATH.py:NAME or module:NAME")
    parser.add_argument("--dtypes", default="float32", help="comma list of candidate precisions (default float32)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                        help="where candidates run: cpu workers, or one worker per GPU (default cpu)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="skip the isolated stage runs (faster; no first divergence by local error)")
    parser.add_argument("--e2e", action="store_true",
                        help="also transcribe each clip with both encoders (openai-whisper's decoder, greedy)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"sweep folder (default {DEFAULT_OUT}); rows already in it are not recomputed")
    parser.add_argument("--retry-errors", action="store_true", help="recompute rows that ended in an error")
    parser.add_argument("--limit", type=int, default=None, help="sweep only the first N clips")
    parser.add_argument("--address", default=None,
                        help="join a running Ray cluster (HOST:PORT, ray://HOST:PORT or auto) instead of "
                             "starting Ray in this process")
    parser.add_argument("--workers", type=int, default=None,
                        help="Ray workers (default: one per GPU with --device gpu; on CPUs, the CPUs divided "
                             "by --cpus-per-worker)")
    parser.add_argument("--cpus-per-worker", type=int, default=None,
                        help="CPUs (threads) per worker (default: 1 on a local machine, 2 on a cluster; "
                             "with --device gpu, the CPUs divided by the GPUs)")
    parser.add_argument("--object-store-mb", type=int, default=128,
                        help="object store of a local Ray instance, MiB (default 128: clips are small)")
    parser.add_argument("--no-reference-cache", action="store_true",
                        help="keep no reference runs in OUT/references (by default each clip's float64 truth and "
                             "floors are kept there by content and reused by other configurations and resumed "
                             "sweeps; at most FIDELITY_REFERENCE_CACHE_GB, default 4)")
    parser.add_argument("--flush-every", type=int, default=10, help="rows per Parquet part (default 10)")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    _interrupt_on_signals()
    return run_main("corpus", lambda: _sweep(args))


def _interrupt_on_signals() -> None:
    """SIGTERM (a scheduler's stop) and SIGINT interrupt the sweep: rows done so far are kept, exit 130.

    SIGINT is set explicitly because a shell starts background jobs with it ignored."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)


def _entries(sources: list[Path]) -> list[ClipEntry]:
    if len(sources) == 1:
        return read_inputs(sources[0])
    entries = []
    for source in sources:
        entries += [ClipEntry(f"{source.name}/{e.clip_id}", e.path, e.text) for e in read_inputs(source)]
    ids = [e.clip_id for e in entries]
    if len(set(ids)) != len(ids):
        raise FidelityError("two sources share a name; give them distinct folder or manifest names")
    return entries


def _sweep(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    for flag in ("limit", "workers", "cpus_per_worker", "object_store_mb", "flush_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise FidelityError(f"--{flag.replace('_', '-')} must be at least 1")
    entries = _entries(args.sources)[:args.limit]
    candidates = args.candidate or [specs.DEFAULT]
    configs = build_configurations(args.model, candidates, [d.strip() for d in args.dtypes.split(",") if d.strip()],
                                   args.device, not args.no_isolate, args.e2e)
    ensure_replaceable(args.out, MARKER)
    if args.address:
        from ..corpus.engine import check_reachable

        check_reachable(args.address)  # before hashing a corpus, not after
    rows_dir = args.out / rowstore.ROWS_DIR
    done = rowstore.done_keys(rows_dir, args.retry_errors)
    run_id = rowstore.new_run_id()

    plan, unreadable, seen = [], [], set()
    for entry in entries:
        clip_hash, _, problem = entry.read()
        for config in configs:
            key = f"{clip_hash}-{config.key}"
            if key in seen:
                continue  # the same audio twice: one row
            seen.add(key)
            if key in done:
                continue
            stub = _stub(key, clip_hash, entry, config, run_id)
            (unreadable if problem else plan).append((entry, config, stub, problem))
    log.info("%d clip(s) x %d configuration(s): %d row(s) to compute, %d already done", len(entries), len(configs),
             len(plan) + len(unreadable), len(seen) - len(plan) - len(unreadable))

    meta = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": args.model, "source": ", ".join(map(str, args.sources)), "clips": len(entries),
            "configurations": [c.describe() for c in configs], "run_id": run_id,
            "command": " ".join(["python -m fidelity.corpus", *sys.argv[1:]])}
    writer = _RowWriter(rows_dir, run_id, args.flush_every, len(plan) + len(unreadable))
    workers = []
    resources = None
    status, begun = "interrupted", False
    try:
        if plan:
            from ..corpus import engine  # Ray costs 1.5 s to import: only when there is work

            options = engine.RayOptions(address=args.address, device=args.device, workers=args.workers,
                                        cpus_per_worker=args.cpus_per_worker, object_store_mb=args.object_store_mb,
                                        verbose=args.verbose,
                                        reference_cache=None if args.no_reference_cache else
                                        str((args.out / REFERENCES_DIR).resolve()))
            ray_began = time.perf_counter()
            resources = engine.start(options)  # a Ray address that does not answer: exit 2, nothing written
            meta["ray_start_s"] = round(time.perf_counter() - ray_began, 2)
            _interrupt_on_signals()  # again: Ray's start replaces the SIGTERM handler with one that aborts
        _write_meta(args.out, {**meta, "status": "running"})
        begun = True
        for _, _, stub, problem in unreadable:
            writer.add({**stub, "status": "error", "error": problem, "error_phase": "read"})
        if plan:
            tasks = ((ClipInput(e.clip_id, str(e.path), e.path.read_bytes(), e.text), c, s) for e, c, s, _ in plan)
            stats = engine.run(tasks, len(plan), configs, options, resources, writer.add)
            workers = [vars(s) for s in stats]
        status = "complete"
    except KeyboardInterrupt:
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        writer.close()
        if plan:
            engine.stop()
        if begun:
            _write_meta(args.out, {**meta, "status": status, "computed": writer.count, "workers": workers,
                                   "wall_s": round(time.perf_counter() - started, 2),
                                   "ray_resources": resources})
    return _report(args, configs, seen, meta, writer, workers, started)


def _report(args, configs: list[Configuration], keys: set[str], meta: dict, writer, workers, started) -> int:
    from ..corpus.report import write_report

    table = rowstore.load_rows(args.out / rowstore.ROWS_DIR)
    rows = table[table["key"].isin(keys)].reset_index(drop=True)
    wall = time.perf_counter() - started
    context = {**meta, "rows": len(rows), "computed": writer.count, "reused": len(rows) - writer.count,
               "workers": len(workers), "wall_s": round(wall, 2),
               "rows_per_minute": round(60 * writer.count / wall, 2) if writer.count else None}
    with atomic_dir(args.out / "report", "summary.json") as folder:
        summary = write_report(folder, rows, [c.describe() for c in configs], context)
    for config in summary["configurations"]:
        firsts = ", ".join(f"{k} ({v})" for k, v in config["first_divergence"].items()) or "none"
        sys.stdout.write(f"{config['label']}: {config['holds']}/{config['clips']} clips hold, "
                         f"{config['errors']} error(s); first divergence: {firsts}\n")
    sys.stdout.write(f"{writer.count} row(s) computed, {len(rows) - writer.count} reused; "
                     f"report: {args.out / 'report' / 'report.html'}\n")
    bad = any(c["holds"] < c["clips"] for c in summary["configurations"])
    return EXIT_FAIL if bad else EXIT_OK


def _stub(key: str, clip_hash: str, entry: ClipEntry, config: Configuration, run_id: str) -> dict:
    return {"key": key, "clip_hash": clip_hash, "config_hash": config.key, "clip_id": entry.clip_id,
            "path": str(entry.path), "truth_text": entry.text, "model": config.model, "candidate": config.candidate,
            "dtype": config.dtype, "device": config.device, "isolate": config.isolate, "e2e": config.e2e,
            "run_id": run_id}


def _write_meta(out: Path, meta: dict) -> None:
    write_text_atomic(out / MARKER, json.dumps(meta, indent=1, default=str) + "\n")


class _RowWriter:
    """Buffers finished rows into Parquet parts, shows progress, and logs throughput."""

    def __init__(self, folder: Path, run_id: str, every: int, total: int):
        from tqdm import tqdm

        self.folder, self.run_id, self.every = folder, run_id, every
        self.buffer: list[dict] = []
        self.count, self.errors = 0, 0
        self.started = self.logged = time.perf_counter()
        self.bar = tqdm(total=total, unit="row", desc="corpus", disable=None, file=sys.stderr)

    def add(self, row: dict) -> None:
        row["finished_at"] = time.time()
        self.buffer.append(row)
        self.count += 1
        self.errors += row.get("status") != "ok"
        self.bar.update(1)
        if row.get("status") != "ok":
            log.warning("%s (%s): %s", row.get("clip_id"), row.get("candidate"), row.get("error"))
        if len(self.buffer) >= self.every:
            self.flush()
        now = time.perf_counter()
        if now - self.logged > 30 or self.count == self.bar.total:
            self.logged = now
            log.info("%d/%d rows (%d errors), %.1f rows/min", self.count, self.bar.total, self.errors,
                     60 * self.count / max(now - self.started, 1e-9))

    def flush(self) -> None:
        if self.buffer:
            rowstore.write_part(self.folder, self.buffer, self.run_id)
            self.buffer = []

    def close(self) -> None:
        self.flush()
        self.bar.close()


if __name__ == "__main__":
    sys.exit(main())
