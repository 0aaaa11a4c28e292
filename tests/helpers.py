"""What several test modules share besides fixtures (those are in conftest.py): one torch thread, run files, the
training flags' parser, the rotary embedding as MODEL.md writes it, and the Triton interpreter's needs."""

import argparse
import csv
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch


@contextmanager
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core runner OpenMP spin-waiting makes them ~100x
    slower. Children (nanochat.train subprocesses) inherit OMP_NUM_THREADS. Both are restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def parse_training_flags(argv: list[str]):
    """A TrainConfig from training flags, as both CLIs build it (nanochat/cli_args.py)."""
    from nanochat.cli_args import add_training_args, train_config_from_args

    parser = argparse.ArgumentParser()
    add_training_args(parser)
    return train_config_from_args(parser.parse_args(argv), None)


def run_dir(artifacts: Path, run_id: str) -> Path:
    return artifacts / "cmaes" / "phase1" / run_id


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on half-rows, the plain form: [x1 cos - x2 sin, x1 sin + x2 cos]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def triton_interpreter_missing() -> str:
    """Why Triton's interpreter cannot run nanochat/fused_attention.py's kernels here, or "" when it can.

    Triton is in the `test` extra on Linux x86-64 only; conftest.py sets TRITON_INTERPRET=1. Interpreters before
    Triton 3.7 give a program id as a one-element array, which a loop bound cannot be (checked with 3.3 to 3.6; their
    GPU compilers build the kernels, as test_fused_attention checks with the installed one)."""
    import importlib.metadata
    import os

    try:
        version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "needs Triton (the test extra installs it on Linux x86-64)"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "needs Triton's interpreter (TRITON_INTERPRET=1, which conftest.py sets)"
    if tuple(int(p) for p in version.split(".")[:2]) < (3, 7):
        return f"Triton {version}'s interpreter cannot run these kernels (3.7 or newer can)"
    return ""


def fewer_key_loop_steps(monkeypatch) -> None:
    """The release kernel's key loop takes 32 keys a step (release_triton.KEY_BLOCK) instead of the GPU's few: the
    same sums, each key's over its edges, and the interpreter's time goes mostly to that loop.
    tests/test_release_triton.py runs the setting in force."""
    from nanochat import release_triton

    monkeypatch.setattr(release_triton, "KEY_BLOCK", 32)
