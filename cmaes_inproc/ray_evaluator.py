"""`RayEvaluator`: one generation split across the GPUs (or CPU cores) of a Ray cluster, each shard still batched.

Why Ray Core actors and not Ray Tune: a Tune trial is one config, which throws the batching away (41.6 vs ~600
member-steps/s on an H100). Here each actor is one warm process per GPU (or per `cpus_per_actor` cores) that
trains its shard of a generation as one batched population, through the same `BatchedEvaluator` as `--batched`
(see `ray_worker.py`).

* Start-up (in the constructor, which `open_run` calls before anything is written): connect to the cluster at
  `ray_address`, or start a local Ray sized to the actors; start the actors, ship them the configs and the corpus
  bytes once, and compare every actor's fingerprint (corpus hash, package version and sources, torch, device kind)
  with the driver's. A mismatch is a one-line `ConfigError`, and nothing has been written.
* Each `evaluate` call cuts its requests into contiguous shards, one per actor, sizes differing by at most one.
  Shards come back as they finish; the driver writes each member's summary.json + run.md (atomically; the actors
  write nothing, so no shared filesystem is needed) and calls `on_done`.
* Faults: a shard whose actor died (killed, crashed, Ray OOM, node lost) or that ran past the hard timeout is
  re-run on a fresh actor (or, if none can be started, on a live one), up to `ray_max_retries` times; each event is
  one JSON line in `<run dir>/ray_events.jsonl`. Past that, the shard's rows are `error` with the penalty and the run
  goes on. Start-up, connection and result fetches have timeouts, and dead actors are noticed by polling; a shard
  whose actor is alive but stuck is cut off only by the hard timeout, which exists when `--timeout-s` is set.
* `close()` stops the actors, and Ray itself if this process started it.

Ray is imported only here, and only when this evaluator is used (`pip install 'cmaes-inproc[ray]'`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from nanochat.config import ConfigError, ModelConfig, TrainConfig
from nanochat.data import Corpus
from nanochat.status import Status

from .evaluators import EvalOutcome, EvalRequest, Scoring
from .ray_worker import CorpusPayload, ShardResult, ShardWorker, fingerprint

STARTUP_TIMEOUT_S = 300.0  # an actor imports torch and rebuilds the corpus; generous for a loaded machine
POLL_S = 0.5  # how often the driver looks at shards in flight (deadlines, dead actors)
RESULT_GRACE_S = 10.0  # how long ray.get may take for a result that is already there
CONNECT_TIMEOUT_S = 10.0  # to reach a cluster's head at --ray-address


@dataclass(frozen=True)
class RaySettings:
    """The Ray part of a `PilotSpec` (execution only: not compared on resume)."""

    address: str | None
    num_actors: int | None
    gpus_per_actor: float
    cpus_per_actor: int
    max_retries: int

    @classmethod
    def of(cls, spec) -> "RaySettings":
        return cls(spec.ray_address, spec.num_actors, spec.gpus_per_actor, spec.cpus_per_actor,
                   spec.ray_max_retries)


def partition(requests: Sequence[EvalRequest], n: int) -> list[list[EvalRequest]]:
    """Contiguous shards, at most `n`, none empty, sizes differing by at most one (the first ones are larger)."""
    n = max(1, min(n, len(requests)))
    size, extra = divmod(len(requests), n)
    shards, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        shards.append(list(requests[start:end]))
        start = end
    return [s for s in shards if s]


def one_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class EventLog:
    """`ray_events.jsonl`: one JSON line per fault, appended (and fsynced) by the driver."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, event: str, **fields: Any) -> None:
        line = json.dumps({"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def connect(settings: RaySettings, device_is_cuda: bool) -> bool:
    """Join the cluster at `settings.address`, or start a local Ray sized to the actors; True if this process
    connected (and must disconnect/stop it at the end), False if Ray was already initialised by the caller."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray evaluator needs Ray: pip install 'cmaes-inproc[ray]'") from None
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, configure_logging=True)
    if settings.address is not None:
        _probe(settings.address)
    try:
        if settings.address is not None:
            ray.init(address=settings.address, **quiet)
        else:
            cpus = os.cpu_count() or 1
            if settings.num_actors is not None and not device_is_cuda:
                cpus = settings.num_actors * settings.cpus_per_actor
            # A local Ray talks to itself over loopback only: nothing of it is reachable from, or sent to, the network.
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    except Exception as exc:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError, ...
        if settings.address is not None:
            raise ConfigError.about("ray_address", f"{settings.address!r}: cannot join Ray: {one_line(exc)}") from None
        raise ConfigError(f"cannot start a local Ray: {one_line(exc)}") from None
    return True


def _probe(address: str) -> None:
    """Fail fast on a host:port nobody listens on: ray.init would retry the connection for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray resolves them itself, and fails quickly when there is no cluster
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError.about("ray_address", f"{address!r}: nothing answers there ({exc.strerror or exc}); start "
                                               "the head with `ray start --head` or check the address") from None


class _ActorPool:
    """The actors of a run, one per slot; replaces a dead one with a fresh actor after a handshake."""

    def __init__(self, settings: RaySettings, device_is_cuda: bool, init_args: tuple,
                 expected: dict[str, str]):
        import ray

        self.ray, self.settings, self.expected = ray, settings, expected
        gpus = settings.gpus_per_actor if device_is_cuda else 0
        self.remote_cls = ray.remote(num_cpus=settings.cpus_per_actor, num_gpus=gpus, max_restarts=0)(ShardWorker)
        self.init_args = init_args
        self.slots: list[Any] = []
        self.where: list[dict[str, str]] = []
        n = settings.num_actors or self._default_count(device_is_cuda)
        self._check_resources(n, device_is_cuda)
        self.slots = [self._spawn() for _ in range(n)]
        try:
            self.where = self._handshake_all()
        except BaseException:
            self.kill_all()
            raise

    def _handshake_all(self) -> list[dict[str, str]]:
        ray, n = self.ray, len(self.slots)
        try:
            replies = ray.get([a.handshake.remote() for a in self.slots], timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError.about("num_actors", f"{n} Ray actors did not start within {STARTUP_TIMEOUT_S:g}s "
                                                  f"(cluster: {ray.cluster_resources()})") from None
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"a Ray actor failed to start: {_cause(exc)}") from None
        for i, reply in enumerate(replies):
            problem = self._mismatch(reply)
            if problem:
                raise ConfigError(f"Ray actor {i} on node {reply['ray_node'][:12]} {problem}")
        return [{k: reply[k] for k in ("ray_node", "ray_actor")} for reply in replies]

    def _default_count(self, device_is_cuda: bool) -> int:
        resources = self.ray.cluster_resources()
        if device_is_cuda:
            return max(1, int(resources.get("GPU", 0) // self.settings.gpus_per_actor))
        return max(1, int(resources.get("CPU", 1) // self.settings.cpus_per_actor))

    def _check_resources(self, n: int, device_is_cuda: bool) -> None:
        """Refuse at once what the cluster cannot place (a pending actor would only time out)."""
        have = self.ray.cluster_resources()
        need = {"CPU": n * self.settings.cpus_per_actor}
        if device_is_cuda:
            need["GPU"] = n * self.settings.gpus_per_actor
        for name, amount in need.items():
            if have.get(name, 0) < amount:
                raise ConfigError.about("num_actors", f"{n} actors need {amount:g} {name}s but the Ray cluster has "
                                                      f"{have.get(name, 0):g}")

    def _spawn(self):
        # SPREAD: actors go to different nodes where they can, so losing a node costs as few shards as possible
        return self.remote_cls.options(scheduling_strategy="SPREAD").remote(*self.init_args)

    def _mismatch(self, reply: dict[str, str]) -> str:
        diffs = [f"{key} {reply.get(key)!s:.16} != driver's {value!s:.16}" for key, value in self.expected.items()
                 if reply.get(key) != value]
        return "differs from the driver: " + "; ".join(diffs) if diffs else ""

    def replace(self, slot: int) -> tuple[int | None, str]:
        """Kill the actor in `slot` and start a fresh one there; if that fails, another live slot. Returns the
        slot to re-run on (None if there is none) and what was done, for the event log."""
        self.kill(slot)
        actor = self._spawn()
        try:
            reply = self.ray.get(actor.handshake.remote(), timeout=STARTUP_TIMEOUT_S)
            problem = self._mismatch(reply)
        except self.ray.exceptions.RayError as exc:  # GetTimeoutError included: no room for it, or it died
            reply, problem = {}, _cause(exc)
        if not problem:
            self.slots[slot], self.where[slot] = actor, {k: reply[k] for k in ("ray_node", "ray_actor")}
            return slot, f"restarted actor {slot} on node {reply['ray_node'][:12]}"
        self.ray.kill(actor, no_restart=True)
        live = [i for i, a in enumerate(self.slots) if a is not None]
        if not live:
            return None, f"could not restart actor {slot} ({problem}) and no actor is left"
        return live[0], f"could not restart actor {slot} ({problem}); re-run on actor {live[0]}"

    def kill(self, slot: int) -> None:
        actor, self.slots[slot] = self.slots[slot], None
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone is fine
                pass

    def kill_all(self) -> None:
        for slot in range(len(self.slots)):
            self.kill(slot)


def _cause(exc: BaseException) -> str:
    """The one-line reason of a Ray error (the remote exception's own, where there is one)."""
    cause = getattr(exc, "cause", None)
    return one_line(cause if isinstance(cause, BaseException) else exc)


@dataclass
class _Job:
    shard: int
    requests: list[EvalRequest]
    slot: int
    attempt: int
    deadline: float | None = None
    actor: Any = None  # the actor it was sent to, and where that runs (set on submit)
    where: dict | None = None


class RayEvaluator:
    """The evaluator protocol over a pool of Ray actors; see the module docstring."""

    name = "ray"

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, corpus: Corpus, device: str,
                 scoring: Scoring, max_batch: int, settings: RaySettings, events_path: Path,
                 hard_timeout_s: float | None, run_meta: dict | None = None):
        from nanochat.trainer import resolve_device

        self.scoring, self.settings, self.hard_timeout_s = scoring, settings, hard_timeout_s
        self.events = EventLog(events_path)
        is_cuda = resolve_device(device).type == "cuda"
        self.owns_ray = connect(settings, is_cuda)
        self.pool: _ActorPool | None = None
        try:
            import ray

            payload = ray.put(corpus_payload(corpus))
            init_args = (model_cfg, train_cfg, payload, device, scoring, max_batch, dict(run_meta or {}))
            self.pool = _ActorPool(settings, is_cuda, init_args, fingerprint(corpus.sha256, device))
        except BaseException:
            self.close()
            raise

    def evaluate(self, requests, on_done=None, on_step=None) -> list[EvalOutcome]:
        import ray

        requests = list(requests)
        self._done: dict[str, EvalOutcome] = {}
        self._by_key = {r.key: r for r in requests}
        self._on_done, self._on_step, self._total = on_done, on_step, len(requests)
        running = {}
        for i, shard in enumerate(partition(requests, len(self.pool.slots))):
            self._submit(running, _Job(i, shard, i, 0))
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                self._collect(running, ref, running.pop(ref))
            now = time.monotonic()
            for ref, job in list(running.items()):
                if job.deadline is not None and now > job.deadline:
                    del running[ref]
                    self._fault(running, job, f"shard ran past the hard timeout of {self.hard_timeout_s:g}s")
        return [self._done[r.key] for r in requests]

    def _submit(self, running: dict, job: _Job) -> None:
        job.actor, job.where = self.pool.slots[job.slot], self.pool.where[job.slot]
        job.deadline = None if self.hard_timeout_s is None else time.monotonic() + self.hard_timeout_s
        running[job.actor.train.remote(job.requests)] = job

    def _collect(self, running: dict, ref, job: _Job) -> None:
        import ray

        try:
            results: list[ShardResult] = ray.get(ref, timeout=RESULT_GRACE_S)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ConfigError):
                raise exc.cause from None  # bad input fails the same way on every path
            self._fault(running, job, _cause(exc))
            return
        except ray.exceptions.RayError as exc:  # actor died, worker crashed, Ray OOM, node lost, object lost
            self._fault(running, job, _cause(exc))
            return
        self._finish([self._write(r) for r in results])

    def _write(self, result: ShardResult) -> EvalOutcome:
        """The driver's own request back on the outcome (its tag untouched), and the summary written here."""
        from nanochat.summary import write_summary_files

        request = self._by_key[result.outcome.request.key]
        if result.summary is None:
            return replace(result.outcome, request=request, summary_path=None)
        summary = result.summary
        summary["meta"]["argv"] = sys.argv  # the pilot's command line, as on the batched path
        return replace(result.outcome, request=request, summary_path=write_summary_files(request.out_dir, summary))

    def _fault(self, running: dict, job: _Job, reason: str) -> None:
        """Record the fault; re-run the shard on a fresh (or live) actor, or give up on it with error rows."""
        event = dict(shard=job.shard, attempt=job.attempt + 1, members=[r.key for r in job.requests],
                     error=reason, **(job.where or {}))
        if self.pool.slots[job.slot] is job.actor:  # not yet replaced (by another shard's fault on the same actor)
            slot, action = self.pool.replace(job.slot)  # also after the last attempt: the pool stays whole
        else:
            slot = job.slot if self.pool.slots[job.slot] is not None else None
            action = f"actor {job.slot} was already replaced"
        if job.attempt >= self.settings.max_retries:
            slot = None
        if slot is None:
            action = (action + "; " if action else "") + f"gave up after {job.attempt + 1} attempt(s): error rows"
        self.events.append("shard_lost", **event, action=action)
        if slot is not None:
            self._submit(running, _Job(job.shard, job.requests, slot, job.attempt + 1))
            return
        why = f"ray shard lost {job.attempt + 1} time(s); last: {reason}"
        self._finish([self.scoring.outcome(r, Status.ERROR, [], self.name, failure_reason=why) for r in job.requests])

    def _finish(self, outcomes: list[EvalOutcome]) -> None:
        for o in outcomes:
            self._done[o.request.key] = o
        if self._on_done is not None:
            self._on_done(outcomes)
        if self._on_step is not None:
            self._on_step(len(self._done), self._total)

    def close(self) -> None:
        """Stop the actors, and Ray if this process started (or joined) it. Safe to call twice."""
        if self.pool is not None:
            self.pool.kill_all()
            self.pool = None
        if self.owns_ray:
            import ray

            ray.shutdown()
            self.owns_ray = False


def corpus_payload(corpus: Corpus) -> CorpusPayload:
    """What the actors receive as their corpus: the driver's bytes (never their own machine's stdlib)."""
    return CorpusPayload.of(corpus)
