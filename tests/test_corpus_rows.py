"""A corpus row is an examination like `compare`'s: a port's own front end is judged in every row.

The worker side alone (`ClipComparer`, no Ray), on a short clip cut from the shipped speech, with torch
candidates of the tests' own (tests/protocol_candidates.py): no MAX graph.
"""

from __future__ import annotations

import io

import soundfile

from fidelity import audio
from fidelity.corpus.configs import Configuration
from fidelity.corpus.one_clip import ClipComparer, ClipInput

SPEC = "tests/protocol_candidates.py"


def _short_clip(seconds: float = 5.0) -> ClipInput:
    samples = audio.load_audio(audio.DEFAULT_CLIP).samples[:int(seconds * audio.SAMPLE_RATE)]
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, audio.SAMPLE_RATE, format="WAV")
    return ClipInput("short", "short.wav", buffer.getvalue(), None)


def test_a_front_end_that_pads_log_mel_with_zeros_is_named_in_the_row():
    comparer, clip = ClipComparer(), _short_clip()
    rows = {}
    for builder in ("zero_padded_front_end", "whisper_front_end"):
        config = Configuration("tiny.en", f"{SPEC}:{builder}", "float32", "cpu", isolate=True)
        rows[builder] = comparer.compare_one(clip, config)
    bad, good = rows["zero_padded_front_end"], rows["whisper_front_end"]
    assert bad["status"] == "ok" and good["status"] == "ok", (bad.get("error"), good.get("error"))
    assert bad["first_divergence"] == "front_end" and bad["first_divergence_tap"] == "frontend.mel"
    assert [s["tap"] for s in bad["stages"]][0] == "frontend.mel"
    assert good["first_divergence"] is None
    front = next(s for s in good["stages"] if s["tap"] == "frontend.mel")
    assert front["verdict"] == "ok" and front["floor_ratio"] < 10
