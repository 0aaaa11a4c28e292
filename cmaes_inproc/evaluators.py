"""Turn evaluation requests (a config, a seed, an output dir) into scored outcomes, behind one interface.

* `BatchedEvaluator`: trains requests together as populations (at most `max_batch` members each) with
  `nanochat.trainer.train_population`, in this process. A population that runs out of memory is split in half and
  retried, down to single members.
* `SubprocessEvaluator`: the pilot document's path, one `python -m nanochat.train` per request.
* `FallbackEvaluator`: batched first; requests it could not run (out of memory even alone, or the batched path
  raised) go through the subprocess path, and are recorded as `subprocess-fallback`.
* `ObjectiveEvaluator`: a user callable over decoded knobs, for reusing the CMA loop and artifacts elsewhere.

A request carries an opaque `tag` (the pilot's typed slot: which candidate or control it is), returned untouched on
its outcome, so the caller needs no table of its own to know what came back. Every evaluator calls `on_done(outcomes)` as soon as a group of requests is finished (so the pilot can append to its
ledger and a killed run loses little work) and returns all outcomes in request order. Scoring is shared: the mean
of the last `tail` train losses (or, with `on="val"`, the held-out validation loss) for a member that finished; a
fixed penalty for any failure.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import numbers
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import torch

from nanochat.config import ConfigError, Member, ModelConfig, SynapticConfig, TrainConfig
from nanochat.status import Status

from .spec import DEFAULT_PENALTY


OnDone = Callable[[list["EvalOutcome"]], None]
OnStep = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalRequest:
    """One training run to do: `synaptic` on `seed`, artifacts into `out_dir`.

    `config_path` is the synaptic_config.json the pilot wrote for this config (the subprocess path reads it; the
    batched path trains the identical in-memory config). `knobs` are the decoded searched values (custom
    objectives see only these). `meta` is what the summary records about the pilot (run id, role, gen, cand).
    """

    key: str
    synaptic: SynapticConfig
    seed: int
    out_dir: Path
    config_path: Path
    knobs: Mapping[str, float]
    meta: Mapping[str, object] = field(default_factory=dict)
    tag: object = None  # the caller's own label for this request, handed back on its outcome


@dataclass(frozen=True)
class EvalOutcome:
    request: EvalRequest
    score: float  # what CMA-ES sees: raw_score if ok, else the penalty
    raw_score: float  # mean of the last `tail` finite losses (NaN if there are none)
    status: Status
    losses: tuple[float, ...]
    failure_step: int | None
    failure_reason: str | None
    evaluator: str  # "batched" | "subprocess" | "subprocess-fallback" | "objective"
    summary_path: Path | None
    note: str = ""  # e.g. why the batched path handed this request to the subprocess path
    train_score: float = math.nan  # mean of the last `tail` finite train losses, whatever the score measures
    val_loss: float = math.nan  # held-out loss (NaN unless measured)
    population_size: int = 1  # members of the population that trained it (1 for a subprocess)


class Evaluator(Protocol):
    name: str

    def evaluate(
        self, requests: Sequence[EvalRequest], on_done: OnDone | None = None, on_step: OnStep | None = None
    ) -> list[EvalOutcome]: ...


@dataclass(frozen=True)
class Scoring:
    """Score = mean of the last `tail` losses of a finished run, or its validation loss when `on` is "val";
    failures get `penalty` (documented, fixed).

    The pilot's spec validates the values; here they are only used.
    """

    tail: int = 3
    penalty: float = DEFAULT_PENALTY
    on: str = "train"  # "train" | "val"

    def raw(self, losses: Sequence[float]) -> float:
        finite = []
        for value in losses:  # the finite prefix: a failed run's last loss is NaN/Inf
            if not math.isfinite(value):
                break
            finite.append(value)
        tail = finite[-self.tail:]
        return sum(tail) / len(tail) if tail else math.nan

    def outcome(self, request: EvalRequest, status: Status, losses: Sequence[float], evaluator: str, *,
                failure_step: int | None = None, failure_reason: str | None = None,
                summary_path: Path | None = None, note: str = "", val_loss: float = math.nan,
                population_size: int = 1) -> EvalOutcome:
        status = Status(status)
        train = self.raw(losses)
        raw = val_loss if self.on == "val" else train
        if status.ok and not math.isfinite(raw):  # a "finished" run without a usable loss is an error
            what = "validation loss" if self.on == "val" else "loss"
            status, failure_reason = Status.ERROR, failure_reason or f"no finite {what} recorded"
        score = raw if status.ok else self.penalty
        return EvalOutcome(request, score, raw, status, tuple(float(v) for v in losses), failure_step,
                           failure_reason, evaluator, summary_path, note, train, float(val_loss), population_size)


def _line(text: object, index: int) -> str:
    """One non-blank line of a message: 0 is an exception's headline (torch's OOM message continues with advice),
    -1 the end of a process's stderr (where a traceback or a one-line error says what happened)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[index] if lines else ""


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # CPU allocation failures are plain RuntimeErrors from the default allocator.
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


