"""The workbench's own MAX Graph encoder, one candidate among others (registered as `max`).

  graph_ops.py    the encoder written with `max.graph.ops`, one function per stage (`Numerics`)
  stage_graphs.py one compiled graph per stage kind; `MaxOptions`
  family.py       fault-family graphs: a stage kind's numerics faults as runtime inputs of one graph
  weights.py      the checkpoint's weights, bound strictly to a graph's device
  whole_graph.py  the whole encoder as one graph (transcription, benchmarks, fused capture)
  candidate.py    `BuiltinCandidate`: weights bound to the stage graphs, the `Candidate` protocol
"""

from ..specs import Provider, register
from .candidate import BuiltinCandidate, build, options_for
from .graph_ops import FLASH_DTYPES, Numerics
from .stage_graphs import MaxOptions

register(Provider("max", "the built-in MAX Graph encoder", ("float32", "bfloat16", "float16"), build))

__all__ = ["BuiltinCandidate", "FLASH_DTYPES", "MaxOptions", "Numerics", "build", "options_for"]
