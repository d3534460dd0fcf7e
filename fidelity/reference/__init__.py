"""The reference: openai-whisper's own encoder, in float64 (the truth) and in a candidate's precision (the floor)."""
