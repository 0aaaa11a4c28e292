"""summary.md: the human-readable account of a run, with the numbers that decided the verdict."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from .artifacts import RunLayout
from .formatting import format_effect, format_number, format_pct, format_t
from .liveness import EDGES, FLOOR_MULTIPLE, MIN_T, NUDGE, Liveness
from .params import PARAM_SPECS
from .records import SensitivityResult, best_so_far
from .verdict import Verdict

LAYOUT_DESCRIPTION = {
    "run.json": "run spec: settings, parameter space, scaling, budget, corpus, reproduce command",
    "progress.csv": "one row per CMA-ES candidate evaluation",
    "controls.csv": "baseline (eval seed + noise seeds, or the sweep's seeds), confirmation of the best, "
                    "sensitivity evaluations (one row per arm and seed)",
    "sensitivity.csv": "--sensitivity only: one row per knob and arm (low, high, nudge) with the mean paired effect, "
                       "its standard error, t, the chaos floor's standard error and the knob's verdict",
    "best.json": "best candidate so far: decoded params, x, score, gen, cand, summary path",
    "verdict.json": "the Go/No-Go numbers (also in summary.md)",
    "summary.md": "this summary",
    "checkpoint.json": "finished generations and a hash of their ledger rows (--resume replays the search)",
    "evaluations.csv": "--eval-seeds > 1 or a validation loss only: one row per training run (per seed), with the "
                       "train score and the validation loss",
    "eval/gen_GGGG/cand_CCCC/": "synaptic_config.json, seed_<eval_seed>/summary.json + run.md",
    "eval/baseline/": "synaptic_config.json, seed_<s>/summary.json + run.md for the eval seed and each noise seed",
    "eval/confirm/": "the best candidate re-evaluated on the same seeds",
    "eval/sensitivity/<knob>_<low|high|nudge>/": "one-at-a-time sweep (--sensitivity), seed_<s>/ per sweep seed",
    "plots/": "PNG figures embedded in summary.md (when matplotlib is installed)",
}


def score_description(score_tail: int, budget, spec=None) -> str:
    """What a score is, honestly: a run shorter than `score_tail` steps is scored on all of its losses; with a
    Phase 2 `spec`, the validation loss and/or the mean over several eval seeds."""
    if spec is not None and (spec.score_on == "val" or spec.eval_seeds > 1):
        what = (f"mean loss on {spec.val_batches} held-out validation batches after training" if spec.score_on == "val"
                else score_description(score_tail, budget))
        return what + (f", averaged over {spec.eval_seeds} eval seeds" if spec.eval_seeds > 1 else "")
    steps = None if budget is None else budget.max_steps
    if steps is not None and score_tail > steps:
        return f"mean of the last {steps} train losses (every loss: score_tail {score_tail} > {steps} steps per run)"
    return f"mean of the last {score_tail} train losses"


def _budget_line(budget) -> str:
    if budget is None:
        return "- budget: custom objective (no training)"
    return (f"- budget: {budget.max_steps} steps per evaluation ({budget.target_flops:.3g} target FLOPs, "
            f"{budget.flops_per_token_est:,} FLOPs/token)")


def _data_lines(corpus) -> list[str]:
    """Which text the scores come from: the embedded corpus is the running Python's standard library, so two
    machines with different Pythons train on different text and their scores differ (~6% at the default budget)."""
    if corpus is None:
        return []
    return [f"- data: {corpus.name} (sha256 {corpus.sha256[:12]}); compare scores only between runs on the same data"]


def _heldout_lines(verdict: Verdict) -> list[str]:
    """The unbiased number beside the selection-biased one, and two sentences on why both are shown."""
    return [
        f"- held-out improvement (seeds {', '.join(map(str, verdict.heldout_seeds)) or 'none'}, which took no part "
        f"in selecting the best): {format_pct(verdict.heldout_improvement, signed=True)}, 95% interval "
        f"[{format_pct(verdict.interval_low, signed=True)}, {format_pct(verdict.interval_high, signed=True)}] "
        f"({verdict.interval_method})",
        "",
        "Why two improvements: the best was chosen because it scored lowest on the eval seeds, so its improvement "
        "there is the best of many noisy draws and overstates what it would do on a fresh seed. The held-out seeds "
        "played no part in that choice, so their improvement is unbiased, and its interval says whether seed noise "
        "alone could explain it (GO needs the lower bound above zero).",
        "",
    ]


def _seed_table(records, seed_runs) -> list[str]:
    """With several eval seeds: the best few candidates' per-seed scores and their spread."""
    rows = []
    for r in sorted((r for r in records if r.status.ok), key=lambda r: r.score)[:5]:
        runs = seed_runs("candidate", r.gen, r.cand)
        scores = [run.score for run in runs.values()]
        spread = statistics.stdev(scores) if len(scores) > 1 else math.nan
        rows.append(f"| {r.gen} | {r.cand} | {format_number(r.score)} | {format_number(spread, 5)} | "
                    + ", ".join(format_number(v) for v in scores) + " |")
    if not rows:
        return []
    return ["", "Per-seed scores of the best candidates (the score is their mean; std is the spread across seeds):",
            "", "| gen | cand | score | std | per seed |", "|---:|---:|---:|---:|---|", *rows]


