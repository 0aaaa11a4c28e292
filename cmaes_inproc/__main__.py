"""`python -m cmaes_inproc`: a thin command line over `run_pilot` (flags of the seed document, plus a few).

    python -m cmaes_inproc --batched --run-id pilot_cpu_0 --device cpu --generations 2 --population-size 4 \\
        --target-flops 1e10 --search-seed 0 --eval-seed 123

Bad input prints one line `cmaes_inproc: error: ...` and exits 2 before anything is written.

Two environment variables exist for tests only: CMAES_INPROC_TEST_OOM_ABOVE=N makes every batched population of more
than N members behave as if out of memory (0: all of them, so everything falls back to subprocesses), and
CMAES_INPROC_TEST_KILL_AFTER_EVALS=N makes the process SIGKILL itself once N evaluations are in the ledgers.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path

from nanochat.cli_args import add_model_args, add_training_args, model_config_from_args, train_config_from_args
from nanochat.config import ConfigError, SynapticConfig, load_synaptic_config

from .params import PARAM_SPECS
from .pilot import PilotEvent, PilotResult, run_pilot
from .spec import DEFAULT_MAX_BATCH, DEFAULT_SIGMA
from .verdict import DEFAULT_GO_THRESHOLD, format_pct

PROG = "cmaes_inproc"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage; we promise one line
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog=f"python -m {PROG}", description="CMA-ES Phase 1 pilot over ten synaptic knobs.")
    g = p.add_argument_group("run")
    g.add_argument("--run-id", default=None, help="run directory name (default: pilot_<UTC timestamp>)")
    g.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"),
                   help="run dir is <artifacts-dir>/cmaes/phase1/<run-id>/ (default: artifacts)")
    g.add_argument("--resume", action="store_true", help="continue a killed run from its checkpoint and ledgers")
    g.add_argument("--sensitivity", action="store_true",
                   help="instead of CMA-ES: each knob at each edge of its range vs the baseline (sensitivity.csv)")
    g.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures")
    g.add_argument("--quiet", action="store_true", help="no progress bar (the final table is still printed)")
    g = p.add_argument_group("search")
    g.add_argument("--generations", type=int, default=2)
    g.add_argument("--population-size", type=int, default=4)
    g.add_argument("--sigma", type=float, default=DEFAULT_SIGMA,
                   help=f"initial CMA-ES step size as a fraction of each knob's range (default {DEFAULT_SIGMA})")
    g.add_argument("--search-seed", type=int, default=0, help="CMA-ES sampling (0 is an ordinary seed)")
    g.add_argument("--eval-seed", type=int, default=123, help="training seed shared by every candidate")
    g.add_argument("--noise-seeds", type=int, default=2,
                   help="extra seeds (eval-seed+1, ...) for the baseline and the best's confirmation (default 2)")
    g.add_argument("--go-threshold", type=float, default=DEFAULT_GO_THRESHOLD,
                   help="confirmed relative improvement needed for GO (default 0.01 = 1%%)")
    g.add_argument("--score-tail", type=int, default=3, help="score = mean of the last N train losses (default 3)")
    g = p.add_argument_group("evaluation")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--batched", dest="evaluator", action="store_const", const="batched",
                      help="train candidates together in this process (default; falls back to subprocesses)")
    mode.add_argument("--sequential", dest="evaluator", action="store_const", const="sequential",
                      help="one `python -m nanochat.train` subprocess per evaluation (the seed's path)")
    g.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"most members trained at once by the batched evaluator (default {DEFAULT_MAX_BATCH})")
    g.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    g.add_argument("--timeout-s", type=float, default=None,
                   help="wall-time limit of one training run (a batched population counts as one run)")
    g = p.add_argument_group("training (passed to nanochat)")
    add_model_args(g)
    add_training_args(g)
    g.add_argument("--data", type=Path, default=None,
                   help="text file, directory of .txt or .parquet shards (default: embedded stdlib corpus)")
    g.add_argument("--synaptic-config", type=Path, default=None,
                   help="JSON overrides of the base SynapticConfig (the CMA-ES start and the baseline)")
    p.set_defaults(evaluator="batched")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = model_config_from_args(args)
        train = train_config_from_args(args, args.timeout_s)
        base = load_synaptic_config(args.synaptic_config) if args.synaptic_config else SynapticConfig()
        with _Progress(enabled=not args.quiet) as progress:
            result = run_pilot(
                run_id=args.run_id, artifacts_dir=args.artifacts_dir, generations=args.generations,
                population_size=args.population_size, sigma=args.sigma, search_seed=args.search_seed,
                eval_seed=args.eval_seed, noise_seeds=args.noise_seeds, go_threshold=args.go_threshold,
                score_tail=args.score_tail, model=model, train=train, base_synaptic=base, data=args.data,
                device=args.device, evaluator=args.evaluator, max_batch=args.max_batch, resume=args.resume,
                sensitivity=args.sensitivity, plots=not args.no_plots, progress=progress,
                oom_hook=_oom_hook_from_env(),
                extra_run_info={"argv": [PROG, *(sys.argv[1:] if argv is None else argv)]},
            )
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    _print_result(result)
    return 0


def _oom_hook_from_env():
    limit = os.environ.get("CMAES_INPROC_TEST_OOM_ABOVE")
    if limit is None:
        return None
    limit_n = int(limit)
    return lambda n: n > limit_n


class _Progress:
    """rich progress: evaluations done of the run, and steps of the population training right now.

    The bar appears at the run's "start" event, i.e. after every input check passed, so a refused run prints
    nothing but its one-line error.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        kill = os.environ.get("CMAES_INPROC_TEST_KILL_AFTER_EVALS")
        self.kill_after = int(kill) if kill else None
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[note]}"), console=Console(stderr=True))
        self.bar.__enter__()
        self.evals = self.bar.add_task("evaluations", total=None, note="")
        self.steps = self.bar.add_task("  steps", total=None, note="")

    def __call__(self, event: PilotEvent) -> None:
        if self.enabled and self.bar is None and event.kind == "start":
            self._start()
        if self.bar is not None:
            if event.kind == "step":
                self.bar.update(self.steps, completed=event.step, total=event.steps)
            else:
                note = f"best {event.best_score:.4f}" if math.isfinite(event.best_score) else ""
                self.bar.update(self.evals, completed=event.evals_done, total=event.evals_total,
                                **({"note": note} if note else {}))
        if event.kind == "evaluated" and self.kill_after is not None and event.evals_done >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a killed job, no cleanup


