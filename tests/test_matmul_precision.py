"""--matmul-precision: a TrainConfig field, a CLI flag, set for one training run only, and a no-op on CPU."""

import argparse

import pytest
import torch

from nanochat.cli_args import add_training_args, train_config_from_args
from nanochat.config import ConfigError, Member, TrainConfig
from nanochat.trainer import matmul_precision, train_population


def test_flag_reaches_the_train_config():
    ap = argparse.ArgumentParser()
    add_training_args(ap)
    assert train_config_from_args(ap.parse_args([]), None).matmul_precision == "highest"
    cfg = train_config_from_args(ap.parse_args(["--matmul-precision", "high"]), None)
    assert cfg.matmul_precision == "high" and cfg.to_dict()["matmul_precision"] == "high"


def test_unknown_level_is_a_config_error():
    with pytest.raises(ConfigError, match="matmul_precision must be one of highest, high"):
        TrainConfig(matmul_precision="medium")


def test_tf32_is_on_inside_the_run_only():
    before = torch.backends.cuda.matmul.allow_tf32
    with matmul_precision("high"):
        assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 == before
    with pytest.raises(RuntimeError), matmul_precision("high"):
        raise RuntimeError("a failed run restores the flag too")
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_cpu_losses_do_not_depend_on_it(corpus, tiny_model, tiny_synaptic):
    members = [Member(tiny_synaptic, 4)]
    runs = [train_population(members, tiny_model, TrainConfig(batch_size=2, max_steps=2, warmup_steps=1,
                                                                matmul_precision=level), corpus)
            for level in ("highest", "high")]
    assert runs[0].members[0].losses == runs[1].members[0].losses
    assert torch.backends.cuda.matmul.allow_tf32 is False
