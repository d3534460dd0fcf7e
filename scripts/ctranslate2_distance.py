"""How far CTranslate2's Whisper encoder sits from openai-whisper, and whether int8 changes the transcript.

    .venv/bin/python scripts/ctranslate2_distance.py --model tiny.en --e2e

Per compute type (float32, int8): ln_post against openai-whisper in float64 (cosine,
rel L2, noise-floor ratio against openai-whisper's float32 floor, max abs error) and,
with --e2e, the transcript of openai-whisper with CTranslate2's encoder in place of its
own against openai-whisper's own. Until `compare --candidate` lands, this is the
measurement behind the CTranslate2 figures.
"""

from __future__ import annotations

import sys

from fidelity import audio, checkpoints
from fidelity.candidates.base import ENCODER_OUTPUT, CandidateConfig
from fidelity.candidates.ctranslate2 import build, build_int8
from fidelity.commands.cli import EXIT_OK, Parser, add_logging_flags, run_main, setup_logging
from fidelity.e2e import DropInEncoder, error_rates, transcribe_with
from fidelity.metrics import compare
from fidelity.reference.runner import TorchRunner


def main(argv=None) -> int:
    parser = Parser(prog="ctranslate2_distance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL,
                        help=f"a packaged model ({', '.join(checkpoints.PACKAGED)}; default %(default)s)")
    parser.add_argument("--audio", default=str(audio.DEFAULT_CLIP), help="audio clip (default: the shipped 28 s clip)")
    parser.add_argument("--e2e", action="store_true", help="also transcribe with each compute type")
    add_logging_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(args)
    return run_main("ctranslate2_distance", lambda: _run(args))


def _run(args) -> int:
    checkpoint = checkpoints.load_checkpoint(args.model)
    clip = audio.load_audio(args.audio)
    mel = audio.mel_windows(clip, checkpoint.dims.n_mels)
    truth, floor = (TorchRunner(checkpoint, dtype).run(mel, [ENCODER_OUTPUT])[ENCODER_OUTPUT]
                    for dtype in ("float64", "float32"))
    model = reference = None
    if args.e2e:
        model = checkpoint.whisper_model()
        reference = transcribe_with(model, clip.samples, model.encoder, progress=False)
    rows = [("openai-whisper float32", compare(floor, truth, floor), None)]
    for builder in (build, build_int8):
        candidate = builder(checkpoint, CandidateConfig())
        stats = compare(candidate.encode(mel), truth, floor)
        text = None
        if args.e2e:
            text = transcribe_with(model, clip.samples, DropInEncoder(candidate.encode), progress=False).text
        rows.append((f"{candidate.name} ({candidate.describe()['compute_type']})", stats, text))
        candidate.close()
    print(f"{checkpoint.summary()}; {clip.source}; ln_post against openai-whisper float64")
    print(f"{'encoder':34} {'cosine':>14} {'rel_l2':>9} {'floor_x':>9} {'max_abs':>9}"
          + ("  same_text  wer" if args.e2e else ""))
    for name, stats, text in rows:
        line = (f"{name:34} {stats.cosine:14.10f} {stats.rel_l2:9.2e} {stats.noise_floor_ratio:9.2f} "
                f"{stats.max_abs:9.2e}")
        if args.e2e and text is not None:
            wer = error_rates(reference.text, text, reference.language)["wer"]
            line += f"  {str(text == reference.text):9}  {wer:.3f}"
        print(line)
    if args.e2e:
        print(f"openai-whisper: {reference.text}")
        for name, _, text in rows[1:]:
            if text != reference.text:
                print(f"{name}: {text}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
