"""Hostile inputs to the pilot (issue 10's table, a test per row): a changed corpus, a damaged or foreign ledger or
checkpoint, a shared run directory, bad settings and signals never give a wrong verdict, run foreign code or end in
a traceback; each is refused with one line, or works.

Rows 10-12 (parquet and config-file contents, nanochat.train's output place and run id) are tested with
nanochat.train in tests/test_corpus_checks.py and tests/test_train_cli_hardening.py.
"""

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmaes_inproc import recorders, run_pilot
from cmaes_inproc.__main__ import main
from cmaes_inproc.artifacts import RunLock
from nanochat.config import ConfigError, TrainConfig
from tiny import PILOT_FLAGS, PILOT_MODEL, PILOT_SYNAPTIC

SMALL = dict(generations=2, population_size=3, noise_seeds=0, model=PILOT_MODEL, base_synaptic=PILOT_SYNAPTIC,
             train=TrainConfig(batch_size=2, max_steps=3, warmup_steps=1), plots=False)
CLI_SIZE = [*PILOT_FLAGS, "--max-steps", "3", "--no-plots", "--generations", "2", "--population-size", "3",
            "--noise-seeds", "0"]
TEXT = "the quick brown fox jumps over the lazy dog. " * 400


pytestmark = pytest.mark.usefixtures("one_thread")


def interrupted(tmp_path, monkeypatch, after: int, run_id: str = "r", **settings) -> Path:
    """A run stopped by Ctrl-C once `after` evaluations are in the ledgers (so it can be resumed)."""
    written = []
    original = recorders.LedgerWriter.evaluated

    def evaluated(self, record):
        original(self, record)
        written.append(record)
        if len(written) >= after:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(recorders.LedgerWriter, "evaluated", evaluated)
        with pytest.raises(KeyboardInterrupt):
            run_pilot(run_id=run_id, artifacts_dir=tmp_path, **{**SMALL, **settings})
    return tmp_path / "cmaes" / "phase1" / run_id


def resume_error(tmp_path, run_id: str = "r", **settings) -> str:
    with pytest.raises(ConfigError) as err:
        run_pilot(run_id=run_id, artifacts_dir=tmp_path, resume=True, **{**SMALL, **settings})
    message = str(err.value)
    assert "\n" not in message
    return message


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, table: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)


# --- 1. a changed corpus ---------------------------------------------------------------------------------------------


