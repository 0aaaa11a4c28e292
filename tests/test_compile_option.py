"""`TrainConfig.compile`: the parts of a step fused by torch.compile (the attention's chains, the Hebbian update and
the optimizer step; on CUDA also the presynaptic state step) compute what the eager step does.

Fused code may round differently (no bit-for-bit promise), so the checks are at float-rounding tolerance: compiled
against eager on a mixed population with stochastic release and a member made NaN at step 3, and a member alone
against the same member inside the compiled population (batch invariance). The first compile of a process takes
~10-20 s on CI's two cores, which is why these checks share one test.
"""

import math

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from nanochat import fused as fused_module
from nanochat import synaptic, trainer
from nanochat.cli_args import config_args
from nanochat.config import ConfigError, ModelConfig, TrainConfig
from nanochat.trainer import train_population

from helpers import parse_training_flags
from tiny import TRAINER_MODEL, TRAINER_SYNAPTIC, mixed_population

TOLERANCE = 1e-5


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_compiled_step_matches_eager_and_keeps_members_independent(corpus, nan_loss_at, monkeypatch):
    members = mixed_population(TRAINER_SYNAPTIC)[3:6]  # stochastic release on two, distinct seeds and knobs
    nan_loss_at(member=2, step=3)
    calls: dict[str, int] = {}

    def counted(fn):  # what the trainer hands to torch.compile, and how often the compiled version then runs
        fused = fused_module.compiled(fn)

        def call(*args):
            calls[fn.__name__] = calls.get(fn.__name__, 0) + 1
            return fused(*args)
        return call

    monkeypatch.setattr(trainer, "compiled", counted)

    def train(compile: bool, population):
        cfg = TrainConfig(batch_size=4, max_steps=5, warmup_steps=2, compile=compile)
        return train_population(population, TRAINER_MODEL, cfg, corpus, "cpu")

    torch._dynamo.reset()  # no compiled code from an earlier test counts
    eager, fused = train(False, members), train(True, members)
    for chain in (synaptic._logits_chain, synaptic._logits_chain_backward):  # compiled code exists, so it ran
        assert _debug_get_cache_entry_list(chain.__code__), chain.__name__
    assert calls == {"hebbian_update": 5, "step": 5}  # the Hebbian update and optimizer step, compiled, every step
    assert [m.status for m in fused.members] == [m.status for m in eager.members] == ["ok", "ok", "nan"]
    assert fused.members[2].failure_step == eager.members[2].failure_step == 3
    for f, e in zip(fused.members[:2], eager.members[:2]):
        assert len(f.losses) == len(e.losses) == 5
        assert max(_rel(a, b) for a, b in zip(f.losses, e.losses)) <= TOLERANCE

    alone = train(True, members[1:2]).members[0]
    assert alone.ok and all(math.isfinite(x) for x in alone.losses)
    assert max(_rel(a, b) for a, b in zip(alone.losses, fused.members[1].losses)) <= TOLERANCE


def test_compile_is_a_checked_flag_that_round_trips_to_the_subprocess():
    with pytest.raises(ConfigError, match="compile"):
        TrainConfig(compile="yes")
    assert parse_training_flags([]).compile is False
    on = parse_training_flags(["--compile"])
    assert on.compile is True
    flags = config_args(ModelConfig(), on)  # what a subprocess evaluation is given
    assert "--compile" in flags and "--no-cuda-graph" not in flags
    assert parse_training_flags(flags[flags.index("--batch-size"):]) == on
    assert "--compile" not in config_args(ModelConfig(), TrainConfig())
