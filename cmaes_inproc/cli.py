"""The command line over `run_pilot` (the pilot document's flags, plus a few); `python -m cmaes_inproc` runs it.

    python -m cmaes_inproc --batched --run-id pilot_cpu_0 --device cpu --generations 2 --population-size 4 \\
        --target-flops 1e10 --search-seed 0 --eval-seed 123

Flags, defaults and help come from `PilotSpec` and the nanochat configs, so the CLI and the Python API cannot drift
apart. Bad input prints one line `cmaes_inproc: error: ...` naming the flag, and exits 2 before anything is written.
Ctrl-C and SIGTERM stop the run with one line (exit 130 / 143); `--resume` continues it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from nanochat.cli_args import (OneLineParser, add_model_args, add_training_args, flag_names,
                               model_config_from_args, train_config_from_args)
from nanochat.config import ConfigError, SynapticConfig, load_synaptic_config

from .formatting import format_effect, format_number, format_pct, format_t
from .liveness import ARMS
from .params import PARAM_SPECS
from .pilot import run_pilot
from .records import PilotResult
from .recorders import PilotEvent
from .report import sensitivity_floor_line, sensitivity_rule
from .spec import DEFAULTS, SCORE_ON, PilotSpec

PROG = "cmaes_inproc"
SEARCH_FLAGS = ("generations", "population_size", "sigma", "search_seed", "eval_seed", "noise_seeds", "go_threshold",
                "score_tail")
EVALUATION_FLAGS = ("max_batch", "device")
RAY_FLAGS = ("ray_address", "num_actors", "gpus_per_actor", "cpus_per_actor", "ray_max_retries")
RAY_FLAG_TYPES = {"ray_address": str, "num_actors": int}  # fields whose default (None) says nothing of their type
PHASE2_FLAGS = ("eval_seeds", "val_batches")  # plus --objective (field score_on: `objective` is a Python callable)
SENSITIVITY_FLAGS = ("sensitivity_seeds", "sensitivity_nudge")


def _spec_flag(group, name: str) -> None:
    """A flag for PilotSpec field `name`, with the field's type, default and help."""
    field = PilotSpec.__dataclass_fields__[name]
    default = getattr(DEFAULTS, name)
    kind = RAY_FLAG_TYPES.get(name, type(default))
    group.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                       help=f"{field.metadata['help']} (default {default})")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="CMA-ES Phase 1 pilot over ten synaptic knobs.")
    g = p.add_argument_group("run")
    g.add_argument("--run-id", default=None, help="run directory name (default: pilot_<UTC timestamp>)")
    g.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"),
                   help="run dir is <artifacts-dir>/cmaes/phase1/<run-id>/ (default: artifacts)")
    g.add_argument("--resume", action="store_true", help="continue a killed run from its checkpoint and ledgers")
    g.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures")
    g.add_argument("--quiet", action="store_true", help="no progress bar (the final table is still printed)")
    g = p.add_argument_group("search")
    for name in SEARCH_FLAGS:
        _spec_flag(g, name)
    g = p.add_argument_group("sensitivity sweep")
    g.add_argument("--sensitivity", action="store_true",
                   help="instead of CMA-ES: the baseline, each knob at each edge of its range and each knob nudged, "
                        "on --sensitivity-seeds seeds; each knob alive or not against the chaos floor "
                        "(sensitivity.csv; --noise-seeds is not used)")
    for name in SENSITIVITY_FLAGS:
        _spec_flag(g, name)
    g = p.add_argument_group("phase 2: several seeds per candidate, held-out loss")
    for name in PHASE2_FLAGS:
        _spec_flag(g, name)
    g.add_argument("--objective", dest="score_on", choices=SCORE_ON, default=DEFAULTS.score_on,
                   help="what a score is: the mean of the last --score-tail train losses, or the mean loss on "
                        f"held-out validation batches after training (default {DEFAULTS.score_on})")
    g = p.add_argument_group("evaluation")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--batched", dest="evaluator", action="store_const", const="batched",
                      help="train candidates together in this process (default; falls back to subprocesses)")
    mode.add_argument("--sequential", dest="evaluator", action="store_const", const="sequential",
                      help="one `python -m nanochat.train` subprocess per evaluation (the pilot document's path)")
    mode.add_argument("--ray", dest="evaluator", action="store_const", const="ray",
                      help="split each generation across Ray actors, each shard trained batched (see --num-actors)")
    for name in EVALUATION_FLAGS + RAY_FLAGS:
        _spec_flag(g, name)
    g.add_argument("--timeout-s", type=float, default=None,
                   help="wall-time limit of one training run (a batched population counts as one run)")
    g = p.add_argument_group("training (passed to nanochat)")
    add_model_args(g)
    add_training_args(g)
    g.add_argument("--data", type=Path, default=None,
                   help="text file, directory of .txt or .parquet shards (default: embedded stdlib corpus)")
    g.add_argument("--synaptic-config", type=Path, default=None,
                   help="JSON overrides of the base SynapticConfig (the CMA-ES start and the baseline)")
    p.set_defaults(evaluator=DEFAULTS.evaluator)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the pilot from command-line flags; returns the exit status (see the module docstring).

    Ctrl-C (KeyboardInterrupt) and SIGTERM (`nanochat.interrupts.Terminated`) propagate to the caller, which
    prints their one line (`cmaes_inproc.__main__`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    names = {**flag_names(parser), "time_limit_s": "--timeout-s", "base_synaptic": "--synaptic-config"}
    try:
        settings = {name: getattr(args, name)
                    for name in (*SEARCH_FLAGS, *EVALUATION_FLAGS, *RAY_FLAGS, *PHASE2_FLAGS, *SENSITIVITY_FLAGS,
                                 "score_on")}
        model = model_config_from_args(args)
        train = train_config_from_args(args, args.timeout_s)
        base = load_synaptic_config(args.synaptic_config) if args.synaptic_config else SynapticConfig()
        with _Progress(enabled=not args.quiet) as progress:
            result = run_pilot(
                run_id=args.run_id, artifacts_dir=args.artifacts_dir, resume=args.resume, plots=not args.no_plots,
                progress=progress, extra_run_info={"argv": [PROG, *(sys.argv[1:] if argv is None else argv)]},
                model=model, train=train, base_synaptic=base, data=args.data, evaluator=args.evaluator,
                sensitivity=args.sensitivity, **settings)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc.named(names)}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk: every file is written atomically, so nothing is half-written
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: error: {exc.strerror or exc}{where}; fix it and continue with --resume", file=sys.stderr)
        return 1
    _print_result(result)
    return 0