def test_resume_refuses_a_corpus_that_changed(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    interrupted(tmp_path, monkeypatch, after=2, data=corpus)
    corpus.write_text(TEXT.upper())
    assert "corpus_sha256" in resume_error(tmp_path, data=corpus)


# --- 2, 3. a ledger that lost rows, gained a forged row, or belongs to another run ---------------------------------


def test_resume_refuses_a_ledger_that_lost_the_checkpointed_generation(tmp_path, monkeypatch):
    root = interrupted(tmp_path, monkeypatch, after=5)  # generation 0 (baseline + 3) done and checkpointed
    assert json.loads((root / "checkpoint.json").read_text())["next_gen"] == 1
    (root / "progress.csv").unlink()
    assert "progress.csv does not hold" in resume_error(tmp_path)


def test_resume_refuses_a_checkpoint_from_another_run(tmp_path, monkeypatch):
    interrupted(tmp_path, monkeypatch, after=5, run_id="a")
    other = tmp_path / "other"
    run_pilot(run_id="b", artifacts_dir=other, **SMALL)  # finished: its checkpoint says 2 generations
    late = other / "cmaes" / "phase1" / "b" / "checkpoint.json"
    (tmp_path / "cmaes" / "phase1" / "a" / "checkpoint.json").write_bytes(late.read_bytes())
    assert "does not hold" in resume_error(tmp_path, run_id="a")


def test_resume_refuses_a_duplicated_row_with_a_forged_score(tmp_path, monkeypatch):
    root = interrupted(tmp_path, monkeypatch, after=6)  # inside generation 1
    table = rows(root / "progress.csv")
    write_rows(root / "progress.csv", table + [{**table[-1], "score": "0.5", "raw_score": "0.5"}])
    assert "recorded twice" in resume_error(tmp_path)


def test_resume_refuses_an_edited_score_of_a_finished_generation(tmp_path, monkeypatch):
    root = interrupted(tmp_path, monkeypatch, after=6)
    table = rows(root / "progress.csv")
    table[0]["score"] = table[0]["raw_score"] = "0.5"
    write_rows(root / "progress.csv", table)
    assert "does not hold" in resume_error(tmp_path)


# --- 4, 8. checkpoint contents: never unpickled, damaged ones refused in one line ----------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['PAYLOAD_MARKER'])}",))


def test_a_pickle_in_the_run_dir_is_never_loaded(tmp_path, monkeypatch):
    root = interrupted(tmp_path, monkeypatch, after=6)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    (root / "checkpoint.pkl").write_bytes(pickle.dumps(_Payload()))
    run_pilot(run_id="r", artifacts_dir=tmp_path, resume=True, **SMALL)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", os.urandom(64), b"[1, 2]", b'{"version": 2, "next_gen": "x"}'])
def test_a_damaged_checkpoint_is_one_line(tmp_path, monkeypatch, content):
    root = interrupted(tmp_path, monkeypatch, after=5)
    (root / "checkpoint.json").write_bytes(content)
    assert "checkpoint" in resume_error(tmp_path)


def test_a_ledger_cut_mid_row_is_one_line(tmp_path, monkeypatch):
    root = interrupted(tmp_path, monkeypatch, after=6)
    text = (root / "progress.csv").read_text()
    (root / "progress.csv").write_text(text[: len(text) - 40])
    assert "damaged ledger" in resume_error(tmp_path)


# --- 5. paths in a ledger stay inside the run directory ---------------------------------------------------------------


def test_a_summary_path_leaving_the_run_dir_is_refused(tmp_path, monkeypatch):
    root = interrupted(tmp_path, monkeypatch, after=6)
    table = rows(root / "controls.csv")
    table[0]["summary_path"] = "../../../../elsewhere/summary.json"
    write_rows(root / "controls.csv", table)
    assert "leaves the run directory" in resume_error(tmp_path)


# --- 6, 7. input errors are refused before anything is written, not recorded as results --------------------------


@pytest.mark.parametrize("flags, message", [
    (["--data-seed", "1180591620717411303424"], "--data-seed must be an integer in [0, 4294967295]"),
    (["--eval-seed", "9223372036854775807"], "--eval-seed must be an integer in [0, 4294967295]"),
    (["--eval-seed", "4294967295", "--noise-seeds", "2"], "--noise-seeds takes the seeds past"),
    (["--sensitivity", "--eval-seed", "4294967295", "--noise-seeds", "0"], "--sensitivity-seeds takes the seeds past"),
    (["--sensitivity", "--sensitivity-seeds", "1"], "--sensitivity-seeds must be an integer >= 2, got 1"),
    (["--sensitivity-nudge", "0"], "--sensitivity-nudge is a fraction of each knob's range"),
    (["--sequential", "--data", "TINY"], "--sequence-len"),
    (["--batched", "--data", "TINY"], "--sequence-len"),
])
def test_bad_input_is_refused_before_any_write(tmp_path, capsys, flags, message):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("0123456789")
    flags = [str(tiny) if f == "TINY" else f for f in flags]
    assert main(["--artifacts-dir", str(tmp_path / "a"), "--run-id", "r", *CLI_SIZE, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "a").exists()


def test_an_objective_that_raises_leaves_no_run_directory(tmp_path):
    def broken(points):
        raise RuntimeError("my bug")

    with pytest.raises(RuntimeError, match="my bug"):
        run_pilot(run_id="r", artifacts_dir=tmp_path, objective=broken, plots=False)
    assert not (tmp_path / "cmaes" / "phase1" / "r").exists()


# --- 9. a full disk ---------------------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    import nanochat.files

    original, calls = nanochat.files.atomic_write_bytes, []

    def filling(path, data):
        calls.append(path)
        if len(calls) > 25:  # in generation 1, when generation 0 is recorded
            raise OSError(28, "No space left on device", str(path))
        original(path, data)

    args = ["--artifacts-dir", str(tmp_path), "--run-id", "r", *CLI_SIZE]
    with monkeypatch.context() as m:
        m.setattr(nanochat.files, "atomic_write_bytes", filling)
        assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "--resume" in err
    assert main([*args, "--resume"]) == 0
    assert len(rows(tmp_path / "cmaes" / "phase1" / "r" / "progress.csv")) == 6


# --- 13. the children of a sequential pilot die with it -------------------------------------------------------------


def test_kill_9_of_a_sequential_pilot_takes_its_child_along(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cmaes_inproc", "--artifacts-dir", str(tmp_path), "--run-id", "r",
                             "--sequential", *CLI_SIZE, "--max-steps", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        child = None
        for _ in range(600):  # the first nanochat.train child appears once the pilot has started
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if out:
                child = int(out[0])
                break
            time.sleep(0.1)
        assert child is not None, "no nanochat.train child started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for _ in range(100):
            if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"child {child} outlived the pilot")
    finally:
        proc.kill()


# --- 14. one process per run directory ------------------------------------------------------------------------------


def test_a_run_in_use_is_refused(tmp_path, monkeypatch):
    root = interrupted(tmp_path, monkeypatch, after=2)
    lock = RunLock(root)  # another process resuming it right now
    try:
        assert "in use by another process" in resume_error(tmp_path)
    finally:
        lock.release()
    run_pilot(run_id="r", artifacts_dir=tmp_path, resume=True, **SMALL)


def test_the_same_new_run_started_twice_is_refused(tmp_path):
    root = tmp_path / "cmaes" / "phase1" / "r"
    root.mkdir(parents=True)
    lock = RunLock(root)  # the other process created it a moment ago and holds it
    try:
        with pytest.raises(ConfigError, match="in use by another process"):
            run_pilot(run_id="r", artifacts_dir=tmp_path, **SMALL)
    finally:
        lock.release()
    assert list(root.iterdir()) == []


# --- 15. the API checks its arguments at the boundary --------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    ({"run_id": 123}, "run_id must be a plain directory name"),
    ({"device": None}, "device must be a string"),
    ({"objective": "not callable"}, "objective must be callable"),
    ({"objective": lambda pts: [1.0]}, "objective returned 1 scores for a list of"),
    ({"objective": lambda pts: ["1.0"] * len(pts)}, "objective returned '1.0' for point 0"),
    ({"objective": lambda pts: [True] * len(pts)}, "objective returned True for point 0"),
])
def test_api_arguments_are_checked(tmp_path, settings, message):
    with pytest.raises(ConfigError) as err:
        run_pilot(artifacts_dir=tmp_path, plots=False, **{"run_id": "r", **settings})
    assert str(err.value).startswith(message)
    assert not (tmp_path / "cmaes" / "phase1" / "r").exists()


