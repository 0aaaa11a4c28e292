"""Issue 9: the library names parameters, `python -m nanochat.train` names its flags."""

import argparse

import pytest

from nanochat.cli_args import add_model_args, add_training_args, flag_names
from nanochat.config import ConfigError, ModelConfig, TrainConfig
from nanochat.data import load_corpus
from nanochat.train import build_parser, main


def test_train_and_model_config_errors_carry_their_field():
    with pytest.raises(ConfigError) as e:
        TrainConfig(target_flops=0.0)
    assert e.value.field == "target_flops" and str(e.value) == "target_flops must be a positive number, got 0.0"
    with pytest.raises(ConfigError) as e:
        TrainConfig(warmdown_frac=2.0)
    assert e.value.field == "warmdown_frac" and str(e.value) == "warmdown_frac must be in [0, 1], got 2.0"
    with pytest.raises(ConfigError) as e:
        ModelConfig(n_embd=100, n_head=3, n_kv_head=3)
    assert e.value.field == "n_embd" and str(e.value) == "n_embd (100) must be divisible by n_head (3)"
    with pytest.raises(ConfigError) as e:
        ModelConfig(n_layer=0)
    assert e.value.field == "n_layer"


def test_data_errors_name_the_parameter_not_a_flag(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_corpus(tmp_path / "missing")
    assert e.value.field == "data" and str(e.value).startswith("data path does not exist: ")
    with pytest.raises(ConfigError) as e:
        load_corpus(tmp_path)
    assert e.value.field == "data" and "--" not in str(e.value)


def test_flag_names_maps_dests_to_long_flags():
    p = argparse.ArgumentParser()
    p.add_argument("-s", "--seed", type=int)
    p.add_argument("pos")
    add_model_args(p)
    add_training_args(p)
    names = flag_names(p)
    assert names["seed"] == "--seed" and names["target_flops"] == "--target-flops"
    assert names["cuda_graph"] == "--no-cuda-graph" and names["sequence_len"] == "--sequence-len"
    assert "pos" not in names and "help" not in names
    train_names = flag_names(build_parser())
    assert train_names["data"] == "--data" and train_names["out_dir"] == "--out-dir"


@pytest.mark.parametrize("argv,line", [
    (["--target-flops", "0"], "nanochat.train: error: --target-flops must be a positive number, got 0.0"),
    (["--warmdown-frac", "2"], "nanochat.train: error: --warmdown-frac must be in [0, 1], got 2.0"),
    (["--n-embd", "100", "--n-head", "3", "--n-kv-head", "3"],
     "nanochat.train: error: --n-embd (100) must be divisible by n_head (3)"),
])
def test_cli_names_its_flags(tmp_path, capsys, argv, line):
    assert main([*argv, "--out-dir", str(tmp_path / "o"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_cli_names_data_flag(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nanochat.train: error: --data path does not exist: {tmp_path / 'nope'}"


@pytest.mark.parametrize("argv,line", [
    (["--run-id", "../x"], "nanochat.train: error: --run-id must be a plain directory name, got '../x'"),
    (["--seed", "-1"], "nanochat.train: error: --seed must be an integer in [0, 4294967295], got -1"),
])
def test_cli_names_its_own_flags_for_its_own_checks(tmp_path, capsys, argv, line):
    assert main([*argv, "--artifacts-dir", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
