"""The CPU release step through release.c: PresynapticState.release's numbers, bit for bit, in three C passes.

    native_release(library("release"), state, vals, idx, valid, n_keys, ema, knobs, uniforms)

`PresynapticState.release` (synaptic.py) defines the step in ~90 torch ops per chunk; on 2 CPU cores most of their
time is per-op overhead on 65k-element tensors, and the step was a sixth of a forward pass at P = 8. Here the
arithmetic runs in release.c (see its header for why the bits are the same), and torch keeps the sigmoids, the
softplus and the per-member sums of the running mean, called on tensors of the same shapes as the torch step's.
Only float32 state on the CPU comes here; the caller (synaptic.py) uses the torch ops otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .population import member_sum

# release.c's knob table columns, in its enum's order.
KNOB_COLUMNS = ("tau_c", "alpha_c", "syt1_slope", "syt7_slope", "doc2_gain", "cpx_thresh", "complexin_bias",
                "stochastic_train_frac", "rec_rate", "init_rrp", "prime_rate", "unprime_per_release", "nsf_recover",
                "init_clamp", "amp_load", "amp_leak", "init_amp", "energy_fill", "energy_use")


def native_release(lib, state, vals: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, n_keys: int,
                   ema: torch.Tensor, k, uniforms: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """PresynapticState.release for float32 CPU tensors (same arguments), advancing `state` and `ema` in place."""
    P, B, H, Qc, K = vals.shape
    rows, T = P * B * H, state.c.shape[-1]
    table = knob_table(k)
    vals, idx, valid = vals.contiguous(), idx.contiguous(), valid.contiguous()
    _check(lib.sensor_args(state.c.data_ptr(), state.cl.data_ptr(), T, idx.data_ptr(),
                           (sp_vals := F.softplus(vals)).data_ptr(), rows, Qc * K, B * H, table.data_ptr(),
                           (sig := torch.empty(4, *vals.shape)).data_ptr()))
    for arg in sig:  # in place, each on a tensor of the torch step's shape
        torch.sigmoid(arg, out=arg)
    row_u, u = member_draws(uniforms)
    sums, prod = torch.empty(3, P, B, H, n_keys), torch.empty_like(vals)
    _check(lib.edge_release(state.sn.data_ptr(), state.rrp.data_ptr(), state.amp.data_ptr(), T, idx.data_ptr(),
                            vals.data_ptr(), valid.view(torch.uint8).data_ptr(), sig.data_ptr(),
                            _address(row_u), _stride(row_u), _address(u), _stride(u), rows, Qc, K, n_keys, B * H,
                            table.data_ptr(), sums.data_ptr(), prod.data_ptr()))
    sp_drive = F.softplus(sums[1])
    queue = state.queue if k.structure.endo_delay > 0 else None
    _check(lib.key_update(state.c.data_ptr(), state.rrp.data_ptr(), state.res.data_ptr(), state.sn.data_ptr(),
                          state.cl.data_ptr(), state.amp.data_ptr(), state.en.data_ptr(), _address(queue), T,
                          k.structure.endo_delay, sums.data_ptr(), sp_drive.data_ptr(), rows, n_keys, B * H,
                          table.data_ptr()))
    magnitude = member_sum(prod) / member_sum(valid.to(vals.dtype)).clamp_min(1.0)
    ema.mul_(0.99).add_(0.01 * magnitude)


def knob_table(k) -> torch.Tensor:
    """The population's knobs (a Knobs) as one (P, len(KNOB_COLUMNS)) float32 table, in release.c's column order
    (release_triton.py's kernels read the same table); built once per Knobs."""
    return k.table(KNOB_COLUMNS)


def member_draws(uniforms: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor | None, ...]:
    """ReleaseNoise.draw_edges' (rows, per-edge uniforms) as float32 with each member's draws contiguous (a view
    broadcast over members stays one, stride 0 between members), or (None, None) when no row is stochastic."""
    if uniforms is None:
        return None, None
    return tuple(x if x.dtype == torch.float32 and x[0].is_contiguous() else x.float().contiguous() for x in uniforms)


def usable(state, vals: torch.Tensor) -> bool:
    """Whether native_release can take this call: float32 CPU tensors, state laid out as it was created."""
    tensors = (state.c, state.rrp, state.res, state.sn, state.cl, state.amp, state.en, state.queue)
    return vals.device.type == "cpu" and all(t.dtype == torch.float32 and t.is_contiguous() for t in (vals, *tensors))


def _address(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _stride(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.stride(0)


def _check(status: int) -> None:
    if status != 0:
        raise RuntimeError("release.c: bad arguments")
