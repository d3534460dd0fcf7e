"""`python -m fidelity.precompile`: compile the MAX graphs for a GPU on a machine without one.

MAX compiles for a virtual GPU (`max.driver.set_virtual_device_*`) with portable
host code (`set_virtual_cpu_target`), and every graph lands in fidelity's MEF store
(`$FIDELITY_CACHE/mef`) under the same key the GPU run looks up. Copy that folder to
the GPU machine and its runs load the graphs instead of spending minutes compiling
there. Graphs: the four stage kinds (compare, sweep, isolation, faults), and the
whole encoder (bench, fused capture), for each dtype and attention form asked for.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .. import checkpoints
from ..candidates.max_builtin.graph_ops import FLASH_DTYPES, Numerics
from ..errors import FidelityError
from ..precisions import served_by
from ..taps import encoder_taps, stages
from .cli import EXIT_OK, Parser, add_logging_flags, run_main, setup_logging

DTYPES = served_by("max")

log = logging.getLogger("fidelity.precompile")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m fidelity.precompile", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=checkpoints.DEFAULT_MODEL, help="checkpoint whose shapes to compile for")
    parser.add_argument("--arch", default="sm_90", help="GPU architecture (default sm_90: H100/H200)")
    parser.add_argument("--api", default="cuda", help="GPU API (default cuda)")
    parser.add_argument("--cpu-target", default="x86-64-v3", help="host code target (default x86-64-v3)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma list (default all three)")
    parser.add_argument("--what", default="stages,encoder,fused,flash",
                        help="comma list of: stages, encoder (ln_post only), fused (every tap), flash "
                             "(encoder with flash attention, bfloat16 only)")
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return run_main("precompile", lambda: _precompile(args))


def _precompile(args: argparse.Namespace) -> int:
    from max import driver

    dtypes = [d for d in args.dtypes.split(",") if d]
    what = set(args.what.split(","))
    if not set(dtypes) <= set(DTYPES) or not what <= {"stages", "encoder", "fused", "flash"}:
        raise FidelityError("--dtypes or --what names something unknown")
    driver.set_virtual_cpu_target(args.cpu_target)
    driver.set_virtual_device_api(args.api)
    driver.set_virtual_device_target_arch(args.arch)
    driver.set_virtual_device_count(1)
    # Imported after the virtual device is set, so every session targets it.
    from ..candidates.base import CandidateConfig
    from ..candidates.max_builtin.stage_graphs import CompiledStage, MaxOptions
    from ..candidates.max_builtin.whole_graph import compile_encoder
    from ..candidates.max_engine import mef_dir

    dims = checkpoints.load_checkpoint(args.model).dims
    all_taps = tuple(t.name for t in encoder_taps(dims) if not t.optional)
    kinds = list({s.kind: s for s in reversed(stages(dims))}.values())  # one stage of each kind
    plain, flash = MaxOptions(), MaxOptions(numerics=Numerics(attention="flash"))
    started = time.perf_counter()
    for dtype in dtypes:
        config = CandidateConfig(device="gpu", dtype=dtype)
        if "stages" in what:
            for stage in kinds:
                CompiledStage(dims, stage, config, plain)
        if "encoder" in what:
            compile_encoder(dims, config, plain, ("encoder.ln_post",))
        if "fused" in what:
            compile_encoder(dims, config, plain, all_taps)
        if "flash" in what and dtype in FLASH_DTYPES:
            compile_encoder(dims, config, flash, ("encoder.ln_post",))
            if "stages" in what:
                CompiledStage(dims, next(s for s in kinds if s.kind == "attn"), config, flash)
        log.info("%s done (%.0f s so far)", dtype, time.perf_counter() - started)
    log.info("MEFs for %s %s are in %s", args.api, args.arch, mef_dir())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
