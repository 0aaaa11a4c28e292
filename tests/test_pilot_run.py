"""cmaes_inproc end to end, with a tiny model: the seven points of issue 3's "What it must show".

Every training run here is a 1-layer, width-32 model on 32-token sequences for 5 steps, so the whole file stays
within tens of seconds on two CPU cores; the pilot document's example at its real size is marked slow.
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmaes_inproc import PARAM_SPECS, Recorder, run_pilot
from cmaes_inproc.__main__ import main
from cmaes_inproc.evaluators import BatchedEvaluator
from cmaes_inproc.params import x_to_unit
from nanochat.config import ConfigError, ModelConfig, SynapticConfig, TrainConfig

from helpers import one_thread, read_csv, run_dir
from tiny import PILOT_FLAGS as TINY_FLAGS
from tiny import PILOT_MODEL as TINY_MODEL
from tiny import PILOT_SYNAPTIC as TINY_SYNAPTIC
from tiny import PILOT_TRAIN as TINY_TRAIN

SEED_EXAMPLE = ["--batched", "--device", "cpu", "--generations", "2", "--population-size", "4",
                "--target-flops", "1e10", "--search-seed", "0", "--eval-seed", "123"]
PROGRESS_HEAD = ["gen", "cand", "score", "status", "summary_path", "evaluator"]


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny_synaptic.json"
    path.write_text(json.dumps({"presyn_chunk": 8}))
    return path


def cli(artifacts: Path, run_id: str, *extra: str, config: Path) -> int:
    return main(["--artifacts-dir", str(artifacts), "--run-id", run_id, "--synaptic-config", str(config),
                 *TINY_FLAGS, *extra])


@pytest.fixture(scope="module")
def seed_example(tmp_path_factory, tiny_config_file):
    """The pilot document's example command (tiny model), run twice under two run ids."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    with one_thread():
        for run_id in ("pilot_cpu_0", "pilot_cpu_0_again"):
            assert cli(artifacts, run_id, *SEED_EXAMPLE, config=tiny_config_file) == 0
    return artifacts


# --- 1. the pilot document's example completes and writes the full layout -----------------------------------------------------


def test_seed_example_writes_the_full_layout(seed_example):
    root = run_dir(seed_example, "pilot_cpu_0")
    for name in ("run.json", "progress.csv", "controls.csv", "best.json", "summary.md", "verdict.json",
                 "checkpoint.json", "eval/baseline/synaptic_config.json", "eval/confirm/synaptic_config.json"):
        assert (root / name).is_file(), name
    rows = read_csv(root / "progress.csv")
    assert len(rows) == 8 and list(rows[0])[:6] == PROGRESS_HEAD
    assert [(int(r["gen"]), int(r["cand"])) for r in rows] == [(g, c) for g in range(2) for c in range(4)]
    for r in rows:
        cand_dir = root / f"eval/gen_{int(r['gen']):04d}/cand_{int(r['cand']):04d}"
        assert r["status"] == "ok" and r["evaluator"] == "batched"
        assert r["summary_path"] == f"{cand_dir.relative_to(root).as_posix()}/seed_123/summary.json"
        summary = json.loads((root / r["summary_path"]).read_text())
        assert (root / r["summary_path"]).with_name("run.md").is_file()
        config = json.loads((cand_dir / "synaptic_config.json").read_text())
        assert summary["hparams"]["synaptic_config"] == {**SynapticConfig().to_dict(), **config}
        assert float(r["score"]) == pytest.approx(np.mean(summary["results"]["losses"][-3:]), rel=1e-12)
    controls = read_csv(root / "controls.csv")
    assert sorted((c["role"], int(c["seed"])) for c in controls) == [
        (role, s) for role in ("baseline", "confirm") for s in (123, 124, 125)]

    best = json.loads((root / "best.json").read_text())
    assert set(best) >= {"params", "x", "score", "gen", "cand", "summary_path"}
    best_row = min(rows, key=lambda r: float(r["score"]))
    assert (best["gen"], best["cand"], best["score"]) == (int(best_row["gen"]), int(best_row["cand"]),
                                                           float(best_row["score"]))
    assert best["params"]["post_fast_lr"] == pytest.approx(10 ** best["x"]["post_fast_lr"], rel=1e-12)

    run = json.loads((root / "run.json").read_text())
    assert run["spec"]["seeds"] == [123, 124, 125] and run["scaling"]["sigma_unit"] == 0.2
    assert len(run["param_space"]) == 10 and run["budget"]["max_steps"] == 5

    summary_md = (root / "summary.md").read_text()
    verdict = json.loads((root / "verdict.json").read_text())
    assert f"## Verdict: **{verdict['label']}**" in summary_md
    data = run["corpus"]  # which text the scores come from (the embedded corpus differs between Pythons)
    assert f"- data: {data['name']} (sha256 {data['sha256'][:12]})" in summary_md
    for needle in ("baseline score", "confirmed improvement", "seed noise", "failure rate", "Paired comparison",
                   "Pathological checks", "![Best score per generation](plots/best_per_generation.png)"):
        assert needle in summary_md, needle
    assert (root / "plots/best_per_generation.png").stat().st_size > 1000
    # confirmation on the eval seed reproduces the search score exactly (same config, seed, data, budget)
    confirm_123 = next(c for c in controls if c["role"] == "confirm" and c["seed"] == "123")
    assert float(confirm_123["score"]) == best["score"]


