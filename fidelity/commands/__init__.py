"""The commands: each parses its arguments, builds a request, calls the library, prints and writes.

`python -m fidelity.compare` (compare.py), `fidelity.faults`, `fidelity.gate`, `fidelity.bench`,
`fidelity.sweep` (precision_sweep.py), `fidelity.floor_spread`, `fidelity.precompile`,
`fidelity.corpus` (corpus.py) and `fidelity.corpus.bench` (corpus_throughput.py); `cli.py` is
what they share (one-line errors, exit statuses, logging).
"""