# --- batched, in-process -------------------------------------------------------------------------------------------


class BatchedEvaluator:
    """Train requests as populations of at most `max_batch` members, splitting on out-of-memory."""

    name = "batched"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, corpus, device: str, scoring: Scoring,
                 max_batch: int, run_meta: Mapping[str, object] | None = None, val_batches: int = 0):
        self.model_cfg, self.train_cfg, self.corpus, self.device = model_cfg, train_cfg, corpus, device
        self.scoring, self.max_batch, self.val_batches = scoring, max_batch, val_batches
        self.run_meta = dict(run_meta or {})

    def evaluate(self, requests, on_done=None, on_step=None):
        outcomes: list[EvalOutcome] = []
        for start in range(0, len(requests), self.max_batch):
            outcomes.extend(self._train_splitting(list(requests[start:start + self.max_batch]), on_done, on_step))
        return outcomes

    def _train_splitting(self, chunk: list[EvalRequest], on_done, on_step) -> list[EvalOutcome]:
        failure: tuple[Status, str] | None = None
        try:
            outcomes = self._train(chunk, on_step)
        except (ConfigError, OSError):
            raise  # bad input, or no room to write the results: the same on every path, so report, don't retry
        except Exception as exc:  # noqa: BLE001 - any failure of the batched path is handled below
            headline = _line(exc, 0) or type(exc).__name__
            if _is_out_of_memory(exc):
                failure = (Status.OOM, f"out of memory even as a population of 1: {headline}")
            else:
                failure = (Status.ERROR, f"batched path failed: {type(exc).__name__}: {headline}")
        # Retry outside the except block: until it ends, the traceback keeps the failed population's tensors alive.
        if failure is not None:
            self._release_memory()
            if failure[0] is Status.OOM and len(chunk) > 1:
                half = (len(chunk) + 1) // 2
                return (self._train_splitting(chunk[:half], on_done, on_step)
                        + self._train_splitting(chunk[half:], on_done, on_step))
            outcomes = [self.scoring.outcome(r, failure[0], [], self.name, failure_reason=failure[1]) for r in chunk]
        if on_done is not None:
            on_done(outcomes)
        return outcomes

    def _train(self, chunk: list[EvalRequest], on_step) -> list[EvalOutcome]:
        from nanochat.trainer import train_population  # imported late: the trainer pulls in the model code

        members = [Member(synaptic=r.synaptic, seed=r.seed) for r in chunk]
        population = train_population(members, self.model_cfg, self.train_cfg, self.corpus, device=self.device,
                                      progress=on_step, val_batches=self.val_batches)
        outcomes = []
        for request, member, result in zip(chunk, members, population.members):
            meta = {**self.run_meta, **request.meta, "evaluator": self.name, "population_size": len(chunk)}
            summary = self._summarize(request, member, result, population, {"pilot": meta})
            outcomes.append(self.scoring.outcome(request, result.status, result.losses, self.name,
                                                 failure_step=result.failure_step,
                                                 failure_reason=result.failure_reason, summary_path=Path(summary),
                                                 val_loss=result.val_loss, population_size=len(chunk)))
        return outcomes

    def _summarize(self, request: EvalRequest, member: Member, result, population, meta: dict) -> Path:
        """Write the member's summary.json + run.md and return the summary's path. (The Ray actor overrides this to
        keep the summary in memory instead: it must not write files on its own machine.)"""
        from nanochat.summary import write_member_artifacts

        return write_member_artifacts(request.out_dir, member=member, member_result=result, population=population,
                                      model_cfg=self.model_cfg, train_cfg=self.train_cfg, corpus=self.corpus,
                                      meta=meta)

    def _release_memory(self) -> None:
        gc.collect()  # the failed model and optimizer may sit in reference cycles
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- subprocess, one candidate per process ------------------------------------------------------------------------

