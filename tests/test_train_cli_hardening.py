"""Issue 10 rows 11, 12, 16: `python -m nanochat.train` checks its run id and output place before training, and
Ctrl-C / SIGTERM end it with one line, 130 / 143 and no summary."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tiny import TRAINER_FLAGS as TINY_CLI_FLAGS
from nanochat.files import check_dir_name, check_writable_dir
from nanochat.config import ConfigError
from nanochat.train import main


def run_train(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "nanochat.train", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("nanochat.train: error:")
    return lines[0]


@pytest.mark.parametrize("run_id", ["../../x", "a/b", "a\\b", "..", ".", "", " x", "x "])
def test_run_id_must_be_a_plain_directory_name(tmp_path, capsys, run_id):
    status = main(["--artifacts-dir", str(tmp_path / "art"), "--run-id", run_id, "--max-steps", "1", "--quiet"])
    assert status == 2
    assert "must be a plain directory name" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_plain_run_ids_pass_the_check():
    for name in ("r1", "2024-01-01_x", "a..b", "run.v2"):
        assert check_dir_name("run_id", name) == name


def test_out_dir_that_is_a_file_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    start = time.monotonic()
    # a budget that would train for minutes: the refusal must come first
    r = run_train(*TINY_CLI_FLAGS, "--max-steps", "100000", "--out-dir", str(blocker), "--quiet")
    assert r.returncode == 2 and time.monotonic() - start < 120
    assert "exists and is not a directory" in one_error_line(r.stderr) and r.stdout == ""
    assert blocker.read_text() == "x"


def test_out_dir_that_cannot_be_created_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "sub"  # under a regular file: unwritable even for root
    r = run_train(*TINY_CLI_FLAGS, "--max-steps", "100000", "--out-dir", str(target), "--quiet")
    assert r.returncode == 2
    assert "cannot be created" in one_error_line(r.stderr)
    r = run_train(*TINY_CLI_FLAGS, "--max-steps", "100000", "--artifacts-dir", str(target), "--run-id", "r", "--quiet")
    assert r.returncode == 2 and "cannot be created" in one_error_line(r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_check_writable_dir_leaves_nothing_behind(tmp_path):
    check_writable_dir("out_dir", tmp_path / "a" / "b")
    check_writable_dir("out_dir", tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError) as e:
        check_writable_dir("out_dir", str(tmp_path / "x\0y"))
    assert e.value.field == "out_dir"


def _start_and_wait_for_a_step(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "nanochat.train", *TINY_CLI_FLAGS, "--max-steps", "100000",
                             "--log-interval", "1", "--out-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the first logged step: training is under way
    assert line.startswith("step"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, out


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_mid_training_give_one_line_and_no_summary(tmp_path, sig, status):
    proc, out = _start_and_wait_for_a_step(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status
    assert err.strip().splitlines() == ["nanochat.train: interrupted"]
    assert not (out / "summary.json").exists()
    assert not out.exists() or [p.name for p in out.iterdir()] == []


@pytest.mark.parametrize("delay_s", [0.3, 0.6, 1.2])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, delay_s):
    proc = subprocess.Popen([sys.executable, "-m", "nanochat.train", *TINY_CLI_FLAGS, "--max-steps", "100000",
                             "--out-dir", str(tmp_path / "o"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay_s)  # while torch and the corpus are being loaded
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["nanochat.train: interrupted"]


def test_a_signal_during_the_heavy_imports_waits_for_them():
    """An exception raised inside a C extension's import can surface as an unrelated ImportError (seen with numpy
    under load), so the CLIs defer Ctrl-C / SIGTERM until their imports are done, then raise them."""
    from nanochat.interrupts import Interrupts

    interrupts = Interrupts()
    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.installed(), interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes: it has run by now
                time.sleep(0.001)
            reached_end_of_block = True
    assert reached_end_of_block
