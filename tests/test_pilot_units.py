"""cmaes_inproc pieces that need no training: search space, CMA-ES wrapper, verdict, evaluator plumbing, artifacts."""

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from cmaes_inproc import PARAM_SPECS, ParamSpec, decode_vector, encode_config
from cmaes_inproc import ControlRecord, run_pilot
from cmaes_inproc.artifacts import Ledger, RunLayout, atomic_write_json, prepare_run_dir
from cmaes_inproc.evaluators import (BatchedEvaluator, EvalRequest, FallbackEvaluator, ObjectiveEvaluator, Scoring,
                                     SubprocessEvaluator)
from cmaes_inproc.liveness import Liveness
from cmaes_inproc.params import check_inside_bounds, unit_to_x, x_to_unit
from cmaes_inproc.records import SensitivityRow
from cmaes_inproc.search import CMASearch
from cmaes_inproc.verdict import SeedResult, compute_verdict, loss_curve_pathologies
from nanochat.config import ConfigError, ModelConfig, SynapticConfig, TrainConfig

# --- params ---------------------------------------------------------------------------------------------------------

SEED_TABLE = [  # the pilot document's table, verbatim
    ("tau_c", "linear", 0.70, 0.99), ("alpha_c", "linear", 0.10, 1.00), ("init_rrp", "linear", 1.0, 18.0),
    ("prime_rate", "linear", 0.01, 0.20), ("rec_rate", "linear", 0.01, 0.20), ("lambda_loge", "linear", 0.0, 4.0),
    ("barrier_strength", "linear", 0.0, 0.50), ("stochastic_train_frac", "linear", 0.0, 0.40),
    ("post_fast_lr", "log10", -4.5, -2.0), ("post_slow_lr", "log10", -5.5, -3.0),
]


def test_param_specs_match_the_seed_table():
    assert [(s.name, s.kind, s.low, s.high) for s in PARAM_SPECS] == SEED_TABLE


def test_decode_is_identity_or_power_of_ten():
    x = np.array([0.8, 0.5, 3.0, 0.1, 0.1, 2.0, 0.25, 0.2, -3.0, -4.0])
    knobs = decode_vector(x)
    assert knobs["tau_c"] == 0.8 and knobs["init_rrp"] == 3.0
    assert knobs["post_fast_lr"] == pytest.approx(1e-3, rel=1e-15)
    assert knobs["post_slow_lr"] == pytest.approx(1e-4, rel=1e-15)
    assert np.allclose(encode_config(SynapticConfig(**knobs)), x, rtol=0, atol=1e-12)


def test_default_config_is_inside_the_box_and_unit_scaling_round_trips():
    x0 = encode_config(SynapticConfig())
    u0 = x_to_unit(x0)
    assert np.all((u0 > 0) & (u0 < 1))
    assert np.allclose(unit_to_x(u0), x0, atol=1e-12)
    assert np.array_equal(unit_to_x([0.0] * 10), [s.low for s in PARAM_SPECS])
    assert np.array_equal(unit_to_x([1.5] * 10), [s.high for s in PARAM_SPECS])  # clipped into the box


def test_base_config_outside_the_bounds_is_rejected():
    with pytest.raises(ConfigError, match="init_rrp"):
        check_inside_bounds(SynapticConfig(init_rrp=30.0))
    with pytest.raises(ValueError):
        ParamSpec("x", "exp", 0, 1)


# --- CMA-ES wrapper ---------------------------------------------------------------------------------------------------


def _asks(seed: int, log_dir: Path, generations: int = 3) -> list[np.ndarray]:
    search = CMASearch(np.full(10, 0.5), 0.2, 4, seed, log_dir)
    out = []
    for _ in range(generations):
        points = search.ask()
        out.append(points)
        search.tell(points, [float(np.sum((p - 0.3) ** 2)) for p in points])
    return out


def test_search_is_reproducible_for_seed_zero_and_leaves_global_rng_and_cwd_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.random.seed(777)
    before = np.random.get_state()
    a, b = _asks(0, tmp_path / "a"), _asks(0, tmp_path / "b")
    c = _asks(1, tmp_path / "c")
    after = np.random.get_state()
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "seed 0 must not mean 'seed from the clock'"
    assert not np.array_equal(a[0], c[0])
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert list(tmp_path.iterdir()) == [], "pycma must not write outcmaes/ or anything else"
    assert all(((p >= 0) & (p <= 1)).all() for p in a)


