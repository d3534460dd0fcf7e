"""The sweep's rows on disk: a folder of Parquet part files, each written whole or not at all.

One row per (clip, configuration), keyed by `key` = clip content hash + configuration
hash. Parts are appended as rows arrive (a temporary file renamed into place), so an
interrupted sweep keeps every row it finished and the next run skips them. Read the
folder with `pandas.read_parquet(OUT / "rows")` or `load_rows`.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS_DIR = "rows"

STAGE = pa.struct([("tap", pa.string()), ("stage", pa.string()), ("cosine", pa.float64()),
                   ("rel_l2", pa.float64()), ("floor_ratio", pa.float64()), ("verdict", pa.string()),
                   ("local_floor_ratio", pa.float64()), ("local_verdict", pa.string()), ("budget", pa.float64())])

_F, _S, _B, _I = pa.float64(), pa.string(), pa.bool_(), pa.int64()
SCHEMA = pa.schema([
    ("key", _S), ("clip_hash", _S), ("config_hash", _S), ("clip_id", _S), ("path", _S), ("truth_text", _S),
    ("model", _S), ("candidate", _S), ("dtype", _S), ("device", _S), ("isolate", _B), ("e2e", _B),
    ("status", _S), ("error", _S), ("error_phase", _S),
    ("seconds", _F), ("windows", _I),
    # stage-boundary statistics (every stage output: each block's resid_mid and resid_post, and ln_post)
    ("stages", pa.list_(STAGE)),
    ("first_divergence", _S), ("first_divergence_tap", _S), ("first_divergence_chained", _S),
    ("ln_post_cosine", _F), ("ln_post_rel_l2", _F), ("ln_post_floor_ratio", _F),
    ("worst_tap", _S), ("worst_floor_ratio", _F), ("worst_local_tap", _S), ("worst_local_floor_ratio", _F),
    # end to end (openai-whisper's decoder, greedy, temperature 0)
    ("reference_text", _S), ("candidate_text", _S), ("transcripts_identical", _B),
    ("wer_vs_reference", _F), ("cer_vs_reference", _F),
    ("wer_reference_vs_truth", _F), ("cer_reference_vs_truth", _F),
    ("wer_candidate_vs_truth", _F), ("cer_candidate_vs_truth", _F), ("first_parting_token", _S),
    # teacher-forced statistics (fidelity.e2e.teacher): the candidate's next-token KL against the float64
    # reference on the reference's tokens, its ratio to openai-whisper's own floor, flips, verdict
    ("teacher_kl_mean", _F), ("teacher_kl_max", _F), ("teacher_kl_ratio", _F), ("teacher_flips", _I),
    ("teacher_verdict", _S),
    # timings (seconds) and provenance
    ("load_s", _F), ("candidate_s", _F), ("reference_s", _F), ("metrics_s", _F), ("e2e_s", _F), ("total_s", _F),
    # CPU seconds (every thread of the worker) of the comparison's parts: what a row costs on a busy machine
    ("candidate_cpu_s", _F), ("reference_cpu_s", _F), ("metrics_cpu_s", _F),
    ("worker", _S), ("run_id", _S), ("finished_at", _F),
])


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def write_part(folder: Path, rows: list[dict], run_id: str) -> Path:
    """Append `rows` as one new part file (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names} for row in rows], schema=SCHEMA)
    path = folder / f"part-{run_id}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_table(folder: Path) -> pa.Table:
    """Every row written so far (the latest row of a key wins), as one Arrow table."""
    parts = sorted(Path(folder).glob("part-*.parquet"), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() \
        else []
    if not parts:
        return SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    keys = table.column("key").to_pylist()
    last = {k: i for i, k in enumerate(keys)}
    if len(last) == len(keys):
        return table
    return table.take(sorted(last.values()))


def load_rows(folder: Path):
    """The rows as a pandas DataFrame."""
    return load_table(folder).to_pandas()


def done_keys(folder: Path, retry_errors: bool = False) -> set[str]:
    """Keys not to compute again: every row, or only the good ones with `retry_errors`."""
    table = load_table(folder).select(["key", "status"])
    return {k for k, s in zip(table.column("key").to_pylist(), table.column("status").to_pylist())
            if not retry_errors or s == "ok"}