class SubprocessEvaluator:
    """Run `python -m nanochat.train` once per request, one after another (the pilot document's evaluation path)."""

    name = "subprocess"

    def __init__(self, cli_args: Sequence[str], scoring: Scoring, timeout_s: float | None = None,
                 python: str = sys.executable, label: str = "subprocess"):
        self.cli_args, self.scoring, self.timeout_s = list(cli_args), scoring, timeout_s
        self.python, self.name = python, label

    def command(self, request: EvalRequest) -> list[str]:
        # --overwrite: a resumed run may redo a request whose summary a killed run had already written.
        return [self.python, "-m", "nanochat.train", *self.cli_args, "--synaptic-config", str(request.config_path),
                "--seed", str(request.seed), "--out-dir", str(request.out_dir), "--overwrite", "--quiet"]

    def evaluate(self, requests, on_done=None, on_step=None):
        outcomes = []
        for i, request in enumerate(requests):
            outcome = self._run_one(request)
            outcomes.append(outcome)
            if on_done is not None:
                on_done([outcome])
            if on_step is not None:
                on_step(i + 1, len(requests))
        return outcomes

    def _run_one(self, request: EvalRequest) -> EvalOutcome:
        summary_path = request.out_dir / "summary.json"
        summary_path.unlink(missing_ok=True)  # never mistake an older run's summary for this one's
        try:
            proc = subprocess.run(self.command(request), capture_output=True, text=True, timeout=self.timeout_s,
                                  env=_env_with_package_on_path(), stdin=subprocess.DEVNULL,
                                  preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            return self.scoring.outcome(request, Status.TIMEOUT, [], self.name,
                                        failure_reason=f"subprocess exceeded --timeout-s {self.timeout_s:g}s")
        # nanochat.train exits 0 (finished) or 1 (the member failed: nan/diverged/timeout) after writing its summary;
        # 2 is bad input and 3 out of memory, with nothing written.
        if proc.returncode not in (0, 1) or not summary_path.is_file():
            message = _line(proc.stderr, -1) or f"exit code {proc.returncode}"
            oom = proc.returncode == 3 or "out of memory" in proc.stderr.lower()
            status = Status.OOM if oom else Status.ERROR
            return self.scoring.outcome(request, status, [], self.name,
                                        failure_reason=f"nanochat.train exited {proc.returncode}: {message}")
        try:
            results = json.loads(summary_path.read_text())["results"]
            losses = [math.nan if v is None else float(v) for v in results["losses"]]
            status = Status(results["status"])
            val_loss = math.nan if results.get("val_loss") is None else float(results["val_loss"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return self.scoring.outcome(request, Status.ERROR, [], self.name,
                                        failure_reason=f"unreadable {summary_path}: {type(exc).__name__}")
        return self.scoring.outcome(request, status, losses, self.name,
                                    failure_step=results.get("failure_step"),
                                    failure_reason=results.get("failure_reason"), summary_path=summary_path,
                                    val_loss=val_loss)


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, ask the kernel to SIGKILL it when the pilot dies (even by kill -9), so
    no training subprocess outlives the run that started it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_DEATHSIG


def _env_with_package_on_path() -> dict[str, str]:
    """The child must import the same nanochat as this process, even when the repo is not pip-installed."""
    import nanochat

    root = str(Path(nanochat.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --- batched with subprocess fallback ------------------------------------------------------------------------------


class FallbackEvaluator:
    """Batched first; whatever the batched path could not run goes through the subprocess path.

    Build the secondary with `label="subprocess-fallback"` so the ledger says which rows took the detour.
    """

    name = "batched"

    def __init__(self, primary: BatchedEvaluator, secondary: SubprocessEvaluator):
        self.primary, self.secondary = primary, secondary

    def evaluate(self, requests, on_done=None, on_step=None):
        retry: list[EvalOutcome] = []

        def primary_done(outcomes: list[EvalOutcome]) -> None:
            finished = [o for o in outcomes if not o.status.retryable]
            retry.extend(o for o in outcomes if o.status.retryable)
            if finished and on_done is not None:
                on_done(finished)

        by_key = {o.request.key: o for o in self.primary.evaluate(requests, primary_done, on_step)}
        if retry:
            notes = {o.request.key: f"batched {o.status}: {o.failure_reason}" for o in retry}

            def secondary_done(outcomes: list[EvalOutcome]) -> None:
                if on_done is not None:
                    on_done([replace(o, note=notes[o.request.key]) for o in outcomes])

            for o in self.secondary.evaluate([o.request for o in retry], secondary_done):
                by_key[o.request.key] = replace(o, note=notes[o.request.key])
        return [by_key[r.key] for r in requests]


# --- user objective -----------------------------------------------------------------------------------------------


class ObjectiveEvaluator:
    """Score requests with `objective(list of decoded-knob dicts) -> list of floats` (lower is better).

    No training and no summary.json; a non-finite value counts as a "nan" failure and gets the penalty. Seeds are
    not passed: an objective that wants noise must bring its own.
    """

    name = "objective"

    def __init__(self, objective: Callable[[list[dict[str, float]]], Sequence[float]], scoring: Scoring):
        self.objective, self.scoring = objective, scoring

    def evaluate(self, requests, on_done=None, on_step=None):
        values = self.objective([dict(r.knobs) for r in requests])
        try:
            values = list(values)
        except TypeError:
            raise ConfigError.about("objective", f"must return a list of scores, got {type(values).__name__}") from None
        if len(values) != len(requests):
            raise ConfigError.about("objective", f"returned {len(values)} scores for a list of {len(requests)} points "
                                                 "(one score per point, lower is better)")
        outcomes = []
        for i, (request, value) in enumerate(zip(requests, values)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError.about("objective", f"returned {value!r} for point {i}; scores must be real numbers")
            value = float(value)
            if math.isfinite(value):
                outcomes.append(self.scoring.outcome(request, Status.OK, [value], self.name))
            else:
                outcomes.append(self.scoring.outcome(request, Status.NAN, [value], self.name, failure_step=0,
                                                     failure_reason=f"objective returned {value}"))
        if on_done is not None:
            on_done(outcomes)
        if on_step is not None:
            on_step(len(requests), len(requests))
        return outcomes
