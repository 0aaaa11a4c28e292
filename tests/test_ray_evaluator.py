"""The Ray evaluator (issue 11): same results as --batched, lost actors and nodes re-run, handshake refusals.

Ray runs locally, sized for CI (2 CPUs, no dashboard, usage stats off); the model is the pilot tests' tiny one
(tests/tiny.py). Faults come from test-only actor classes (subclasses of `ShardWorker` defined here and swapped in
with monkeypatch), so production code has no hook for them. Every Ray instance this module starts is shut down,
and the module's last fixture checks that no Ray process it saw is left.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

from helpers import one_thread, read_csv, run_dir  # noqa: E402
from tiny import PILOT_FLAGS as TINY_FLAGS  # noqa: E402
from tiny import PILOT_MODEL as TINY_MODEL  # noqa: E402
from tiny import PILOT_SYNAPTIC as TINY_SYNAPTIC  # noqa: E402
from tiny import PILOT_TRAIN as TINY_TRAIN  # noqa: E402

from cmaes_inproc import ray_evaluator, run_pilot  # noqa: E402
from cmaes_inproc.__main__ import main  # noqa: E402
from cmaes_inproc.ray_evaluator import partition  # noqa: E402
from cmaes_inproc.ray_worker import CorpusPayload, ShardWorker  # noqa: E402
from nanochat.config import ConfigError  # noqa: E402
from nanochat.data import load_corpus  # noqa: E402

# The pilot document's example settings (2 generations x 4, eval seed 123, search seed 0) on the tiny model.
EXAMPLE = dict(generations=2, population_size=4, eval_seed=123, search_seed=0, model=TINY_MODEL, train=TINY_TRAIN,
               base_synaptic=TINY_SYNAPTIC, plots=False)
SMALL = dict(EXAMPLE, generations=1, population_size=2, noise_seeds=0)
RAY = dict(evaluator="ray", num_actors=2, cpus_per_actor=1)

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test actors below travel by value

_seen_pids: set[int] = set()


def _ray_descendants() -> set[int]:
    """Live (non-zombie) processes below this one: gcs_server, raylet, workers, actors."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    mine, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in mine and pid not in mine}
        mine |= more
        grew = bool(more)
    return mine - {os.getpid()}


