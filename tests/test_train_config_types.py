"""TrainConfig given the wrong types by an API caller: a ConfigError naming the field, never a TypeError."""

import pytest

from nanochat.config import ConfigError, TrainConfig


@pytest.mark.parametrize("field,value", [
    ("learning_rate", "0.1"), ("matrix_lr", None), ("weight_decay", "0"), ("warmdown_frac", [0.3]),
    ("diverge_factor", True), ("time_limit_s", "10"), ("target_flops", True),
    ("warmup_steps", "2"), ("warmup_steps", 2.0), ("log_interval", None), ("max_steps", True), ("max_steps", "5"),
])
def test_wrong_types_are_config_errors_naming_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert e.value.field == field and str(e.value).startswith(f"{field} must be")


def test_good_values_still_pass():
    TrainConfig(max_steps=None, time_limit_s=None, learning_rate=1, weight_decay=0, warmdown_frac=0)
