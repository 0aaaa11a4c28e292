"""How numbers are shown in summaries, tables and the terminal (one place, so every report agrees)."""

from __future__ import annotations

import math


def format_number(value: float | None, digits: int = 4) -> str:
    """A score or loss with `digits` decimals; "n/a" when it was not measured."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_pct(value: float | None, signed: bool = False) -> str:
    """A fraction as a percentage, with enough digits for tiny budgets, where real effects can be 1e-4 %."""
    if value is None or not math.isfinite(value):
        return "n/a"
    pct, sign = 100 * value, ("+" if signed else "")
    return f"{pct:{sign}.2f}%" if pct == 0 or abs(pct) >= 0.01 else f"{pct:{sign}.2e}%"


def format_t(value: float | None) -> str:
    """A t statistic (mean / standard error) with its sign; "n/a" when it could not be computed."""
    return "n/a" if value is None or math.isnan(value) else f"{value:+.1f}"


def format_effect(mean: float | None, se: float | None) -> str:
    """A mean relative effect and its standard error, as percentages: "+1.23% ± 0.10%"."""
    return f"{format_pct(mean, signed=True)} ± {format_pct(se)}"