class _Progress:
    """rich progress: evaluations done of the run, and steps of the population training right now.

    The bar appears at the run's "start" event, i.e. after every input check passed, so a refused run prints
    nothing but its one-line error.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
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


def _print_result(result: PilotResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result.sensitivity is not None:
        _print_sweep(console, result)
        return
    v, best = result.verdict, result.best
    table = Table(title="best candidate" if best else "no candidate finished")
    table.add_column("knob")
    table.add_column("default", justify="right")
    table.add_column("best", justify="right")
    if best is not None:
        for ps in PARAM_SPECS:
            table.add_row(ps.name, f"{getattr(result.spec.base_synaptic, ps.name):.4g}", f"{best.params[ps.name]:.4g}")
        table.add_row("[b]score[/b]", format_number(v.baseline_score), format_number(best.score))
    console.print(table)
    console.print(f"verdict: [b]{v.label}[/b]  confirmed improvement {format_pct(v.confirmed_improvement, True)}, "
                  f"seed noise {format_pct(v.seed_noise)}, failures {v.failures}/{v.evaluations}")
    for reason in v.reasons:
        console.print(f"  - {reason}")
    console.print(f"summary: {result.summary_md}")


def _print_sweep(console, result: PilotResult) -> None:
    """The sweep's rows as summary.md shows them, then the chaos floor and the rule."""
    from rich.table import Table

    sweep = result.sensitivity
    table = Table(title=f"sensitivity over seeds {', '.join(map(str, sweep.seeds))} ({result.run_dir})")
    for col in ("knob", "verdict", "arm", "value", "seeds", "mean effect ± SE", "t", "chaos SE"):
        table.add_column(col, justify="left" if col in ("knob", "verdict", "arm") else "right")
    for r in sweep.rows:
        first = r.arm == ARMS[0]  # the knob and its verdict once, on its first arm's row
        table.add_row(r.knob if first else "", str(r.verdict) if first else "", r.arm, f"{r.value:.4g}",
                      str(r.n_seeds), format_effect(r.mean_rel_effect, r.se), format_t(r.t), format_pct(r.floor_se),
                      end_section=r.arm == ARMS[-1])
    console.print(table)
    console.print(sensitivity_floor_line(sweep), highlight=False)
    console.print(sensitivity_rule(), highlight=False)
    if sweep.failures:
        console.print(f"failed evaluations, left out: {len(sweep.failures)} (see {result.summary_md})")
    console.print(f"summary: {result.summary_md}")
