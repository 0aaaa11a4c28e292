"""What happens around the search loop: recorders subscribe to the loop's events and write the run's files.

The loop in `pilot.py` only announces what happened, through `Hooks`:

    started(total)                    the run is about to evaluate `total` evaluations in all
    step(step, steps)                 a training step of the population in flight finished
    evaluated(record)                 an evaluation finished and joined the history
    generation(gen, search, best)     CMA-ES was told generation `gen`'s scores
    finished(result)                  the run is done (verdict or sensitivity table computed)

Each recorder overrides the events it cares about (like EvoTorch's loggers attached to a searcher's hook):
`LedgerWriter` appends progress.csv / controls.csv rows the moment an evaluation finishes, `CheckpointWriter`
saves the CMA-ES state after each generation, `BestWriter` keeps best.json current, `ReportWriter` writes the
verdict, sensitivity table, plots and summary.md at the end, and `ProgressReporter` turns events into `PilotEvent`s
for a progress bar. Every file is written atomically.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from . import plots, report
from .artifacts import Ledger, atomic_write_json, atomic_write_text, save_checkpoint
from .params import PARAM_NAMES, x_to_unit
from .records import CandidateRecord, ControlRecord, PilotResult, SensitivityRow
from .run import CHECKPOINT_VERSION, Run, losses_of


class Recorder:
    """A subscriber to the loop's events; every method is a no-op unless overridden."""

    def started(self, total: int) -> None: ...

    def step(self, step: int, steps: int) -> None: ...

    def evaluated(self, record: CandidateRecord | ControlRecord) -> None: ...

    def generation(self, gen: int, search, best: CandidateRecord | None) -> None: ...

    def finished(self, result: PilotResult) -> None: ...


class Hooks(Recorder):
    """Announces each event to every recorder, in order."""

    def __init__(self, recorders: Sequence[Recorder]):
        self.recorders = list(recorders)

    def started(self, total):
        for r in self.recorders:
            r.started(total)

    def step(self, step, steps):
        for r in self.recorders:
            r.step(step, steps)

    def evaluated(self, record):
        for r in self.recorders:
            r.evaluated(record)

    def generation(self, gen, search, best):
        for r in self.recorders:
            r.generation(gen, search, best)

    def finished(self, result):
        for r in self.recorders:
            r.finished(result)


class LedgerWriter(Recorder):
    """progress.csv (candidates) and controls.csv (baseline, confirmation, sensitivity), a row per evaluation."""

    def __init__(self, run: Run):
        self.ledgers = run.ledgers

    def evaluated(self, record):
        self.ledgers[type(record)].append([record])


class CheckpointWriter(Recorder):
    """checkpoint.json after each generation: how many generations are finished and a hash of their ledger rows,
    so --resume can rebuild the CMA-ES state by replay and refuse a ledger that no longer matches."""

    def __init__(self, run: Run):
        self.path, self.ledger = run.layout.checkpoint, run.ledgers[CandidateRecord]

    def generation(self, gen, search, best):
        rows = len(self.ledger)
        save_checkpoint(self.path, {"version": CHECKPOINT_VERSION, "next_gen": gen + 1, "progress_rows": rows,
                                    "progress_sha256": self.ledger.digest(rows)})


