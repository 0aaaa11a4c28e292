"""Everything the pilot writes to disk: the run directory layout, atomic writes, the CSV ledgers, the checkpoint.

Run directory (`<artifacts_dir>/cmaes/phase1/<run_id>/`):

    run.json              the run spec (arguments, baseline config, parameter space, scaling, reproduce command)
    progress.csv          one row per CMA-ES candidate evaluation (the seed's columns + evaluator, seed, x, ...)
    controls.csv          baseline and confirmation evaluations (role, seed, score, ...), the verdict's inputs
    best.json             best-so-far candidate: decoded params, x, score, gen, cand, summary path
    summary.md            human-readable summary with the Go/No-Go verdict (and plots when matplotlib exists)
    checkpoint.pkl        CMA-ES state after the last finished generation (for --resume)
    eval/gen_0000/cand_0000/synaptic_config.json
    eval/gen_0000/cand_0000/seed_<eval_seed>/summary.json + run.md
    eval/baseline/synaptic_config.json, eval/baseline/seed_<s>/...       (eval seed + noise seeds)
    eval/confirm/synaptic_config.json,  eval/confirm/seed_<s>/...        (best candidate re-evaluated)
    eval/sensitivity/<knob>_<low|high>/...                               (--sensitivity runs only)

Every file is written to a temporary sibling and renamed into place, so a killed run never leaves a half-written
file; the ledgers are small and are rewritten whole on each append for the same reason.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Iterable

from nanochat.config import ConfigError
# Atomic writes are shared with the per-evaluation summaries; re-exported here for the pilot's modules.
from nanochat.files import atomic_write_bytes, atomic_write_json, atomic_write_text, json_safe  # noqa: F401

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
        self.best_json = self.root / "best.json"
        self.summary_md = self.root / "summary.md"
        self.checkpoint = self.root / "checkpoint.pkl"
        self.eval_root = self.root / "eval"
        self.plots = self.root / "plots"

    @staticmethod
    def for_run(artifacts_dir: Path, run_id: str) -> "RunLayout":
        return RunLayout(Path(artifacts_dir).joinpath(*RUN_SUBDIR, run_id))

    def candidate_dir(self, gen: int, cand: int) -> Path:
        return self.eval_root / f"gen_{gen:04d}" / f"cand_{cand:04d}"

    def control_dir(self, role: str) -> Path:
        return self.eval_root / role  # "baseline" or "confirm"

    def sensitivity_dir(self, knob: str, edge: str) -> Path:
        return self.eval_root / "sensitivity" / f"{knob}_{edge}"

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


def check_run_id(run_id: str) -> None:
    if not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id or run_id != run_id.strip():
        raise ConfigError(f"--run-id must be a plain directory name, got {run_id!r}")


def prepare_run_dir(layout: RunLayout, spec: dict, resume: bool) -> None:
    """Create the run dir and write run.json, or check that a resumed run's spec matches. Never overwrites results.

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
        _check_writable(root)
        return
    if exists_nonempty:
        raise ConfigError(f"run dir {root} is not empty; use --resume to continue it or choose another --run-id")
    _check_writable(_nearest_existing_parent(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run dir {root}: {exc.strerror}") from None
    _check_writable(root)


def _nearest_existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _check_writable(directory: Path) -> None:
    # os.access is not enough (it says yes to root on read-only bind mounts); try a real write.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write_test.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"artifacts dir {directory} is not writable: {exc.strerror or exc}") from None


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
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != self.columns:
                raise ConfigError(f"--resume: {self.path} has columns {reader.fieldnames}, expected {self.columns}")
            self._rows = [dict(r) for r in reader]
        records = []
        for line, row in enumerate(self._rows, start=2):
            try:
                records.append(from_cells(self.record_type, row, self.root))
            except ConfigError as exc:
                raise ConfigError(f"--resume: {self.path} line {line}: {exc}") from None
        return records

    def append(self, records: Iterable) -> None:
        self._rows += [to_cells(r, self.root) for r in records]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_text(self.path, buf.getvalue())


# --- checkpoint ---------------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(path: Path) -> dict | None:
    """The pickled CMA state of a run this process wrote itself (never load a checkpoint from an untrusted source)."""
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return pickle.load(f)
