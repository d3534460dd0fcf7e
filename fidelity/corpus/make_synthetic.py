"""`python -m fidelity.corpus.make_synthetic`: a synthetic speech corpus from espeak-ng.

SYNTHETIC: every clip is text-to-speech (Debian's espeak-ng), not human speech. It
varies what a port meets in the field: voices (accents, male and female variants),
speaking rates, added white noise at a signal-to-noise ratio, silence padding, file
formats (wav, flac, ogg) and sample rates (resampled on load). Each clip's text is its
ground truth. The output folder holds the clips and `manifest.jsonl` (id, path, text
and the generation parameters); the same `--count` and `--seed` give the same corpus.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from ..commands.cli import EXIT_OK, Parser, add_logging_flags, run_main, setup_logging
from ..errors import FidelityError
from ..outputs import atomic_dir

log = logging.getLogger("fidelity.corpus.make_synthetic")

MANIFEST = "manifest.jsonl"
# espeak-ng's own (non-mbrola) English voices, with its variant voices for pitch and timbre
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
          "en-us+f3", "en-gb+f2", "en-us+m3")
RATES = (120, 150, 175, 210)                 # words per minute
NOISE_SNR_DB = (None, 30.0, 15.0)            # None: clean
PADDING_S = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.8), (1.0, 1.0))  # silence before, after
FORMATS = (("wav", 16000), ("flac", 22050), ("ogg", 44100), ("wav", 8000))

SUBJECTS = ("the small dog", "my brother", "a tall woman", "the old farmer", "our teacher", "the pilot",
            "a quiet child", "the baker", "her neighbour", "the captain")
VERBS = ("opened", "painted", "carried", "found", "cleaned", "sold", "watched", "fixed", "lost", "counted")
OBJECTS = ("the red door", "seven apples", "a heavy box", "the blue car", "two letters", "the garden gate",
           "an empty bottle", "the kitchen window", "a yellow kite", "three candles")
ENDINGS = ("", " this morning", " after lunch", " in the rain", " near the river", " on Sunday")


def sentence(rng: np.random.Generator) -> str:
    """A short plain English sentence (one to three seconds of speech)."""
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
    return words[0].upper() + words[1:] + "."


def speak(text: str, voice: str, rate: int, workdir: Path) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of `text`: (float32 samples, sample rate)."""
    path = workdir / "speech.wav"
    try:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text],
                       check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise FidelityError("espeak-ng is not installed (Debian: apt-get install espeak-ng; "
                            "scripts/setup.sh does it)") from None
    except subprocess.CalledProcessError as exc:
        raise FidelityError(f"espeak-ng failed for voice {voice}: {exc.stderr.decode().strip()}") from None
    samples, sr = soundfile.read(str(path), dtype="float32")
    return samples, sr


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    from math import gcd

    from scipy.signal import resample_poly

    common = gcd(rate, target)
    return resample_poly(samples, target // common, rate // common).astype(np.float32)


def make_clip(index: int, seed: int, workdir: Path) -> tuple[dict, np.ndarray, int, str]:
    """Parameters, samples, sample rate and file format of clip `index`."""
    rng = np.random.default_rng([seed, index])
    text = sentence(rng)
    voice = VOICES[index % len(VOICES)]
    rate = RATES[(index // len(VOICES)) % len(RATES)]
    snr = NOISE_SNR_DB[int(rng.integers(len(NOISE_SNR_DB)))]
    before, after = PADDING_S[int(rng.integers(len(PADDING_S)))]
    fmt, out_rate = FORMATS[index % len(FORMATS)]
    samples, sr = speak(text, voice, rate, workdir)
    samples = resample(samples, sr, out_rate)
    samples = np.concatenate([np.zeros(int(before * out_rate), np.float32), samples,
                              np.zeros(int(after * out_rate), np.float32)])
    if snr is not None:
        power = float(np.mean(samples ** 2))
        samples = samples + rng.normal(0.0, np.sqrt(power / 10 ** (snr / 10)), samples.shape).astype(np.float32)
    peak = float(np.max(np.abs(samples)))
    if peak > 0.99:
        samples = samples * (0.99 / peak)
    params = {"voice": voice, "rate_wpm": rate, "snr_db": snr, "pad_before_s": before, "pad_after_s": after,
              "format": fmt, "sample_rate": out_rate}
    return {"id": f"syn{index:04d}", "text": text, "synthetic": True, **params}, samples.astype(np.float32), \
        out_rate, fmt


def generate(out: Path, count: int, seed: int = 0) -> Path:
    """Write `count` clips and their manifest into `out` (replaced if it holds an earlier corpus)."""
    if count < 1:
        raise FidelityError("--count must be at least 1")
    if shutil.which("espeak-ng") is None:
        raise FidelityError("espeak-ng is not installed (Debian: apt-get install espeak-ng; scripts/setup.sh does it)")
    with atomic_dir(out, MANIFEST) as folder, tempfile.TemporaryDirectory() as tmp:
        rows = []
        for index in range(count):
            row, samples, rate, fmt = make_clip(index, seed, Path(tmp))
            name = f"{row['id']}.{fmt}"
            soundfile.write(str(folder / name), samples, rate, format=fmt.upper() if fmt != "ogg" else "OGG",
                            subtype="VORBIS" if fmt == "ogg" else None)
            row["path"] = name
            row["seconds"] = round(len(samples) / rate, 3)
            rows.append(row)
        (folder / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    log.info("wrote %d synthetic clips (%.0f s of audio) and %s to %s", count,
             sum(r["seconds"] for r in rows), MANIFEST, out)
    return out / MANIFEST


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.corpus.make_synthetic", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60, help="number of clips (default 60)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder; replaced if it holds an earlier synthetic corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed for texts, noise and padding (default 0)")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)

    def body() -> int:
        generate(args.out, args.count, args.seed)
        return EXIT_OK

    return run_main("make_synthetic", body)


if __name__ == "__main__":
    sys.exit(main())