def _print_result(result: PilotResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result.sensitivity is not None:
        table = Table(title=f"sensitivity ({result.run_dir})")
        for col in ("knob", "edge", "value", "score", "rel. delta"):
            table.add_column(col, justify="left" if col in ("knob", "edge") else "right")
        for r in result.sensitivity:
            table.add_row(r["knob"], r["edge"], f"{r['value']:.4g}", _fmt(r["score"]), _pct(r["rel_delta"]))
        console.print(table)
        console.print(f"summary: {result.summary_md}")
        return
    v, best = result.verdict, result.best
    table = Table(title="best candidate" if best else "no candidate finished")
    table.add_column("knob")
    table.add_column("default", justify="right")
    table.add_column("best", justify="right")
    if best is not None:
        for ps in PARAM_SPECS:
            table.add_row(ps.name, f"{getattr(result.spec.base_synaptic, ps.name):.4g}", f"{best.params[ps.name]:.4g}")
        table.add_row("[b]score[/b]", _fmt(v.baseline_score), _fmt(best.score))
    console.print(table)
    console.print(f"verdict: [b]{v.label}[/b]  confirmed improvement {_pct(v.confirmed_improvement)}, seed noise "
                  f"{_pct(v.seed_noise, signed=False)}, failures {v.failures}/{v.evaluations}")
    for reason in v.reasons:
        console.print(f"  - {reason}")
    console.print(f"summary: {result.summary_md}")


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def _pct(value: float, signed: bool = True) -> str:
    return format_pct(value, signed)


if __name__ == "__main__":
    sys.exit(main())
