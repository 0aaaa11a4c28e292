"""One run's workbench: `open_run()` checks every input and prepares the run directory; `Run` turns configs into
evaluation requests and finished evaluations into records.

Nothing is written before every check has passed (spec, run id, device, corpus, budget, run directory), so a
refused run leaves the disk as it was. The evaluator is chosen here: a custom objective, the subprocess path
(`sequential`), or the batched path with the subprocess path as its fallback.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nanochat.cli_args import config_args
from nanochat.config import ConfigError, SynapticConfig
from nanochat.files import check_dir_name
from nanochat.status import Status

from . import report
from .artifacts import (Ledger, RunLayout, RunLock, atomic_write_json, eval_id_for_seed, load_checkpoint,
                        prepare_run_dir)
from .evaluators import (BatchedEvaluator, EvalOutcome, EvalRequest, Evaluator, FallbackEvaluator,
                         ObjectiveEvaluator, Scoring, SubprocessEvaluator)
from .params import PARAM_NAMES, PARAM_SPECS, decode_vector, encode_config, knobs_to_config, unit_to_x, x_to_unit
from .records import CandidateRecord, ControlRecord, History, SeedRecord
from .search import CMASearch
from .spec import PilotSpec
from .verdict import SeedResult

CHECKPOINT_VERSION = 2  # 1 was a pickle; 2 is JSON, with the CMA-ES state rebuilt by replay


@dataclass(frozen=True)
class CandidateSlot:
    """What a candidate request is, handed back on its outcome: generation, index and x-space point."""

    gen: int
    cand: int
    x: tuple[float, ...]


@dataclass(frozen=True)
class ControlSlot:
    """What a control request is: its role ("baseline", "confirm", "sensitivity") and label (sensitivity edge)."""

    role: str
    label: str = ""


class Run:
    """The spec, run directory, evaluator and history of one run, and the requests and records it deals in."""

    def __init__(self, spec: PilotSpec, run_id: str, layout: RunLayout, evaluator: Evaluator, budget, corpus,
                 cli_args: list[str] | None):
        self.spec, self.run_id, self.layout, self.evaluator = spec, run_id, layout, evaluator
        self.budget, self.corpus, self.cli_args = budget, corpus, cli_args
        self.ledgers = {CandidateRecord: Ledger(layout.progress_csv, CandidateRecord, layout.root),
                        ControlRecord: Ledger(layout.controls_csv, ControlRecord, layout.root)}
        if spec.per_seed_ledger:
            self.ledgers[SeedRecord] = Ledger(layout.evaluations_csv, SeedRecord, layout.root)
        self.history = History()
        self.lock: RunLock | None = None
        # What --resume compares: every setting that decides results, and the corpus itself (a path is not enough).
        self.identity = {**spec.results_dict(), "corpus_sha256": None if corpus is None else corpus.sha256}

    def close(self) -> None:
        """Release the run directory's lock and whatever the evaluator holds (Ray actors)."""
        if self.lock is not None:
            self.lock.release()
        close_evaluator(self.evaluator)

    # -- evaluating --------------------------------------------------------------------------------------------------

    def evaluate(self, requests: list[EvalRequest], hooks) -> None:
        """Run the requests; each finished evaluation becomes records that join the history and are announced."""
        if not requests:
            return

        def on_done(outcomes: list[EvalOutcome]) -> None:
            for outcome in outcomes:
                for record in self._records(outcome):
                    self.history.add(record)
                    hooks.evaluated(record)

        self.evaluator.evaluate(requests, on_done, hooks.step)

    def _records(self, o: EvalOutcome) -> list[SeedRecord | CandidateRecord | ControlRecord]:
        """The records of one finished evaluation, in the order they are written: its per-seed row (Phase 2 options
        only), then its candidate or control row. With several eval seeds a candidate's row waits for its last seed
        and holds the mean over its seeds (the per-seed rows come first, so a resumed run has them)."""
        slot = o.request.tag
        out: list = [_seed_record(o)] if self.spec.per_seed_ledger else []
        if isinstance(slot, CandidateSlot) and self.spec.eval_seeds > 1:
            runs = {**self.history.seed_runs("candidate", slot.gen, slot.cand), o.request.seed: out[0]}
            if len(runs) == self.spec.eval_seeds and self.history.candidate(slot.gen, slot.cand) is None:
                out.append(_candidate_over_seeds(slot, [runs[s] for s in sorted(runs)], self.spec.penalty))
            return out
        cells = dict(score=o.score, status=o.status, summary_path=o.summary_path, evaluator=o.evaluator,
                     eval_id=eval_id_for_seed(o.request.seed), seed=o.request.seed, raw_score=o.raw_score,
                     failure_step=o.failure_step, failure_reason=o.failure_reason, note=o.note)
        if isinstance(slot, CandidateSlot):
            return out + [CandidateRecord(gen=slot.gen, cand=slot.cand, x=slot.x, **cells)]
        return out + [ControlRecord(role=slot.role, label=slot.label, **cells)]

    # -- requests ----------------------------------------------------------------------------------------------------

    def candidate_requests(self, gen: int, xs: Sequence[np.ndarray]) -> list[EvalRequest]:
        """Requests for the candidates of generation `gen` that the history does not hold yet, one per eval seed
        (all in one list, so the batched evaluator trains a candidate's seeds in the same population)."""
        requests = []
        for cand, x in enumerate(xs):
            recorded = self.history.candidate(gen, cand)
            if recorded is not None:
                if recorded.x != tuple(float(v) for v in x):
                    raise ConfigError(f"--resume: generation {gen} candidate {cand} differs from the one in "
                                      "progress.csv; the checkpoint and the ledger disagree (was the run dir edited?)")
                continue
            knobs = decode_vector(x)
            synaptic = knobs_to_config(knobs, self.spec.base_synaptic)
            config_dir = self.layout.candidate_dir(gen, cand)
            self._write_config(config_dir, synaptic, knobs)
            slot = CandidateSlot(gen, cand, tuple(float(v) for v in x))
            meta = {"role": "candidate", "gen": gen, "cand": cand}
            requests += [self._request(config_dir, synaptic, knobs, seed, slot, meta)
                         for seed in self.spec.eval_seed_list]
        return requests

    def control_requests(self, slot: ControlSlot, config_dir: Path, synaptic: SynapticConfig,
                         seeds: Sequence[int]) -> list[EvalRequest]:
        """Requests for `synaptic` on those `seeds` whose evaluation in this role is not recorded yet."""
        knobs = {ps.name: getattr(synaptic, ps.name) for ps in PARAM_SPECS}
        self._write_config(config_dir, synaptic, knobs)
        done = self.history.control_by_seed(slot.role, slot.label)
        meta = {"role": slot.role, "label": slot.label}
        return [self._request(config_dir, synaptic, knobs, seed, slot, meta) for seed in seeds if seed not in done]

    def baseline_requests(self) -> list[EvalRequest]:
        return self.control_requests(ControlSlot("baseline"), self.layout.control_dir("baseline"),
                                     self.spec.base_synaptic, self.spec.baseline_seeds)

    def _request(self, config_dir: Path, synaptic: SynapticConfig, knobs: dict[str, float], seed: int, slot,
                 meta: dict) -> EvalRequest:
        out_dir = self.layout.seed_dir(config_dir, seed)
        return EvalRequest(key=self.layout.relative(out_dir), synaptic=synaptic, seed=seed, out_dir=out_dir,
                           config_path=config_dir / "synaptic_config.json", knobs=knobs,
                           meta={"run_id": self.run_id, **meta}, tag=slot)

    @staticmethod
    def _write_config(config_dir: Path, synaptic: SynapticConfig, knobs: dict[str, float]) -> None:
        """synaptic_config.json: the decoded knobs plus whatever the base config changes from nanochat's defaults."""
        defaults = SynapticConfig().to_dict()
        overrides = {k: v for k, v in synaptic.to_dict().items() if k in knobs or v != defaults[k]}
        atomic_write_json(config_dir / "synaptic_config.json", overrides)

    # -- state ---------------------------------------------------------------------------------------------------------

    def search(self) -> tuple[CMASearch, int]:
        """The CMA-ES state to continue from and the next generation to run.

        Nothing is unpickled: the state is rebuilt by replaying the generations the checkpoint says are finished
        (ask, check that the recorded candidates are exactly the points asked, tell their recorded scores). The
        checkpoint also holds a hash of those generations' ledger rows, so a ledger that lost, gained or changed
        rows since (or a checkpoint from another run) is refused instead of silently giving another result.
        """
        spec, ledger = self.spec, self.ledgers[CandidateRecord]
        search = CMASearch(x_to_unit(encode_config(spec.base_synaptic)), spec.sigma, spec.population_size,
                           spec.search_seed, self.layout.root)
        state = load_checkpoint(self.layout.checkpoint) or {"version": CHECKPOINT_VERSION, "next_gen": 0,
                                                             "progress_rows": 0, "progress_sha256": ledger.digest(0)}
        where = f"--resume: {self.layout.checkpoint}"
        next_gen, rows = state.get("next_gen"), state.get("progress_rows")
        if (state.get("version") != CHECKPOINT_VERSION or not isinstance(next_gen, int) or not isinstance(rows, int)
                or not 0 <= next_gen <= spec.generations):
            raise ConfigError(f"{where} is not a checkpoint of this run (unknown format or generation)")
        if rows > len(ledger) or ledger.digest(rows) != state.get("progress_sha256"):
            raise ConfigError(f"{where} records {next_gen} finished generation(s) that progress.csv does not hold "
                              "as written (rows lost, added or edited, or a checkpoint from another run)")
        for gen in range(next_gen):
            points = search.ask()
            recorded = [self.history.candidate(gen, cand) for cand in range(len(points))]
            if any(r is None or r.x != tuple(float(v) for v in unit_to_x(u)) for r, u in zip(recorded, points)):
                raise ConfigError(f"{where}: generation {gen} in progress.csv is not what the search asks")
            search.tell(points, [r.score for r in recorded])
        late = [r.key for r in self.history.candidates() if r.gen > next_gen]
        if late:
            raise ConfigError(f"{where}: progress.csv holds candidates {late[:3]} beyond generation {next_gen}, "
                              "which the checkpoint does not know")
        return search, next_gen

    def seed_result(self, record: ControlRecord) -> SeedResult:
        """A control's numbers as the verdict needs them (its loss curve is read from its summary.json)."""
        return SeedResult(record.score, record.status, tuple(losses_of(record.summary_path)))


