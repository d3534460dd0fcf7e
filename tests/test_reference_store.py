"""The reference cache: a clip's truth and floors computed once, found by content, never trusted when corrupt."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fidelity import audio
from fidelity.candidates.base import CandidateConfig
from fidelity.checkpoints import random_checkpoint
from fidelity.corpus.configs import Configuration
from fidelity.corpus.one_clip import ClipComparer, ClipInput
from fidelity.flow.walk import Plan, compare_candidate
from fidelity.reference.references import References
from fidelity.reference.store import SUFFIX, ReferenceStore
from fidelity.taps import select_taps, stages

from . import protocol_candidates


def _plan(dims) -> Plan:
    return Plan(tuple(t.name for t in select_taps(dims, "all")), isolate=True)


def _compare(checkpoint, mel, store: ReferenceStore, tf32_floor: bool = False):
    candidate = protocol_candidates.whole(checkpoint, CandidateConfig())
    references = References(checkpoint, store=store, tf32_floor=tf32_floor)
    return compare_candidate(candidate, references, mel, _plan(checkpoint.dims))


def _stats(comparison) -> list[dict]:
    return [row.as_dict() for row in comparison.rows]


def test_a_second_run_reads_every_reference_from_the_cache_and_gives_identical_stats(small, small_mel, tmp_path):
    first_store = ReferenceStore(tmp_path)
    first = _compare(small, small_mel, first_store, tf32_floor=True)
    entries = sorted(tmp_path.glob(f"*{SUFFIX}"))
    assert len(entries) == first_store.misses > 0
    # the truth run ahead of the candidate's isolated run is read again by the walk, not recomputed
    assert first_store.hits == len(stages(small.dims))
    second_store = ReferenceStore(tmp_path)
    second = _compare(small, small_mel, second_store, tf32_floor=True)
    assert second_store.misses == 0 and second_store.hits >= first_store.misses
    assert _stats(second) == _stats(first)
    assert sorted(tmp_path.glob(f"*{SUFFIX}")) == entries  # nothing new written


def test_a_corrupt_entry_is_recomputed_never_trusted(small, small_mel, tmp_path):
    clean = _compare(small, small_mel, None)
    _compare(small, small_mel, ReferenceStore(tmp_path))
    entries = sorted(tmp_path.glob(f"*{SUFFIX}"))
    for i, path in enumerate(entries):  # one bit flipped in each payload; every third entry truncated
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x10
        path.write_bytes(data[: len(data) // 2] if i % 3 == 0 else data)
    store = ReferenceStore(tmp_path)
    again = _compare(small, small_mel, store)
    assert store.misses == len(entries) and store.hits == len(stages(small.dims))  # only its own fresh runs
    assert _stats(again) == _stats(clean)
    store = ReferenceStore(tmp_path)  # replaced by good entries
    _compare(small, small_mel, store)
    assert store.misses == 0


def test_other_weights_or_another_clip_never_hit(small, small_mel, tmp_path):
    first = ReferenceStore(tmp_path)
    _compare(small, small_mel, first)
    other = random_checkpoint(small.dims, seed=1, name=small.name)  # same name and shapes, other weights
    for checkpoint, mel in ((other, small_mel), (small, small_mel + np.float32(1e-3))):
        store = ReferenceStore(tmp_path)
        _compare(checkpoint, mel, store)
        assert store.misses == first.misses  # every run computed anew


def test_the_folder_is_bounded_least_recently_used_first(tmp_path):
    store = ReferenceStore(tmp_path, max_bytes=3 * 8000 + 1000)
    arrays = {"x": np.zeros(1000)}  # 8000 bytes each, plus a header
    for age, key in ((30, "a"), (20, "b"), (10, "c")):
        store.new_run()  # one entry per run: a run keeps at most half the bound
        store.put(key, arrays)
        os.utime(store.path(key), (time.time() - age,) * 2)  # written in turn (file clocks can be coarse)
    assert store.get("a") is not None  # "a" used last: "b" goes first
    store.new_run()
    store.put("d", arrays)
    assert store.get("b") is None
    assert store.get("a") is not None and store.get("d") is not None
    assert sum(p.stat().st_size for p in tmp_path.glob(f"*{SUFFIX}")) <= store.max_bytes


def test_a_run_larger_than_half_the_bound_keeps_only_that_half(tmp_path):
    """Writing a run's every entry into a folder too small for them would evict its own first entries."""
    store = ReferenceStore(tmp_path, max_bytes=4 * 8000 + 2000)
    store.new_run()
    for key in "abcd":
        store.put(key, {"x": np.zeros(1000)})
    assert [store.get(key) is not None for key in "abcd"] == [True, True, False, False]


@pytest.mark.parametrize("size", [0, -1])
def test_an_unreadable_entry_is_a_miss(tmp_path, size):
    store = ReferenceStore(tmp_path)
    store.put("k", {"x": np.arange(5.0)})
    np.testing.assert_array_equal(store.get("k")["x"], np.arange(5.0))
    path = store.path("k")
    path.write_bytes(path.read_bytes()[:size] if size else b"")
    assert store.get("k") is None and not path.exists()


def test_corpus_configurations_and_a_resumed_sweep_share_reference_runs(speech_clip, tmp_path):
    """Two configurations of one clip share runners and runs; a new worker over the same folder (a resumed
    sweep) recomputes no reference and gives the same rows."""
    path = tmp_path / "clip.wav"
    soundfile.write(path, speech_clip.samples[: 4 * audio.SAMPLE_RATE], audio.SAMPLE_RATE)
    clip = ClipInput("clip", str(path), path.read_bytes(), None)
    spec = str(Path(__file__).with_name("protocol_candidates.py"))
    configs = [Configuration("tiny.en", f"{spec}:{name}", "float32", "cpu") for name in ("whole", "tf32_matmuls")]
    folder = tmp_path / "references"
    first = ClipComparer(folder)
    rows = []
    for config in configs:
        rows.append(first.compare_one(clip, config))
        assert rows[-1]["status"] == "ok", rows[-1]
        if len(rows) == 1:
            store = first._examiners[config.key].references.store
            computed = store.misses
    assert first._examiners[configs[0].key].references is first._examiners[configs[1].key].references
    assert store.misses == computed > 0  # the second configuration computed no reference
    resumed = ClipComparer(folder)
    for config, row in zip(configs, rows):
        again = resumed.compare_one(clip, config)
        assert again["stages"] == row["stages"] and again["first_divergence"] == row["first_divergence"]
    assert resumed._examiners[configs[0].key].references.store.misses == 0


def test_entries_keep_dtype_shape_and_values(tmp_path):
    arrays = {"half": np.arange(6, dtype=np.float16).reshape(2, 3), "scalar": np.array(3.5),
              "empty": np.zeros((0, 4), np.float32), "transposed": np.arange(12.0).reshape(3, 4).T}
    store = ReferenceStore(tmp_path)
    store.put("k", arrays)
    got = store.get("k")
    assert sorted(got) == sorted(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)