def render_cma_summary(*, run_id, spec, verdict: Verdict, best, records, per_gen: Sequence[float], budget, corpus,
                       layout: RunLayout, figures: dict, seed_runs=None) -> str:
    n_eval = len(records)
    by_evaluator: dict[str, int] = {}
    for r in records:
        by_evaluator[r.evaluator] = by_evaluator.get(r.evaluator, 0) + 1
    lines = [
        f"# CMA-ES Phase 1 pilot `{run_id}`",
        "",
        f"## Verdict: **{verdict.label}**",
        "",
    ]
    if verdict.go:
        lines.append(f"The best candidate beats the baseline by {format_pct(verdict.confirmed_improvement, signed=True)} on average over "
                     f"{len(verdict.seeds)} seeds, more than the seed noise "
                     f"({format_pct(verdict.seed_noise)}), with "
                     f"{verdict.failures}/{verdict.evaluations} failed evaluations: the search space is alive.")
    else:
        lines.append("Reasons:")
        lines += [f"- {reason}" for reason in verdict.reasons]
    lines += ["", "| criterion | measured | required | pass |", "|---|---:|---:|:---:|"]
    lines += [f"| {c.name} | {c.value} | {c.threshold} | {'yes' if c.passed else 'NO'} |" for c in verdict.criteria]
    lines += [
        "",
        "## Baseline vs best",
        "",
        f"- baseline score (default config, eval seed {verdict.eval_seed}): {format_number(verdict.baseline_score)}",
        f"- best search score (eval seed): {format_number(verdict.best_score)}"
        + (f" (gen {best.gen}, cand {best.cand})" if best else ""),
        f"- improvement on the eval seed{'s' if len(verdict.eval_seeds) > 1 else ''}: "
        f"{format_pct(verdict.search_improvement, signed=True)} (selection-biased: best of {n_eval})",
        f"- confirmed improvement, mean over seeds {', '.join(map(str, verdict.seeds))}: "
        f"{format_pct(verdict.confirmed_improvement, signed=True)} (paired std {format_pct(verdict.paired_std)}, best wins on "
        f"{verdict.wins}/{len(verdict.seeds)} seeds)",
        f"- seed noise (relative std of the baseline score across seeds): {format_pct(verdict.seed_noise)}",
        *_heldout_lines(verdict),
        f"- failure rate: {verdict.failures}/{verdict.evaluations} candidate evaluations",
        f"- spread of the finished candidates' scores: {format_pct(verdict.score_spread)} of the best",
        "",
        "Paired comparison (same seed, same data; lower score is better):",
        "",
        "| seed | baseline | best | improvement |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {p['seed']} | {format_number(p['baseline'])} | {format_number(p['best'])} | {format_pct(p['rel_improvement'], signed=True)} |"
              for p in verdict.paired]
    lines += ["", "Pathological checks (exploding or rising loss curves, failures):", ""]
    if verdict.pathologies:
        lines += [f"- {who}: {', '.join(problems)}" for who, problems in verdict.pathologies.items()]
    else:
        lines.append("- none: baseline and best curves are finite, never explode and do not rise at the end")

    if best is not None:
        lines += ["", "## Best candidate", "", "| knob | default | best | x | bounds (x) |", "|---|---:|---:|---:|---|"]
        for i, ps in enumerate(PARAM_SPECS):
            lines.append(f"| {ps.name} | {getattr(spec.base_synaptic, ps.name):.4g} | {best.params[ps.name]:.4g} | "
                         f"{best.x[i]:.4f} | [{ps.low:g}, {ps.high:g}] {ps.kind} |")
        if best.summary_path is not None:
            lines += ["", f"Summary: `{layout.relative(best.summary_path)}`"]

    lines += ["", "## Search", "",
              f"- {spec.generations} generations x {spec.population_size} candidates, sigma {spec.sigma:g} "
              f"(fraction of each knob's range), search seed {spec.search_seed}, eval seed {spec.eval_seed}, "
              f"noise seeds {spec.noise_seeds}, score = {score_description(spec.score_tail, budget, spec)}",
              _budget_line(budget), *_data_lines(corpus),
              f"- evaluators: {', '.join(f'{k} x{v}' for k, v in sorted(by_evaluator.items())) or 'none'}",
              "", "| generation | best score | best so far |", "|---:|---:|---:|"]
    for g, (value, running) in enumerate(zip(per_gen, best_so_far(list(per_gen)))):
        lines.append(f"| {g} | {format_number(value)} | {format_number(running)} |")
    if seed_runs is not None and spec.eval_seeds > 1:
        lines += _seed_table(records, seed_runs)
    for name, title in (("best_per_generation", "Best score per generation"), ("loss_curves", "Loss curves")):
        if name in figures:
            lines += ["", f"![{title}]({figures[name]})"]
    lines += ["", "Files: `progress.csv` (candidates), `controls.csv` (baseline/confirmation), `best.json`, "
              "`verdict.json`, `run.json` (spec and the `python -m nanochat.train` command that reproduces any "
              "evaluation), `eval/` (per-evaluation synaptic_config.json, summary.json, run.md).", ""]
    return "\n".join(lines)


