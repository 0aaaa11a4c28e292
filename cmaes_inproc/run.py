"""One run's workbench: `open_run()` checks every input and prepares the run directory; `Run` turns configs into
evaluation requests and finished evaluations into records.

Nothing is written before every check has passed (spec, run id, device, corpus, budget, run directory), so a
refused run leaves the disk as it was. The evaluator is chosen here: a custom objective, the subprocess path
(`sequential`), or the batched path with the subprocess path as its fallback.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nanochat.cli_args import config_args
from nanochat.config import ConfigError, SynapticConfig
from nanochat.status import Status

from . import report
from .artifacts import (Ledger, RunLayout, atomic_write_json, check_run_id, eval_id_for_seed, load_checkpoint,
                        prepare_run_dir)
from .evaluators import (BatchedEvaluator, EvalOutcome, EvalRequest, Evaluator, FallbackEvaluator,
                         ObjectiveEvaluator, Scoring, SubprocessEvaluator)
from .params import PARAM_NAMES, PARAM_SPECS, decode_vector, encode_config, knobs_to_config, x_to_unit
from .records import CandidateRecord, ControlRecord, History
from .search import CMASearch
from .spec import PilotSpec
from .verdict import SeedResult

CHECKPOINT_VERSION = 1


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
        self.history = History()

    # -- evaluating --------------------------------------------------------------------------------------------------

    def evaluate(self, requests: list[EvalRequest], hooks) -> None:
        """Run the requests; each finished evaluation becomes a record, joins the history and is announced."""
        if not requests:
            return

        def on_done(outcomes: list[EvalOutcome]) -> None:
            for outcome in outcomes:
                record = self._record(outcome)
                self.history.add(record)
                hooks.evaluated(record)

        self.evaluator.evaluate(requests, on_done, hooks.step)

    def _record(self, o: EvalOutcome) -> CandidateRecord | ControlRecord:
        slot = o.request.tag
        cells = dict(score=o.score, status=o.status, summary_path=o.summary_path, evaluator=o.evaluator,
                     eval_id=eval_id_for_seed(o.request.seed), seed=o.request.seed, raw_score=o.raw_score,
                     failure_step=o.failure_step, failure_reason=o.failure_reason, note=o.note)
        if isinstance(slot, CandidateSlot):
            return CandidateRecord(gen=slot.gen, cand=slot.cand, x=slot.x, **cells)
        return ControlRecord(role=slot.role, label=slot.label, **cells)

    # -- requests ----------------------------------------------------------------------------------------------------

    def candidate_requests(self, gen: int, xs: Sequence[np.ndarray]) -> list[EvalRequest]:
        """Requests for the candidates of generation `gen` that the history does not hold yet."""
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
            requests.append(self._request(config_dir, synaptic, knobs, self.spec.eval_seed, slot, meta))
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
                                     self.spec.base_synaptic, self.spec.seeds)

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
        """The CMA-ES state to continue from (the checkpoint's, on resume) and the next generation to run."""
        state = load_checkpoint(self.layout.checkpoint)
        if state is not None:
            if state.get("version") != CHECKPOINT_VERSION:
                raise ConfigError(f"--resume: {self.layout.checkpoint} has an unknown format")
            return state["search"], int(state["next_gen"])
        spec = self.spec
        return CMASearch(x_to_unit(encode_config(spec.base_synaptic)), spec.sigma, spec.population_size,
                         spec.search_seed, self.layout.root), 0

    def seed_result(self, record: ControlRecord) -> SeedResult:
        """A control's numbers as the verdict needs them (its loss curve is read from its summary.json)."""
        return SeedResult(record.score, record.status, tuple(losses_of(record.summary_path)))


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
    """Check every input, then create (or reopen, on resume) the run directory; see the module docstring."""
    run_id = run_id if run_id is not None else time.strftime("pilot_%Y%m%d_%H%M%S", time.gmtime())
    check_run_id(run_id)
    layout = RunLayout.for_run(Path(artifacts_dir).absolute(), run_id)
    scoring = Scoring(spec.score_tail, spec.penalty)
    budget = corpus = cli_args = None
    if objective is not None:
        evaluator: Evaluator = ObjectiveEvaluator(objective, scoring)
    else:
        from nanochat.data import load_corpus  # the trainer stack is only needed when we actually train
        from nanochat.trainer import plan_budget, resolve_device

        resolve_device(spec.device)  # an unusable device is bad input for every path: fail before writing
        corpus = load_corpus(spec.data)
        budget = plan_budget(spec.model, spec.train, spec.base_synaptic.post_rank)
        cli_args = ["--model-type", "synaptic", "--device", spec.device, *config_args(spec.model, spec.train),
                    *([] if spec.data is None else ["--data", spec.data])]
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
                                       run_meta={"run_id": run_id})
            evaluator = FallbackEvaluator(batched, SubprocessEvaluator(cli_args, scoring, hard_timeout,
                                                                       label="subprocess-fallback"))
    run = Run(spec, run_id, layout, evaluator, budget, corpus, cli_args)
    try:
        prepare_run_dir(layout, spec.results_dict(), resume)
        if resume:
            for ledger in run.ledgers.values():
                for record in ledger.load():
                    run.history.add(record)
        else:
            atomic_write_json(layout.run_json, run_info(run, extra_run_info or {}))
    except BaseException:
        close_evaluator(evaluator)  # e.g. stop the Ray actors a refused resume had started
        raise
    return run


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
        "spec": spec.results_dict(),
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
        "scoring": {"score": f"mean of the last {spec.score_tail} train losses", "penalty": spec.penalty,
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
