"""The Hebbian state of every SynapticLinear in a model, side by side, and the rule that moves it after each step.

    state = HebbianState(population=P, widths=[4 * C, C] * n_layer, device=dev)
    fast, slow = state.gains(i)                  # (P, 1, widths[i]) views: SynapticLinear i's output gains
    state.update(knobs, [(pre, post), ...], active)   # each layer's (pre (P,), post (P, 1, width)) activity

Each field (fast, slow, the two traces, CaMKII, PP1, BDNF) is one (P, 1, sum(widths)) tensor whose channels are
the layers' output channels in model order, so the rule (nanochat/MODEL.md, "Hebbian rule") runs once per step over
the whole model, a few dozen element-wise kernels, instead of once per layer (eight times as many in the baseline
model). The rule is element-wise per channel and per member, so every value is the one a per-layer update computes,
bit for bit. `pre_trace` is one value per layer and member, kept once per channel of that layer (a layer's channels
hold equal copies).
"""

from __future__ import annotations

import torch
from torch import nn

from .population import Knobs, bcast

FIELDS = ("fast", "slow", "pre_trace", "post_trace", "camkii", "pp1", "bdnf")


class HebbianState(nn.Module):
    """Per-member, per-channel Hebbian state of a model's SynapticLinear layers (`widths[i]` channels for layer i)."""

    def __init__(self, population: int, widths: list[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive channel counts, got {widths!r}")
        self.widths = list(widths)
        for name in FIELDS:
            self.register_buffer(name, torch.zeros(population, 1, sum(widths), device=device, dtype=dtype))

    def gains(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s (fast, slow): (P, 1, width) views that the update moves in place."""
        start = sum(self.widths[:layer])
        end = start + self.widths[layer]
        return self.fast[..., start:end], self.slow[..., start:end]

    @torch.no_grad()
    def update(self, k: Knobs, activity: list[tuple[torch.Tensor, torch.Tensor]], active: torch.Tensor) -> None:
        """One step of the rule from each layer's recorded activity; members with `active` False keep their state."""
        if len(activity) != len(self.widths):
            raise ValueError(f"activity has {len(activity)} layers, the state {len(self.widths)}")
        P = self.fast.shape[0]
        pre_act = torch.cat([pre.view(P, 1, 1).expand(P, 1, w) for (pre, _), w in zip(activity, self.widths)], dim=2)
        post_act = torch.cat([post for _, post in activity], dim=2)
        d = bcast(k.post_trace_decay, 3)
        pre_trace = d * self.pre_trace + (1 - d) * pre_act
        post_trace = d * self.post_trace + (1 - d) * post_act
        # Co-activity of the traces, deliberately not normalised: its scale (set by hebb_gain) is what gives
        # post_fast_lr and post_slow_lr their meaning across the seed ranges.
        delta = bcast(k.hebb_gain, 3) * pre_trace * post_trace
        level = post_trace.abs()
        camkii_target = torch.sigmoid(8.0 * (level - bcast(k.camkii_thr, 3)))
        camkii = self.camkii + bcast(k.camkii_up, 3) * (camkii_target - self.camkii)
        pp1 = self.pp1 + (torch.sigmoid(8.0 * (bcast(k.pp1_thr, 3) - level)) - self.pp1) / bcast(k.pp1_tau, 3)
        bdnf = self.bdnf + (camkii - self.bdnf) / bcast(k.bdnf_tau, 3)
        gate = camkii - pp1  # LTP where CaMKII dominates, LTD where PP1 does
        fast = bcast(k.post_fast_decay, 3) * self.fast + bcast(k.post_fast_lr, 3) * delta
        slow = self.slow + bcast(k.post_slow_lr, 3) * (1 + bcast(k.bdnf_scale, 3) * bdnf) * delta * gate
        new = {"fast": fast, "slow": slow, "pre_trace": pre_trace, "post_trace": post_trace, "camkii": camkii,
               "pp1": pp1, "bdnf": bdnf}
        keep = bcast(active, 3)  # bool (P,)
        for name in FIELDS:
            old = getattr(self, name)
            torch.where(keep, new[name], old, out=old)