def _seed_record(o: EvalOutcome) -> SeedRecord:
    slot = o.request.tag
    where = (dict(role="candidate", label="", gen=slot.gen, cand=slot.cand) if isinstance(slot, CandidateSlot)
             else dict(role=slot.role, label=slot.label, gen=None, cand=None))
    return SeedRecord(**where, seed=o.request.seed, score=o.score, raw_score=o.raw_score, train_score=o.train_score,
                      val_loss=o.val_loss, status=o.status, failure_step=o.failure_step,
                      failure_reason=o.failure_reason, population_size=o.population_size, evaluator=o.evaluator,
                      summary_path=o.summary_path)


def _candidate_over_seeds(slot: CandidateSlot, runs: list[SeedRecord], penalty: float) -> CandidateRecord:
    """A candidate's row from its per-seed runs (in seed order): the mean score when every seed finished, else the
    penalty with the first failure's status and reason. Its seed, eval_id and summary are the first eval seed's."""
    failed = [r for r in runs if not r.status.ok]
    first = failed[0] if failed else runs[0]
    seeds = [r.seed for r in runs]
    return CandidateRecord(
        gen=slot.gen, cand=slot.cand, x=slot.x, status=first.status, seed=runs[0].seed,
        score=penalty if failed else statistics.fmean(r.score for r in runs),
        raw_score=statistics.fmean(r.raw_score for r in runs), summary_path=runs[0].summary_path,
        evaluator="+".join(sorted({r.evaluator for r in runs})), eval_id=f"seeds_{seeds[0]}-{seeds[-1]}",
        failure_step=first.failure_step,
        failure_reason=f"seed {first.seed}: {first.failure_reason}" if failed else None,
        note=f"mean over seeds {', '.join(map(str, seeds))}")


