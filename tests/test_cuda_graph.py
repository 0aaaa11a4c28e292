"""The CUDA-graph step computes what the eager step computes (runs only where CUDA is available; CI has none).

On CPU the flag is accepted and ignored; those checks run everywhere.
"""

import math

import pytest
import torch

from nanochat.config import ConfigError, Member, ModelConfig, SynapticConfig, TrainConfig
from nanochat.trainer import train_population

from helpers import parse_training_flags
from tiny import TRAINER_MODEL as TINY
from tiny import TRAINER_SYNAPTIC, mixed_population as mixed_eight


def mixed_population() -> list[Member]:
    """Four members with stochastic release, and a fifth whose loss the tests make NaN at step 4."""
    return mixed_eight(TRAINER_SYNAPTIC)[4:] + [Member(TRAINER_SYNAPTIC, 7)]


def train(corpus, device, graph: bool, members=None, steps: int = 8):
    cfg = TrainConfig(batch_size=4, max_steps=steps, warmup_steps=2, cuda_graph=graph)
    return train_population(members or mixed_population(), TINY, cfg, corpus, device)


def test_cuda_graph_flag_is_ignored_on_cpu(corpus, nan_loss_at):
    nan_loss_at(member=4, step=4)
    graphed, eager = train(corpus, "cpu", True, steps=5), train(corpus, "cpu", False, steps=5)
    assert graphed.execution == eager.execution == "eager"
    assert [repr(m.losses) for m in graphed.members] == [repr(m.losses) for m in eager.members]  # NaN-aware
    assert graphed.members[-1].status == "nan" and graphed.members[-1].failure_step == 4


def test_cuda_graph_config_and_cli_flag():
    with pytest.raises(ConfigError, match="cuda_graph"):
        TrainConfig(cuda_graph="yes")
    assert parse_training_flags([]).cuda_graph is True
    assert parse_training_flags(["--no-cuda-graph"]).cuda_graph is False


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_graph_replay_matches_eager_steps(corpus, nan_loss_at):
    nan_loss_at(member=4, step=4)
    graphed, eager = train(corpus, "cuda", True), train(corpus, "cuda", False)
    assert graphed.execution == "replayed" and eager.execution == "eager"
    assert [m.status for m in graphed.members] == ["ok"] * 4 + ["nan"]
    assert graphed.members[-1].failure_step == 4
    for g, e in zip(graphed.members, eager.members):
        assert len(g.losses) == len(e.losses)
        for a, b in zip(g.losses, e.losses):
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6 * abs(b)


@cuda
def test_graph_replay_is_batch_invariant(corpus):
    members = mixed_population()[:4]
    batched = train(corpus, "cuda", True, members)
    for i, m in enumerate(members):
        alone = train(corpus, "cuda", True, [m]).members[0].losses
        assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(batched.members[i].losses, alone))
