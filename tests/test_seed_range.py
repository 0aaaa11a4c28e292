"""Issue 10 row 16: seeds outside [0, MAX_SEED] are refused, never folded into another seed's stream."""

import subprocess
import sys

import numpy as np
import pytest

from nanochat.config import MAX_SEED, ConfigError, Member, TrainConfig, check_seed
from nanochat.synaptic import _derive_seed

BAD_SEEDS = [-1, MAX_SEED + 1, 2**63 - 1, 2**70, True, 1.0, "3", None]


@pytest.mark.parametrize("value", BAD_SEEDS, ids=repr)
def test_bad_seeds_are_refused_naming_the_field(value):
    with pytest.raises(ConfigError) as e:
        check_seed("eval_seed", value)
    assert e.value.field == "eval_seed" and str(e.value).startswith(f"eval_seed must be an integer in [0, {MAX_SEED}]")
    with pytest.raises(ConfigError) as e:
        Member(seed=value)
    assert e.value.field == "seed"
    with pytest.raises(ConfigError) as e:
        TrainConfig(data_seed=value)
    assert e.value.field == "data_seed"


def test_good_seeds_are_accepted():
    assert check_seed("s", 0) == 0 and check_seed("s", MAX_SEED) == MAX_SEED
    assert check_seed("s", np.int64(7)) == 7 and type(check_seed("s", np.int64(7))) is int
    assert Member(seed=MAX_SEED).seed == MAX_SEED and TrainConfig(data_seed=MAX_SEED).data_seed == MAX_SEED


def test_derived_seeds_do_not_wrap_in_range():
    """In the supported range the derivation is exact: 0 and MAX_SEED (and their streams) never collide."""
    derived = {_derive_seed(s, stream) for s in (0, 1, MAX_SEED - 1, MAX_SEED) for stream in (0, 1)}
    assert len(derived) == 8
    assert MAX_SEED * 1_000_003 + 7_919 < 2**63 - 1


@pytest.mark.parametrize("flag", ["--seed", "--data-seed"])
def test_cli_refuses_huge_seeds_in_one_line(tmp_path, flag):
    r = subprocess.run([sys.executable, "-m", "nanochat.train", flag, str(2**70), "--out-dir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanochat.train: error:") and f"[0, {MAX_SEED}]" in lines[0]
    assert not (tmp_path / "o").exists()
