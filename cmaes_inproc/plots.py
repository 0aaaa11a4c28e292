"""Optional figures for summary.md (matplotlib is not required: without it the summary simply has no images).

Uses matplotlib's object API (`Figure` + the Agg canvas), never pyplot, so no global backend or figure state changes
in the calling process. Images are rendered to memory and written atomically like every other artifact.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

from .artifacts import RunLayout, atomic_write_bytes
from .liveness import FLOOR_MULTIPLE, MIN_T
from .records import SensitivityRow, best_so_far


def _new_figure(width: float = 6.4, height: float = 3.6):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, layout: RunLayout, name: str) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    path = layout.plots / name
    atomic_write_bytes(path, buf.getvalue())
    return layout.relative(path)


def cma_plots(layout: RunLayout, best_per_gen: Sequence[float], baseline_score: float,
              curves: dict[str, Sequence[float]]) -> dict[str, str]:
    """Best score per generation (with best-so-far and the baseline), and baseline vs best loss curves."""
    figures: dict[str, str] = {}
    fig = _new_figure()
    if fig is None:
        return figures
    ax = fig.add_subplot(1, 1, 1)
    gens = list(range(len(best_per_gen)))
    ax.plot(gens, best_per_gen, "o-", label="best in generation")
    ax.plot(gens, best_so_far(list(best_per_gen)), "s--", label="best so far")
    if math.isfinite(baseline_score):
        ax.axhline(baseline_score, color="gray", linestyle=":", label="baseline (eval seed)")
    ax.set_xlabel("generation")
    ax.set_xticks(gens)
    ax.set_ylabel("score (mean of last losses)")
    ax.legend()
    figures["best_per_generation"] = _save(fig, layout, "best_per_generation.png")

    base, best = curves.get("baseline") or [], curves.get("best") or []
    if base or best:
        # Both curves share the batches, so they overlap almost everywhere; the lower panel shows what differs.
        fig = _new_figure(6.4, 5.2)
        top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
        for name, losses in (("baseline", base), ("best", best)):
            if losses:
                top.plot(range(len(losses)), losses, label=name)
        top.set_ylabel("train loss")
        top.set_title("eval seed: baseline vs best candidate (same batches)")
        top.legend()
        n = min(len(base), len(best))
        if n:
            bottom.plot(range(n), [b - a for a, b in zip(base[:n], best[:n])], color="tab:green")
            bottom.axhline(0, color="black", linewidth=0.5)
        bottom.set_xlabel("step")
        bottom.set_ylabel("best - baseline")
        figures["loss_curves"] = _save(fig, layout, "loss_curves.png")
    return figures


def sensitivity_plots(layout: RunLayout, rows: Sequence[SensitivityRow], floor: float,
                      n_seeds: int) -> dict[str, str]:
    """Each knob's mean effect at each edge of its range with error bars of MIN_T standard errors, against the
    chaos band: FLOOR_MULTIPLE standard errors of a mean of chaos alone over the sweep's `n_seeds` seeds."""
    fig = _new_figure(8.0, 4.6)
    if fig is None:
        return {}
    ax = fig.add_subplot(1, 1, 1)
    knobs = list(dict.fromkeys(r.knob for r in rows))
    band = 100 * FLOOR_MULTIPLE * floor / math.sqrt(n_seeds)
    if math.isfinite(band):
        ax.axhspan(-band, band, color="tab:gray", alpha=0.35, lw=0,
                   label=f"chaos band ±{FLOOR_MULTIPLE:g}·floor/√{n_seeds}")
    for offset, arm, marker in ((-0.15, "low", "v"), (0.15, "high", "^")):
        arm_rows = [next(r for r in rows if r.knob == k and r.arm == arm) for k in knobs]
        ax.errorbar([i + offset for i in range(len(knobs))], [100 * r.mean_rel_effect for r in arm_rows],
                    yerr=[100 * MIN_T * r.se if math.isfinite(r.se) else 0.0 for r in arm_rows], fmt=marker,
                    capsize=3, label=f"{arm} edge, mean ± {MIN_T:g} SE")
    ax.axhline(0, color="black", linewidth=0.5)
    verdicts = {r.knob: r.verdict for r in rows}
    ax.set_xticks(range(len(knobs)))
    ax.set_xticklabels([f"{k} ({verdicts[k]})" for k in knobs], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("mean score change vs baseline (%)")
    ax.legend(fontsize=8)
    return {"sensitivity": _save(fig, layout, "sensitivity.png")}
