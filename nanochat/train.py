"""`python -m nanochat.train`: train ONE synaptic GPT (a population of P = 1) and write summary.json + run.md.

This is the sequential reference path of the pilot (one subprocess per candidate), with the pilot document's flags:

    python -m nanochat.train --model-type synaptic --synaptic-config cand.json --device cpu --seed 123 \\
        --target-flops 1e10 --out-dir artifacts/some/where

Bad input (unknown config keys, invalid values, a missing --data path, a corpus too short for one window, a run id
that is not a plain directory name, an output place that is not a writable directory, ...) prints one line
`nanochat.train: error: ...` and exits with status 2 before any training and before anything is written.
Ctrl-C and SIGTERM print `nanochat.train: interrupted` and exit 130 / 143; every file is written atomically (and
summary.json last), so an interrupted run leaves no half-written file and no summary.json.

Exit status: 0 trained, 1 trained but the run failed (diverged, NaN, timeout), 2 bad input or an output that could
not be written, 3 out of memory, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Only light modules here: torch is imported inside main(), after the Ctrl-C/SIGTERM handling is in place.
from .cli_args import (OneLineParser, add_model_args, add_training_args, flag_names, model_config_from_args,
                       train_config_from_args)
from .config import ConfigError, Member, SynapticConfig, load_synaptic_config
from .files import check_dir_name, check_writable_dir
from .interrupts import Interrupts, Terminated


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="nanochat.train", description="Train one synaptic GPT under a FLOPs budget.")
    p.add_argument("--model-type", default="synaptic", choices=["synaptic"])
    p.add_argument("--synaptic-config", type=Path, help="JSON object of SynapticConfig overrides")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0, help="eval seed: weight init and stochastic release")
    p.add_argument("--data", type=Path, help="text file, directory of .txt, or directory of .parquet shards "
                   "(default: the embedded standard-library corpus)")
    add_model_args(p.add_argument_group("model"))
    g = p.add_argument_group("training")
    add_training_args(g)
    g.add_argument("--optimizer-type", default="adamw", choices=["adamw"],
                   help="accepted for the pilot document's CLI; the synaptic model always uses AdamW + Muon")
    g.add_argument("--time-limit-s", type=float, default=None, help="wall-time limit of the run")
    g.add_argument("--val-batches", type=int, default=0,
                   help="after training, measure the mean loss on this many held-out validation batches (fixed by "
                        "--data-seed; their FLOPs are reported, not charged to the budget; default 0: none)")
    g = p.add_argument_group("artifacts")
    g.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    g.add_argument("--artifacts-kind", default="nanochat")
    g.add_argument("--artifacts-topic", default="train")
    g.add_argument("--run-id", default=None, help="default: a UTC timestamp")
    g.add_argument("--out-dir", type=Path, default=None,
                   help="write summary.json and run.md exactly here (overrides the artifacts-dir/kind/topic/run-id path)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing summary.json in the output dir")
    g.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status. Ctrl-C and SIGTERM give one line and 130 / 143."""
    interrupts = Interrupts()
    try:
        with interrupts.installed():
            return _main(argv, interrupts)
    except KeyboardInterrupt:
        print("nanochat.train: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("nanochat.train: interrupted", file=sys.stderr)
        return 143


def _main(argv: list[str] | None, interrupts: Interrupts) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = flag_names(parser)  # errors name our flags ("--target-flops ..."), not the library's parameter names
    try:
        for field in ("run_id", "artifacts_kind", "artifacts_topic"):
            if getattr(args, field) is not None:
                check_dir_name(field, getattr(args, field))
        synaptic = load_synaptic_config(args.synaptic_config) if args.synaptic_config else SynapticConfig()
        model_cfg = model_config_from_args(args)
        train_cfg = train_config_from_args(args, args.time_limit_s)
        member = Member(synaptic=synaptic, seed=args.seed)

        with interrupts.deferred():  # the heavy imports, once the flags are known to be sane
            import torch

            from .data import check_corpus_fits, load_corpus
            from .summary import write_member_artifacts
            from .trainer import resolve_run_device, train_population

        device = resolve_run_device(args.device, train_cfg)
        run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        out_dir = args.out_dir or args.artifacts_dir / args.artifacts_kind / args.artifacts_topic / run_id
        out_field = "out_dir" if args.out_dir else "artifacts_dir"
        check_writable_dir(out_field, out_dir)  # before training: a run must not be lost for want of a place
        if (out_dir / "summary.json").exists() and not args.overwrite:
            raise ConfigError(f"{out_dir / 'summary.json'} already exists (use --overwrite or another --run-id)")
        corpus = load_corpus(args.data)
        check_corpus_fits(corpus, model_cfg.sequence_len)
    except ConfigError as exc:
        print(f"nanochat.train: error: {exc.named(flags)}", file=sys.stderr)
        return 2

    log = None if args.quiet else (lambda step, losses: print(f"step {step:5d}  loss {losses[0]:.4f}", flush=True))
    try:
        result = train_population([member], model_cfg, train_cfg, corpus, device, on_log=log,
                                  val_batches=args.val_batches)
    except ConfigError as exc:
        print(f"nanochat.train: error: {exc.named(flags)}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as exc:
        print(f"nanochat.train: error: out of memory: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 3
    try:
        path = write_member_artifacts(out_dir, member=member, member_result=result.members[0], population=result,
                                      model_cfg=model_cfg, train_cfg=train_cfg, corpus=corpus,
                                      meta={"run_id": run_id, "entry_point": "nanochat.train"})
    except OSError as exc:  # e.g. the disk filled up during training; atomic writes left nothing half-written
        print(f"nanochat.train: error: cannot write the summary in {out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    m = result.members[0]
    if not args.quiet:
        val = f", val loss {m.val_loss:.4f}" if args.val_batches else ""
        print(f"{m.status}: {len(m.losses)} steps, score(3) {m.score(3):.4f}{val}, {result.measured_time_s:.1f} s -> {path}")
    return 0 if m.ok else 1


if __name__ == "__main__":
    sys.exit(main())
