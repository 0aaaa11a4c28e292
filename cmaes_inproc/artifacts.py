"""Everything the pilot writes to disk: the run directory layout, atomic writes, the CSV ledgers, the checkpoint.

Run directory (`<artifacts_dir>/cmaes/phase1/<run_id>/`):

    run.json              the run spec (arguments, baseline config, parameter space, scaling, reproduce command)
    progress.csv          one row per CMA-ES candidate evaluation (the pilot document's columns + evaluator, seed, x, ...)
    controls.csv          baseline and confirmation evaluations (role, seed, score, ...), the verdict's inputs
    evaluations.csv       --eval-seeds > 1 or a validation loss only: one row per training run (per seed), both losses
    best.json             best-so-far candidate: decoded params, x, score, gen, cand, summary path
    summary.md            human-readable summary with the Go/No-Go verdict (and plots when matplotlib exists)
    checkpoint.json       how far the search got: finished generations and a hash of their ledger rows (--resume)
    eval/gen_0000/cand_0000/synaptic_config.json
    eval/gen_0000/cand_0000/seed_<eval_seed>/summary.json + run.md
    eval/baseline/synaptic_config.json, eval/baseline/seed_<s>/...       (eval + noise seeds, or the sweep's seeds)
    eval/confirm/synaptic_config.json,  eval/confirm/seed_<s>/...        (best candidate re-evaluated)
    eval/sensitivity/<knob>_<low|high|nudge>/...                         (--sensitivity runs only)

Every file is written to a temporary sibling and renamed into place, so a killed run never leaves a half-written
file; the ledgers are small and are rewritten whole on each append for the same reason. A run holds an exclusive
lock on its directory for its whole life, so two processes never work on the same run. Nothing in a run directory
is executable state: the checkpoint is JSON, and the CMA-ES state is rebuilt on resume by replaying the recorded
generations (the search is deterministic given its seed).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from nanochat.config import ConfigError
# Atomic writes are shared with the per-evaluation summaries; re-exported here for the pilot's modules.
from nanochat.files import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable_dir,  # noqa: F401
                            json_safe)

from .records import columns, from_cells, to_cells

RUN_SUBDIR = ("cmaes", "phase1")


# --- layout -------------------------------------------------------------------------------------------------------


class RunLayout:
    """Paths inside one run directory (no I/O except where a method says so)."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir)
        self.run_json = self.root / "run.json"
        self.progress_csv = self.root / "progress.csv"
        self.controls_csv = self.root / "controls.csv"
        self.sensitivity_csv = self.root / "sensitivity.csv"
        self.evaluations_csv = self.root / "evaluations.csv"  # per-seed runs, Phase 2 options only
        self.best_json = self.root / "best.json"
        self.summary_md = self.root / "summary.md"
        self.checkpoint = self.root / "checkpoint.json"
        self.eval_root = self.root / "eval"
        self.plots = self.root / "plots"

    @staticmethod
    def for_run(artifacts_dir: Path, run_id: str) -> "RunLayout":
        return RunLayout(Path(artifacts_dir).joinpath(*RUN_SUBDIR, run_id))

    def candidate_dir(self, gen: int, cand: int) -> Path:
        return self.eval_root / f"gen_{gen:04d}" / f"cand_{cand:04d}"

    def control_dir(self, role: str) -> Path:
        return self.eval_root / role  # "baseline" or "confirm"

    def sensitivity_dir(self, knob: str, arm: str) -> Path:
        return self.eval_root / "sensitivity" / f"{knob}_{arm}"

    @staticmethod
    def seed_dir(config_dir: Path, seed: int) -> Path:
        """Where the evaluation of the config in `config_dir` on `seed` writes summary.json and run.md."""
        return config_dir / eval_id_for_seed(seed)

    def relative(self, path: Path | None) -> str:
        """Paths in the ledgers and best.json are relative to the run dir, so two runs' rows compare equal."""
        if path is None:
            return ""
        return Path(path).relative_to(self.root).as_posix()


def eval_id_for_seed(seed: int) -> str:
    return f"seed_{seed}"