# --- 16. signals, an honest score tail, seeds not folded -----------------------------------------------------------


def test_sigterm_is_one_line_and_resumable(tmp_path):
    args = ["--artifacts-dir", str(tmp_path), "--run-id", "r", *CLI_SIZE, "--max-steps", "400"]
    proc = subprocess.Popen([sys.executable, "-m", "cmaes_inproc", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ledger = tmp_path / "cmaes" / "phase1" / "r" / "run.json"
    for _ in range(600):
        if ledger.exists():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["cmaes_inproc: terminated; continue with --resume"]


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cmaes_inproc", "--artifacts-dir", str(tmp_path), *CLI_SIZE],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # while torch is being imported (or later: the answer must be the same)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["cmaes_inproc: interrupted; continue with --resume"]


def test_a_score_tail_longer_than_the_run_is_reported_honestly(tmp_path):
    result = run_pilot(run_id="r", artifacts_dir=tmp_path, **{**SMALL, "generations": 1}, score_tail=50)
    scoring = json.loads((result.run_dir / "run.json").read_text())["scoring"]["score"]
    assert scoring.startswith("mean of the last 3 train losses (every loss: score_tail 50 > 3 steps")
    assert "score = mean of the last 3 train losses" in (result.run_dir / "summary.md").read_text()
