"""Corpus sweeps: the comparison over many clips and configurations, on Ray (`python -m fidelity.corpus`)."""