def prepare_run_dir(layout: RunLayout, spec: dict, resume: bool) -> None:
    """Create the run dir, or check that a resumed run's spec matches. Never overwrites results.

    Order matters: every check happens before the first write, so a refused run leaves the disk untouched.
    """
    root = layout.root
    exists_nonempty = root.is_dir() and any(root.iterdir())
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run dir {root} exists and is not a directory")
    if resume:
        if not layout.run_json.is_file():
            raise ConfigError(f"--resume: {layout.run_json} not found (nothing to resume)")
        try:
            previous = json.loads(layout.run_json.read_text())["spec"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"--resume: {layout.run_json} is unreadable or has no spec") from None
        differences = spec_differences(previous, json_safe(spec))
        if differences:
            raise ConfigError(f"--resume: run spec differs from {layout.run_json}: {'; '.join(differences)}")
        check_writable_dir("artifacts_dir", root)
        return
    if exists_nonempty:
        raise ConfigError(f"run dir {root} is not empty; use --resume to continue it or choose another --run-id")
    check_writable_dir("artifacts_dir", root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError.about("artifacts_dir", f"{root} cannot be created: {exc.strerror or exc}") from None


def spec_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable list of the fields where two specs (nested dicts) differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name} is new")
            elif key not in new:
                out.append(f"{name} is missing")
            else:
                out.extend(spec_differences(old[key], new[key], name))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


# --- ledgers ------------------------------------------------------------------------------------------------------


class Ledger:
    """A CSV file of one record type (its columns are the record's fields), rewritten atomically on every append."""

    def __init__(self, path: Path, record_type: type, root: Path):
        self.path, self.record_type, self.root = path, record_type, root
        self.columns = columns(record_type)
        self._rows: list[dict[str, str]] = []

    def load(self) -> list:
        """The records of an existing ledger (for --resume); a damaged file is a one-line ConfigError."""
        if not self.path.is_file():
            return []
        try:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                header, rows = reader.fieldnames, [dict(r) for r in reader]
        except (OSError, UnicodeError, csv.Error) as exc:
            raise ConfigError(f"--resume: {self.path} is unreadable: {exc}") from None
        if header != self.columns:
            raise ConfigError(f"--resume: {self.path} has columns {header}, expected {self.columns}")
        records = []
        for line, row in enumerate(rows, start=2):
            if None in row or None in row.values():  # too many cells, or too few (a row cut short)
                raise ConfigError(f"--resume: {self.path} line {line} does not have {len(self.columns)} cells "
                                  "(a damaged ledger)")
            try:
                records.append(from_cells(self.record_type, row, self.root))
            except ConfigError as exc:
                raise ConfigError(f"--resume: {self.path} line {line}: {exc}") from None
        self._rows = rows
        return records

    def digest(self, n_rows: int) -> str:
        """A hash of the first `n_rows` rows, exactly as written: the checkpoint records it, resume compares it."""
        text = "\n".join(",".join(row.get(c) or "" for c in self.columns) for row in self._rows[:n_rows])
        return hashlib.sha256(text.encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, records: Iterable) -> None:
        self._rows += [to_cells(r, self.root) for r in records]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_text(self.path, buf.getvalue())


# --- checkpoint and lock ---------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_json(path, state)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint's JSON object, None when there is none; anything unreadable is a one-line ConfigError."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {path} is unreadable ({type(exc).__name__}); it is not a checkpoint this "
                          "tool wrote") from None
    if not isinstance(state, dict):
        raise ConfigError(f"--resume: {path} is not a checkpoint this tool wrote")
    return state


class RunLock:
    """An exclusive lock on the run directory (flock on the directory itself), held until `release()`.

    The kernel drops it when the process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, root: Path):
        self.fd = os.open(root, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ConfigError(f"run dir {root} is in use by another process; wait for it to end "
                              "(or stop it) before resuming") from None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1


def remove_run_dir(root: Path) -> None:
    """Undo a run that failed before recording anything (the directory was created by this very run)."""
    shutil.rmtree(root, ignore_errors=True)
