"""Benchmarks of sqlalchemy-outbox: `python -m bench` (see bench/__main__.py).

Not part of the test suite. Every headline figure is a ratio against a baseline measured in
the same run, on the same machine, against the same broker.
"""
