"""The pilot's search space: ten synaptic knobs, their x-space bounds, and the maps between the spaces.

Three spaces, each with one job:

* **value space**: what `SynapticConfig` holds (e.g. `post_fast_lr = 1.5e-3`).
* **x-space**: the pilot document's coordinates. Linear knobs are their value; log10 knobs are `log10(value)`.
  The bounds of the pilot document's table live here, and `x` is what `progress.csv` and `best.json` record.
* **unit space**: each x coordinate mapped affinely onto [0, 1] by its bounds. CMA-ES searches here, so that one
  `sigma` means "this fraction of the range" for every knob (the raw ranges differ by a factor of 40: [0, 0.1] vs
  [1, 18]). pycma's own bound handling keeps samples inside [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nanochat.config import ConfigError, SynapticConfig


@dataclass(frozen=True)
class ParamSpec:
    """One searched knob: its `SynapticConfig` field, how x decodes to a value, and x's bounds."""

    name: str
    kind: str  # "linear" (value = x) or "log10" (value = 10**x)
    low: float  # x-space lower bound
    high: float  # x-space upper bound

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "log10"):
            raise ValueError(f"ParamSpec {self.name}: kind must be 'linear' or 'log10', got {self.kind!r}")
        if not self.low < self.high:
            raise ValueError(f"ParamSpec {self.name}: low must be < high, got [{self.low}, {self.high}]")

    def decode(self, x: float) -> float:
        """x-space coordinate -> config value."""
        return float(10.0 ** x) if self.kind == "log10" else float(x)

    def encode(self, value: float) -> float:
        """Config value -> x-space coordinate."""
        if self.kind == "log10":
            if not value > 0:
                raise ConfigError(f"{self.name} must be > 0 to be encoded on a log10 scale, got {value!r}")
            return math.log10(value)
        return float(value)

    def to_unit(self, x: float) -> float:
        return (x - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> float:
        return self.low + u * (self.high - self.low)

    def nudge(self, value: float, fraction: float) -> float:
        """`value` moved by `fraction` of the x-range, in x-space: upward, or downward where upward would leave the
        bounds (a default at the high edge). The sensitivity sweep's chaos floor trains these."""
        x, step = self.encode(value), fraction * (self.high - self.low)
        return self.decode(x + step if x + step <= self.high else x - step)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "low": self.low, "high": self.high}


# The pilot document's table, in its order (index i is coordinate i of every vector).
PARAM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("tau_c", "linear", 0.70, 0.99),
    ParamSpec("alpha_c", "linear", 0.10, 1.00),
    ParamSpec("init_rrp", "linear", 1.0, 18.0),
    ParamSpec("prime_rate", "linear", 0.01, 0.20),
    ParamSpec("rec_rate", "linear", 0.01, 0.20),
    ParamSpec("lambda_loge", "linear", 0.0, 4.0),
    ParamSpec("barrier_strength", "linear", 0.0, 0.50),
    ParamSpec("stochastic_train_frac", "linear", 0.0, 0.40),
    ParamSpec("post_fast_lr", "log10", -4.5, -2.0),
    ParamSpec("post_slow_lr", "log10", -5.5, -3.0),
)

PARAM_NAMES: tuple[str, ...] = tuple(spec.name for spec in PARAM_SPECS)


def encode_config(config: SynapticConfig, specs: Sequence[ParamSpec] = PARAM_SPECS) -> np.ndarray:
    """The x-space vector of a config's searched knobs (CMA-ES starts at the encoded default config)."""
    return np.array([spec.encode(getattr(config, spec.name)) for spec in specs], dtype=float)


def decode_vector(x: Sequence[float], specs: Sequence[ParamSpec] = PARAM_SPECS) -> dict[str, float]:
    """x-space vector -> {knob name: config value}."""
    x = np.asarray(x, dtype=float)
    if x.shape != (len(specs),):
        raise ValueError(f"expected an x vector of length {len(specs)}, got shape {x.shape}")
    return {spec.name: spec.decode(float(xi)) for spec, xi in zip(specs, x)}


def x_to_unit(x: Sequence[float], specs: Sequence[ParamSpec] = PARAM_SPECS) -> np.ndarray:
    return np.array([spec.to_unit(float(xi)) for spec, xi in zip(specs, x)], dtype=float)


def unit_to_x(u: Sequence[float], specs: Sequence[ParamSpec] = PARAM_SPECS) -> np.ndarray:
    """Unit-space point -> x-space point (clipped to the box, a guard against rounding)."""
    u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
    return np.array([spec.from_unit(float(ui)) for spec, ui in zip(specs, u)], dtype=float)


def knobs_to_config(knobs: Mapping[str, float], base: SynapticConfig | None = None) -> SynapticConfig:
    """Apply decoded knobs on top of a base config (the default one unless given)."""
    return SynapticConfig.from_overrides(dict(knobs), base=base or SynapticConfig())


def check_inside_bounds(config: SynapticConfig, specs: Sequence[ParamSpec] = PARAM_SPECS) -> None:
    """CMA-ES starts at the encoded base config, so every searched knob of it must lie inside the bounds."""
    for spec in specs:
        x = spec.encode(getattr(config, spec.name))
        if not spec.low <= x <= spec.high:
            raise ConfigError(
                f"base config {spec.name}={getattr(config, spec.name)!r} is outside the search bounds "
                f"[{spec.decode(spec.low):g}, {spec.decode(spec.high):g}]"
            )
