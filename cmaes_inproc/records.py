"""The typed records of a run (one per evaluation) and `History`, the run's memory of them.

A record is the source of truth in memory; the CSV ledgers are written from records and parsed back only on
`--resume`. Each record class *is* its ledger's schema: the columns are its fields, in order (the x-vector expands
to one `x_<knob>` column per knob), so adding a column is adding a field. Cells are written exactly (floats with
repr(), which round-trips), so a resumed run reads back the very numbers it wrote.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from nanochat.config import ConfigError
from nanochat.status import Status

from .liveness import Liveness, SweepStats
from .params import PARAM_NAMES, decode_vector
from .verdict import Verdict

if TYPE_CHECKING:
    from .spec import PilotSpec

X_FIELD = "x"  # the field that expands to one column per knob


@dataclass(frozen=True)
class CandidateRecord:
    """One CMA-ES candidate evaluation: a row of progress.csv."""

    gen: int
    cand: int
    score: float  # what CMA-ES was told: raw_score if ok, else the penalty
    status: Status
    summary_path: Path | None  # absolute in memory, relative to the run dir in the ledger
    evaluator: str
    eval_id: str
    seed: int
    raw_score: float
    failure_step: int | None
    failure_reason: str | None
    note: str
    x: tuple[float, ...]  # the x-space point (log10 for the log knobs)

    @property
    def params(self) -> dict[str, float]:
        """The decoded knob values."""
        return decode_vector(self.x)

    @property
    def key(self) -> tuple:
        return (self.gen, self.cand)


@dataclass(frozen=True)
class ControlRecord:
    """A baseline, confirmation or sensitivity evaluation: a row of controls.csv."""

    role: str  # "baseline" | "confirm" | "sensitivity"
    label: str  # which sensitivity edge ("tau_c_low"); empty for the other roles
    seed: int
    score: float
    status: Status
    summary_path: Path | None
    evaluator: str
    eval_id: str
    raw_score: float
    failure_step: int | None
    failure_reason: str | None
    note: str

    @property
    def key(self) -> tuple:
        return (self.role, self.label, self.seed)


@dataclass(frozen=True)
class SeedRecord:
    """One training run of a config on one seed with both losses: a row of evaluations.csv.

    Written only when a Phase 2 option is on (several eval seeds, or a validation loss): a candidate's progress.csv
    row is then the mean over its seeds, and these rows keep the per-seed numbers it came from, whichever loss
    drove the search. `population_size` shows how many members trained together with it.
    """

    role: str  # "candidate" | "baseline" | "confirm" | "sensitivity"
    label: str
    gen: int | None  # candidates only
    cand: int | None
    seed: int
    score: float  # what the search used from this run: raw_score if ok, else the penalty
    raw_score: float
    train_score: float  # mean of the last score_tail train losses
    val_loss: float  # NaN unless measured
    status: Status
    failure_step: int | None
    failure_reason: str | None
    population_size: int
    evaluator: str
    summary_path: Path | None

    @property
    def key(self) -> tuple:
        return (self.role, self.label, self.gen, self.cand, self.seed)


@dataclass(frozen=True)
class SensitivityRow:
    """One arm of one knob against the baseline over the sweep's seeds: a row of sensitivity.csv.

    The arm is the knob at the low or the high edge of its range, or nudged by a tiny fraction of it (the chaos
    floor's arm). Its effect on a seed is (score_arm - score_base) / score_base, paired on that seed; the per-seed
    scores are controls.csv's rows. The statistics and the verdict rule are liveness.py's.
    """

    knob: str
    arm: str  # "low" | "high" | "nudge"
    value: float
    n_seeds: int  # seeds on which the arm and the baseline both finished (failed evaluations are left out)
    mean_rel_effect: float  # mean of the paired relative effects (NaN with no seed)
    se: float  # standard error of that mean: sample stdev / sqrt(n_seeds) (NaN with fewer than 2 seeds)
    t: float  # mean_rel_effect / se
    floor_se: float  # chaos floor / sqrt(n_seeds): the standard error of a mean of chaos alone over as many seeds
    verdict: Liveness  # the knob's verdict (the same on its three rows)


Record = CandidateRecord | ControlRecord | SeedRecord | SensitivityRow


@dataclass(frozen=True)
class SensitivityResult:
    """The sweep: a row per knob and arm, the numbers they came from, and what failed (see sensitivity.py)."""

    rows: list[SensitivityRow]
    seeds: list[int]  # common to the baseline and every arm
    baseline_scores: dict[int, float]  # {seed: score}, NaN where the baseline failed
    stats: SweepStats  # the chaos floor, and each knob's per-seed effects and verdict
    seed_noise: float  # relative std of the baseline score across the seeds (for scale)
    failures: list[ControlRecord]  # evaluations that did not finish, left out of the statistics


@dataclass
class PilotResult:
    """What `run_pilot` returns: the records of the run and, for a CMA-ES run, its best and verdict."""

    run_dir: Path
    spec: "PilotSpec"
    records: list[CandidateRecord]  # in (gen, cand) order
    controls: list[ControlRecord]  # in the order they finished
    best: CandidateRecord | None = None
    verdict: Verdict | None = None
    best_per_generation: list[float] = field(default_factory=list)
    sensitivity: SensitivityResult | None = None  # sensitivity runs only

    @property
    def summary_md(self) -> Path:
        return self.run_dir / "summary.md"


# --- one row of a ledger --------------------------------------------------------------------------------------------


def columns(record_type: type) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(record_type):
        out += [f"x_{name}" for name in PARAM_NAMES] if f.name == X_FIELD else [f.name]
    return out


def to_cells(record: Record, root: Path) -> dict[str, str]:
    """The CSV cells of a record; paths are written relative to the run dir `root`."""
    cells: dict[str, str] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == X_FIELD:
            cells.update({f"x_{name}": repr(float(v)) for name, v in zip(PARAM_NAMES, value)})
        elif isinstance(value, Path):
            cells[f.name] = value.relative_to(root).as_posix()
        elif value is None:
            cells[f.name] = ""
        elif isinstance(value, float):
            cells[f.name] = repr(value)
        else:
            cells[f.name] = str(value)
    return cells


def from_cells(record_type: type, cells: dict[str, str], root: Path) -> Record:
    """Parse a ledger row back into a record; a bad cell is a one-line ConfigError naming it."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(record_type):
        try:
            if f.name == X_FIELD:
                values[f.name] = tuple(_float(cells[f"x_{name}"]) for name in PARAM_NAMES)
            else:
                kind = f.type if isinstance(f.type, str) else f.type.__name__  # annotations may be postponed
                values[f.name] = _PARSERS[kind](cells[f.name], root)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"bad {f.name} cell {cells.get(f.name)!r}: {exc}") from None
    return record_type(**values)


