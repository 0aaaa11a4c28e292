"""Issue 13 (Phase 2 readiness): several eval seeds per candidate, a validation-loss objective, a verdict with an
interval on held-out seeds, and Phase 1 defaults left exactly as they were (tests/test_pinned_artifacts.py pins the
files; here: that no Phase 2 file or key appears with defaults).

Tiny models (1 layer, width 32, 5 steps) on one thread, so CPU numbers repeat exactly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics

import pytest
import torch

from cmaes_inproc import run_pilot
from cmaes_inproc.evaluators import Scoring
from cmaes_inproc.verdict import SeedResult, compute_verdict, t_interval
from nanochat.config import Member, ModelConfig, SynapticConfig, TrainConfig
from nanochat.data import Corpus
from nanochat.train import main as train_main
from nanochat.trainer import train_population
from tiny import PILOT_FLAGS, PILOT_MODEL, PILOT_SYNAPTIC, PILOT_TRAIN

MODEL = PILOT_MODEL
TRAIN = PILOT_TRAIN
SYNAPTIC = PILOT_SYNAPTIC
SMALL = dict(generations=1, population_size=2, model=MODEL, train=TRAIN, base_synaptic=SYNAPTIC, plots=False)
MODEL_FLAGS = [f for f in PILOT_FLAGS if f != "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def rows(path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- (a) defaults ---------------------------------------------------------------------------------------------------


def test_defaults_write_no_phase2_file_or_key(tmp_path):
    result = run_pilot(run_id="p1", artifacts_dir=tmp_path, noise_seeds=0, **SMALL)
    root = result.run_dir
    assert not (root / "evaluations.csv").exists()
    assert "seed_scores" not in json.loads((root / "best.json").read_text())
    summary = json.loads(result.best.summary_path.read_text())["results"]
    assert "val_loss" not in summary
    spec = json.loads((root / "run.json").read_text())["spec"]
    assert not {"eval_seeds", "score_on", "val_batches"} & set(spec)


# --- (b) several eval seeds -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    torch.set_num_threads(1)
    return run_pilot(run_id="k3", artifacts_dir=tmp_path_factory.mktemp("k3"), eval_seeds=3, noise_seeds=1,
                     max_batch=16, **SMALL)


def test_a_candidate_scores_the_mean_of_three_separate_single_seed_runs(three_seeds, corpus):
    scoring = Scoring(3)
    for record in three_seeds.records:
        synaptic = SYNAPTIC.replace(**record.params)
        alone = [scoring.raw(train_population([Member(synaptic, seed)], MODEL, TRAIN, corpus).members[0].losses)
                 for seed in (123, 124, 125)]
        assert record.score == pytest.approx(statistics.fmean(alone), rel=1e-5, abs=0)


def test_the_ledger_shows_one_population_and_the_per_seed_spread(three_seeds):
    root = three_seeds.run_dir
    evaluations = rows(root / "evaluations.csv")
    candidates = [r for r in evaluations if r["role"] == "candidate"]
    assert sorted((r["cand"], r["seed"]) for r in candidates) == [(c, str(s)) for c in "01" for s in (123, 124, 125)]
    # 2 candidates x 3 seeds + the baseline on 3 eval seeds and 1 held-out seed: one population of 10
    assert {r["population_size"] for r in candidates} == {"10"}
    for record in three_seeds.records:
        mine = [float(r["score"]) for r in candidates if r["cand"] == str(record.cand)]
        assert record.score == statistics.fmean(mine)
    best = json.loads((root / "best.json").read_text())
    assert len(best["seed_scores"]) == 3 and best["seed_std"] > 0
    assert "Per-seed scores" in (root / "summary.md").read_text()
    # held-out seeds come after the eval seeds: the baseline and the confirmation ran on 123..126
    assert three_seeds.verdict.eval_seeds == [123, 124, 125] and three_seeds.verdict.heldout_seeds == [126]


def test_the_sequential_evaluator_gives_the_same_numbers(tmp_path):
    settings = dict(eval_seeds=2, noise_seeds=0, score_on="val", val_batches=2, **SMALL)
    batched = run_pilot(run_id="b", artifacts_dir=tmp_path, **settings)
    sequential = run_pilot(run_id="s", artifacts_dir=tmp_path, evaluator="sequential", **settings)
    for b, s in zip(batched.records, sequential.records):
        assert s.evaluator == "subprocess" and s.score == pytest.approx(b.score, rel=1e-5, abs=0)


# --- (c) the validation objective -----------------------------------------------------------------------------------


def test_a_members_val_loss_equals_nanochat_train_alone(tmp_path, corpus):
    configs = [SYNAPTIC, SYNAPTIC.replace(tau_c=0.5), SYNAPTIC.replace(alpha_c=0.2)]
    population = train_population([Member(c, 7) for c in configs], MODEL, TRAIN, corpus, val_batches=3)
    assert population.val_flops > 0
    (tmp_path / "cfg.json").write_text(json.dumps({"presyn_chunk": 8, "tau_c": 0.5}))
    out = tmp_path / "alone"
    assert train_main([*MODEL_FLAGS, "--synaptic-config", str(tmp_path / "cfg.json"), "--seed", "7",
                       "--val-batches", "3", "--out-dir", str(out), "--quiet"]) == 0
    results = json.loads((out / "summary.json").read_text())["results"]
    assert results["val_loss"] == pytest.approx(population.members[1].val_loss, rel=1e-6)
    assert results["val_batches"] == 3 and results["val_flops"] == population.val_flops


def _corpus(train: bytes, val: bytes) -> Corpus:
    t = torch.frombuffer(bytearray(train), dtype=torch.uint8)
    v = torch.frombuffer(bytearray(val), dtype=torch.uint8)
    return Corpus("test", "text", t, v, hashlib.sha256(train + val).hexdigest(), 1)


def test_val_loss_is_measured_on_the_val_split_only():
    """Trained on a repetitive pattern: the train loss falls; the val loss is high when the val split is another
    text and close to the train loss when it is the same pattern, so it reads the val split and nothing else."""
    train = TrainConfig(batch_size=4, max_steps=30, warmup_steps=1, learning_rate=1e-2)
    pattern = b"abcabcabd" * 400
    member = [Member(SYNAPTIC, 1)]
    same = train_population(member, MODEL, train, _corpus(pattern, pattern[:600]), val_batches=2).members[0]
    other = train_population(member, MODEL, train, _corpus(pattern, bytes(range(256)) * 3), val_batches=2).members[0]
    assert same.losses == other.losses  # training never sees the val split
    train_score = Scoring(3).raw(same.losses)
    assert abs(same.val_loss - train_score) < 0.5 < other.val_loss - train_score


def test_a_custom_objective_has_no_validation_loss(tmp_path):
    from nanochat.config import ConfigError

    with pytest.raises(ConfigError, match="score_on"):
        run_pilot(run_id="o", artifacts_dir=tmp_path, score_on="val", objective=lambda pts: [0.0] * len(pts))


# --- (d) the verdict's interval on constructed cases ----------------------------------------------------------------

CURVE = tuple(5.5 - 0.02 * i for i in range(30))


def verdict(base, best, **kw):
    """Seed 100 is the eval seed (the best was selected on it); 101.. are held out."""
    seeds = range(100, 100 + len(base))
    return compute_verdict(eval_seed=100, eval_seeds=[100],
                           baseline={s: SeedResult(v, "ok", CURVE) for s, v in zip(seeds, base)},
                           confirm={s: SeedResult(v, "ok", CURVE) for s, v in zip(seeds, best)},
                           best_score=best[0], candidate_statuses=["ok"] * 10, **kw)


def test_a_large_clean_improvement_is_go():
    v = verdict([4.0, 4.02, 3.98, 4.01, 3.99], [3.8, 3.82, 3.78, 3.81, 3.79])
    assert v.go and v.heldout_seeds == [101, 102, 103, 104]
    assert 0 < v.interval_low < v.heldout_improvement < v.interval_high
    assert v.heldout_improvement == pytest.approx(0.05, rel=1e-2)


def test_an_improvement_within_seed_noise_is_no_go_interval_includes_zero():
    v = verdict([4.0, 4.02, 3.98, 4.01, 3.99], [3.9, 3.90, 4.02, 3.86, 4.03])
    assert not v.go and v.interval_low < 0 < v.interval_high
    assert any("interval" in r and "includes zero" in r for r in v.reasons)


def test_a_best_that_wins_only_on_the_selection_seed_is_no_go():
    v = verdict([4.0, 4.02, 3.98, 4.01, 3.99], [3.6, 4.02, 3.98, 4.01, 3.99])
    assert not v.go
    assert v.search_improvement == pytest.approx(0.1)  # selection-biased, and shown as such
    assert v.confirmed_improvement >= 0.01  # the mean over all seeds, eval seed included, would have said GO
    assert [c.name for c in v.criteria if not c.passed] == ["held-out improvement, 95% t-interval"]


def test_t_interval_uses_n_minus_one_degrees_of_freedom():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(t_interval([1.0])[1])
