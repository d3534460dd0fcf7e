"""Measure a probed MAX port: compile (or MEF load) time of its two graphs, every tap observed (the patch
graph, gates off) vs output only (probes off) run time (medians), peak RSS, and the probe effect on the
encoder output.

    python examples/ports/measure_port.py --candidate examples/ports/hackathon_port.py:build --repeats 10
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

from fidelity import audio
from fidelity.candidates import specs
from fidelity.candidates.base import ENCODER_OUTPUT, CandidateConfig
from fidelity.checkpoints import load_checkpoint
from fidelity.commands.cli import Parser, add_logging_flags, run_main, setup_logging


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = Parser(prog="measure_port", description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default="examples/ports/hackathon_port.py:build", help="FILE.py:NAME builder")
    parser.add_argument("--model", default="tiny.en", help="checkpoint (name or .pt path)")
    parser.add_argument("--audio", default=str(audio.DEFAULT_CLIP), help="audio file (first 30 s window is used)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median reported)")
    add_logging_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(args)

    def body() -> int:
        checkpoint = load_checkpoint(args.model)
        mel = audio.mel_windows(audio.load_audio(args.audio), checkpoint.dims.n_mels)[:1]
        start = time.perf_counter()
        candidate = specs.build(args.candidate, checkpoint, CandidateConfig())
        build_seconds = time.perf_counter() - start
        compile_log = dict(candidate.compile())
        taps = candidate.available_taps()
        off = median_seconds(lambda: candidate.encode(mel), args.repeats)
        observe = median_seconds(lambda: candidate.run(mel, taps), args.repeats)
        result = {
            "candidate": args.candidate, "model": checkpoint.name, "probes": len(candidate.patchable_taps()),
            "build_seconds": round(build_seconds, 3), "compile": compile_log,
            "median_seconds": {"off": round(off, 4), "observe_all_taps": round(observe, 4)},
            "observe_over_off": round(observe / off, 3),
            "probe_effect_" + ENCODER_OUTPUT: candidate.probe_effect(mel).as_dict(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0

    return run_main("measure_port", body)


if __name__ == "__main__":
    sys.exit(main())