@pytest.mark.slow
def test_seed_example_at_the_seed_size_is_one_step(tmp_path):
    """The pilot document's exact command (4-layer, width-128 model, 1e10 FLOPs = one step) through the real CLI."""
    proc = subprocess.run([sys.executable, "-m", "cmaes_inproc", "--run-id", "pilot_cpu_0", "--artifacts-dir",
                           str(tmp_path), *SEED_EXAMPLE, "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    root = run_dir(tmp_path, "pilot_cpu_0")
    rows = read_csv(root / "progress.csv")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert json.loads((root / "run.json").read_text())["budget"]["max_steps"] == 1
    assert "## Verdict: **" in (root / "summary.md").read_text() and "verdict: " in proc.stdout


# --- 2. the same command twice gives identical candidates, scores and best --------------------------------------------


def test_same_command_twice_is_identical(seed_example):
    a, b = run_dir(seed_example, "pilot_cpu_0"), run_dir(seed_example, "pilot_cpu_0_again")
    for name in ("progress.csv", "controls.csv", "best.json", "verdict.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# --- 3. --sequential gives the same candidates and scores; summaries are reproducible by nanochat.train -----------

SMALL_SEARCH = dict(generations=1, population_size=2, noise_seeds=0, model=TINY_MODEL, train=TINY_TRAIN,
                    base_synaptic=TINY_SYNAPTIC, plots=False)


@pytest.fixture(scope="module")
def batched_small(tmp_path_factory):
    with one_thread():
        return run_pilot(run_id="batched", artifacts_dir=tmp_path_factory.mktemp("b"), **SMALL_SEARCH)


def test_sequential_matches_batched_and_nanochat_train_reproduces_a_summary(tmp_path, batched_small):
    seq = run_pilot(run_id="seq", artifacts_dir=tmp_path, evaluator="sequential", **SMALL_SEARCH)
    assert [r.evaluator for r in seq.records] == ["subprocess"] * 2
    assert [r.x for r in seq.records] == [r.x for r in batched_small.records]
    for s, b in zip(seq.records + seq.controls, batched_small.records + batched_small.controls):
        assert s.status == b.status == "ok"
        assert s.score == pytest.approx(b.score, rel=1e-5, abs=0)

    # Any candidate's summary.json is reproduced by nanochat.train with the flags recorded in run.json.
    cand = batched_small.records[1]
    run = json.loads((batched_small.run_dir / "run.json").read_text())
    out = tmp_path / "again"
    proc = subprocess.run(
        [sys.executable, "-m", "nanochat.train", *run["reproduce"]["nanochat_train_args"], "--synaptic-config",
         str(cand.summary_path.parent.parent / "synaptic_config.json"), "--seed", str(cand.seed),
         "--out-dir", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((out / "summary.json").read_text())["results"]
    recorded = json.loads(cand.summary_path.read_text())["results"]
    assert again["status"] == recorded["status"]
    np.testing.assert_allclose(again["losses"], recorded["losses"], rtol=1e-5, atol=0)


# --- 4. a batched failure falls back to the subprocess path and says so ---------------------------------------------


def test_out_of_memory_falls_back_to_subprocesses(tmp_path, batched_small, monkeypatch):
    calls = []
    train = BatchedEvaluator._train

    def oom_during_generation_0(self, chunk, on_step):  # gen 0 = 3 members: 3 -> 2 + 1 -> 1 + 1 + 1: 5 calls
        calls.append(len(chunk))
        if len(calls) <= 5:
            raise torch.OutOfMemoryError(f"simulated out of memory for a population of {len(chunk)}")
        return train(self, chunk, on_step)

    monkeypatch.setattr(BatchedEvaluator, "_train", oom_during_generation_0)
    result = run_pilot(run_id="fallback", artifacts_dir=tmp_path, **SMALL_SEARCH)
    assert calls == [3, 2, 1, 1, 1, 1], "split in halves down to single members, then the confirmation population"
    assert [r.evaluator for r in result.records] == ["subprocess-fallback"] * 2
    rows = read_csv(result.run_dir / "progress.csv")
    assert all(r["note"].startswith("batched oom: out of memory even as a population of 1") for r in rows)
    roles = {(c.role, c.evaluator) for c in result.controls}
    assert roles == {("baseline", "subprocess-fallback"), ("confirm", "batched")}
    for got, ref in zip(result.records + result.controls, batched_small.records + batched_small.controls):
        assert got.status == "ok" and got.score == pytest.approx(ref.score, rel=1e-5, abs=0)
    assert (result.run_dir / rows[0]["summary_path"]).is_file(), "the subprocess wrote the same layout"


# --- 5. a run killed with SIGKILL resumes to the same result -------------------------------------------------------

RESUME_FLAGS = ["--generations", "2", "--population-size", "4", "--noise-seeds", "1", "--max-batch", "2",
                "--no-plots"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_config_file):
    artifacts = tmp_path_factory.mktemp("full")
    with one_thread():
        assert cli(artifacts, "full", *RESUME_FLAGS, config=tiny_config_file) == 0
    return run_dir(artifacts, "full")


# Evaluations are recorded per population of 2: generation 0 is baseline x2 + 4 candidates (6), generation 1 is 4.
# Killing after 8 dies inside generation 1; after 6, between generation 0's last record and its checkpoint.
@pytest.mark.parametrize("kill_after", [8, 6])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_config_file, uninterrupted, kill_after):
    cmd = [sys.executable, str(Path(__file__).with_name("kill_after.py")), str(kill_after), "--artifacts-dir",
           str(tmp_path), "--run-id", "killed", "--synaptic-config", str(tiny_config_file), *TINY_FLAGS, *RESUME_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root = run_dir(tmp_path, "killed")
    assert len(read_csv(root / "progress.csv")) + len(read_csv(root / "controls.csv")) == kill_after
    assert not (root / "summary.md").exists()
    finished = {p: p.stat().st_mtime_ns for p in root.glob("eval/**/summary.json")}

    assert cli(tmp_path, "killed", *RESUME_FLAGS, "--resume", config=tiny_config_file) == 0
    for name in ("progress.csv", "controls.csv", "best.json", "verdict.json"):
        assert (root / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "finished evaluations were not redone"


# --- 6. run_pilot with a custom objective finds a clearly better point, fast ----------------------------------------


def test_custom_objective_finds_a_better_point(tmp_path):
    target = np.full(len(PARAM_SPECS), 0.8)  # a shifted sphere in the unit cube, far from the default config

    def shifted_sphere(points: list[dict]) -> list[float]:
        out = []
        for knobs in points:
            x = [math.log10(knobs[s.name]) if s.kind == "log10" else knobs[s.name] for s in PARAM_SPECS]
            out.append(float(np.sum((x_to_unit(x) - target) ** 2)))
        return out

    np.random.seed(5)
    global_state = np.random.get_state()[1].copy()
    generations = 8
    result = run_pilot(run_id="sphere", artifacts_dir=tmp_path, generations=generations, population_size=8,
                       sigma=0.3, objective=shifted_sphere, plots=False)
    start = shifted_sphere([{s.name: getattr(SynapticConfig(), s.name) for s in PARAM_SPECS}])[0]
    assert result.best.score < 0.5 * start, (result.best.score, start)
    assert result.best_per_generation[-1] < result.best_per_generation[0]
    assert len(result.records) == generations * 8 and all(r.evaluator == "objective" for r in result.records)
    assert result.verdict.go and result.verdict.confirmed_improvement > 0.5
    assert np.array_equal(np.random.get_state()[1], global_state), "numpy's global RNG was left alone"
    assert json.loads((result.run_dir / "best.json").read_text())["score"] == result.best.score
    assert not (tmp_path / "outcmaes").exists() and not Path("outcmaes").exists()


def test_your_own_recorder_hears_every_event_after_the_files_are_written(tmp_path):
    """run_pilot(recorders=[...]): a Recorder of one's own (README: "a new artifact is a new recorder") is told
    each event, after the built-in writers: at each generation the ledger already holds its rows."""

    class Heard(Recorder):
        def __init__(self):
            self.events, self.rows_at_generation = [], []

        def started(self, total):
            self.events.append(("started", total))

        def generation(self, gen, search, best):
            self.events.append(("generation", gen))
            ledger = (tmp_path / "cmaes" / "phase1" / "heard" / "progress.csv").read_text().splitlines()
            self.rows_at_generation.append(len(ledger) - 1)

        def finished(self, result):
            self.events.append(("finished", result.verdict.go))

    heard = Heard()
    result = run_pilot(run_id="heard", artifacts_dir=tmp_path, generations=2, population_size=4, plots=False,
                       objective=lambda pts: [p["alpha_c"] for p in pts], recorders=[heard])
    total = 2 * 4 + 2 * len(result.spec.seeds)
    assert heard.events == [("started", total), ("generation", 0), ("generation", 1),
                            ("finished", result.verdict.go)]
    assert heard.rows_at_generation == [4, 8]
    with pytest.raises(ConfigError, match=r"^recorders must be a list of Recorder instances, got \[<object"):
        run_pilot(run_id="bad", artifacts_dir=tmp_path / "bad", recorders=[object()])
    assert not (tmp_path / "bad").exists()


def test_failing_objective_points_get_the_penalty_and_a_no_go(tmp_path):
    result = run_pilot(run_id="nan", artifacts_dir=tmp_path, generations=2, population_size=4, plots=False,
                       objective=lambda pts: [math.nan if p["alpha_c"] > 0.55 else p["alpha_c"] for p in pts])
    failed = [r for r in result.records if r.status != "ok"]
    assert failed and all(r.status == "nan" and r.score == 1e3 for r in failed)
    assert not result.verdict.go and any("failure rate" in r for r in result.verdict.reasons)


# --- 7. bad input: one line, non-zero exit, nothing written or overwritten -------------------------------------------


def snapshot(directory: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, message", [
    (["--population-size", "1"], "--population-size must be an integer >= 2"),
    (["--generations", "0"], "--generations must be an integer >= 1"),
    (["--sigma", "0"], "--sigma"),
    (["--sigma=-0.5"], "--sigma"),
    (["--target-flops", "0"], "--target-flops must be a positive number"),
    (["--target-flops=-1e10"], "--target-flops must be a positive number"),
    (["--score-tail", "0"], "--score-tail must be an integer >= 1"),
    (["--max-batch", "0"], "--max-batch must be an integer >= 1"),
    (["--generations", "two"], "invalid int value"),
    (["--device", "tpu"], "--device 'tpu' is not supported; use cpu, cuda or auto"),
    (["--synaptic-config", "/nonexistent/knobs.json"], "--synaptic-config file not found: /nonexistent/knobs.json"),
    ([], "is not empty; use --resume"),
    (["--resume", "--generations", "3"], "run spec differs"),
])
def test_bad_input_is_one_line_and_changes_nothing(seed_example, tiny_config_file, capsys, args, message):
    before = snapshot(seed_example)
    try:  # bad values go to a run id that exists, so any write would show up in the snapshot
        rc = cli(seed_example, "pilot_cpu_0", *SEED_EXAMPLE, *args, config=tiny_config_file)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("cmaes_inproc: error: ") and message in err, err
    assert snapshot(seed_example) == before


def test_unwritable_artifacts_dir_is_refused_by_the_real_cli(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "cmaes_inproc", "--artifacts-dir", str(blocker), "--run-id", "r",
                           "--generations", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("cmaes_inproc: error: ") and "--artifacts-dir" in proc.stderr and "cannot be created" in proc.stderr
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]


# --- the sensitivity sweep -------------------------------------------------------------------------------------------


def test_sensitivity_sweep_trains_every_arm_on_common_seeds_and_resumes(tmp_path, tiny_config_file):
    """The baseline and each knob at its low edge, high edge and nudged, on the same 3 seeds; sensitivity.csv's
    numbers recomputed here from controls.csv; a run killed part-way resumes to the same sensitivity.csv."""
    assert cli(tmp_path, "sens", "--sensitivity", "--max-batch", "32", config=tiny_config_file) == 0
    root = run_dir(tmp_path, "sens")
    seeds = [123, 124, 125]
    controls = read_csv(root / "controls.csv")
    score = {(c["label"] or c["role"], int(c["seed"])): float(c["score"]) for c in controls}
    arms = [(s, arm) for s in PARAM_SPECS for arm in ("low", "high", "nudge")]
    assert sorted(score) == sorted([("baseline", s) for s in seeds]
                                   + [(f"{spec.name}_{arm}", s) for spec, arm in arms for s in seeds])
    assert all(c["status"] == "ok" for c in controls)

    rows = read_csv(root / "sensitivity.csv")
    assert list(rows[0]) == ["knob", "arm", "value", "n_seeds", "mean_rel_effect", "se", "t", "floor_se", "verdict"]
    assert [(r["knob"], r["arm"]) for r in rows] == [(spec.name, arm) for spec, arm in arms]

    def effects(label):
        return [(score[label, s] - score["baseline", s]) / score["baseline", s] for s in seeds]

    floor = math.sqrt(np.mean([e * e for spec in PARAM_SPECS for e in effects(f"{spec.name}_nudge")]))
    default = SynapticConfig(presyn_chunk=8)
    for r, (spec, arm) in zip(rows, arms):
        e = effects(f"{spec.name}_{arm}")
        se = np.std(e, ddof=1) / math.sqrt(3)
        assert int(r["n_seeds"]) == 3 and float(r["mean_rel_effect"]) == pytest.approx(np.mean(e), rel=1e-9, abs=1e-18)
        assert float(r["se"]) == pytest.approx(se, rel=1e-9, abs=1e-18)
        assert float(r["floor_se"]) == pytest.approx(floor / math.sqrt(3), rel=1e-9)
        x, x0 = spec.encode(float(r["value"])), spec.encode(getattr(default, spec.name))
        step = 1e-6 * (spec.high - spec.low)  # the nudge goes down only where up would leave the range
        want = {"low": spec.low, "high": spec.high, "nudge": x0 + step if x0 + step <= spec.high else x0 - step}
        assert x == pytest.approx(want[arm], abs=1e-12)
        config = json.loads((root / f"eval/sensitivity/{spec.name}_{arm}/synaptic_config.json").read_text())
        assert config[spec.name] == float(r["value"])
    for spec in PARAM_SPECS:  # one verdict per knob, and the rule's words
        mine = [r for r in rows if r["knob"] == spec.name]
        assert len({r["verdict"] for r in mine}) == 1 and mine[0]["verdict"] in ("alive", "weak", "not distinguishable")
    summary = (root / "summary.md").read_text()
    assert "chaos floor" in summary and "at least 3 standard errors" in summary
    assert "failed evaluations (left out of their arm's statistics): none" in summary
    assert "- data: stdlib:" in summary and "compare scores only between runs on the same data" in summary
    assert (root / "plots/sensitivity.png").is_file()

    kept = (root / "controls.csv").read_text().splitlines(keepends=True)[:-40]  # as if killed 40 evaluations early
    (root / "controls.csv").write_text("".join(kept))
    before = (root / "sensitivity.csv").read_text()
    assert cli(tmp_path, "sens", "--sensitivity", "--max-batch", "32", "--resume", config=tiny_config_file) == 0
    assert len(read_csv(root / "controls.csv")) == len(controls)
    assert (root / "sensitivity.csv").read_text() == before
