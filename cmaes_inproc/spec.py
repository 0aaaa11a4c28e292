"""What a pilot run is: every setting that decides its results, validated up front, serialisable to run.json.

`PilotSpec.results_dict()` is what `--resume` compares: a resumed run must have the very same search space, seeds,
budget, model, data and scoring, or its ledger would mix two different experiments. How the work is executed
(batched or sequential, `max_batch`) is not part of it: batch invariance makes the results the same either way,
so a run started batched may be resumed sequentially (e.g. after an out-of-memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nanochat.config import ConfigError, ModelConfig, SynapticConfig, TrainConfig

from .evaluators import DEFAULT_PENALTY
from .params import PARAM_SPECS, check_inside_bounds
from .verdict import DEFAULT_GO_THRESHOLD

DEFAULT_SIGMA = 0.2  # in unit space: a fifth of every knob's range
DEFAULT_MAX_BATCH = 8
EVALUATOR_MODES = ("batched", "sequential")


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PilotSpec:
    """All inputs of a pilot run. Construction validates; errors are one-line `ConfigError`s naming the flag."""

    generations: int = 2
    population_size: int = 4
    sigma: float = DEFAULT_SIGMA
    search_seed: int = 0
    eval_seed: int = 123
    noise_seeds: int = 2
    go_threshold: float = DEFAULT_GO_THRESHOLD
    score_tail: int = 3
    penalty: float = DEFAULT_PENALTY
    sensitivity: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    base_synaptic: SynapticConfig = field(default_factory=SynapticConfig)
    data: str | None = None  # None: nanochat's embedded corpus
    device: str = "cpu"
    objective: str | None = None  # qualified name of a custom objective (it replaces training)
    # execution only (not compared on resume)
    evaluator: str = "batched"
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        _int("--generations", self.generations, 1)
        _int("--population-size", self.population_size, 2)
        if not _number("--sigma", self.sigma) > 0 or self.sigma > 1:
            raise ConfigError(f"--sigma is a fraction of each knob's range and must be in (0, 1], got {self.sigma!r}")
        _int("--search-seed", self.search_seed, 0)
        _int("--eval-seed", self.eval_seed, 0)
        _int("--noise-seeds", self.noise_seeds, 0)
        if _number("--go-threshold", self.go_threshold) < 0:
            raise ConfigError(f"--go-threshold must be >= 0, got {self.go_threshold!r}")
        _int("--score-tail", self.score_tail, 1)
        _number("penalty", self.penalty)
        if self.evaluator not in EVALUATOR_MODES:
            raise ConfigError(f"evaluator must be one of {', '.join(EVALUATOR_MODES)}, got {self.evaluator!r}")
        _int("--max-batch", self.max_batch, 1)
        for name, cls in (("model", ModelConfig), ("train", TrainConfig), ("base_synaptic", SynapticConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        check_inside_bounds(self.base_synaptic)

    @property
    def seeds(self) -> list[int]:
        """The eval seed (shared by every candidate: common random numbers) followed by the noise seeds."""
        return [self.eval_seed + k for k in range(self.noise_seeds + 1)]

    @property
    def mode(self) -> str:
        return "sensitivity" if self.sensitivity else "cma"

    def results_dict(self) -> dict:
        """The settings that decide results (compared by --resume)."""
        return {
            "mode": self.mode,
            "generations": self.generations,
            "population_size": self.population_size,
            "sigma": self.sigma,
            "search_seed": self.search_seed,
            "eval_seed": self.eval_seed,
            "noise_seeds": self.noise_seeds,
            "seeds": self.seeds,
            "go_threshold": self.go_threshold,
            "score_tail": self.score_tail,
            "penalty": self.penalty,
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
            "base_synaptic": self.base_synaptic.to_dict(),
            "data": self.data,
            "device": self.device,
            "objective": self.objective,
            "param_specs": [s.to_dict() for s in PARAM_SPECS],
        }

    def execution_dict(self) -> dict:
        return {"evaluator": self.evaluator, "max_batch": self.max_batch}