def test_search_pickles_mid_run_and_continues_identically(tmp_path):
    search = CMASearch(np.full(10, 0.5), 0.2, 4, 3, tmp_path)
    points = search.ask()
    search.tell(points, list(range(4)))
    clone = pickle.loads(pickle.dumps(search))
    assert np.array_equal(search.ask(), clone.ask())


# --- verdict ----------------------------------------------------------------------------------------------------------

CURVE = tuple(5.5 - 0.02 * i for i in range(30))  # a healthy, falling loss curve


def _verdict(base, best, statuses=("ok",) * 10, **kw):
    seeds = range(100, 100 + len(base))
    return compute_verdict(
        eval_seed=100, baseline={s: SeedResult(v, "ok", CURVE) for s, v in zip(seeds, base)},
        confirm={s: (v if isinstance(v, SeedResult) else SeedResult(v, "ok", CURVE)) for s, v in zip(seeds, best)},
        best_score=best[0] if not isinstance(best[0], SeedResult) else best[0].score,
        candidate_statuses=list(statuses), **kw)


def test_verdict_go_when_confirmed_gain_beats_threshold_and_noise():
    v = _verdict([4.00, 4.02, 3.98], [3.90, 3.92, 3.88])
    assert v.go and v.label == "GO" and v.reasons == []
    assert v.confirmed_improvement == pytest.approx(0.025, rel=1e-2)
    assert v.seed_noise == pytest.approx(0.005, rel=1e-2) and v.wins == 3


def test_verdict_no_go_reasons():
    small = _verdict([4.0, 4.02, 3.98], [3.98, 4.0, 3.96])  # 0.5% gain
    assert not small.go and any("below the threshold" in r for r in small.reasons)
    noisy = _verdict([4.0, 4.4, 3.6], [3.9, 4.3, 3.5])  # 2.5% gain, 10% noise
    assert not noisy.go and any("does not exceed the seed noise" in r for r in noisy.reasons)
    failing = _verdict([4.0, 4.02, 3.98], [3.9, 3.92, 3.88], statuses=["ok"] * 8 + ["nan", "oom"])
    assert not failing.go and failing.failure_rate == 0.2 and any("failure rate" in r for r in failing.reasons)
    rising = _verdict([4.0, 4.02, 3.98], [SeedResult(3.9, "ok", tuple(3.0 + 0.1 * i for i in range(20))),
                                          3.92, 3.88])
    assert not rising.go and any("pathological" in r and "rising" in r for r in rising.reasons)
    unconfirmed = _verdict([4.0, 4.02, 3.98], [3.9, SeedResult(1e3, "nan"), 3.88])
    assert not unconfirmed.go and math.isnan(unconfirmed.confirmed_improvement)
    no_noise = _verdict([4.0], [3.9])
    assert not no_noise.go and any("noise was not measured" in r for r in no_noise.reasons)
    assert _verdict([4.0, 4.02, 3.98], [3.9, 3.92, 3.88], go_threshold=0.05).go is False
    flat = _verdict([4.0, 4.02, 3.98], [4.0, 4.02, 3.98], statuses=["ok"] * 3, candidate_scores=[4.0] * 3)
    assert not flat.go and flat.score_spread == 0 and any("scores are flat" in r for r in flat.reasons)


def test_loss_curve_pathologies():
    assert loss_curve_pathologies(CURVE) == []
    assert loss_curve_pathologies((5.0, 9.0, 4.0, 3.0)) == ["exploding: peak loss 9 > 1.5x first loss 5"]
    assert loss_curve_pathologies((5.0, float("nan"))) == ["non-finite loss"]
    assert loss_curve_pathologies((5.0, 5.5)) == []  # too short to have a shape


# --- evaluators (no training) -----------------------------------------------------------------------------------------


def _request(tmp_path: Path, key: str, seed: int = 0) -> EvalRequest:
    return EvalRequest(key=key, synaptic=SynapticConfig(), seed=seed, out_dir=tmp_path / key,
                       config_path=tmp_path / "cfg.json", knobs={"tau_c": 0.85})


def test_scoring_uses_the_finite_tail_and_penalises_failures(tmp_path):
    scoring = Scoring(tail=2, penalty=50.0)
    req = _request(tmp_path, "a")
    ok = scoring.outcome(req, "ok", [3.0, 2.0, 1.0], "test")
    assert ok.score == ok.raw_score == 1.5
    nan = scoring.outcome(req, "nan", [3.0, 2.0, float("nan")], "test", failure_step=2)
    assert nan.score == 50.0 and nan.raw_score == 2.5 and nan.status == "nan"
    empty = scoring.outcome(req, "ok", [], "test")
    assert empty.status == "error" and empty.score == 50.0


