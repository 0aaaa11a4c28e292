"""The Go/No-Go decision, computed from numbers measured in the same run (never boilerplate).

Inputs: the baseline (default config) and the best candidate, each evaluated on the same seeds (the eval seeds, which
every candidate used, plus the held-out noise seeds), and the statuses of all CMA-ES candidate evaluations.

GO only if all of these hold (otherwise NO-GO, with every failed criterion as a reason):

1. failures are rare: failed candidate evaluations / all candidate evaluations <= `max_failure_rate` (10%);
2. the confirmed improvement (mean over seeds of the paired relative improvement of best over baseline) is
   >= `go_threshold` (1%);
3. it exceeds the measured seed noise (relative sample std of the baseline score across seeds): a smaller gain
   could be luck of the seed, which the search itself (one common eval seed) cannot tell apart;
4. the best is not pathological: it finished on every seed and its loss curves neither explode nor rise at the end;
5. on the held-out seeds (the noise seeds: they took no part in selecting the best), the paired relative improvement
   has a mean >= `go_threshold` and a 95% confidence interval whose lower bound is above zero. The interval is a
   two-sided Student t-interval, mean +- t(0.975, n-1) * sd / sqrt(n) over the n held-out seeds, so it needs n >= 2.

Why criterion 5 beside 2: the best was chosen because it scored lowest on the eval seeds, so its improvement there is
biased upwards (the best of many noisy draws); seeds that played no part in the choice give an unbiased estimate, and
the interval says how far seed noise alone could move it.

The baseline itself must have finished on every seed, or nothing can be compared.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from nanochat.status import Status

from .formatting import format_pct

MAX_FAILURE_RATE = 0.10
DEFAULT_GO_THRESHOLD = 0.01
EXPLODE_FACTOR = 1.5  # a loss above 1.5x the first loss means the run blew up, even if it recovered
RISE_TOLERANCE = 0.05  # the smoothed curve ends >5% above its smoothed minimum: training made things worse
MIN_STEPS_FOR_SHAPE = 4  # fewer steps than this carry no curve shape to judge
INTERVAL_METHOD = "two-sided 95% Student t-interval over the held-out seeds (n-1 degrees of freedom)"
# t(0.975, dof): a table (no scipy); between entries the next smaller dof is used, which widens the interval.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


@dataclass(frozen=True)
class SeedResult:
    """One evaluation's numbers as the verdict needs them."""

    score: float
    status: Status
    losses: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return Status(self.status).ok and math.isfinite(self.score)


@dataclass(frozen=True)
class Criterion:
    name: str
    value: str
    threshold: str
    passed: bool


@dataclass
class Verdict:
    go: bool
    reasons: list[str]  # why NO-GO (empty for GO)
    criteria: list[Criterion]
    eval_seed: int
    seeds: list[int]
    baseline_score: float  # on the eval seed (what the search compared against)
    best_score: float  # best candidate's search score on the eval seed
    search_improvement: float  # relative, on the eval seed (selection-biased: the best of many on this seed)
    confirmed_improvement: float  # mean paired relative improvement over all seeds (NaN if not measurable)
    seed_noise: float  # relative std of the baseline score across seeds (NaN with a single seed)
    paired: list[dict] = field(default_factory=list)  # per seed: baseline, best, rel_improvement
    paired_std: float = math.nan
    wins: int = 0
    failure_rate: float = math.nan
    failures: int = 0
    evaluations: int = 0
    score_spread: float = math.nan  # (max - min) / |min| of the finished candidates' scores: 0 means flat
    pathologies: dict[str, list[str]] = field(default_factory=dict)  # "best seed_124" -> problems
    eval_seeds: list[int] = field(default_factory=list)  # the seeds the search selected on
    heldout_seeds: list[int] = field(default_factory=list)  # the others: the interval's seeds
    heldout_improvement: float = math.nan  # mean paired relative improvement on the held-out seeds (unbiased)
    interval_low: float = math.nan  # its 95% confidence interval (NaN with fewer than 2 held-out seeds)
    interval_high: float = math.nan
    interval_method: str = INTERVAL_METHOD

    @property
    def label(self) -> str:
        return "GO" if self.go else "NO-GO"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["label"] = self.label
        return out


