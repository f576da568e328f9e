"""Fakes of the TTS engine wire protocols (ENGINES.md) for end-to-end tests and benchmarks.

See README.md in this folder; the entry point is fakes.engines.FakeEngine.
"""
