"""The sweep's statistics (cmaes_inproc/liveness.py) on constructed numbers: each verdict where it belongs.

Three seeds, a baseline of about 2.0, and nudge effects of about 1e-4 (the chaos floor) unless a test says otherwise.
"""

import math

import pytest

from cmaes_inproc.liveness import (ARMS, FLOOR_MULTIPLE, MIN_T, Liveness, arm_stats, chaos_floor, knob_liveness,
                                   paired_effects, sweep_stats)
from cmaes_inproc.params import PARAM_SPECS

SEEDS = (1, 2, 3)
BASE = {1: 2.0, 2: 2.1, 3: 1.9}
CHAOS = (1e-4, -1e-4, 1e-4)  # one nudge's relative effect per seed: the floor is 1e-4 exactly


def scores(effects, base=BASE) -> dict[int, float]:
    """{seed: score} with the given relative effect on each seed (NaN: a failed evaluation)."""
    return {s: base[s] * (1 + e) for s, e in zip(SEEDS, effects)}


def sweep(low, high, knobs=("k0", "k1", "k2")):
    """Every knob with the same low and high effects and the CHAOS nudge; the first knob's stats and the floor."""
    arms = {k: {"low": scores(low), "high": scores(high), "nudge": scores(CHAOS)} for k in knobs}
    result = sweep_stats(BASE, arms)
    return result.knobs[knobs[0]], result.floor


def test_paired_effect_is_relative_to_the_baseline_on_the_same_seed():
    effects = paired_effects({1: 2.2, 2: 2.1, 3: math.nan}, {1: 2.0, 2: 2.0, 3: 2.0})
    assert effects == pytest.approx({1: 0.1, 2: 0.05})  # seed 3 failed: left out


def test_arm_statistics_are_mean_standard_error_and_t():
    a = arm_stats([0.01, 0.02, 0.03], floor=0.003)
    assert a.n_seeds == 3 and a.mean == pytest.approx(0.02)
    assert a.se == pytest.approx(0.01 / math.sqrt(3)) and a.t == pytest.approx(0.02 / (0.01 / math.sqrt(3)))
    assert a.floor_se == pytest.approx(0.003 / math.sqrt(3))


def test_the_chaos_floor_is_the_root_mean_square_of_the_nudge_effects():
    assert chaos_floor([3e-4, -4e-4]) == pytest.approx(math.sqrt((9e-8 + 16e-8) / 2))
    assert math.isnan(chaos_floor([]))


def test_a_clean_effect_is_alive():
    knob, floor = sweep(low=(0.050, 0.052, 0.049), high=(0.0, 0.0, 0.0))
    assert floor == pytest.approx(1e-4)
    low = knob.arms["low"]
    assert abs(low.t) >= MIN_T and abs(low.mean) >= FLOOR_MULTIPLE * floor / math.sqrt(3)
    assert knob.verdict is Liveness.ALIVE


def test_an_effect_the_size_of_chaos_is_not_distinguishable():
    knob, floor = sweep(low=(1.2e-4, -0.8e-4, 0.5e-4), high=(-1e-4, 0.3e-4, 1.1e-4))
    assert knob.verdict is Liveness.NOT_DISTINGUISHABLE, knob.arms


def test_a_consistent_but_tiny_effect_is_weak():
    """Significant (t is large) but no bigger than what chaos alone gives a 3-seed mean."""
    knob, floor = sweep(low=(2.0e-5, 2.1e-5, 1.9e-5), high=(0.0, 0.0, 0.0))
    low = knob.arms["low"]
    assert low.significant and not low.above_floor
    assert knob.verdict is Liveness.WEAK


def test_a_large_but_inconsistent_effect_is_weak():
    """Far above the floor on average, but its own spread across seeds is as large as its mean."""
    knob, _ = sweep(low=(0.03, -0.01, 0.02), high=(0.0, 0.0, 0.0))
    low = knob.arms["low"]
    assert low.above_floor and not low.significant
    assert knob.verdict is Liveness.WEAK


def test_a_failed_seed_is_left_out_and_reduces_n_seeds():
    knob, _ = sweep(low=(0.050, math.nan, 0.049), high=(0.0, 0.0, 0.0))
    low = knob.arms["low"]
    assert low.n_seeds == 2 and sorted(knob.effects["low"]) == [1, 3]
    assert low.floor_se == pytest.approx(1e-4 / math.sqrt(2))  # chaos averaged over the same two seeds
    assert knob.arms["high"].n_seeds == 3


def test_a_failed_baseline_seed_is_left_out_of_every_arm():
    arms = {"k": {"low": scores((0.05, 0.05, 0.05)), "high": scores((0.0, 0.0, 0.0)), "nudge": scores(CHAOS)}}
    result = sweep_stats({**BASE, 2: math.nan}, arms)
    assert {arm: s.n_seeds for arm, s in result.knobs["k"].arms.items()} == {"low": 2, "high": 2, "nudge": 2}


def test_an_arm_with_one_finished_seed_has_no_standard_error_and_cannot_be_alive():
    knob, _ = sweep(low=(0.05, math.nan, math.nan), high=(math.nan, math.nan, math.nan))
    low, high = knob.arms["low"], knob.arms["high"]
    assert low.n_seeds == 1 and math.isnan(low.se) and math.isnan(low.t) and not low.significant
    assert high.n_seeds == 0 and math.isnan(high.mean) and not high.above_floor
    assert knob.verdict is Liveness.WEAK  # far above the floor, but one seed cannot show it is not chaos


def test_identical_effects_on_every_seed_have_an_infinite_t_and_no_effect_has_none():
    assert arm_stats([0.01, 0.01, 0.01], 1e-4).t == math.inf
    zero = arm_stats([0.0, 0.0, 0.0], 1e-4)
    assert math.isnan(zero.t) and knob_liveness([zero, zero]) is Liveness.NOT_DISTINGUISHABLE


def test_without_a_measured_floor_no_knob_is_alive():
    """If every nudged run failed, the floor is unknown: nothing can be shown to stand out from chaos."""
    nan3 = {s: math.nan for s in SEEDS}
    arms = {"k": {"low": scores((0.05, 0.051, 0.049)), "high": scores((0.0, 0.0, 0.0)), "nudge": nan3}}
    result = sweep_stats(BASE, arms)
    assert math.isnan(result.floor) and result.knobs["k"].verdict is Liveness.WEAK


def test_the_verdict_words_are_the_enum_values():
    assert [v.value for v in Liveness] == ["alive", "weak", "not distinguishable"]
    assert f"{Liveness.ALIVE}" == "alive" and ARMS == ("low", "high", "nudge")


@pytest.mark.parametrize("ps", PARAM_SPECS, ids=lambda ps: ps.name)
def test_a_nudge_moves_the_knob_by_the_fraction_of_its_range_in_x_space_inside_the_bounds(ps):
    for x in (ps.low, (ps.low + ps.high) / 2, ps.high):
        nudged = ps.encode(ps.nudge(ps.decode(x), 1e-6))
        step = 1e-6 * (ps.high - ps.low)
        assert ps.low <= nudged <= ps.high
        assert abs(nudged - x) == pytest.approx(step, rel=1e-6)
        assert (nudged < x) == (x + step > ps.high)  # downward only at the high edge