def loss_curve_pathologies(losses: Sequence[float]) -> list[str]:
    """Problems with one loss curve: non-finite values, explosion, or a rise at the end."""
    problems: list[str] = []
    if not losses:
        return ["no losses recorded"]
    if any(not math.isfinite(v) for v in losses):
        problems.append("non-finite loss")
        return problems
    first, peak = losses[0], max(losses[1:], default=losses[0])
    if peak > EXPLODE_FACTOR * first:
        problems.append(f"exploding: peak loss {peak:.4g} > {EXPLODE_FACTOR:g}x first loss {first:.4g}")
    if len(losses) >= MIN_STEPS_FOR_SHAPE:
        smooth = _moving_average(losses, max(1, len(losses) // 10))  # per-batch difficulty varies: smooth it
        lowest, end = min(smooth), smooth[-1]
        if end > lowest * (1 + RISE_TOLERANCE):
            problems.append(f"rising: smoothed loss ends at {end:.4g}, {100 * (end / lowest - 1):.1f}% above its "
                            f"minimum {lowest:.4g}")
    return problems


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided 95% Student t-interval of the mean; NaNs unless >= 2 finite values."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return (statistics.fmean(values) if values and all(map(math.isfinite, values)) else math.nan,
                math.nan, math.nan)
    dof = len(values) - 1
    t = _T975[max(k for k in _T975 if k <= dof)] if dof <= 120 else 1.960
    mean = statistics.fmean(values)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _heldout_criterion(mean: float, low: float, high: float, go_threshold: float) -> tuple[Criterion, list[str]]:
    """Criterion 5 (see the module docstring) and its reasons for NO-GO."""
    reasons = []
    if not math.isfinite(low):
        reasons.append("the held-out improvement's interval could not be measured (needs >= 2 held-out noise seeds "
                       "on which best and baseline finished)")
    else:
        if low <= 0:
            where = "includes zero" if high >= 0 else "lies below zero"
            reasons.append(f"the 95% interval of the held-out improvement [{format_pct(low, signed=True)}, "
                           f"{format_pct(high, signed=True)}] {where}")
        if mean < go_threshold:
            reasons.append(f"held-out improvement {format_pct(mean, signed=True)} is below the threshold "
                           f"{format_pct(go_threshold)}")
    value = (f"{format_pct(mean, signed=True)} [{format_pct(low, signed=True)}, {format_pct(high, signed=True)}]"
             if math.isfinite(low) else "not measured")
    return Criterion("held-out improvement, 95% t-interval", value, f"low > 0, mean >= {format_pct(go_threshold)}",
                     not reasons), reasons


def compute_verdict(
    *,
    eval_seed: int,
    eval_seeds: Sequence[int] | None = None,
    baseline: Mapping[int, SeedResult],
    confirm: Mapping[int, SeedResult],
    best_score: float,
    candidate_statuses: Sequence[Status],
    candidate_scores: Sequence[float] = (),
    go_threshold: float = DEFAULT_GO_THRESHOLD,
    max_failure_rate: float = MAX_FAILURE_RATE,
) -> Verdict:
    """Decide GO / NO-GO; see the module docstring for the criteria. `eval_seeds` (default: just `eval_seed`) are
    the seeds the search selected on; every other seed of `baseline` is held out."""
    selection = list(eval_seeds) if eval_seeds is not None else [eval_seed]
    seeds = sorted(baseline, key=lambda s: (s not in selection, s))  # eval seeds first, then the noise seeds
    reasons: list[str] = []
    criteria: list[Criterion] = []

    evaluations = len(candidate_statuses)
    failures = sum(1 for s in candidate_statuses if not Status(s).ok)
    failure_rate = failures / evaluations if evaluations else math.nan
    rate_ok = evaluations > 0 and failure_rate <= max_failure_rate
    criteria.append(Criterion("failure rate", f"{format_pct(failure_rate)} ({failures}/{evaluations})",
                              f"<= {format_pct(max_failure_rate)}", rate_ok))
    if not rate_ok:
        reasons.append(f"failure rate {format_pct(failure_rate)} ({failures}/{evaluations} candidate evaluations) "
                       f"exceeds {format_pct(max_failure_rate)}" if evaluations else "no candidate was evaluated")

    on_selection = [baseline.get(s) for s in selection]
    baseline_score = (statistics.fmean(b.score for b in on_selection)
                      if all(b is not None and b.ok for b in on_selection) else math.nan)
    search_improvement = _rel_improvement(baseline_score, best_score)
    failed_baseline = [s for s in seeds if not baseline[s].ok]
    if failed_baseline:
        reasons.append(f"the baseline itself failed on seed(s) {', '.join(map(str, failed_baseline))}")

    paired, rel = [], []
    for s in seeds:
        b, c = baseline[s], confirm.get(s)
        r = _rel_improvement(b.score, c.score) if (b.ok and c is not None and c.ok) else math.nan
        paired.append({"seed": s, "baseline": b.score if b.ok else math.nan,
                       "best": c.score if (c is not None and c.ok) else math.nan, "rel_improvement": r})
        rel.append(r)
    measurable = bool(confirm) and all(math.isfinite(r) for r in rel)
    confirmed = statistics.fmean(rel) if measurable else math.nan
    paired_std = statistics.stdev(rel) if measurable and len(rel) > 1 else math.nan
    wins = sum(1 for r in rel if math.isfinite(r) and r > 0)

    ok_baseline = [baseline[s].score for s in seeds if baseline[s].ok]
    seed_noise = (statistics.stdev(ok_baseline) / statistics.fmean(ok_baseline)
                  if len(ok_baseline) > 1 else math.nan)

    improve_ok = math.isfinite(confirmed) and confirmed >= go_threshold
    criteria.append(Criterion("confirmed improvement", format_pct(confirmed), f">= {format_pct(go_threshold)}",
                              improve_ok))
    if not improve_ok:
        reasons.append("confirmed improvement could not be measured (best or baseline failed on some seed)"
                       if not math.isfinite(confirmed) else
                       f"confirmed improvement {format_pct(confirmed)} is below the threshold "
                       f"{format_pct(go_threshold)}")

    noise_ok = math.isfinite(confirmed) and math.isfinite(seed_noise) and confirmed > seed_noise
    criteria.append(Criterion("improvement > seed noise", format_pct(confirmed), f"> {format_pct(seed_noise)}",
                              noise_ok))
    if not noise_ok:
        if not math.isfinite(seed_noise):
            reasons.append("seed noise was not measured (needs --noise-seeds >= 1 and a baseline that finishes)")
        elif math.isfinite(confirmed):
            reasons.append(f"confirmed improvement {format_pct(confirmed)} does not exceed the seed noise "
                           f"{format_pct(seed_noise)}")

    pathologies: dict[str, list[str]] = {}
    for s in seeds:
        c = confirm.get(s)
        if c is None:
            pathologies[f"best seed_{s}"] = ["not evaluated"]
            continue
        problems = ([] if c.ok else [f"status {c.status}"]) + (loss_curve_pathologies(c.losses) if c.losses else [])
        if problems:
            pathologies[f"best seed_{s}"] = problems
    for s in seeds:  # the baseline's shape is reported for context; it does not decide the verdict
        problems = loss_curve_pathologies(baseline[s].losses) if baseline[s].losses else []
        if problems:
            pathologies[f"baseline seed_{s}"] = problems
    best_problems = {k: v for k, v in pathologies.items() if k.startswith("best")}
    sane = bool(confirm) and not best_problems
    criteria.append(Criterion("best not pathological", "ok" if sane else "; ".join(
        f"{k}: {', '.join(v)}" for k, v in best_problems.items()) or "no confirmation", "no failure, explosion or rise",
        sane))
    if not sane:
        reasons.append("the best candidate is pathological: " + ("; ".join(
            f"{k}: {', '.join(v)}" for k, v in best_problems.items()) or "it was not confirmed"))

    # Not a criterion of its own (a flat search fails the improvement test anyway), but the most useful diagnosis:
    # identical scores mean the objective cannot tell candidates apart (e.g. a one-step budget).
    finished = [s for s, st in zip(candidate_scores, candidate_statuses) if Status(st).ok and math.isfinite(s)]
    spread = (max(finished) - min(finished)) / abs(min(finished)) if len(finished) > 1 and min(finished) else math.nan
    if len(finished) > 1 and spread == 0:
        reasons.append(f"scores are flat: all {len(finished)} finished candidates scored exactly {finished[0]!r}, "
                       "so the objective cannot tell candidates apart (is the budget only a step or two?)")

    heldout = [s for s in seeds if s not in selection]
    heldout_mean, low, high = t_interval([r for s, r in zip(seeds, rel) if s in heldout])
    heldout_criterion, heldout_reasons = _heldout_criterion(heldout_mean, low, high, go_threshold)
    criteria.append(heldout_criterion)
    reasons += heldout_reasons

    go = rate_ok and improve_ok and noise_ok and sane and not failed_baseline and heldout_criterion.passed
    return Verdict(go=go, reasons=[] if go else reasons, criteria=criteria, eval_seed=eval_seed, seeds=seeds,
                   baseline_score=baseline_score, best_score=best_score, search_improvement=search_improvement,
                   confirmed_improvement=confirmed, seed_noise=seed_noise, paired=paired, paired_std=paired_std,
                   wins=wins, failure_rate=failure_rate, failures=failures, evaluations=evaluations,
                   score_spread=spread, pathologies=pathologies, eval_seeds=selection, heldout_seeds=heldout,
                   heldout_improvement=heldout_mean, interval_low=low, interval_high=high)


def _rel_improvement(baseline: float, best: float) -> float:
    """(baseline - best) / |baseline|: positive when the best has the lower (better) score."""
    if not (math.isfinite(baseline) and math.isfinite(best)) or baseline == 0:
        return math.nan
    return (baseline - best) / abs(baseline)
