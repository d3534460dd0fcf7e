"""How fast an encoder runs, beside how faithful it is: what `python -m fidelity.bench` measures.

  timing.py          medians of wall time with the device synchronised
  flops.py           the encoder's FLOPs per window (from the model's dimensions), the device's dense peak
  points.py          encoders timed beside the candidates: openai-whisper in torch (eager, torch.compile)
                     and the built-in MAX encoder as one graph, each seen as a black-box candidate
  configurations.py  candidate specs x precisions x attention forms -> built configurations
  measure.py         the benchmark: each configuration's fidelity (an examination) and speed per batch
  frontier.py        the fast-and-faithful frontier of its document
  wall.py            whole-run timings: transcriptions, and `compare --layer all` in process
"""