@pytest.fixture(scope="module", autouse=True)
def no_ray_left():
    """Shut Ray down after the module and check that none of the processes it started is still alive."""
    yield
    ray.shutdown()
    deadline = time.monotonic() + 30
    while (left := _seen_pids & _ray_descendants()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left after the module: {sorted(left)}"


@pytest.fixture(autouse=True)
def _watch_processes():
    with one_thread():
        yield
    _seen_pids.update(_ray_descendants())


@pytest.fixture
def local_ray():
    """One local Ray shared by the tests that ask for it (started again if a test shut it down)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 ** 2,
                 logging_level="ERROR", _node_ip_address="127.0.0.1")
    _seen_pids.update(_ray_descendants())
    yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with one_thread():
        return run_pilot(run_id="batched", artifacts_dir=tmp_path_factory.mktemp("ref"), **EXAMPLE)


def results(result):
    """Candidates, scores and best, in an order independent of which shard came back first."""
    candidates = sorted((r.gen, r.cand, r.x, r.score, str(r.status)) for r in result.records)
    controls = sorted((c.role, c.seed, c.score, str(c.status)) for c in result.controls)
    best = None if result.best is None else (result.best.gen, result.best.cand, result.best.score)
    return candidates, controls, best


def events(result) -> list[dict]:
    path = result.run_dir / "ray_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- sharding ------------------------------------------------------------------------------------------------------


def test_partition_is_contiguous_and_balanced():
    for n_requests in range(0, 12):
        for n in range(1, 5):
            shards = partition(list(range(n_requests)), n)
            assert [x for s in shards for x in s] == list(range(n_requests))
            sizes = [len(s) for s in shards]
            assert all(sizes) and (not sizes or max(sizes) - min(sizes) <= 1)
            assert len(shards) == min(n, n_requests)


# --- the command: --ray from the CLI, same results as --batched ----------------------------------------------


def test_cli_starts_and_stops_its_own_local_ray(tmp_path, reference, tiny_config_file):
    """`--ray` with no address and no Ray running: a local Ray for the run, shut down at its end."""
    ray.shutdown()
    rc = main(["--artifacts-dir", str(tmp_path), "--run-id", "cli", "--synaptic-config", str(tiny_config_file),
               *TINY_FLAGS, "--ray", "--num-actors", "2", "--cpus-per-actor", "1", "--device", "cpu",
               "--generations", "2", "--population-size", "4", "--search-seed", "0", "--eval-seed", "123",
               "--no-plots"])
    assert rc == 0 and not ray.is_initialized()
    rows = read_csv(run_dir(tmp_path, "cli") / "progress.csv")
    assert sorted((int(r["gen"]), int(r["cand"]), float(r["score"])) for r in rows) == \
        sorted((r.gen, r.cand, r.score) for r in reference.records)


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny_synaptic.json"
    path.write_text(json.dumps({"presyn_chunk": 8}))
    return path


# --- (a) same candidates, scores and best as --batched -------------------------------------------------------------


def test_ray_matches_batched_bit_for_bit(tmp_path, reference, local_ray):
    result = run_pilot(run_id="ray", artifacts_dir=tmp_path, **RAY, **EXAMPLE)
    assert results(result) == results(reference)
    assert {r.evaluator for r in result.records} == {"ray"} and not events(result)
    # each summary was written by the driver and says which node and actor trained the member
    meta = json.loads(result.records[0].summary_path.read_text())["meta"]["pilot"]
    assert meta["evaluator"] == "ray" and meta["ray_node"] and meta["ray_actor"]
    assert result.records[0].summary_path.with_name("run.md").is_file()
    rows = read_csv(result.run_dir / "progress.csv")
    assert {r["evaluator"] for r in rows} == {"ray"}
    execution = json.loads((result.run_dir / "run.json").read_text())["execution"]
    assert execution["evaluator"] == "ray" and execution["num_actors"] == 2


def test_a_ray_run_resumes_batched_with_the_same_results(tmp_path, reference, local_ray):
    """Interrupted after generation 0 under --ray, resumed --batched: the same candidates, scores and best."""
    def stop_after_first_generation(event):
        if event.kind == "generation":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pilot(run_id="mixed", artifacts_dir=tmp_path, progress=stop_after_first_generation, **RAY, **EXAMPLE)
    result = run_pilot(run_id="mixed", artifacts_dir=tmp_path, resume=True, **EXAMPLE)
    assert results(result) == results(reference)
    assert sorted({r.gen: r.evaluator for r in result.records}.items()) == [(0, "ray"), (1, "batched")]


# --- (b) a lost actor: its shard runs again elsewhere; past the retries, error rows -----------------------------------


class DyingWorker(ShardWorker):
    """Dies (the whole actor process) in `train` while a marker file exists; `once` consumes the marker."""

    marker = ""
    once = True

    def train(self, shard):
        if self.once:
            try:
                os.unlink(self.marker)  # only one actor wins the unlink
            except FileNotFoundError:
                return super().train(shard)
        elif not os.path.exists(self.marker):
            return super().train(shard)
        time.sleep(0.3)
        os._exit(1)


def _dying(monkeypatch, tmp_path, once: bool) -> None:
    marker = tmp_path / "die"
    marker.touch()
    worker = type("DyingWorker", (DyingWorker,), {"marker": str(marker), "once": once, "__module__": __name__})
    monkeypatch.setattr(ray_evaluator, "ShardWorker", worker)


def test_a_killed_actor_is_replaced_and_its_shard_rerun(tmp_path, reference, local_ray, monkeypatch):
    _dying(monkeypatch, tmp_path, once=True)
    result = run_pilot(run_id="killed", artifacts_dir=tmp_path, **RAY, **EXAMPLE)
    assert results(result) == results(reference)
    [event] = events(result)
    assert event["event"] == "shard_lost" and event["attempt"] == 1 and "restarted actor" in event["action"]
    assert "ActorDied" in event["error"] or "died" in event["error"].lower()


def test_every_attempt_dying_ends_in_error_rows(tmp_path, local_ray, monkeypatch):
    _dying(monkeypatch, tmp_path, once=False)
    start = time.monotonic()
    result = run_pilot(run_id="doomed", artifacts_dir=tmp_path, **{**RAY, "num_actors": 1, "ray_max_retries": 1},
                       **SMALL)
    assert time.monotonic() - start < 120
    rows = result.records + result.controls
    assert len(rows) == 3 and all(r.status == "error" and r.score == 1e3 for r in rows)
    assert all("ray shard lost 2 time(s)" in r.failure_reason for r in rows)
    lost = events(result)
    assert [e["attempt"] for e in lost] == [1, 2] and "gave up" in lost[1]["action"]  # 1 shard, 2 attempts
    assert result.verdict.label and (result.run_dir / "summary.md").is_file()


class HangingWorker(ShardWorker):
    """Hangs in `train` (as a wedged driver or device would) while a marker file exists; the first one consumes it."""

    marker = ""

    def train(self, shard):
        try:
            os.unlink(self.marker)
        except FileNotFoundError:
            return super().train(shard)
        time.sleep(600)


def test_a_shard_over_the_hard_timeout_is_rerun(tmp_path, local_ray, monkeypatch):
    marker = tmp_path / "hang"
    marker.touch()
    worker = type("HangingWorker", (HangingWorker,), {"marker": str(marker), "__module__": __name__})
    monkeypatch.setattr(ray_evaluator, "ShardWorker", worker)
    original = ray_evaluator.RayEvaluator.__init__

    def short_timeout(self, *args, **kwargs):  # the real one is 2 x --timeout-s + 120 s: too long for a test
        original(self, *args, **kwargs)
        self.hard_timeout_s = 3.0

    monkeypatch.setattr(ray_evaluator.RayEvaluator, "__init__", short_timeout)
    result = run_pilot(run_id="hung", artifacts_dir=tmp_path, **{**RAY, "num_actors": 1}, **SMALL)
    assert all(r.status == "ok" for r in result.records + result.controls)
    [event] = events(result)
    assert "hard timeout of 3s" in event["error"] and "restarted actor" in event["action"]


# --- (d) a handshake mismatch is refused in one line, before anything is written ---------------------------------------


def test_an_actor_with_another_corpus_is_refused_before_writing(tmp_path, local_ray, monkeypatch):
    other = tmp_path / "other.txt"
    other.write_text("another corpus, " * 400)
    monkeypatch.setattr(ray_evaluator, "corpus_payload", lambda corpus: CorpusPayload.of(load_corpus(other)))
    artifacts = tmp_path / "artifacts"
    with pytest.raises(ConfigError) as err:
        run_pilot(run_id="mismatch", artifacts_dir=artifacts, **{**RAY, "num_actors": 1}, **SMALL)
    message = str(err.value)
    assert "\n" not in message and "corpus sha256" in message and "differs from the driver" in message
    assert not artifacts.exists()


def test_ray_settings_do_not_change_what_resume_compares():
    """--resume works across evaluators: a run started with --ray may go on --batched, and vice versa."""
    from cmaes_inproc import PilotSpec

    ray_spec = PilotSpec(evaluator="ray", ray_address="auto", num_actors=3, gpus_per_actor=0.5, cpus_per_actor=2,
                         ray_max_retries=0)
    assert ray_spec.results_dict() == PilotSpec().results_dict()
    assert ray_spec.execution_dict()["num_actors"] == 3


def test_ray_settings_are_checked_and_named():
    for name, value in (("num_actors", 0), ("cpus_per_actor", 0), ("gpus_per_actor", 0.0), ("ray_max_retries", -1),
                        ("ray_address", "")):
        with pytest.raises(ConfigError, match=name):
            run_pilot(run_id="x", artifacts_dir="/nonexistent", **{**RAY, name: value}, **SMALL)


def test_an_address_nobody_answers_is_refused_at_once(tmp_path, capsys):
    """ray.init would retry an unreachable head for minutes; the pilot refuses it in one line, writing nothing."""
    ray.shutdown()
    start = time.monotonic()
    rc = main(["--ray", "--ray-address", "127.0.0.1:1", "--artifacts-dir", str(tmp_path / "a"), *TINY_FLAGS])
    assert rc == 2 and time.monotonic() - start < 30 and not (tmp_path / "a").exists()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("cmaes_inproc: error: --ray-address '127.0.0.1:1': nothing answers")


# --- (c) a two-node cluster loses a node mid-generation -----------------------------------------------------------------


class NodeBoundWorker(ShardWorker):
    """On the doomed node, announces that it started training and then waits (the test removes the node)."""

    doomed_node = ""
    started = ""

    def train(self, shard):
        if ray.get_runtime_context().get_node_id() == self.doomed_node and not os.path.exists(self.started):
            Path(self.started).touch()
            time.sleep(120)
        return super().train(shard)


def test_a_removed_node_loses_nothing(tmp_path, reference, monkeypatch):
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                            "object_store_memory": 150 * 1024 ** 2})
    try:
        doomed = cluster.add_node(num_cpus=1, object_store_memory=150 * 1024 ** 2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        _seen_pids.update(_ray_descendants())
        started = tmp_path / "started"
        worker = type("NodeBoundWorker", (NodeBoundWorker,),
                      {"doomed_node": doomed.node_id, "started": str(started), "__module__": __name__})
        monkeypatch.setattr(ray_evaluator, "ShardWorker", worker)

        def remove_when_started():
            deadline = time.monotonic() + 120
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            _seen_pids.update(_ray_descendants())
            cluster.remove_node(doomed)

        remover = threading.Thread(target=remove_when_started, daemon=True)
        remover.start()
        result = run_pilot(run_id="node_lost", artifacts_dir=tmp_path, **RAY, **EXAMPLE)
        remover.join(timeout=30)
        assert started.exists(), "no actor was placed on the second node"
        assert results(result) == results(reference)
        [event] = events(result)
        assert event["ray_node"] == doomed.node_id and "restarted actor" in event["action"]
    finally:
        ray.shutdown()
        cluster.shutdown()
