"""Per-run telemetry: `summary.json` + `run.md` for one member, written atomically.

The same writer serves `python -m nanochat.train` and the pilot's in-process evaluator, so a candidate's summary
has the same shape whichever path trained it. Non-finite losses are written as `null` (strict JSON).
"""

from __future__ import annotations

import json
import math
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from .config import Member, ModelConfig, TrainConfig
from .data import Corpus
from .files import atomic_write_json, atomic_write_text
from .trainer import MemberResult, PopulationResult

SCHEMA_VERSION = 1


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def build_summary(member: Member, result: MemberResult, population: PopulationResult, model_cfg: ModelConfig,
                  train_cfg: TrainConfig, corpus: Corpus, meta: dict | None = None) -> dict:
    losses = [finite_or_none(x) for x in result.losses]
    step_times = population.step_times_s[: len(result.losses)]
    return {
        "schema_version": SCHEMA_VERSION,
        "meta": {
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "host": platform.node(),
            "argv": sys.argv,
            "device": population.device,
            "population_size": population.population,
            **(meta or {}),
        },
        "hparams": {
            "model_type": "synaptic",
            "optimizer_type": "adamw",  # as the pilot document's CLI names it; block matrices use Muon internally
            "seed": member.seed,
            "synaptic_config": member.synaptic.to_dict(),
        },
        "config": {**model_cfg.to_dict(), **train_cfg.to_dict(), "device": population.device, "seed": member.seed},
        "dataset": corpus.describe(),
        "budget": population.budget.to_dict(),
        "results": {
            "status": result.status,
            "failure_step": result.failure_step,
            "failure_reason": result.failure_reason,
            "steps_completed": len(result.losses),
            "losses": losses,
            "train_ce_final": losses[-1] if losses else None,
            "step_times_s": step_times,
            "tokens_per_second": population.tokens_per_second,
            "measured_time_s": population.measured_time_s,
            "execution": population.execution,
            **_val_results(result, population),
        },
    }


def _val_results(result: MemberResult, population: PopulationResult) -> dict:
    """The held-out loss keys, present only when it was measured (so a train-only summary keeps its shape)."""
    if not population.val_batches:
        return {}
    return {"val_loss": finite_or_none(result.val_loss), "val_batches": population.val_batches,
            "val_flops": population.val_flops}


def render_run_md(summary: dict) -> str:
    res, budget, hp = summary["results"], summary["budget"], summary["hparams"]
    losses = res["losses"]
    cfg = summary["config"]
    lines = [
        f"# nanochat synaptic run (seed {hp['seed']})",
        "",
        f"- status: **{res['status']}**" + (f" (step {res['failure_step']}: {res['failure_reason']})" if res["failure_reason"] else ""),
        f"- model: {cfg['n_layer']} layers, width {cfg['n_embd']}, {cfg['n_head']} heads ({cfg['n_kv_head']} kv), "
        f"sequence {cfg['sequence_len']}, batch {cfg['batch_size']}, vocab {cfg['vocab_size']}",
        f"- budget: {budget['max_steps']} steps, {budget['target_flops']:.3g} target FLOPs, "
        f"{budget['flops_per_token_est']:,} FLOPs/token",
        f"- data: {summary['dataset']['name']} (sha256 {summary['dataset']['sha256'][:12]})",
        f"- device: {summary['meta']['device']}, population of {summary['meta']['population_size']}, "
        f"{res['measured_time_s']:.1f} s, {res['tokens_per_second']:.0f} tokens/s per member",
        "",
        "| step | loss |",
        "|---:|---:|",
    ]
    every = max(1, int(cfg.get("log_interval", 10)))
    shown = sorted(set(list(range(0, len(losses), every)) + ([len(losses) - 1] if losses else [])))
    for i in shown:
        value = losses[i]
        lines.append(f"| {i} | {'nan' if value is None else f'{value:.4f}'} |")
    lines += ["", "Synaptic config:", "", "```json", json.dumps(hp["synaptic_config"], indent=2), "```", ""]
    return "\n".join(lines)


def write_member_artifacts(out_dir: str | Path, *, member: Member, member_result: MemberResult,
                           population: PopulationResult, model_cfg: ModelConfig, train_cfg: TrainConfig,
                           corpus: Corpus, meta: dict | None = None) -> Path:
    """Write out_dir/summary.json and out_dir/run.md; returns the summary path."""
    summary = build_summary(member, member_result, population, model_cfg, train_cfg, corpus, meta)
    return write_summary_files(out_dir, summary)


def write_summary_files(out_dir: str | Path, summary: dict) -> Path:
    """Write a summary built elsewhere (e.g. by a Ray actor on another machine) as out_dir/summary.json + run.md."""
    out_dir = Path(out_dir)
    # summary.json last: it is what marks a run as done, so an interruption between the two leaves none.
    atomic_write_text(out_dir / "run.md", render_run_md(summary))
    atomic_write_json(out_dir / "summary.json", summary)
    return out_dir / "summary.json"
