"""Building blocks for tensors with a leading population dimension P (one slice per candidate).

Batch invariance (a member's numbers must not depend on P) constrains *how* we reduce: torch's CPU reductions
split a single long reduction across threads differently from many short ones, so `x.reshape(P, -1).sum(1)` over
65k elements gives different bits for P = 1 and P = 8. Every per-member reduction in this package therefore goes
through `member_sum` / `member_mean`, which reduce one trailing dimension at a time (each dimension is short, so
each stage is computed the same way whatever P is). Batched matmuls (`torch.bmm` / `@` with a leading P) compute
each slice with the same kernel, which we rely on and test.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
from torch import nn

from .config import STRUCTURAL_FIELDS, SynapticConfig, check_same_structure


def member_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum everything but the leading population dim, one trailing dim at a time: (P, ...) -> (P,)."""
    while x.dim() > 1:
        x = x.sum(-1)
    return x


def member_mean(x: torch.Tensor) -> torch.Tensor:
    count = math.prod(x.shape[1:])
    return member_sum(x) / count


def bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a (P,) per-member vector so it broadcasts against a tensor with `ndim` dims led by P."""
    return v.view(-1, *([1] * (ndim - 1)))


class Knobs:
    """The continuous SynapticConfig fields of a population as (P,) tensors, plus its shared structural fields.

    `knobs.tau_c` is a (P,) tensor; `knobs.structure.attn_topk` is an int. Continuous values stay on the host too
    (`knobs.host`) for decisions that must not sync the device (e.g. "does any member draw stochastic releases?").
    Knobs are fixed for the life of a model: nothing writes to them, so `table` builds each table of knobs once.
    """

    def __init__(self, configs: list[SynapticConfig], device: torch.device):
        if not configs:
            raise ValueError("a population needs at least one member")
        check_same_structure(configs)
        self.structure = configs[0]
        self.host: dict[str, list[float]] = {}
        for f in fields(SynapticConfig):
            if f.name in STRUCTURAL_FIELDS:
                continue
            values = [float(getattr(c, f.name)) for c in configs]
            self.host[f.name] = values
            setattr(self, f.name, torch.tensor(values, dtype=torch.float32, device=device))
        self._tables: dict[tuple[str, ...], torch.Tensor] = {}

    def table(self, columns: tuple[str, ...]) -> torch.Tensor:
        """The named knobs side by side, one contiguous (P, len(columns)) float32 tensor, built on the first call
        (a kernel reads a member's knobs as one row) and the same tensor after."""
        if columns not in self._tables:
            self._tables[columns] = torch.stack([getattr(self, name) for name in columns], dim=1).contiguous()
        return self._tables[columns]


class PopulationLinear(nn.Module):
    """y = x @ W (+ b) with per-member weights W: (P, in, out). Input (P, N, in) -> (P, N, out)."""

    def __init__(self, population: int, d_in: int, d_out: int, bias: bool = False, zero_init: bool = False):
        super().__init__()
        self.d_in, self.d_out, self.zero_init = d_in, d_out, zero_init
        self.weight = nn.Parameter(torch.empty(population, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(population, 1, d_out)) if bias else None

    def init_member(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Initial values for ONE member, drawn from `generator` (so init is independent of P)."""
        if self.zero_init:
            w = torch.zeros(self.d_in, self.d_out)
        else:  # uniform with the variance of nn.Linear's default fan-in scaling, like nanochat
            bound = math.sqrt(3.0) / math.sqrt(self.d_in)
            w = (torch.rand(self.d_in, self.d_out, generator=generator) * 2 - 1) * bound
        out = {"weight": w}
        if self.bias is not None:
            out["bias"] = torch.zeros(1, self.d_out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)