class BestWriter(Recorder):
    """best.json: the best candidate so far (after every generation, and at the end); with several eval seeds also
    its per-seed scores and their spread (keys that a one-seed run does not write)."""

    def __init__(self, run: Run):
        self.layout, self.history, self.eval_seeds = run.layout, run.history, run.spec.eval_seeds

    def generation(self, gen, search, best):
        self.write(best)

    def finished(self, result):
        if result.sensitivity is None:
            self.write(result.best)

    def write(self, best: CandidateRecord | None) -> None:
        layout = self.layout
        if best is None:
            atomic_write_json(layout.best_json, {"best": None, "reason": "no candidate finished"})
            return
        runs = self.history.seed_runs("candidate", best.gen, best.cand) if self.eval_seeds > 1 else {}
        atomic_write_json(layout.best_json, {
            "gen": best.gen, "cand": best.cand, "score": best.score, "status": best.status, "seed": best.seed,
            "params": best.params, "x": dict(zip(PARAM_NAMES, best.x)),
            "x_unit": dict(zip(PARAM_NAMES, x_to_unit(best.x).tolist())),
            "evaluator": best.evaluator, "summary_path": layout.relative(best.summary_path),
            "synaptic_config_path": layout.relative(layout.candidate_dir(best.gen, best.cand)
                                                    / "synaptic_config.json"),
            **({"seed_scores": {str(s): r.score for s, r in runs.items()},
                "seed_std": statistics.stdev(r.score for r in runs.values())} if len(runs) > 1 else {}),
        })


class ReportWriter(Recorder):
    """At the end: verdict.json or sensitivity.csv, the plots (unless disabled) and summary.md."""

    def __init__(self, run: Run, plots_enabled: bool):
        self.run, self.plots_enabled = run, plots_enabled

    def finished(self, result):
        if result.sensitivity is not None:
            self._sensitivity(result)
        else:
            self._cma(result)

    def _cma(self, result: PilotResult) -> None:
        run, verdict = self.run, result.verdict
        layout = run.layout
        atomic_write_json(layout.root / "verdict.json", verdict.to_dict())
        curves = {}
        for name, role in (("baseline", "baseline"), ("best", "confirm")):
            record = run.history.control_by_seed(role).get(run.spec.eval_seed)
            curves[name] = losses_of(record.summary_path if record else None)
        figures = (plots.cma_plots(layout, result.best_per_generation, verdict.baseline_score, curves)
                   if self.plots_enabled else {})
        atomic_write_text(layout.summary_md, report.render_cma_summary(
            run_id=run.run_id, spec=run.spec, verdict=verdict, best=result.best, records=result.records,
            per_gen=result.best_per_generation, budget=run.budget, corpus=run.corpus, layout=layout, figures=figures,
            seed_runs=run.history.seed_runs))

    def _sensitivity(self, result: PilotResult) -> None:
        run, sweep = self.run, result.sensitivity
        layout = run.layout
        Ledger(layout.sensitivity_csv, SensitivityRow, layout.root).append(sweep.rows)
        figures = (plots.sensitivity_plots(layout, sweep.rows, sweep.stats.floor, len(sweep.seeds))
                   if self.plots_enabled else {})
        atomic_write_text(layout.summary_md, report.render_sensitivity_summary(
            run_id=run.run_id, spec=run.spec, sweep=sweep, budget=run.budget, corpus=run.corpus, layout=layout,
            figures=figures))


@dataclass(frozen=True)
class PilotEvent:
    """Progress report for a UI: kind is "start", "step", "evaluated", "generation" or "done"."""

    kind: str
    evals_done: int
    evals_total: int
    step: int = 0
    steps: int = 0
    gen: int | None = None
    best_score: float = math.nan
    message: str = ""


class ProgressReporter(Recorder):
    """Calls `callback(PilotEvent)` on every event (the CLI draws its progress bar from them)."""

    def __init__(self, run: Run, callback: Callable[[PilotEvent], None]):
        self.history, self.callback, self.total = run.history, callback, 0

    def _emit(self, kind: str, **fields) -> None:
        self.callback(PilotEvent(kind, len(self.history), self.total, **fields))

    def started(self, total):
        self.total = total
        self._emit("start")

    def step(self, step, steps):
        self._emit("step", step=step, steps=steps)

    def evaluated(self, record):
        self._emit("evaluated", message=f"{record.key}: {record.status}")

    def generation(self, gen, search, best):
        self._emit("generation", gen=gen, best_score=best.score if best else math.nan)

    def finished(self, result):
        self._emit("done", best_score=result.best.score if result.best else math.nan)
