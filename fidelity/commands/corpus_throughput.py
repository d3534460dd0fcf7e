"""`python -m fidelity.corpus.bench`: corpus sweep throughput and memory on this machine.

Sweeps a corpus (default: the shipped clips plus a generated synthetic set) with
tiny.en, the MAX candidate in float32 on the CPU, stage-boundary taps with isolation,
once without and once with end-to-end transcription, each into a fresh folder (so
nothing is reused). For each: rows per minute over the whole command and in steady
state (between the first and the last finished row), the medians of each row's
timings, each row's CPU seconds split into reference, candidate and metrics (and the rest:
Ray, the driver, start-up), Ray's start-up, each worker's start-up and model/graph loading (once per
worker), and the peak resident memory of the whole process tree (driver, Ray's
processes and workers) sampled every 0.5 s, and its CPU time per row (which other
work on a shared machine does not inflate, unlike wall time). Writes bench.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from .. import audio
from ..corpus.make_synthetic import MANIFEST, generate
from ..corpus.rows import load_rows
from ..errors import FidelityError
from ..outputs import ensure_writable_file, write_text_atomic
from .cli import EXIT_OK, Parser, add_logging_flags, run_main, setup_logging

log = logging.getLogger("fidelity.corpus.bench")


class TreeMemory:
    """Peak RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.5):
        self.pid, self.every, self.peak, self.peak_processes = pid, every, 0, 0
        self.cpu: dict[int, float] = {}  # pid -> user + system seconds, last seen
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._done.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = max(self.cpu.get(proc.pid, 0.0), times.user + times.system)
                except psutil.NoSuchProcess:
                    pass
            if total > self.peak:
                self.peak, self.peak_processes = total, len(procs)
            self._done.wait(self.every)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def sweep_once(sources: list[Path], out: Path, extra: list[str]) -> dict:
    """One fresh sweep as a subprocess; its figures."""
    cmd = [sys.executable, "-m", "fidelity.corpus", *map(str, sources), "--out", str(out), "-q", *extra]
    log.info("running %s", " ".join(cmd))
    began = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(process.pid)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - began
    peak = memory.stop()
    meta = json.loads((out / "corpus.json").read_text()) if (out / "corpus.json").is_file() else {}
    if process.returncode not in (0, 1) or meta.get("status") != "complete":
        raise FidelityError(f"the sweep did not complete (exit {process.returncode}, status "
                            f"{meta.get('status')}): {stderr.strip().splitlines()[-1] if stderr.strip() else ''}")
    rows = load_rows(out / "rows")
    good = rows[rows["status"] == "ok"]
    finished = rows["finished_at"].sort_values().to_numpy()
    steady = 60 * (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else None
    timing_columns = ["load_s", "candidate_s", "reference_s", "metrics_s", "e2e_s", "total_s"]
    cpu_columns = ["reference_cpu_s", "candidate_cpu_s", "metrics_cpu_s"]
    return {
        "rows": len(rows), "errors": int((rows["status"] != "ok").sum()),
        "windows": int(good["windows"].sum()), "audio_s": round(float(good["seconds"].sum()), 1),
        "wall_s": round(wall, 1),
        "rows_per_minute_overall": round(60 * len(rows) / wall, 2),
        "rows_per_minute_steady": round(steady, 2) if steady else None,
        "windows_per_minute_steady": round(steady * good["windows"].mean(), 2) if steady else None,
        "median_row_s": {c: round(float(good[c].median()), 3) for c in timing_columns if good[c].notna().any()},
        "ray_start_s": meta.get("ray_start_s"),
        "workers": [{"start_s": round(w["start_s"], 2), "setup_s": round(w["setup_s"], 2), "rows": w["rows"],
                     "setup": {k: {n: round(v, 3) for n, v in t.items()} for k, t in w["setup"].items()}}
                    for w in meta["workers"]],
        "peak_rss_tree_gib": round(peak / 2 ** 30, 2), "processes_at_peak": memory.peak_processes,
        # CPU time of the whole tree (sampled, so a process's last half second may be missing): what a row costs
        # whatever else the machine is doing
        "cpu_s_tree": round(sum(memory.cpu.values()), 1),
        "cpu_s_per_row": round(sum(memory.cpu.values()) / max(len(rows), 1), 2),
        # the worker's CPU seconds per row in each part of the comparison (mean over the rows), and what is left
        # of the tree's CPU per row (Ray, the driver, loading, start-up)
        "cpu_s_per_row_split": _cpu_split(good, cpu_columns, sum(memory.cpu.values()) / max(len(rows), 1)),
        "summary": stdout.strip().splitlines(),
    }


def _cpu_split(good, columns: list[str], per_row: float) -> dict:
    present = [c for c in columns if c in good and good[c].notna().any()]
    split = {c.replace("_cpu_s", ""): round(float(good[c].mean()), 2) for c in present}
    if split:
        split["other"] = round(per_row - sum(split.values()), 2)
    return split


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.corpus.bench", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60, help="synthetic clips to generate (default 60)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="sweep this folder or manifest instead of the shipped clips plus a generated set")
    parser.add_argument("--workers", type=int, default=None, help="passed to the sweep (default: its own)")
    parser.add_argument("--cpus-per-worker", type=int, default=None, help="passed to the sweep")
    parser.add_argument("--runs", default="stage,e2e",
                        help="which sweeps: 'stage' (stage-boundary taps), 'e2e' (and transcription), or both "
                             "(default stage,e2e)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench-corpus.json"), help="bench.json path")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("corpus.bench", lambda: _bench(args))


def _bench(args: argparse.Namespace) -> int:
    ensure_writable_file(args.out)
    runs = {r.strip() for r in args.runs.split(",") if r.strip()}
    if not runs or runs - {"stage", "e2e"}:
        raise FidelityError("--runs takes stage, e2e or stage,e2e")
    extra = []
    if args.workers:
        extra += ["--workers", str(args.workers)]
    if args.cpus_per_worker:
        extra += ["--cpus-per-worker", str(args.cpus_per_worker)]
    with tempfile.TemporaryDirectory(prefix="fidelity-corpus-bench-") as tmp:
        tmp = Path(tmp)
        if args.corpus:
            sources = [args.corpus]
        else:
            generate(tmp / "synthetic", args.count)
            sources = [audio.DATA_DIR, tmp / "synthetic" / MANIFEST]
        result = {"machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
                              "load_average_at_start": os.getloadavg()},
                  "sources": [str(s) for s in sources], "model": "tiny.en", "dtype": "float32", "device": "cpu"}
        if "stage" in runs:
            result["stage_taps"] = sweep_once(sources, tmp / "no-e2e", extra)
            log.info("stage taps: %s", json.dumps(result["stage_taps"]))
        if "e2e" in runs:
            result["stage_taps_e2e"] = sweep_once(sources, tmp / "e2e", [*extra, "--e2e"])
            log.info("with e2e: %s", json.dumps(result["stage_taps_e2e"]))
        result["machine"]["load_average_at_end"] = os.getloadavg()
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