class _FakeEvaluator:
    """Marks given keys with a status, scores the rest by seed."""

    def __init__(self, name, fail=None):
        self.name, self.fail, self.seen = name, fail or {}, []

    def evaluate(self, requests, on_done=None, on_step=None):
        self.seen.extend(r.key for r in requests)
        scoring = Scoring()
        out = [scoring.outcome(r, self.fail.get(r.key, "ok"), [float(r.seed)], self.name,
                               failure_reason="boom" if r.key in self.fail else None) for r in requests]
        if on_done:
            on_done(out)
        return out


def test_fallback_reruns_only_what_the_batched_path_could_not_run(tmp_path):
    reqs = [_request(tmp_path, k, seed=i) for i, k in enumerate("abcd")]
    primary = _FakeEvaluator("batched", fail={"b": "oom", "c": "error", "d": "nan"})
    secondary = _FakeEvaluator("subprocess-fallback")
    recorded = []
    outs = FallbackEvaluator(primary, secondary).evaluate(reqs, on_done=recorded.extend)
    assert [o.request.key for o in outs] == list("abcd")
    assert secondary.seen == ["b", "c"], "a NaN is the config's fault, not the evaluator's: no retry"
    assert [o.evaluator for o in outs] == ["batched", "subprocess-fallback", "subprocess-fallback", "batched"]
    assert outs[1].note == "batched oom: boom" and outs[1].status == "ok" and outs[3].status == "nan"
    assert sorted(o.request.key for o in recorded) == list("abcd"), "each outcome is reported exactly once"


def test_a_raising_batched_path_yields_retryable_errors(tmp_path, monkeypatch):
    import nanochat.trainer

    def broken(*args, **kwargs):
        raise RuntimeError("device lost\nsecond line")

    monkeypatch.setattr(nanochat.trainer, "train_population", broken)
    batched = BatchedEvaluator(ModelConfig(), TrainConfig(), None, "cpu", Scoring(), max_batch=2)
    outs = batched.evaluate([_request(tmp_path, k) for k in "abc"])
    assert [o.status for o in outs] == ["error"] * 3
    assert outs[0].failure_reason == "batched path failed: RuntimeError: device lost"


@pytest.mark.parametrize("setting, message", [
    ({"max_batch": 0}, "max_batch must be an integer >= 1, got 0"),
    ({"score_tail": 0}, "score_tail must be an integer >= 1, got 0"),
    ({"population_size": "4"}, "population_size must be an integer >= 2, got '4'"),
    ({"generatons": 3}, "unknown setting(s) generatons"),
    ({"sensitivity_seeds": 1}, "sensitivity_seeds must be an integer >= 2, got 1"),
    ({"sensitivity_nudge": 0.02}, "sensitivity_nudge is a fraction of each knob's range and must be in (0, 0.01), "
                                  "got 0.02"),
    ({"sensitivity": True, "sensitivity_nudge": 1e-18}, "sensitivity_nudge 1e-18 is too small to move tau_c"),
    ({"sensitivity": True, "eval_seeds": 2}, "eval_seeds applies to CMA-ES candidates only"),
])
def test_the_library_names_the_parameter_not_a_flag(tmp_path, setting, message):
    with pytest.raises(ConfigError) as err:
        run_pilot(run_id="r", artifacts_dir=tmp_path, **setting)
    assert str(err.value).startswith(message) and "--" not in str(err.value)
    assert not any(tmp_path.iterdir()), "nothing written"


def test_objective_evaluator_marks_non_finite_values(tmp_path):
    reqs = [_request(tmp_path, k) for k in "ab"]
    outs = ObjectiveEvaluator(lambda knobs: [1.0, float("inf")], Scoring(penalty=9.0)).evaluate(reqs)
    assert [(o.status, o.score) for o in outs] == [("ok", 1.0), ("nan", 9.0)]


def test_subprocess_evaluator_reports_bad_exit_and_timeout(tmp_path):
    (tmp_path / "cfg.json").write_text("{}")
    bad = SubprocessEvaluator(["--n-layer", "0"], Scoring()).evaluate([_request(tmp_path, "x")])[0]
    assert bad.status == "error" and "--n-layer must be a positive integer" in bad.failure_reason and bad.summary_path is None
    slow = SubprocessEvaluator([], Scoring(), timeout_s=0.01).evaluate([_request(tmp_path, "y")])[0]
    assert slow.status == "timeout" and slow.score == Scoring().penalty


