"""Every searched knob is alive: at an edge of its range it moves the score more than chaos.

Training is chaotic (nudging a knob by 1e-6 of its range moves the final score a little), so a knob that changes the
score on one seed proves nothing. This is the pilot's sensitivity sweep (`python -m cmaes_inproc --sensitivity`) on
a model and budget small enough for CI, with the very same arms and statistics (cmaes_inproc/sensitivity.py,
cmaes_inproc/liveness.py): one population of 93 members, the baseline and each knob at its low edge, its high edge
and nudged, each on the sweep's 3 default seeds. A knob is alive when at some edge its mean paired effect is at
least 3 standard errors from zero and at least 3 chaos standard errors in size. A knob that is not is a bug in the
model's wiring, not a finding.

All ten are alive on this model. The smallest effect is stochastic_train_frac's (it replaces a row's expected release
by a Binomial draw with the same mean, so it only adds variance to the state): +0.06% +- 0.01% (t 5.2) at the low
edge. Before the release edges were listed by key position (nanochat/edges.py) its draws fell on other edges and it
measured +0.04% +- 0.02% (t 1.7), weak; such a knob is near the line, and the test says which side it is on.
"""

import math

from nanochat.config import Member, TrainConfig
from nanochat.trainer import train_population
from cmaes_inproc.formatting import format_effect, format_pct, format_t
from cmaes_inproc.liveness import ARMS, EDGES, Liveness, SweepStats, sweep_stats
from cmaes_inproc.sensitivity import sweep_arms
from cmaes_inproc.spec import PilotSpec

TRAIN = TrainConfig(batch_size=4, max_steps=100, warmup_steps=5)


def liveness_table(stats: SweepStats) -> str:
    """Per knob: the verdict and the edge with the largest |t| (mean effect ± SE, t, the chaos standard error)."""
    lines = [f"chaos floor {format_pct(stats.floor)} per seed"]
    for knob, ks in stats.knobs.items():
        edge = max(EDGES, key=lambda e: abs(ks.arms[e].t) if not math.isnan(ks.arms[e].t) else -1.0)
        a = ks.arms[edge]
        lines.append(f"{knob:22s} {str(ks.verdict):20s} {edge:4s} {format_effect(a.mean, a.se):>22s} "
                     f"t {format_t(a.t):>6s}  chaos SE {format_pct(a.floor_se)}")
    return "\n".join(lines)


def test_every_knob_is_alive_against_the_chaos_floor(corpus, tiny_model, tiny_synaptic):
    spec = PilotSpec(sensitivity=True, base_synaptic=tiny_synaptic)  # the sweep's default seeds and nudge
    seeds = spec.sensitivity_seed_list
    arms = [("baseline", "", tiny_synaptic)]
    arms += [(knob, arm, tiny_synaptic.replace(**{knob: value}))
             for knob, arm, value in sweep_arms(tiny_synaptic, spec.sensitivity_nudge)]
    members = [Member(config, seed) for _, _, config in arms for seed in seeds]
    assert len(members) == 93
    result = train_population(members, tiny_model, TRAIN, corpus)
    assert all(m.ok for m in result.members), [m.failure_reason for m in result.members if not m.ok]

    scores = iter(m.score(spec.score_tail) for m in result.members)
    per_seed = {(knob, arm): {seed: next(scores) for seed in seeds} for knob, arm, _ in arms}
    baseline = per_seed.pop(("baseline", ""))
    knobs = dict.fromkeys(knob for knob, _ in per_seed)
    stats = sweep_stats(baseline, {knob: {arm: per_seed[knob, arm] for arm in ARMS} for knob in knobs})

    assert len(stats.knobs) == 10
    table = liveness_table(stats)
    not_alive = [knob for knob, ks in stats.knobs.items() if ks.verdict is not Liveness.ALIVE]
    assert not not_alive, f"knobs not alive against the chaos floor: {not_alive}\n{table}"
