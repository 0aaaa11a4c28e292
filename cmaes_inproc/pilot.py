"""`run_pilot()`: spec -> evaluator -> CMA-ES loop (or the sensitivity sweep) -> artifacts and verdict.

One run, start to finish:

1. Validate everything (spec, run id, data, device, run dir) before the first write, so bad input changes nothing.
2. Generation g: ask CMA-ES for `population_size` points (unit cube), decode them, write each candidate's
   synaptic_config.json, and evaluate the candidates not yet in the ledger as one batched population. The baseline
   (default config on the eval seed and the noise seeds) rides along in the first population. Every finished
   evaluation is appended to progress.csv / controls.csv at once; after `tell`, the CMA state is checkpointed.
3. After the last generation the best candidate is re-evaluated on the same seeds as the baseline (one more small
   population), the Go/No-Go verdict is computed from those paired numbers, and summary.md is written.

`--resume` replays this from the checkpoint: `ask` is deterministic given the checkpointed state, so the same
points come back; candidates already in the ledger are not evaluated again, and their recorded scores (written with
repr(), so bit-exact) are what `tell` receives.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nanochat.config import ConfigError, ModelConfig, SynapticConfig, TrainConfig

from . import plots, report
from .artifacts import (Ledger, RunLayout, atomic_write_json, atomic_write_text, check_run_id, eval_id_for_seed,
                        load_checkpoint, parse_float, prepare_run_dir, save_checkpoint)
from .evaluators import (DEFAULT_PENALTY, BatchedEvaluator, EvalOutcome, EvalRequest, Evaluator, FallbackEvaluator,
                         ObjectiveEvaluator, Scoring, SubprocessEvaluator, train_cli_args)
from .params import PARAM_NAMES, PARAM_SPECS, decode_vector, encode_config, knobs_to_config, unit_to_x, x_to_unit
from .search import CMASearch
from .spec import DEFAULT_MAX_BATCH, DEFAULT_SIGMA, PilotSpec
from .verdict import DEFAULT_GO_THRESHOLD, SeedResult, Verdict, compute_verdict

PROGRESS_COLUMNS = (
    "gen", "cand", "score", "status", "summary_path", "evaluator", "eval_id", "seed", "raw_score",
    "failure_step", "failure_reason", "note", *(f"x_{name}" for name in PARAM_NAMES),
)
CONTROL_COLUMNS = (
    "role", "label", "seed", "score", "status", "summary_path", "evaluator", "eval_id", "raw_score",
    "failure_step", "failure_reason", "note",
)
SENSITIVITY_COLUMNS = ("knob", "edge", "value", "score", "delta", "rel_delta", "status")
CHECKPOINT_VERSION = 1

Objective = Callable[[list[dict[str, float]]], Sequence[float]]


# --- what run_pilot reports -----------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class CandidateRecord:
    """One CMA-ES candidate evaluation, as recorded in progress.csv."""

    gen: int
    cand: int
    x: tuple[float, ...]
    params: dict[str, float]
    score: float
    raw_score: float
    status: str
    evaluator: str
    seed: int
    summary_path: Path | None


@dataclass(frozen=True)
class ControlRecord:
    """A baseline / confirmation / sensitivity evaluation, as recorded in controls.csv."""

    role: str
    label: str
    seed: int
    score: float
    raw_score: float
    status: str
    evaluator: str
    summary_path: Path | None


@dataclass
class PilotResult:
    run_dir: Path
    spec: PilotSpec
    records: list[CandidateRecord]
    controls: list[ControlRecord]
    best: CandidateRecord | None = None
    verdict: Verdict | None = None
    best_per_generation: list[float] = field(default_factory=list)
    sensitivity: list[dict] | None = None  # the rows of sensitivity.csv (sensitivity runs only)

    @property
    def summary_md(self) -> Path:
        return self.run_dir / "summary.md"


# --- the entry point ------------------------------------------------------------------------------------------------


def run_pilot(
    *,
    run_id: str | None = None,
    artifacts_dir: str | Path = "artifacts",
    generations: int = 2,
    population_size: int = 4,
    sigma: float = DEFAULT_SIGMA,
    search_seed: int = 0,
    eval_seed: int = 123,
    noise_seeds: int = 2,
    go_threshold: float = DEFAULT_GO_THRESHOLD,
    score_tail: int = 3,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    base_synaptic: SynapticConfig | None = None,
    data: str | Path | None = None,
    device: str = "cpu",
    evaluator: str = "batched",
    max_batch: int = DEFAULT_MAX_BATCH,
    resume: bool = False,
    sensitivity: bool = False,
    objective: Objective | None = None,
    penalty: float = DEFAULT_PENALTY,
    plots: bool = True,
    progress: Callable[[PilotEvent], None] | None = None,
    oom_hook: Callable[[int], bool] | None = None,
    extra_run_info: dict | None = None,
) -> PilotResult:
    """Run (or resume) a CMA-ES pilot, or with `sensitivity=True` the one-at-a-time sweep; see the module docstring.

    `evaluator`: "batched" (in-process populations of at most `max_batch`, falling back to subprocesses for what
    does not fit) or "sequential" (one `python -m nanochat.train` per evaluation). `objective`, if given, replaces
    training: it maps a list of decoded-knob dicts to scores (lower is better). `oom_hook(n) -> bool` is a test
    hook that makes the batched path behave as if a population of n ran out of memory. `extra_run_info` is stored
    in run.json (the CLI records its argv there). Raises `ConfigError` (one line) on bad input before writing.
    """
    spec = PilotSpec(
        generations=generations, population_size=population_size, sigma=sigma, search_seed=search_seed,
        eval_seed=eval_seed, noise_seeds=noise_seeds, go_threshold=go_threshold, score_tail=score_tail,
        penalty=penalty, sensitivity=sensitivity, model=model or ModelConfig(), train=train or TrainConfig(),
        base_synaptic=base_synaptic or SynapticConfig(), data=None if data is None else str(Path(data).absolute()),
        device=device,
        objective=None if objective is None else _qualname(objective), evaluator=evaluator, max_batch=max_batch,
    )
    run_id = run_id if run_id is not None else time.strftime("pilot_%Y%m%d_%H%M%S", time.gmtime())
    check_run_id(run_id)
    layout = RunLayout.for_run(Path(artifacts_dir).absolute(), run_id)
    run = _PilotRun(spec, layout, run_id, objective, oom_hook, progress, plots)  # loads data, builds evaluators
    prepare_run_dir(layout, spec.results_dict(), resume)
    if not resume:
        run.write_run_json(extra_run_info or {})
    return run.execute()


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


# --- one run ----------------------------------------------------------------------------------------------------------


class _PilotRun:
    """State of one pilot run: spec, layout, evaluator, ledgers, progress. `execute()` does the work."""

    def __init__(self, spec: PilotSpec, layout: RunLayout, run_id: str, objective: Objective | None,
                 oom_hook, progress, plots_enabled: bool):
        self.spec, self.layout, self.run_id = spec, layout, run_id
        self.progress, self.plots_enabled = progress, plots_enabled
        self.scoring = Scoring(spec.score_tail, spec.penalty)
        self.corpus = None
        self.budget = None
        self.cli_args: list[str] | None = None
        self.evaluator = self._build_evaluator(objective, oom_hook)
        self.progress_ledger = Ledger(layout.progress_csv, PROGRESS_COLUMNS)
        self.controls_ledger = Ledger(layout.controls_csv, CONTROL_COLUMNS)
        self.evals_total = 0
        self.x0 = encode_config(spec.base_synaptic)

    # -- setup ---------------------------------------------------------------------------------------------------

    def _build_evaluator(self, objective, oom_hook) -> Evaluator:
        spec = self.spec
        if objective is not None:
            return ObjectiveEvaluator(objective, self.scoring)
        from nanochat.data import load_corpus  # the trainer stack is only needed when we actually train
        from nanochat.trainer import plan_budget, resolve_device

        resolve_device(spec.device)  # an unusable device is bad input for every path: fail before writing
        self.corpus = load_corpus(spec.data)
        self.budget = plan_budget(spec.model, spec.train, spec.base_synaptic.post_rank)
        self.cli_args = train_cli_args(spec.model, spec.train, spec.device, spec.data)
        # nanochat.train's own --time-limit-s stops training gracefully ("timeout" status); the hard kill is for hangs.
        hard_timeout = None if spec.train.time_limit_s is None else 2 * spec.train.time_limit_s + 120
        if spec.evaluator == "sequential":
            return SubprocessEvaluator(self.cli_args, self.scoring, hard_timeout)
        batched = BatchedEvaluator(spec.model, spec.train, self.corpus, spec.device, self.scoring, spec.max_batch,
                                   run_meta={"run_id": self.run_id}, oom_hook=oom_hook)
        return FallbackEvaluator(batched, SubprocessEvaluator(self.cli_args, self.scoring, hard_timeout,
                                                              label="subprocess-fallback"))

    def write_run_json(self, extra: dict) -> None:
        spec, x0 = self.spec, self.x0
        layout = self.layout
        info = {
            "run_id": self.run_id,
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
            "budget": None if self.budget is None else self.budget.to_dict(),
            "corpus": None if self.corpus is None else self.corpus.describe(),
            "scoring": {"score": f"mean of the last {spec.score_tail} train losses",
                        "penalty": spec.penalty, "statuses": ["ok", "nan", "diverged", "oom", "timeout", "error"]},
            "reproduce": None if self.cli_args is None else {
                "command": "python -m nanochat.train " + " ".join(self.cli_args)
                + " --synaptic-config <config dir>/synaptic_config.json --seed <seed> --out-dir <dir>",
                "nanochat_train_args": self.cli_args,
            },
            "layout": report.LAYOUT_DESCRIPTION,
            **extra,
        }
        if not spec.sensitivity:
            info["cma"] = CMASearch(self.x0_unit, spec.sigma, spec.population_size, spec.search_seed,
                                    layout.root).describe()
        atomic_write_json(layout.run_json, info)

    @property
    def x0_unit(self) -> np.ndarray:
        return x_to_unit(self.x0)

    # -- progress ------------------------------------------------------------------------------------------------

    def _evals_done(self) -> int:
        return len(self.progress_ledger.rows) + len(self.controls_ledger.rows)

    def _emit(self, kind: str, **fields) -> None:
        if self.progress is not None:
            self.progress(PilotEvent(kind, self._evals_done(), self.evals_total, **fields))

    # -- execution -----------------------------------------------------------------------------------------------

    def execute(self) -> PilotResult:
        self.progress_ledger.load()
        self.controls_ledger.load()
        seeds = len(self.spec.seeds)
        if self.spec.sensitivity:
            self.evals_total = seeds + 2 * len(PARAM_SPECS)
            self._emit("start")
            result = self._run_sensitivity()
        else:
            self.evals_total = self.spec.generations * self.spec.population_size + 2 * seeds
            self._emit("start")
            result = self._run_cma()
        self._emit("done", best_score=result.best.score if result.best else math.nan)
        return result

    def _evaluate(self, requests: list[EvalRequest], writers: dict[str, Callable[[EvalOutcome], None]]) -> None:
        """Evaluate and append each outcome to its ledger the moment its group finishes."""
        if not requests:
            return

        def on_done(outcomes: list[EvalOutcome]) -> None:
            for outcome in outcomes:
                writers[outcome.request.key](outcome)
            self._emit("evaluated", message=", ".join(f"{o.request.key}: {o.status}" for o in outcomes))

        def on_step(step: int, steps: int) -> None:
            self._emit("step", step=step, steps=steps)

        self.evaluator.evaluate(requests, on_done, on_step)

    def _request(self, config_dir: Path, synaptic: SynapticConfig, knobs: dict[str, float], seed: int,
                 meta: dict) -> EvalRequest:
        out_dir = self.layout.seed_dir(config_dir, seed)
        return EvalRequest(key=self.layout.relative(out_dir), synaptic=synaptic, seed=seed, out_dir=out_dir,
                           config_path=config_dir / "synaptic_config.json", knobs=knobs,
                           meta={"run_id": self.run_id, **meta})

    def _write_config(self, config_dir: Path, synaptic: SynapticConfig, knobs: dict[str, float]) -> None:
        """synaptic_config.json: the decoded knobs plus whatever the base config changes from nanochat's defaults."""
        defaults = SynapticConfig().to_dict()
        overrides = {k: v for k, v in synaptic.to_dict().items() if k in knobs or v != defaults[k]}
        atomic_write_json(config_dir / "synaptic_config.json", overrides)

    # -- controls (baseline / confirm / sensitivity rows of controls.csv) ----------------------------------------

    def _control_rows(self, role: str, label: str = "") -> dict[int, dict]:
        return {int(r["seed"]): r for r in self.controls_ledger.rows if r["role"] == role and r["label"] == label}

    def _pending_controls(self, role: str, config_dir: Path, synaptic: SynapticConfig, seeds: Sequence[int],
                          writers: dict, label: str = "") -> list[EvalRequest]:
        knobs = {ps.name: getattr(synaptic, ps.name) for ps in PARAM_SPECS}
        self._write_config(config_dir, synaptic, knobs)
        done = self._control_rows(role, label)
        requests = []
        for seed in seeds:
            if seed in done:
                continue
            request = self._request(config_dir, synaptic, knobs, seed, {"role": role, "label": label})
            writers[request.key] = lambda o, role=role, label=label: self.controls_ledger.append([{
                "role": role, "label": label, "seed": o.request.seed, **self._outcome_cells(o)}])
            requests.append(request)
        return requests

    def _outcome_cells(self, o: EvalOutcome) -> dict:
        return {
            "score": o.score, "status": o.status, "summary_path": self.layout.relative(o.summary_path),
            "evaluator": o.evaluator, "eval_id": eval_id_for_seed(o.request.seed), "raw_score": o.raw_score,
            "failure_step": o.failure_step, "failure_reason": o.failure_reason, "note": o.note,
        }

    # -- CMA-ES ----------------------------------------------------------------------------------------------------

    def _run_cma(self) -> PilotResult:
        spec, layout = self.spec, self.layout
        search, start_gen = self._load_or_start_search()
        baseline_dir = layout.control_dir("baseline")
        for gen in range(start_gen, spec.generations):
            units = search.ask()
            writers: dict[str, Callable[[EvalOutcome], None]] = {}
            # The baseline rides along in the first population this process trains (normally generation 0).
            requests = self._pending_controls("baseline", baseline_dir, spec.base_synaptic, spec.seeds, writers)
            recorded = self._progress_rows(gen)
            for cand, u in enumerate(units):
                x = unit_to_x(u)
                _check_replayed(recorded.get(cand), gen, cand, x)
                if cand not in recorded:
                    requests.append(self._candidate_request(gen, cand, x, writers))
            self._evaluate(requests, writers)
            rows = self._progress_rows(gen)
            search.tell(units, [parse_float(rows[c]["score"]) for c in range(len(units))])
            save_checkpoint(layout.checkpoint, {"version": CHECKPOINT_VERSION, "next_gen": gen + 1, "search": search})
            best = self._best()
            self._write_best(best)
            self._emit("generation", gen=gen, best_score=best.score if best else math.nan)

        writers = {}
        requests = self._pending_controls("baseline", baseline_dir, spec.base_synaptic, spec.seeds, writers)
        best = self._best()
        if best is not None:
            best_cfg = knobs_to_config(best.params, spec.base_synaptic)
            requests += self._pending_controls("confirm", layout.control_dir("confirm"), best_cfg, spec.seeds, writers)
        self._evaluate(requests, writers)
        return self._finish_cma(best)

    def _load_or_start_search(self) -> tuple[CMASearch, int]:
        state = load_checkpoint(self.layout.checkpoint)
        if state is not None:
            if state.get("version") != CHECKPOINT_VERSION:
                raise ConfigError(f"--resume: {self.layout.checkpoint} has an unknown format")
            return state["search"], int(state["next_gen"])
        spec = self.spec
        return CMASearch(self.x0_unit, spec.sigma, spec.population_size, spec.search_seed, self.layout.root), 0

    def _progress_rows(self, gen: int) -> dict[int, dict]:
        return {int(r["cand"]): r for r in self.progress_ledger.rows if int(r["gen"]) == gen}

    def _candidate_request(self, gen: int, cand: int, x: np.ndarray, writers: dict) -> EvalRequest:
        knobs = decode_vector(x)
        synaptic = knobs_to_config(knobs, self.spec.base_synaptic)
        config_dir = self.layout.candidate_dir(gen, cand)
        self._write_config(config_dir, synaptic, knobs)
        request = self._request(config_dir, synaptic, knobs, self.spec.eval_seed,
                                {"role": "candidate", "gen": gen, "cand": cand})
        x_cells = {f"x_{name}": float(v) for name, v in zip(PARAM_NAMES, x)}
        writers[request.key] = lambda o: self.progress_ledger.append([{
            "gen": gen, "cand": cand, "seed": o.request.seed, **self._outcome_cells(o), **x_cells}])
        return request

    def _records(self) -> list[CandidateRecord]:
        records = []
        for r in self.progress_ledger.rows:
            x = tuple(float(r[f"x_{name}"]) for name in PARAM_NAMES)
            records.append(CandidateRecord(
                gen=int(r["gen"]), cand=int(r["cand"]), x=x, params=decode_vector(x), score=parse_float(r["score"]),
                raw_score=parse_float(r["raw_score"]), status=r["status"], evaluator=r["evaluator"],
                seed=int(r["seed"]), summary_path=self._abs(r["summary_path"])))
        return sorted(records, key=lambda c: (c.gen, c.cand))

    def _controls(self) -> list[ControlRecord]:
        return [ControlRecord(r["role"], r["label"], int(r["seed"]), parse_float(r["score"]),
                              parse_float(r["raw_score"]), r["status"], r["evaluator"], self._abs(r["summary_path"]))
                for r in self.controls_ledger.rows]

    def _abs(self, relative: str) -> Path | None:
        return self.layout.root / relative if relative else None

    def _best(self) -> CandidateRecord | None:
        ok = [c for c in self._records() if c.status == "ok" and math.isfinite(c.score)]
        return min(ok, key=lambda c: (c.score, c.gen, c.cand)) if ok else None

    def _write_best(self, best: CandidateRecord | None) -> None:
        if best is None:
            atomic_write_json(self.layout.best_json, {"best": None, "reason": "no candidate finished"})
            return
        atomic_write_json(self.layout.best_json, {
            "gen": best.gen, "cand": best.cand, "score": best.score, "status": best.status, "seed": best.seed,
            "params": best.params, "x": dict(zip(PARAM_NAMES, best.x)),
            "x_unit": dict(zip(PARAM_NAMES, x_to_unit(best.x).tolist())),
            "evaluator": best.evaluator, "summary_path": self.layout.relative(best.summary_path),
            "synaptic_config_path": self.layout.relative(self.layout.candidate_dir(best.gen, best.cand)
                                                         / "synaptic_config.json"),
        })

    def _finish_cma(self, best: CandidateRecord | None) -> PilotResult:
        spec = self.spec
        records = self._records()
        baseline = {s: self._seed_result(r) for s, r in self._control_rows("baseline").items()}
        confirm = {s: self._seed_result(r) for s, r in self._control_rows("confirm").items()} if best else {}
        verdict = compute_verdict(
            eval_seed=spec.eval_seed, baseline=baseline, confirm=confirm,
            best_score=best.score if best else math.nan, candidate_statuses=[c.status for c in records],
            candidate_scores=[c.score for c in records], go_threshold=spec.go_threshold)
        per_gen = _best_per_generation(records, spec.generations)
        self._write_best(best)
        atomic_write_json(self.layout.root / "verdict.json", verdict.to_dict())
        curves = {name: _losses_of(self._abs(self._control_rows(role).get(spec.eval_seed, {}).get("summary_path", "")))
                  for name, role in (("baseline", "baseline"), ("best", "confirm"))}
        figures = plots.cma_plots(self.layout, per_gen, verdict.baseline_score, curves) if self.plots_enabled else {}
        atomic_write_text(self.layout.summary_md, report.render_cma_summary(
            run_id=self.run_id, spec=spec, verdict=verdict, best=best, records=records, per_gen=per_gen,
            budget=self.budget, layout=self.layout, figures=figures))
        return PilotResult(self.layout.root, spec, records, self._controls(), best, verdict, per_gen)

    def _seed_result(self, row: dict) -> SeedResult:
        return SeedResult(parse_float(row["score"]), row["status"], tuple(_losses_of(self._abs(row["summary_path"]))))

    # -- sensitivity -------------------------------------------------------------------------------------------------

    def _run_sensitivity(self) -> PilotResult:
        spec, layout = self.spec, self.layout
        writers: dict[str, Callable[[EvalOutcome], None]] = {}
        requests = self._pending_controls("baseline", layout.control_dir("baseline"), spec.base_synaptic,
                                          spec.seeds, writers)
        edges = []
        for ps in PARAM_SPECS:
            for edge, xi in (("low", ps.low), ("high", ps.high)):
                # Change this one field of the base config and nothing else (no encode/decode round trip of the
                # other knobs, which could move a log10 knob by an ulp).
                value = ps.decode(xi)
                label = f"{ps.name}_{edge}"
                edges.append((ps.name, edge, value, label))
                requests += self._pending_controls("sensitivity", layout.sensitivity_dir(ps.name, edge),
                                                   spec.base_synaptic.replace(**{ps.name: value}), [spec.eval_seed],
                                                   writers, label=label)
        self._evaluate(requests, writers)

        base_row = self._control_rows("baseline").get(spec.eval_seed)
        base = parse_float(base_row["score"]) if base_row and base_row["status"] == "ok" else math.nan
        rows = []
        for knob, edge, value, label in edges:
            r = self._control_rows("sensitivity", label)[spec.eval_seed]
            score = parse_float(r["score"]) if r["status"] == "ok" else math.nan
            delta = score - base
            rows.append({"knob": knob, "edge": edge, "value": value, "score": score, "delta": delta,
                         "rel_delta": delta / abs(base) if base else math.nan, "status": r["status"]})
        Ledger(layout.sensitivity_csv, SENSITIVITY_COLUMNS).append(rows)
        baseline_scores = [parse_float(r["score"]) for r in self._control_rows("baseline").values()
                           if r["status"] == "ok"]
        noise = (float(np.std(baseline_scores, ddof=1) / np.mean(baseline_scores))
                 if len(baseline_scores) > 1 else math.nan)
        figures = plots.sensitivity_plots(layout, rows) if self.plots_enabled else {}
        atomic_write_text(layout.summary_md, report.render_sensitivity_summary(
            run_id=self.run_id, spec=spec, rows=rows, baseline_score=base, seed_noise=noise, budget=self.budget,
            layout=layout, figures=figures))
        return PilotResult(layout.root, spec, [], self._controls(), sensitivity=rows)


def _check_replayed(row: dict | None, gen: int, cand: int, x: np.ndarray) -> None:
    """A resumed run must re-ask exactly the points it recorded; anything else means checkpoint and ledger disagree."""
    if row is None:
        return
    recorded = np.array([float(row[f"x_{name}"]) for name in PARAM_NAMES])
    if not np.array_equal(recorded, x):
        raise ConfigError(f"--resume: generation {gen} candidate {cand} differs from the one in progress.csv; "
                          "the checkpoint and the ledger disagree (was the run dir edited?)")


def _best_per_generation(records: list[CandidateRecord], generations: int) -> list[float]:
    out = []
    for g in range(generations):
        scores = [c.score for c in records if c.gen == g and c.status == "ok"]
        out.append(min(scores) if scores else math.nan)
    return out


def _losses_of(summary_path: Path | None) -> list[float]:
    if summary_path is None or not summary_path.is_file():
        return []
    try:
        losses = json.loads(summary_path.read_text())["results"]["losses"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [math.nan if v is None else float(v) for v in losses]
