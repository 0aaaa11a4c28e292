"""Shared fixtures: a model and budget small enough for CI's two cores, and the embedded corpus (loaded once)."""

import pytest

from nanochat.config import ModelConfig, SynapticConfig, TrainConfig
from nanochat.data import load_corpus


@pytest.fixture(scope="session")
def corpus():
    return load_corpus()


@pytest.fixture
def tiny_model():
    return ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64)


@pytest.fixture
def tiny_train():
    return TrainConfig(batch_size=4, max_steps=12, warmup_steps=2)


@pytest.fixture
def tiny_synaptic():
    return SynapticConfig(presyn_chunk=16)


# The same sizes as CLI flags, for tests that run `python -m nanochat.train`.
TINY_CLI_FLAGS = [
    "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--n-kv-head", "2", "--sequence-len", "64",
    "--batch-size", "4", "--warmup-steps", "2",
]
