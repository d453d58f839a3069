"""The partners' scenarios, run by `python -m conformance` against the server it starts."""
