"""Is a knob alive? The statistics of the sensitivity sweep, as pure functions of per-seed scores.

The sweep trains the baseline and, for every knob, three arms on the same K seeds: the knob at the low and at the
high edge of its range, and the knob *nudged* by a tiny fraction of its range. Training is chaotic: any change of
the trajectory, however small, moves the final score a little, so the nudged arms measure what chaos alone does.

* A paired effect is (score_arm_s - score_base_s) / score_base_s on one seed s (same seed, same batches).
* An arm's statistics over its seeds: the mean effect, its standard error (sample stdev / sqrt(n)) and t = mean / SE.
  A failed evaluation (of the arm or of the baseline on that seed) is left out, so n may be below K.
* The chaos floor is the root-mean-square of every nudge effect (all knobs, all seeds): the size of the effect chaos
  alone gives on one seed. A mean over n seeds of pure chaos has standard error floor / sqrt(n).
* A knob is **alive** when some edge has |t| >= MIN_T and |mean| >= FLOOR_MULTIPLE * floor / sqrt(n); **weak** when
  it is not alive but some edge passes one of the two; **not distinguishable** from chaos otherwise.

Scores come in as {seed: score}, with NaN (or no entry) for a failed evaluation; nothing here reads files or knows
about configs, so the pilot's sweep and the CI liveness test compute the very same numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Mapping, Sequence

EDGES = ("low", "high")  # the knob at each edge of its range: the arms a verdict is made from
NUDGE = "nudge"  # the knob moved by a tiny fraction of its range: the chaos floor's arm
ARMS = (*EDGES, NUDGE)

# |t| >= 3: the mean effect is three of its own standard errors away from zero. With K = 3 seeds (2 degrees of
# freedom) this alone is a loose test (two-sided p ~ 0.1), because the standard error is itself estimated from three
# numbers; hence the second criterion.
MIN_T = 3.0
# |mean| >= 3 chaos standard errors: pure chaos averaged over n seeds has standard error floor / sqrt(n), and the floor
# is measured on 10 x K nudged runs, a far steadier yardstick than one arm's own K-seed spread. An effect of chaos
# alone passes this about 0.3% of the time (if it were Gaussian).
FLOOR_MULTIPLE = 3.0


class Liveness(str, Enum):
    """A knob's verdict, written to sensitivity.csv and the reports as its plain value."""

    ALIVE = "alive"
    WEAK = "weak"
    NOT_DISTINGUISHABLE = "not distinguishable"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class ArmStats:
    """One arm's paired effects against the baseline, summarised over the seeds where both finished."""

    n_seeds: int
    mean: float  # mean relative effect (NaN with no seed)
    se: float  # sample stdev / sqrt(n) (NaN with fewer than 2 seeds)
    t: float  # mean / se (NaN when it cannot be computed; +-inf when se is 0 and the mean is not)
    floor_se: float  # chaos floor / sqrt(n): the standard error of a mean of pure chaos over the same n seeds

    @property
    def significant(self) -> bool:
        """|t| >= MIN_T (never with fewer than 2 seeds)."""
        return self.n_seeds >= 2 and abs(self.t) >= MIN_T

    @property
    def above_floor(self) -> bool:
        """|mean| >= FLOOR_MULTIPLE chaos standard errors (never when either is unmeasured)."""
        return abs(self.mean) >= FLOOR_MULTIPLE * self.floor_se


@dataclass(frozen=True)
class KnobStats:
    """A knob's arms (low, high, nudge), the per-seed effects they came from, and its verdict."""

    arms: dict[str, ArmStats]
    effects: dict[str, dict[int, float]]  # arm -> {seed: relative effect}, finished seeds only
    verdict: Liveness


@dataclass(frozen=True)
class SweepStats:
    floor: float  # root-mean-square of every nudge effect (NaN when no nudge finished)
    knobs: dict[str, KnobStats]  # in the order given


def paired_effects(arm: Mapping[int, float], baseline: Mapping[int, float]) -> dict[int, float]:
    """{seed: (arm - baseline) / baseline} on the seeds where both scores are finite, in seed order."""
    out = {}
    for seed in sorted(arm):
        a, b = arm[seed], baseline.get(seed, math.nan)
        if math.isfinite(a) and math.isfinite(b) and b != 0:
            out[seed] = (a - b) / b
    return out


def chaos_floor(nudge_effects: Iterable[float]) -> float:
    """Root-mean-square of the nudge effects: the typical size of a one-seed effect of chaos alone."""
    values = list(nudge_effects)
    return math.sqrt(statistics.fmean(v * v for v in values)) if values else math.nan


def arm_stats(effects: Sequence[float], floor: float) -> ArmStats:
    """Mean, standard error and t of an arm's effects, with the chaos floor's standard error over as many seeds."""
    n = len(effects)
    mean = statistics.fmean(effects) if n else math.nan
    se = statistics.stdev(effects) / math.sqrt(n) if n >= 2 else math.nan
    if se > 0:
        t = mean / se
    elif se == 0 and mean != 0:  # identical nonzero effects on every seed: no spread at all
        t = math.copysign(math.inf, mean)
    else:
        t = math.nan
    return ArmStats(n_seeds=n, mean=mean, se=se, t=t, floor_se=floor / math.sqrt(n) if n else math.nan)


def knob_liveness(edges: Iterable[ArmStats]) -> Liveness:
    """Alive if one edge passes both criteria, weak if one edge passes one, not distinguishable otherwise."""
    edges = list(edges)
    if any(e.significant and e.above_floor for e in edges):
        return Liveness.ALIVE
    if any(e.significant or e.above_floor for e in edges):
        return Liveness.WEAK
    return Liveness.NOT_DISTINGUISHABLE


def sweep_stats(baseline: Mapping[int, float], arms: Mapping[str, Mapping[str, Mapping[int, float]]]) -> SweepStats:
    """Every knob's statistics and verdict from per-seed scores: `baseline` {seed: score} and `arms` {knob: {arm:
    {seed: score}}} with the arms of ARMS; a failed evaluation is NaN or absent."""
    effects = {knob: {arm: paired_effects(by_arm[arm], baseline) for arm in ARMS} for knob, by_arm in arms.items()}
    floor = chaos_floor(e for by_arm in effects.values() for e in by_arm[NUDGE].values())
    knobs = {}
    for knob, by_arm in effects.items():
        stats = {arm: arm_stats(list(by_arm[arm].values()), floor) for arm in ARMS}
        knobs[knob] = KnobStats(stats, by_arm, knob_liveness(stats[e] for e in EDGES))
    return SweepStats(floor, knobs)
