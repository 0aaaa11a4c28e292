"""Benchmarks share the embedded corpus; run them alone (`pytest bench/ --benchmark-only`), never beside tests."""

import pytest

from nanochat.data import load_corpus


@pytest.fixture(scope="session")
def corpus():
    return load_corpus()
