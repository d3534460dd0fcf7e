"""The workbench's own MAX Graph encoder, one candidate among others.

  graph_ops.py    the encoder written with `max.graph.ops`, one function per stage (`Numerics`)
  stage_graphs.py one compiled graph per stage kind; `MaxOptions`
  candidate.py    `BuiltinCandidate`: weights bound to the stage graphs, the `Candidate` protocol
  whole_graph.py  the whole encoder as one graph (transcription, benchmarks, fused capture)
"""

from .candidate import BuiltinCandidate, build
from .graph_ops import DTYPES, FLASH_DTYPES, Numerics
from .stage_graphs import MaxOptions

__all__ = ["BuiltinCandidate", "DTYPES", "FLASH_DTYPES", "MaxOptions", "Numerics", "build"]
