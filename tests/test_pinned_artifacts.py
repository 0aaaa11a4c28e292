"""The pilot's artifacts, pinned: a refactor of the pilot layer must not change a cell of what a run writes.

`tests/data/pinned_artifacts.json` was written by the pilot as it was before the pilot core was restructured (run
this file as a script, `python tests/test_pinned_artifacts.py --write`, to regenerate it after a change that is
*meant* to change results, and say so in the commit). Four small runs are compared:

* the pilot document's example command (tiny model, 5 steps) through the CLI;
* the default pilot settings (2 generations x 4, 2 noise seeds, stochastic release on) on a tiny model;
* the sensitivity sweep on a tiny model (2 seeds: the baseline and 30 arms on each);
* a custom objective (no training): numpy arithmetic only, so its files are compared byte for byte.

Files compared: progress.csv, controls.csv, best.json, verdict.json, sensitivity.csv and every evaluation's
summary.json without its volatile fields (wall times, host, creation time). Not bit for bit: exact CPU losses depend
on the CPU type's kernels (the pins were written on an Intel Xeon; an AMD EPYC of the same machine class gives
scores 1-2 float32 ulps away, ~2e-7 relative), while on one machine they repeat exactly. So a score may differ by
1e-6 relative, and a number derived from scores (a relative improvement, an effect, its spread; the tiny model's are
~1e-5) by 1e-6 absolute: on the AMD machine these moved by up to 2.2e-7. A t statistic (effect / its standard error)
is not compared with the pin: where the spread is ~1e-7, as here, a score's last bit moves t by tens of percent (on
the AMD machine one t read -165 for the pin's -220), so t is checked against its own row's effect and spread, and
the alive/weak verdicts drawn from it against the pin.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmaes_inproc import PARAM_SPECS, run_pilot
from cmaes_inproc.__main__ import main
from cmaes_inproc.params import x_to_unit
from nanochat.config import TrainConfig
from tiny import PILOT_FLAGS, PILOT_MODEL, PILOT_SYNAPTIC

PINNED = Path(__file__).parent / "data" / "pinned_artifacts.json"
TOP_FILES = ("progress.csv", "controls.csv", "best.json", "verdict.json", "sensitivity.csv")
VOLATILE = {"meta": ("created_utc", "host", "argv", "python", "torch"),
            "results": ("step_times_s", "tokens_per_second", "measured_time_s")}
REL_TOL = 1e-6  # a training score
ABS_TOL = 1e-6  # a number derived from scores (the top files); 0 for an evaluation's summary

MODEL, SYNAPTIC = PILOT_MODEL, PILOT_SYNAPTIC
CLI_SIZE = [*PILOT_FLAGS, "--no-plots"]
EXAMPLE = ["--batched", "--device", "cpu", "--generations", "2", "--population-size", "4", "--target-flops", "1e10",
           "--search-seed", "0", "--eval-seed", "123"]


def sphere(points: list[dict]) -> list[float]:
    target = np.full(len(PARAM_SPECS), 0.7)
    out = []
    for knobs in points:
        x = [math.log10(knobs[s.name]) if s.kind == "log10" else knobs[s.name] for s in PARAM_SPECS]
        out.append(float(np.sum((x_to_unit(x) - target) ** 2)))
    return out


def produce(artifacts: Path) -> dict[str, dict[str, str]]:
    """Run the four pinned runs under `artifacts`; {run: {relative path: normalised text}}."""
    config = artifacts / "tiny.json"
    config.write_text(json.dumps({"presyn_chunk": 8}))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--artifacts-dir", str(artifacts), "--run-id", "example", "--synaptic-config", str(config),
                     *CLI_SIZE, *EXAMPLE]) == 0
        run_pilot(run_id="defaults", artifacts_dir=artifacts, model=MODEL, base_synaptic=SYNAPTIC,
                  train=TrainConfig(batch_size=2, max_steps=12, warmup_steps=2), plots=False)
        run_pilot(run_id="sweep", artifacts_dir=artifacts, model=MODEL, base_synaptic=SYNAPTIC, sensitivity=True,
                  sensitivity_seeds=2, max_batch=12, train=TrainConfig(batch_size=2, max_steps=5, warmup_steps=1),
                  plots=False)
        run_pilot(run_id="objective", artifacts_dir=artifacts, generations=4, population_size=6, sigma=0.3,
                  objective=sphere, plots=False)
    finally:
        torch.set_num_threads(before)
    out: dict[str, dict[str, str]] = {}
    for run in ("example", "defaults", "sweep", "objective"):
        root = artifacts / "cmaes" / "phase1" / run
        files = {name: (root / name).read_text() for name in TOP_FILES if (root / name).is_file()}
        for path in sorted(root.glob("eval/**/summary.json")):
            files[path.relative_to(root).as_posix()] = normalised_summary(path)
        out[run] = files
    return out


def normalised_summary(path: Path) -> str:
    summary = json.loads(path.read_text())
    for section, keys in VOLATILE.items():
        for key in keys:
            summary[section].pop(key, None)
    return json.dumps(summary, indent=1, sort_keys=True)


def assert_same_text(got: str, want: str, where: str, exact: bool, abs_tol: float = 0.0) -> None:
    """Equal text, except that numbers may differ by REL_TOL relative plus abs_tol (unless `exact`)."""
    if exact or got == want:
        assert got == want, where
        return
    got_tokens, want_tokens = _tokens(got), _tokens(want)
    assert len(got_tokens) == len(want_tokens), f"{where}: different shape"
    for g, w in zip(got_tokens, want_tokens):
        _assert_same_token(g, w, where, abs_tol)


def _assert_same_token(g: str, w: str, where: str, abs_tol: float) -> None:
    if g == w:
        return
    try:
        gf, wf = float(g), float(w)
    except ValueError:
        raise AssertionError(f"{where}: {g!r} != {w!r}") from None
    assert gf == pytest.approx(wf, rel=REL_TOL, abs=abs_tol), f"{where}: {g} != {w}"


def assert_same_sensitivity(got: str, want: str, where: str) -> None:
    """sensitivity.csv: every cell as a derived number, except t, checked as its own row's mean_rel_effect / se."""
    got_rows, want_rows = list(csv.DictReader(io.StringIO(got))), list(csv.DictReader(io.StringIO(want)))
    assert len(got_rows) == len(want_rows) and got.splitlines()[0] == want.splitlines()[0], f"{where}: shape"
    for g, w in zip(got_rows, want_rows):
        t, mean, se = float(g["t"]), float(g["mean_rel_effect"]), float(g["se"])
        if se > 0:
            assert t == mean / se, f"{where}: t {t} of {g['knob']} {g['arm']} is not {mean} / {se}"
        for column in g.keys() - {"t"}:
            _assert_same_token(g[column], w[column], f"{where} {g['knob']} {g['arm']} {column}", ABS_TOL)


def _tokens(text: str) -> list[str]:
    for sep in ',:[]{}"\n':
        text = text.replace(sep, " ")
    return text.split()


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    return produce(tmp_path_factory.mktemp("pinned"))


@pytest.mark.parametrize("run", ["example", "defaults", "sweep", "objective"])
def test_artifacts_match_the_pinned_ones(produced, run):
    pinned = json.loads(PINNED.read_text())[run]
    assert sorted(produced[run]) == sorted(pinned), "the same files are written"
    for name, text in pinned.items():
        if name == "sensitivity.csv":
            assert_same_sensitivity(produced[run][name], text, f"{run}/{name}")
        else:
            assert_same_text(produced[run][name], text, f"{run}/{name}", exact=run == "objective",
                             abs_tol=ABS_TOL if name in TOP_FILES else 0.0)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        PINNED.parent.mkdir(exist_ok=True)
        PINNED.write_text(json.dumps(produce(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED}")