def _float(text: str) -> float:
    return float(text) if text != "" else math.nan


def _int(text: str) -> int:
    return int(text)


def _path(text: str, root: Path) -> Path | None:
    """A recorded path must stay inside the run dir: a ledger must not make the pilot read someone else's files."""
    if text == "":
        return None
    path = (root / text).resolve()
    if not path.is_relative_to(root.resolve()) or Path(text).is_absolute():
        raise ValueError("the path leaves the run directory")
    return root / text


_PARSERS = {
    "int": lambda text, root: _int(text),
    "float": lambda text, root: _float(text),
    "str": lambda text, root: text,
    "Status": lambda text, root: Status(text),
    "Liveness": lambda text, root: Liveness(text),
    "Path | None": _path,
    "int | None": lambda text, root: None if text == "" else _int(text),
    "str | None": lambda text, root: None if text == "" else text,
}


# --- the run's memory -------------------------------------------------------------------------------------------------


class History:
    """Every evaluation of a run so far, by key, in the order they finished (the ledgers' order)."""

    def __init__(self, candidates: Iterable[CandidateRecord] = (), controls: Iterable[ControlRecord] = ()):
        self._candidates: dict[tuple, CandidateRecord] = {}
        self._controls: dict[tuple, ControlRecord] = {}
        self._seed_runs: dict[tuple, SeedRecord] = {}
        for record in [*candidates, *controls]:
            self.add(record)

    def add(self, record: CandidateRecord | ControlRecord | SeedRecord) -> None:
        if isinstance(record, SeedRecord):
            # A run killed between a seed's row and its candidate's row trains that seed again on resume; the
            # newer row (the same numbers: training is deterministic) supersedes the older one.
            self._seed_runs[record.key] = record
            return
        table = self._candidates if isinstance(record, CandidateRecord) else self._controls
        if record.key in table:
            raise ConfigError(f"{type(record).__name__} {record.key} is recorded twice")
        table[record.key] = record

    def __len__(self) -> int:
        return len(self._candidates) + len(self._controls)

    def seed_runs(self, role: str, gen: int | None = None, cand: int | None = None,
                  label: str = "") -> dict[int, SeedRecord]:
        """The per-seed runs of one candidate (or control role), by seed, in seed order."""
        runs = [r for r in self._seed_runs.values() if (r.role, r.label, r.gen, r.cand) == (role, label, gen, cand)]
        return {r.seed: r for r in sorted(runs, key=lambda r: r.seed)}

    def candidate(self, gen: int, cand: int) -> CandidateRecord | None:
        return self._candidates.get((gen, cand))

    def candidates(self) -> list[CandidateRecord]:
        """In (gen, cand) order."""
        return sorted(self._candidates.values(), key=lambda r: r.key)

    def controls(self, role: str | None = None, label: str = "") -> list[ControlRecord]:
        """All controls in the order they finished, or those of one role (and label)."""
        return [c for c in self._controls.values() if role is None or (c.role, c.label) == (role, label)]

    def control_by_seed(self, role: str, label: str = "") -> dict[int, ControlRecord]:
        return {c.seed: c for c in self.controls(role, label)}

    def best(self) -> CandidateRecord | None:
        """The lowest finished score; ties go to the earliest candidate."""
        ok = [c for c in self.candidates() if c.status.ok and math.isfinite(c.score)]
        return min(ok, key=lambda c: (c.score, c.gen, c.cand)) if ok else None

    def best_per_generation(self, generations: int) -> list[float]:
        out = []
        for g in range(generations):
            scores = [c.score for c in self._candidates.values() if c.gen == g and c.status.ok]
            out.append(min(scores) if scores else math.nan)
        return out

    def __iter__(self) -> Iterator[CandidateRecord | ControlRecord]:
        yield from self._candidates.values()
        yield from self._controls.values()


def best_so_far(per_generation: list[float]) -> list[float]:
    """The running minimum of the per-generation best scores (NaN until a generation has a finished candidate)."""
    out, running = [], math.inf
    for value in per_generation:
        running = min(running, value) if math.isfinite(value) else running
        out.append(running if math.isfinite(running) else math.nan)
    return out
