"""Optional figures for summary.md (matplotlib is not required: without it the summary simply has no images).

Uses matplotlib's object API (`Figure` + the Agg canvas), never pyplot, so no global backend or figure state changes
in the calling process. Images are rendered to memory and written atomically like every other artifact.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

from .artifacts import RunLayout, atomic_write_bytes
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


def sensitivity_plots(layout: RunLayout, rows: Sequence[SensitivityRow]) -> dict[str, str]:
    """Relative score change of each knob at each edge of its range."""
    fig = _new_figure(7.0, 4.0)
    if fig is None:
        return {}
    ax = fig.add_subplot(1, 1, 1)
    knobs = list(dict.fromkeys(r.knob for r in rows))
    for offset, edge in ((-0.2, "low"), (0.2, "high")):
        values = [next((100 * r.rel_delta for r in rows if r.knob == k and r.edge == edge), math.nan) for k in knobs]
        ax.bar([i + offset for i in range(len(knobs))], values, width=0.4, label=f"{edge} edge")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(range(len(knobs)))
    ax.set_xticklabels(knobs, rotation=45, ha="right")
    ax.set_ylabel("score change vs baseline (%)")
    ax.legend()
    return {"sensitivity": _save(fig, layout, "sensitivity.png")}
