"""Encoders under test: the protocol (`base`) and the candidates that implement it."""
