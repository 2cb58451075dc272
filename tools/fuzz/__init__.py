"""Fuzzing campaigns against the engine (issue 11): `python -m tools.fuzz.frames` throws
random and mutated frames at engines of every kind of service (tools/fuzz/frames.py)."""
