"""What a pilot run is: every setting, its default and its check, in one dataclass (`PilotSpec`).

This is the one source of the pilot's defaults: `run_pilot(**settings)` builds a `PilotSpec` from its keyword
arguments, and `python -m cmaes_inproc` takes its flags' defaults and help from the same fields. Construction
validates every field and raises a one-line `ConfigError` naming the field (the CLI shows the flag instead).

`PilotSpec.results_dict()` is what `--resume` compares: a resumed run must have the very same search space, seeds,
budget, model, data and scoring, or its ledger would mix two different experiments. How the work is executed
(evaluator, `max_batch`, the Ray settings) is not part of it: batch invariance makes the results the same either way,
so a run started batched may be resumed sequentially (e.g. after an out-of-memory).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanochat.config import MAX_SEED, ConfigError, ModelConfig, SynapticConfig, TrainConfig, check_seed

from .params import PARAM_SPECS, check_inside_bounds
from .verdict import DEFAULT_GO_THRESHOLD

EVALUATOR_MODES = ("batched", "sequential", "ray")
SCORE_ON = ("train", "val")  # what a score measures: the last train losses, or the held-out validation loss
DEFAULT_VAL_BATCHES = 8  # validation batches measured when score_on="val" leaves val_batches at 0
MAX_NUDGE = 0.01  # the sweep's nudge must stay tiny: it measures chaos, not the knob's own (smooth) effect
DEFAULT_PENALTY = 1e3  # far above any cross-entropy of a byte model (ln 256 = 5.5); CMA-ES only uses ranks


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class PilotSpec:
    """All settings of a pilot run, validated on construction."""

    generations: int = field(default=2, metadata=_help("CMA-ES generations"))
    population_size: int = field(default=4, metadata=_help("candidates per generation"))
    sigma: float = field(default=0.2, metadata=_help(
        "initial CMA-ES step size as a fraction of each knob's range"))
    search_seed: int = field(default=0, metadata=_help("CMA-ES sampling (0 is an ordinary seed)"))
    eval_seed: int = field(default=123, metadata=_help("training seed shared by every candidate"))
    noise_seeds: int = field(default=2, metadata=_help(
        "held-out seeds (after the eval seeds) for the baseline and the best's confirmation"))
    go_threshold: float = field(default=DEFAULT_GO_THRESHOLD, metadata=_help(
        "confirmed relative improvement needed for GO (0.01 = 1%%)"))
    score_tail: int = field(default=3, metadata=_help("score = mean of the last N train losses"))
    penalty: float = DEFAULT_PENALTY  # the score of a failed evaluation (CMA-ES only uses ranks)
    sensitivity: bool = False  # instead of CMA-ES: each knob at each edge of its range vs the baseline
    sensitivity_seeds: int = field(default=3, metadata=_help(
        "seeds of the sensitivity sweep, the same for every arm (eval-seed, eval-seed+1, ...; at least 2)"))
    sensitivity_nudge: float = field(default=1e-6, metadata=_help(
        "the sensitivity sweep's chaos floor: each knob moved by this fraction of its range"))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    base_synaptic: SynapticConfig = field(default_factory=SynapticConfig)
    data: str | None = None  # None: nanochat's embedded corpus; else an absolute path
    device: str = field(default="cpu", metadata=_help("cpu, cuda or auto"))
    objective: str | None = None  # qualified name of a custom objective (it replaces training)
    # Phase 2 (issue 13); the defaults are Phase 1's, and results_dict() names these only when they differ from it
    eval_seeds: int = field(default=1, metadata=_help(
        "seeds every candidate is trained on (eval-seed, eval-seed+1, ...); its score is their mean"))
    score_on: str = "train"  # one of SCORE_ON (the CLI's --objective; `objective` is a custom Python objective)
    val_batches: int = field(default=0, metadata=_help(
        "held-out validation batches measured after training, recorded beside the train score (0: none; "
        f"--objective val uses {DEFAULT_VAL_BATCHES} if left at 0)"))
    # execution only (not compared on resume)
    evaluator: str = "batched"  # one of EVALUATOR_MODES
    max_batch: int = field(default=8, metadata=_help("most members trained at once by the batched evaluator"))
    # the Ray evaluator (cmaes_inproc/ray_evaluator.py); execution only, so --resume works across evaluators
    ray_address: str | None = field(default=None, metadata=_help(
        "Ray cluster to join (e.g. auto); none: start a local Ray for this run"))
    num_actors: int | None = field(default=None, metadata=_help(
        "Ray actors, each training one shard of a generation (none: one per GPU, or cores / cpus-per-actor)"))
    gpus_per_actor: float = field(default=1.0, metadata=_help("GPUs reserved by each Ray actor on CUDA"))
    cpus_per_actor: int = field(default=1, metadata=_help("CPU cores reserved by each Ray actor"))
    ray_max_retries: int = field(default=2, metadata=_help(
        "re-runs of a shard whose Ray actor or node was lost, before its rows are recorded as errors"))

    def __post_init__(self) -> None:
        _int("generations", self.generations, 1)
        _int("population_size", self.population_size, 2)
        if not 0 < _number("sigma", self.sigma) <= 1:
            raise ConfigError.about("sigma", f"is a fraction of each knob's range and must be in (0, 1], got "
                                             f"{self.sigma!r}")
        check_seed("search_seed", self.search_seed)
        check_seed("eval_seed", self.eval_seed)
        _int("eval_seeds", self.eval_seeds, 1)
        _int("noise_seeds", self.noise_seeds, 0)
        if self.eval_seed + self.eval_seeds - 1 + self.noise_seeds > MAX_SEED:  # seeds run on from eval_seed
            raise ConfigError.about("noise_seeds", f"takes the seeds past {MAX_SEED} (eval_seed {self.eval_seed} + "
                                                   f"{self.eval_seeds - 1 + self.noise_seeds})")
        self._check_score_on()
        if _number("go_threshold", self.go_threshold) < 0:
            raise ConfigError.about("go_threshold", f"must be >= 0, got {self.go_threshold!r}")
        _int("score_tail", self.score_tail, 1)
        _number("penalty", self.penalty)
        if not isinstance(self.sensitivity, bool):
            raise ConfigError.about("sensitivity", f"must be True or False, got {self.sensitivity!r}")
        _int("sensitivity_seeds", self.sensitivity_seeds, 2)  # a standard error needs two seeds
        if not 0 < _number("sensitivity_nudge", self.sensitivity_nudge) < MAX_NUDGE:
            raise ConfigError.about("sensitivity_nudge", f"is a fraction of each knob's range and must be in "
                                                         f"(0, {MAX_NUDGE:g}), got {self.sensitivity_nudge!r}")
        for name, cls in (("model", ModelConfig), ("train", TrainConfig), ("base_synaptic", SynapticConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError.about(name, f"must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        check_inside_bounds(self.base_synaptic)
        if self.sensitivity:
            _check_sweep(self)
        if self.data is not None:
            if not isinstance(self.data, (str, os.PathLike)):
                raise ConfigError.about("data", f"must be a path, got {type(self.data).__name__}")
            object.__setattr__(self, "data", str(Path(self.data).absolute()))
        if not isinstance(self.device, str):
            raise ConfigError.about("device", f"must be a string such as 'cpu', got {self.device!r}")
        if self.evaluator not in EVALUATOR_MODES:
            raise ConfigError.about("evaluator", f"must be one of {', '.join(EVALUATOR_MODES)}, got "
                                                 f"{self.evaluator!r}")
        _int("max_batch", self.max_batch, 1)
        if self.evaluator == "ray" and (self.val_batches or self.score_on != "train"):
            raise ConfigError.about("evaluator", "'ray' does not measure the validation loss yet; use 'batched' or "
                                                 "'sequential' with score_on='val' or val_batches")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError.about("ray_address", f"must be a non-empty string such as 'auto', got "
                                                   f"{self.ray_address!r}")
        if self.num_actors is not None:
            _int("num_actors", self.num_actors, 1)
        if _number("gpus_per_actor", self.gpus_per_actor) <= 0:
            raise ConfigError.about("gpus_per_actor", f"must be > 0, got {self.gpus_per_actor!r}")
        _int("cpus_per_actor", self.cpus_per_actor, 1)
        _int("ray_max_retries", self.ray_max_retries, 0)

    def _check_score_on(self) -> None:
        if self.score_on not in SCORE_ON:
            raise ConfigError.about("score_on", f"must be one of {', '.join(SCORE_ON)}, got {self.score_on!r}")
        _int("val_batches", self.val_batches, 0)
        if self.score_on == "val" and self.val_batches == 0:
            object.__setattr__(self, "val_batches", DEFAULT_VAL_BATCHES)
        if self.objective is not None and self.val_batches:
            raise ConfigError.about("score_on", "a custom objective does no training, so it has no validation loss")

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "PilotSpec":
        """A spec from keyword settings; an unknown name is a ConfigError (a typo must not fall back to a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**settings)

    @property
    def seeds(self) -> list[int]:
        """The eval seeds (shared by every candidate: common random numbers) followed by the held-out noise seeds:
        the seeds of the baseline and of the best's confirmation. With one eval seed: eval_seed, eval_seed + 1, ..."""
        return [self.eval_seed + k for k in range(self.eval_seeds + self.noise_seeds)]

    @property
    def sensitivity_seed_list(self) -> list[int]:
        """The sensitivity sweep's seeds, common to the baseline and every arm: eval_seed, eval_seed + 1, ..."""
        return [self.eval_seed + k for k in range(self.sensitivity_seeds)]

    @property
    def baseline_seeds(self) -> list[int]:
        """The seeds the baseline is trained on: the sweep's seeds in a sensitivity run (which has no noise seeds to
        confirm anything on), else `seeds`."""
        return self.sensitivity_seed_list if self.sensitivity else self.seeds

    @property
    def eval_seed_list(self) -> list[int]:
        """The seeds every candidate is trained on; its score is the mean over them."""
        return self.seeds[:self.eval_seeds]

    @property
    def heldout_seeds(self) -> list[int]:
        """The seeds that took no part in selecting the best: the verdict's interval is computed on these."""
        return self.seeds[self.eval_seeds:]

    @property
    def per_seed_ledger(self) -> bool:
        """Whether evaluations.csv is written: only when a Phase 2 option is on, so Phase 1 runs keep their files."""
        return self.eval_seeds > 1 or self.val_batches > 0

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
            **{name: getattr(self, name) for name in ("eval_seeds", "score_on", "val_batches")
               if getattr(self, name) != getattr(DEFAULTS, name)},  # a Phase 1 run dir still resumes
            **({"sensitivity_seeds": self.sensitivity_seeds, "sensitivity_nudge": self.sensitivity_nudge}
               if self.sensitivity else {}),  # a CMA-ES run dir still resumes
        }

    def execution_dict(self) -> dict:
        return {"evaluator": self.evaluator, "max_batch": self.max_batch, "ray_address": self.ray_address,
                "num_actors": self.num_actors, "gpus_per_actor": self.gpus_per_actor,
                "cpus_per_actor": self.cpus_per_actor, "ray_max_retries": self.ray_max_retries}


def _check_sweep(spec: PilotSpec) -> None:
    """What a sensitivity sweep needs beyond the fields' own checks."""
    if spec.eval_seeds > 1:
        raise ConfigError.about("eval_seeds", "applies to CMA-ES candidates only; the sensitivity sweep has its own "
                                              "number of seeds")
    if spec.eval_seed + spec.sensitivity_seeds - 1 > MAX_SEED:
        raise ConfigError.about("sensitivity_seeds", f"takes the seeds past {MAX_SEED} (eval_seed {spec.eval_seed} + "
                                                     f"{spec.sensitivity_seeds - 1})")
    for ps in PARAM_SPECS:  # a nudge lost to rounding would measure no chaos at all and lower the floor
        value = getattr(spec.base_synaptic, ps.name)
        if ps.nudge(value, spec.sensitivity_nudge) == value:
            raise ConfigError.about("sensitivity_nudge", f"{spec.sensitivity_nudge!r} is too small to move "
                                                         f"{ps.name} from {value!r}")


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError.about(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError.about(name, f"must be a finite number, got {value!r}")
    return float(value)


DEFAULTS = PilotSpec()  # the defaults, for the CLI's flags
