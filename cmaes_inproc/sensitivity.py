"""The one-at-a-time sensitivity sweep, measured against the chaos floor of training, as one run.

Every knob gets three arms, each changing one field of the base config and nothing else (no encode/decode round trip
of the other knobs, which could move a log10 knob by an ulp): the knob at the low edge of its range, at the high
edge, and nudged by `sensitivity_nudge` of its range (the chaos floor: liveness.py says why). The baseline and all
30 arms are trained on the same `sensitivity_seeds` seeds and requested at once, so the batched evaluator trains them
as a few large populations; a resumed run trains only what controls.csv does not hold yet. The statistics and each
knob's verdict are liveness.py's; the result is a `SensitivityResult` with a row per knob and arm.
"""

from __future__ import annotations

import math
import statistics

from nanochat.config import SynapticConfig

from .liveness import ARMS, sweep_stats
from .params import PARAM_SPECS, ParamSpec
from .records import ControlRecord, PilotResult, SensitivityResult, SensitivityRow
from .run import ControlSlot, Run


def arm_value(ps: ParamSpec, arm: str, base: SynapticConfig, nudge: float) -> float:
    """The knob's value in an arm: an edge of its range, or the base value nudged by `nudge` of the range."""
    if arm == "low":
        return ps.decode(ps.low)
    if arm == "high":
        return ps.decode(ps.high)
    return ps.nudge(getattr(base, ps.name), nudge)


def sweep_arms(base: SynapticConfig, nudge: float) -> list[tuple[str, str, float]]:
    """(knob, arm, value) of every arm, knob by knob in PARAM_SPECS order, arms in ARMS order."""
    return [(ps.name, arm, arm_value(ps, arm, base, nudge)) for ps in PARAM_SPECS for arm in ARMS]


def arm_label(knob: str, arm: str) -> str:
    return f"{knob}_{arm}"


def run_sensitivity(run: Run, hooks) -> PilotResult:
    spec, layout, history = run.spec, run.layout, run.history
    seeds = spec.sensitivity_seed_list
    arms = sweep_arms(spec.base_synaptic, spec.sensitivity_nudge)
    hooks.started(len(seeds) * (1 + len(arms)))
    requests = run.baseline_requests()
    for knob, arm, value in arms:
        requests += run.control_requests(ControlSlot("sensitivity", arm_label(knob, arm)),
                                         layout.sensitivity_dir(knob, arm), spec.base_synaptic.replace(**{knob: value}),
                                         seeds)
    run.evaluate(requests, hooks)
    result = PilotResult(layout.root, spec, [], history.controls(), sensitivity=sweep_result(run, arms))
    hooks.finished(result)
    return result


def sweep_result(run: Run, arms: list[tuple[str, str, float]]) -> SensitivityResult:
    """The sweep's statistics from the recorded controls: a failed evaluation counts as a missing score."""
    history, seeds = run.history, run.spec.sensitivity_seed_list
    baseline = _scores(history.control_by_seed("baseline"), seeds)
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for knob, arm, _ in arms:
        scores.setdefault(knob, {})[arm] = _scores(history.control_by_seed("sensitivity", arm_label(knob, arm)), seeds)
    stats = sweep_stats(baseline, scores)
    rows = []
    for knob, arm, value in arms:
        a = stats.knobs[knob].arms[arm]
        rows.append(SensitivityRow(knob=knob, arm=arm, value=value, n_seeds=a.n_seeds, mean_rel_effect=a.mean,
                                   se=a.se, t=a.t, floor_se=a.floor_se, verdict=stats.knobs[knob].verdict))
    ok = [v for v in baseline.values() if math.isfinite(v)]
    noise = statistics.stdev(ok) / statistics.fmean(ok) if len(ok) > 1 else math.nan
    failures = [c for c in history.controls() if c.seed in seeds and not c.status.ok]
    return SensitivityResult(rows, seeds, baseline, stats, noise, failures)


def _scores(controls: dict[int, ControlRecord], seeds: list[int]) -> dict[int, float]:
    """{seed: score} on the sweep's seeds; NaN for an evaluation that did not finish (its score is the penalty)."""
    return {s: controls[s].score if s in controls and controls[s].status.ok else math.nan for s in seeds}
