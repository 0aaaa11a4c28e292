"""`run_pilot()`: the CMA-ES pilot loop, in a few visible lines.

    spec -> open_run (checks, run dir) -> [ask -> evaluate -> tell -> notify] x generations
         -> confirm the best on the baseline's seeds -> verdict -> notify

* Generation g: CMA-ES proposes `population_size` points of the unit cube; the candidates not yet in the history are
  trained (as one batched population, with the baseline riding along in the first one), each finished evaluation
  is recorded at once, and CMA-ES is told the scores.
* After the last generation the best candidate is re-trained on the seeds of the baseline (the eval seeds and the
  held-out noise seeds), and the Go/No-Go verdict is computed from those paired numbers (verdict.py), with a
  confidence interval from the held-out seeds alone.
* With `eval_seeds` K > 1 every candidate is K requests (one per eval seed) in the same batched populations, and
  its progress.csv row is the mean over its seeds (evaluations.csv keeps the per-seed runs).
* Everything written to disk is written by recorders listening to the loop's events (recorders.py).

`--resume` runs the same loop: CMA-ES continues from its checkpoint, so the same points come back; candidates
already in the history are not trained again, and their recorded scores (written with repr(), so bit-exact) are
what `tell` receives.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from nanochat.config import ConfigError

from .artifacts import remove_run_dir
from .params import knobs_to_config, unit_to_x
from .records import CandidateRecord, PilotResult
from .recorders import (BestWriter, CheckpointWriter, Hooks, LedgerWriter, PilotEvent, ProgressReporter, Recorder,
                        ReportWriter)
from .run import ControlSlot, Run, open_run
from .sensitivity import run_sensitivity
from .spec import PilotSpec
from .verdict import Verdict, compute_verdict

Objective = Callable[[list[dict[str, float]]], list[float]]


def run_pilot(
    spec: PilotSpec | None = None,
    *,
    run_id: str | None = None,
    artifacts_dir: str | Path = "artifacts",
    resume: bool = False,
    objective: Objective | None = None,
    progress: Callable[[PilotEvent], None] | None = None,
    recorders: Sequence[Recorder] = (),
    plots: bool = True,
    extra_run_info: dict | None = None,
    **settings,
) -> PilotResult:
    """Run (or resume) a CMA-ES pilot, or with `sensitivity=True` the one-at-a-time sweep.

    `settings` are the fields of `PilotSpec` (generations, population_size, sigma, seeds, model, train, data,
    device, evaluator, max_batch, ...), with its defaults; or pass a whole `spec` (settings then override it).
    `objective`, if given, replaces training: it maps a list of decoded-knob dicts to scores (lower is better).
    `progress` receives a `PilotEvent` per event (the CLI's progress bar). `recorders` are your own `Recorder`s,
    told every event after the built-in ones (ledgers, checkpoint, best.json, reports) have written it. `extra_run_info`
    is stored in run.json. Raises `ConfigError` (one line, naming the parameter) on bad input, before anything is
    written.
    """
    extra = list(recorders) if isinstance(recorders, (list, tuple)) else None
    if extra is None or not all(isinstance(r, Recorder) for r in extra):
        raise ConfigError.about("recorders", f"must be a list of Recorder instances, got {recorders!r}")
    if objective is not None:
        if not callable(objective):
            raise ConfigError.about("objective", f"must be callable, got {type(objective).__name__}")
        settings["objective"] = f"{getattr(objective, '__module__', '?')}.{getattr(objective, '__qualname__', '?')}"
    spec = dataclasses.replace(spec, **settings) if spec is not None else PilotSpec.from_settings(settings)
    run = open_run(spec, run_id, artifacts_dir, resume, objective, extra_run_info)
    writers: list[Recorder] = [LedgerWriter(run), CheckpointWriter(run), BestWriter(run), ReportWriter(run, plots)]
    if progress is not None:
        writers.append(ProgressReporter(run, progress))
    hooks = Hooks(writers + extra)
    try:
        return run_sensitivity(run, hooks) if spec.sensitivity else run_cma(run, hooks)
    except Exception:
        if not resume and len(run.history) == 0:  # nothing to resume: leave no run directory behind
            remove_run_dir(run.layout.root)
        raise
    finally:
        run.close()  # the lock, and the evaluator's workers (no Ray actor outlives the run)


def run_cma(run: Run, hooks: Hooks) -> PilotResult:
    """Ask, evaluate, tell, notify; then confirm the best on the baseline's seeds and decide."""
    spec, history = run.spec, run.history
    search, first_gen = run.search()
    hooks.started(spec.generations * spec.population_size + 2 * len(spec.seeds))
    for gen in range(first_gen, spec.generations):
        points = search.ask()
        xs = [unit_to_x(u) for u in points]
        # The baseline rides along in the first population this process trains (normally generation 0's).
        run.evaluate(run.baseline_requests() + run.candidate_requests(gen, xs), hooks)
        search.tell(points, [history.candidate(gen, cand).score for cand in range(len(points))])
        hooks.generation(gen, search, history.best())

    best = history.best()
    requests = run.baseline_requests()
    if best is not None:
        requests += run.control_requests(ControlSlot("confirm"), run.layout.control_dir("confirm"),
                                         knobs_to_config(best.params, spec.base_synaptic), spec.seeds)
    run.evaluate(requests, hooks)
    result = PilotResult(run.layout.root, spec, history.candidates(), history.controls(), best, verdict(run, best),
                         history.best_per_generation(spec.generations))
    hooks.finished(result)
    return result


def verdict(run: Run, best: CandidateRecord | None) -> Verdict:
    """Go/No-Go from the baseline and the best's confirmation on the same seeds, and every candidate's status."""
    history = run.history
    baseline = {seed: run.seed_result(r) for seed, r in history.control_by_seed("baseline").items()}
    confirm = ({seed: run.seed_result(r) for seed, r in history.control_by_seed("confirm").items()}
               if best is not None else {})
    candidates = history.candidates()
    return compute_verdict(eval_seed=run.spec.eval_seed, eval_seeds=run.spec.eval_seed_list, baseline=baseline,
                           confirm=confirm,
                           best_score=best.score if best is not None else float("nan"),
                           candidate_statuses=[c.status for c in candidates],
                           candidate_scores=[c.score for c in candidates], go_threshold=run.spec.go_threshold)