def losses_of(summary_path: Path | None) -> list[float]:
    """The recorded loss curve of an evaluation (empty when there is none, e.g. a custom objective's)."""
    if summary_path is None or not summary_path.is_file():
        return []
    try:
        losses = json.loads(summary_path.read_text())["results"]["losses"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [math.nan if v is None else float(v) for v in losses]


# --- opening a run ----------------------------------------------------------------------------------------------------


def open_run(spec: PilotSpec, run_id: str | None, artifacts_dir: str | Path, resume: bool,
             objective: Callable | None, extra_run_info: dict | None) -> Run:
    """Check every input, then create (or reopen, on resume) and lock the run directory; see the module docstring.

    The returned run holds the directory's lock until `close()`.
    """
    run_id = check_dir_name("run_id", run_id if run_id is not None else time.strftime("pilot_%Y%m%d_%H%M%S",
                                                                                       time.gmtime()))
    layout = RunLayout.for_run(Path(artifacts_dir).absolute(), run_id)
    scoring = Scoring(spec.score_tail, spec.penalty, spec.score_on)
    budget = corpus = cli_args = None
    if objective is not None:
        evaluator: Evaluator = ObjectiveEvaluator(objective, scoring)
    else:
        from nanochat.data import check_corpus_fits, load_corpus  # the trainer stack only when we train
        from nanochat.trainer import plan_budget, resolve_run_device

        resolve_run_device(spec.device, spec.train)  # an unusable device or option is bad input: fail before writing
        corpus = load_corpus(spec.data)
        check_corpus_fits(corpus, spec.model.sequence_len)
        budget = plan_budget(spec.model, spec.train, spec.base_synaptic.post_rank)
        cli_args = ["--model-type", "synaptic", "--device", spec.device, *config_args(spec.model, spec.train),
                    *([] if spec.data is None else ["--data", spec.data]),
                    *(["--val-batches", str(spec.val_batches)] if spec.val_batches else [])]
        # nanochat.train's own --time-limit-s stops training gracefully ("timeout"); the hard kill is for hangs.
        limit = spec.train.time_limit_s
        hard_timeout = None if limit is None else 2 * limit + 120
        if spec.evaluator == "sequential":
            evaluator = SubprocessEvaluator(cli_args, scoring, hard_timeout)
        elif spec.evaluator == "ray":  # starts and handshakes the actors: a mismatch is refused before writing
            from .ray_evaluator import RayEvaluator, RaySettings

            evaluator = RayEvaluator(spec.model, spec.train, corpus, spec.device, scoring, spec.max_batch,
                                     RaySettings.of(spec), layout.root / "ray_events.jsonl", hard_timeout,
                                     run_meta={"run_id": run_id})
        else:
            batched = BatchedEvaluator(spec.model, spec.train, corpus, spec.device, scoring, spec.max_batch,
                                       run_meta={"run_id": run_id}, val_batches=spec.val_batches)
            evaluator = FallbackEvaluator(batched, SubprocessEvaluator(cli_args, scoring, hard_timeout,
                                                                       label="subprocess-fallback"))
    run = Run(spec, run_id, layout, evaluator, budget, corpus, cli_args)
    try:
        prepare_run_dir(layout, run.identity, resume)
        run.lock = RunLock(layout.root)
        if resume:
            for ledger in run.ledgers.values():
                for record in ledger.load():
                    run.history.add(record)
            _check_controls(run)
        else:
            if any(layout.root.iterdir()):  # another process created this run between our check and our lock
                raise ConfigError(f"run dir {layout.root} is not empty; use --resume to continue it or choose "
                                  "another --run-id")
            atomic_write_json(layout.run_json, run_info(run, extra_run_info or {}))
    except BaseException:
        run.close()  # the lock, and e.g. the Ray actors a refused resume had started
        raise
    return run


def _check_controls(run: Run) -> None:
    """A resumed controls.csv may only hold the evaluations this run asks for (roles, seeds, sweep arms)."""
    spec = run.spec
    roles = ("baseline", "sensitivity") if spec.sensitivity else ("baseline", "confirm")
    for c in run.history.controls():
        if c.role not in roles or c.seed not in spec.baseline_seeds:
            raise ConfigError(f"--resume: {run.layout.controls_csv} holds a {c.role!r} row on seed {c.seed}, "
                              "which this run never asks for (a ledger from another run?)")


def close_evaluator(evaluator: Evaluator) -> None:
    """Release what an evaluator holds (the Ray evaluator's actors, and Ray if it started it); most hold nothing."""
    close = getattr(evaluator, "close", None)
    if close is not None:
        close()


def run_info(run: Run, extra: dict) -> dict:
    """run.json: the spec, the search space and its scaling, the budget, the corpus and how to reproduce a row."""
    spec = run.spec
    x0 = encode_config(spec.base_synaptic)
    info = {
        "run_id": run.run_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": run.identity,
        "execution": {**spec.execution_dict(), "fallback": "subprocess (nanochat.train)"},
        "param_space": [s.to_dict() for s in PARAM_SPECS],
        "scaling": {
            "search_space": "unit cube: u_i = (x_i - low_i) / (high_i - low_i), CMA-ES bounds [0, 1]",
            "sigma_unit": spec.sigma,
            "sigma_x": {s.name: spec.sigma * (s.high - s.low) for s in PARAM_SPECS},
            "x0": dict(zip(PARAM_NAMES, x0.tolist())),
            "x0_unit": dict(zip(PARAM_NAMES, x_to_unit(x0).tolist())),
        },
        "baseline_config": spec.base_synaptic.to_dict(),
        "budget": None if run.budget is None else run.budget.to_dict(),
        "corpus": None if run.corpus is None else run.corpus.describe(),
        "scoring": {"score": report.score_description(spec.score_tail, run.budget, spec), "penalty": spec.penalty,
                    "statuses": [s.value for s in Status]},
        "reproduce": None if run.cli_args is None else {
            "command": "python -m nanochat.train " + " ".join(run.cli_args)
            + " --synaptic-config <config dir>/synaptic_config.json --seed <seed> --out-dir <dir>",
            "nanochat_train_args": run.cli_args,
        },
        "layout": report.LAYOUT_DESCRIPTION,
        **extra,
    }
    if not spec.sensitivity:
        info["cma"] = CMASearch(x_to_unit(x0), spec.sigma, spec.population_size, spec.search_seed,
                                run.layout.root).describe()
    return info
