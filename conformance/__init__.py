"""The conformance suite: `python -m conformance` (see README.md)."""