def test_config_args_reproduce_every_training_setting():
    """The subprocess path must train exactly what the batched path trains: every config field goes through."""
    from nanochat.cli_args import config_args
    from nanochat.train import build_parser

    train = TrainConfig(max_steps=3, weight_decay=0.1, warmdown_frac=0.5, diverge_factor=4.0, data_seed=7,
                        learning_rate=1e-3, matrix_lr=0.03, warmup_steps=2, log_interval=5, time_limit_s=60.0,
                        precision="bf16")
    model = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=1, sequence_len=32)
    args = config_args(model, train)
    assert "--data" not in args
    parsed = build_parser().parse_args(args)
    for field in dataclasses.fields(TrainConfig):
        assert getattr(parsed, field.name) == getattr(train, field.name), field.name
    for field in dataclasses.fields(ModelConfig):
        assert getattr(parsed, field.name) == getattr(model, field.name), field.name


# --- artifacts --------------------------------------------------------------------------------------------------------


def _control(**changes) -> ControlRecord:
    fields = dict(role="baseline", label="", seed=1, score=0.1 + 0.2, status="ok", summary_path=None,
                  evaluator="batched", eval_id="seed_1", raw_score=math.nan, failure_step=None, failure_reason=None,
                  note="")
    return ControlRecord(**{**fields, **changes})


def test_ledger_round_trips_records_exactly(tmp_path):
    record = _control(summary_path=tmp_path / "eval/baseline/seed_1/summary.json")
    Ledger(tmp_path / "l.csv", ControlRecord, tmp_path).append([record])
    assert (tmp_path / "l.csv").read_text().splitlines()[1].startswith(
        "baseline,,1,0.30000000000000004,ok,eval/baseline/seed_1/summary.json,batched,seed_1,nan,,,")
    (back,) = Ledger(tmp_path / "l.csv", ControlRecord, tmp_path).load()
    assert back.score == record.score and math.isnan(back.raw_score) and back.failure_reason is None
    assert back.summary_path == record.summary_path and back.status.ok


def test_a_ledger_column_is_one_record_field(tmp_path):
    """Adding a column to a ledger is adding a field to its record: writing and parsing follow from the fields."""

    @dataclasses.dataclass(frozen=True)
    class TimedControl(ControlRecord):
        wall_s: float = 0.0

    Ledger(tmp_path / "l.csv", TimedControl, tmp_path).append([TimedControl(**vars(_control()), wall_s=2.5)])
    assert (tmp_path / "l.csv").read_text().splitlines()[0].endswith(",note,wall_s")
    (back,) = Ledger(tmp_path / "l.csv", TimedControl, tmp_path).load()
    assert back.wall_s == 2.5


def test_run_dir_rules(tmp_path):
    layout = RunLayout.for_run(tmp_path, "r")
    prepare_run_dir(layout, {"k": 1}, resume=False)
    atomic_write_json(layout.run_json, {"spec": {"k": 1}})
    with pytest.raises(ConfigError, match="not empty"):
        prepare_run_dir(layout, {"k": 1}, resume=False)
    with pytest.raises(ConfigError, match=r"k: 1 -> 2"):
        prepare_run_dir(layout, {"k": 2}, resume=True)
    prepare_run_dir(layout, {"k": 1}, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        prepare_run_dir(RunLayout.for_run(tmp_path, "other"), {"k": 1}, resume=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable|cannot be created"):
        prepare_run_dir(RunLayout.for_run(blocker, "r"), {}, resume=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != "file"] == ["cmaes"]
    assert not list(layout.root.glob(".*.tmp")), "no temp files left behind"


def test_a_sensitivity_row_round_trips_with_its_verdict(tmp_path):
    row = SensitivityRow(knob="tau_c", arm="nudge", value=0.99 - 2.9e-7, n_seeds=1, mean_rel_effect=1e-4, se=math.nan,
                         t=math.nan, floor_se=7e-5, verdict=Liveness.NOT_DISTINGUISHABLE)
    Ledger(tmp_path / "s.csv", SensitivityRow, tmp_path).append([row])
    assert (tmp_path / "s.csv").read_text().splitlines()[1].endswith(",nan,nan,7e-05,not distinguishable")
    (back,) = Ledger(tmp_path / "s.csv", SensitivityRow, tmp_path).load()
    assert back.verdict is Liveness.NOT_DISTINGUISHABLE and back.value == row.value and math.isnan(back.se)