def sensitivity_rule() -> str:
    """The verdict rule of the sweep in two sentences, with the thresholds liveness.py decides by."""
    return (f"A knob is alive when at some edge of its range its mean effect over the seeds is at least {MIN_T:g} "
            f"standard errors from zero (|t| >= {MIN_T:g}) and at least {FLOOR_MULTIPLE:g} chaos standard errors in "
            "size (floor / sqrt(n) over its n seeds), the chaos floor being the root-mean-square effect of nudging a "
            "knob by a tiny fraction of its range, i.e. what chaotic training alone does to one seed's score. "
            "It is weak when an edge passes only one of the two tests, and not distinguishable from chaos when no "
            "edge passes either.")


def sensitivity_floor_line(sweep: SensitivityResult) -> str:
    """The chaos floor, and the band an arm's mean must leave (the same sentence in summary.md and the terminal)."""
    k = len(sweep.seeds)
    n = sum(len(ks.effects[NUDGE]) for ks in sweep.stats.knobs.values())
    floor_se = sweep.stats.floor / math.sqrt(k)
    return (f"chaos floor {format_pct(sweep.stats.floor)} per seed (root-mean-square of {n} nudge effects); a "
            f"{k}-seed mean of chaos has standard error {format_pct(floor_se)}, so the chaos band is "
            f"±{format_pct(FLOOR_MULTIPLE * floor_se)}")


def render_sensitivity_summary(*, run_id, spec, sweep: SensitivityResult, budget, corpus, layout: RunLayout,
                               figures: dict) -> str:
    verdicts = {r.knob: r.verdict for r in sweep.rows}
    by_verdict = {v: [k for k, kv in verdicts.items() if kv is v] for v in Liveness}
    seeds = sweep.seeds
    inert = [k for k, ks in sweep.stats.knobs.items()  # bit-identical scores: the knob is not wired in at all
             if all(e == 0.0 for edge in EDGES for e in ks.effects[edge].values())]
    lines = [
        f"# Sensitivity sweep `{run_id}`",
        "",
        f"Each knob at the low and the high edge of its range, and nudged by {spec.sensitivity_nudge:g} of its range, "
        f"all other knobs at the default; the baseline and every arm trained on the same {len(seeds)} seeds "
        f"({', '.join(map(str, seeds))}). An arm's effect on a seed is the relative change of its score against the "
        "baseline's on that seed (negative = better).",
        "",
        sensitivity_rule(),
        "",
        f"- alive: {len(by_verdict[Liveness.ALIVE])}/{len(verdicts)}"
        + "".join(f"; {v}: {', '.join(ks)}" for v, ks in by_verdict.items() if v is not Liveness.ALIVE and ks),
        f"- {sensitivity_floor_line(sweep)}",
        "- baseline score per seed: " + ", ".join(f"{s}: {format_number(sweep.baseline_scores[s])}" for s in seeds)
        + f" (seed noise, the relative std across seeds: {format_pct(sweep.seed_noise)})",
        _budget_line(budget), *_data_lines(corpus),
        "- knobs with no effect at all (bit-identical scores at both edges on every seed): "
        + (", ".join(inert) or "none"),
        "- failed evaluations (left out of their arm's statistics): "
        + (", ".join(f"{c.label or c.role} seed {c.seed} ({c.status})" for c in sweep.failures) or "none"),
        "",
        "| knob | verdict | arm | value | seeds | mean effect ± SE | t | chaos SE | effect per seed |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in sweep.rows:
        effects = sweep.stats.knobs[r.knob].effects[r.arm]
        per_seed = ", ".join(format_pct(effects[s], signed=True) if s in effects else "n/a" for s in seeds)
        lines.append(f"| {r.knob} | {r.verdict} | {r.arm} | {r.value:.4g} | {r.n_seeds} | "
                     f"{format_effect(r.mean_rel_effect, r.se)} | {format_t(r.t)} | {format_pct(r.floor_se)} | "
                     f"{per_seed} |")
    if "sensitivity" in figures:
        lines += ["", f"![Sensitivity]({figures['sensitivity']})"]
    lines += ["", "Data: `sensitivity.csv` (the rows above), `controls.csv` (every evaluation's score, per seed); "
              "evaluations under `eval/sensitivity/` and `eval/baseline/`.", ""]
    return "\n".join(lines)
