"""End to end: does the candidate's encoder change what openai-whisper writes, beyond noise?

`examine_transcripts(checkpoint, samples, candidate, ...) -> E2EResult` is the whole check
(`fidelity.e2e.examine`). Its parts: `transcribe` (the encoder inside `whisper.transcribe`),
`free` (free transcripts compared), `teacher` and `decisions` (teacher forcing, and each flip
judged on the decision that made it), `band` (the floor-noise band of free decoding),
`sensitivity` (noise at one stage output), `text` (the one normaliser and WER/CER).
"""

from .encoders import Encode, FloorEncoder, default_floor, memoized, torch_encoder
from .examine import E2EResult, examine_transcripts, parse_levels, read_truth
from .text import error_rates
from .transcribe import DropInEncoder, Transcript, candidate_encoder, transcribe_with

__all__ = ["DropInEncoder", "E2EResult", "Encode", "FloorEncoder", "Transcript", "candidate_encoder",
           "default_floor", "error_rates", "examine_transcripts", "memoized", "parse_levels", "read_truth",
           "torch_encoder", "transcribe_with"]
