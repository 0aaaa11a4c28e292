"""The synaptic GPT with a leading population dimension: presynaptic attention, postsynaptic MLP, FLOPs estimate.

Every parameter and state tensor has shape (P, ...), one slice per population member, and every continuous
SynapticConfig knob is a (P,) tensor broadcast into the computation (`Knobs`). P = 1 is the single-model case; the
code path is identical. Nothing here reduces across members (see `population.py` for how per-member reductions are
kept batch invariant), and all randomness comes from one generator per distinct seed, drawn identically whatever P.

Shapes: P members, B batch rows, T positions, C = n_embd, H heads of size D, Q = presyn_chunk queries per chunk.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .abs_sums import abs_row_sums
from .config import ConfigError, ModelConfig, SynapticConfig
from .edges import top_edges
from .fused import compiled
from .hebbian import HebbianState
from .native import library
from .population import Knobs, PopulationLinear, bcast, member_mean, member_sum
from .precision import full_precision, matmul_input
from .release_kernel import native_release, usable

_MAX_BINOMIAL_N = 8  # stochastic release draws Binomial(round(clamp(rrp, 0, 8)), p)


class ReleaseNoise:
    """Uniform draws for stochastic release: one generator per distinct eval seed, gathered to members.

    A group's generator advances only when some member of that group has stochastic_train_frac > 0, and then by
    the same shapes in the same order whatever else is in the population, so a member sees the same numbers alone
    or in a batch of 16.
    """

    def __init__(self, seeds: list[int], fracs: list[float], device: torch.device):
        distinct = sorted(set(seeds))
        self.group_of_member = torch.tensor([distinct.index(s) for s in seeds], device=device)
        self.generators = []
        for s in distinct:
            g = torch.Generator(device=device)
            g.manual_seed(_derive_seed(s, stream=1))  # stream 1: release noise (stream 0 is weight init)
            self.generators.append(g)
        self.group_active = [any(f > 0 for s2, f in zip(seeds, fracs) if s2 == s) for s in distinct]
        self.enabled = any(self.group_active)
        self.device = device

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniforms of shape (P, *shape); groups with no stochastic member get zeros and do not advance."""
        per_group = [
            torch.rand(shape, generator=g, device=self.device) if active else torch.zeros(shape, device=self.device)
            for g, active in zip(self.generators, self.group_active)
        ]
        if len(per_group) == 1:  # one seed (a pilot's search populations): a broadcast view, not P copies
            return per_group[0].unsqueeze(0).expand(len(self.group_of_member), *shape)
        return torch.stack(per_group).index_select(0, self.group_of_member)

    def draw_edges(self, edges: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One chunk's uniforms for edges of shape (P, B, H, Qc, K): which query rows are stochastic, (P, B, H, Qc),
        and the Binomial's uniforms, (P, B, H, Qc, K, 8); None when no member draws."""
        if not self.enabled:
            return None
        rows = self.draw(tuple(edges[1:-1]))
        return rows, self.draw(tuple(edges[1:]) + (_MAX_BINOMIAL_N,))


def _derive_seed(seed: int, stream: int) -> int:
    """Independent, reproducible generator seeds for the different random streams of one eval seed."""
    return (int(seed) * 1_000_003 + stream * 7_919) % (2**63 - 1)


def release_probability(c: torch.Tensor, cl: torch.Tensor, sn: torch.Tensor, k: Knobs, nd: int) -> torch.Tensor:
    """p(c, cl, sn): three calcium sensors (syt1, syt7, Doc2), gated by the complexin clamp, scaled by SNAREs."""
    sensors = (
        0.8 * torch.sigmoid(bcast(k.syt1_slope, nd) * (c - 0.55))
        + 0.2 * torch.sigmoid(bcast(k.syt7_slope, nd) * (c - 0.25))
        + bcast(k.doc2_gain, nd) * torch.sigmoid(4.0 * (c - 0.12))
    )
    unclamp = torch.sigmoid(8.0 * (c - bcast(k.cpx_thresh, nd)) - 2.0 * (cl + bcast(k.complexin_bias, nd)))
    return (sensors * unclamp * sn).clamp(0.0, 0.999)


_INITIAL_POOLS = (("rrp", "init_rrp"), ("res", "init_reserve"), ("sn", "init_snare"), ("cl", "init_clamp"),
                  ("amp", "init_amp"), ("en", "init_energy"))  # (PresynapticState field, the knob it starts at)


class PresynapticState:
    """Per (member, row, head, key position) presynaptic state of one attention layer for one sequence.

    It starts fresh for every sequence and advances causally chunk by chunk; it is never differentiated. It is kept
    in float32 (float64 when the activations are float64) whatever the matmul precision.
    """

    def __init__(self, shape: tuple[int, int, int, int], k: Knobs, device: torch.device, dtype: torch.dtype):
        P, B, H, T = shape
        self.c = torch.zeros(P, B, H, T, device=device, dtype=dtype)
        # The six pools that start at a knob's value, written in one copy; each is a contiguous (P, B, H, T) slice.
        pools = torch.empty(len(_INITIAL_POOLS), P, B, H, T, device=device, dtype=dtype)
        pools.copy_(k.table(tuple(knob for _, knob in _INITIAL_POOLS)).t()[..., None, None, None].expand_as(pools))
        for (name, _), pool in zip(_INITIAL_POOLS, pools):
            setattr(self, name, pool)
        self.queue = torch.zeros(P, B, H, T, k.structure.endo_delay, device=device, dtype=dtype)  # endocytosis delay

    def logit_scale(self, n_keys: int, ema: torch.Tensor, k: Knobs, out: torch.Tensor | None = None) -> torch.Tensor:
        """p_j * rrp_j * amp_j / (ema + eps) for the first n_keys keys: (P, B, H, 1, n_keys), written into `out`
        when given (a view of that shape, such as a row of the fused attention's scale table)."""
        sl = slice(0, n_keys)
        p = release_probability(self.c[..., sl], self.cl[..., sl], self.sn[..., sl], k, 4)
        scale = (p * self.rrp[..., sl] * self.amp[..., sl] / bcast(ema + k.release_eps, 4)).unsqueeze(-2)
        return scale if out is None else out.copy_(scale)

    @torch.no_grad()
    def release(
        self,
        vals: torch.Tensor,  # (P, B, H, Qc, K) q.k/sqrt(D) of each query's top-k keys, 0 where not a valid edge
        idx: torch.Tensor,  # (P, B, H, Qc, K) their key positions, all < n_keys, distinct within a query row
        valid: torch.Tensor,  # (P, B, H, Qc, K) False for the -inf picks of queries with fewer than K keys
        n_keys: int,
        ema: torch.Tensor,  # (P,) running mean release magnitude of this layer, updated in place
        k: Knobs,
        uniforms: tuple[torch.Tensor, torch.Tensor] | None,  # ReleaseNoise.draw_edges: None for no stochastic rows
    ) -> None:
        """Each query releases onto its top-k keys; then the keys' pools, calcium and slow variables advance."""

        def at_edges(state: torch.Tensor) -> torch.Tensor:
            view = state[..., :n_keys].unsqueeze(-2).expand(*idx.shape[:-1], n_keys)
            return torch.gather(view, -1, idx)

        rrp_e = at_edges(self.rrp)
        c_e = bcast(k.tau_c, 5) * at_edges(self.c) + bcast(k.alpha_c, 5) * F.softplus(vals)  # residual + spike
        p_e = release_probability(c_e, at_edges(self.cl), at_edges(self.sn), k, 5)
        r_e = p_e * rrp_e
        if uniforms is not None:
            r_e = _stochastic_release(r_e, rrp_e, p_e, uniforms, bcast(k.stochastic_train_frac, 4),
                                      select_rows=vals.device.type == "cpu")
        r_e = r_e * valid

        released, drive, count = _sum_at_keys(torch.stack([r_e, vals, valid.to(r_e.dtype)]), idx, n_keys)
        touched = count > 0

        sl = slice(0, n_keys)
        rrp = self.rrp[..., sl]
        released = torch.minimum(released, rrp)  # a key cannot release more vesicles than its pool holds
        amp_before = self.amp[..., sl].clone()

        # Residual calcium is a leaky integrator of the drive: it settles at alpha_c softplus(drive), in the sensors'
        # range, within about 1 / (1 - tau_c) chunks. (Without the (1 - tau_c) factor it piled up to ~5-100, every
        # sensor saturated, and tau_c moved the loss no more than a 1e-6 nudge of any knob does.)
        tau = bcast(k.tau_c, 4)
        self.c[..., sl] = tau * self.c[..., sl] + (1.0 - tau) * bcast(k.alpha_c, 4) * F.softplus(drive) * touched
        rrp -= released
        res = self.res[..., sl]
        if k.structure.endo_delay > 0:
            queue = self.queue[..., sl, :]
            res += queue[..., 0]  # the oldest endocytosed vesicles join the reserve
            queue.copy_(torch.cat([queue[..., 1:], (bcast(k.rec_rate, 4) * released).unsqueeze(-1)], dim=-1))
        else:
            res += bcast(k.rec_rate, 4) * released
        # Priming grows with the reserve and with the room left in the pool (capacity init_rrp), paid with energy.
        room = (1.0 - rrp / bcast(k.init_rrp, 4)).clamp_min(0.0)
        flux = torch.minimum(bcast(k.prime_rate, 4) * res * room * self.en[..., sl], res)
        res -= flux
        rrp += flux
        sn = self.sn[..., sl]
        sn.copy_((sn - bcast(k.unprime_per_release, 4) * released + bcast(k.nsf_recover, 4) * (1 - sn)).clamp(0, 1))
        cl = self.cl[..., sl]
        cl.copy_(
            (cl + bcast(k.nsf_recover, 4) * (bcast(k.init_clamp, 4) - cl)
             - bcast(k.unprime_per_release, 4) * released * cl).clamp_min(0)
        )
        amp = self.amp[..., sl]
        amp.copy_((amp + bcast(k.amp_load, 4) * released - bcast(k.amp_leak, 4) * (amp - bcast(k.init_amp, 4))).clamp_min(0))
        en = self.en[..., sl]
        en.copy_((en + bcast(k.energy_fill, 4) * (1 - en) - bcast(k.energy_use, 4) * released).clamp(0, 1))

        # Running mean release magnitude over this member's edges only.
        amp_e = torch.gather(amp_before.unsqueeze(-2).expand(*idx.shape[:-1], n_keys), -1, idx)
        magnitude = member_sum((r_e * amp_e).abs()) / member_sum(valid.to(r_e.dtype)).clamp_min(1.0)
        ema.mul_(0.99).add_(0.01 * magnitude)


def _stochastic_release(r_e: torch.Tensor, rrp_e: torch.Tensor, p_e: torch.Tensor,
                        uniforms: tuple[torch.Tensor, torch.Tensor], frac: torch.Tensor, select_rows: bool):
    """The edges' release r_e (..., Qc, K) with a random fraction `frac` of query rows drawn instead: Binomial(n,
    p_e) with n = round(clamp(rrp_e, 0, 8)), as the count of n uniforms below p_e. The same bits either way:

    - select_rows (CPU): only the stochastic rows' counts are computed (an eighth to a third of the rows at the
      default fractions; counting every row's (K, 8) uniforms was a third of the release step). Selecting them
      reads the row mask on the host, which is free on CPU but would sync a GPU and break its CUDA graph;
    - otherwise every row is counted and the stochastic ones are kept.
    """
    rows, u = uniforms  # (P, B, H, Qc), (P, B, H, Qc, K, 8)
    stochastic_row = rows < frac
    if select_rows:
        pick = stochastic_row.nonzero(as_tuple=True)
        return r_e.index_put(pick, _binomial_draws(rrp_e[pick], p_e[pick], u[pick]))
    return torch.where(stochastic_row.unsqueeze(-1), _binomial_draws(rrp_e, p_e, u), r_e)


def _binomial_draws(rrp: torch.Tensor, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per edge, how many of its first round(clamp(rrp, 0, 8)) uniforms u (..., 8) are below p: counts <= 8, exact
    in any float type, so which rows are counted together cannot change a bit."""
    n = rrp.clamp(0, _MAX_BINOMIAL_N).round()
    hits = u < p.unsqueeze(-1)
    hits &= torch.arange(_MAX_BINOMIAL_N, device=u.device) < n.unsqueeze(-1)
    return hits.sum(-1, dtype=p.dtype)


def _sum_at_keys(values: torch.Tensor, idx: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Sum edge values per key: (..., Qc, K) values at key positions idx (..., Qc, K) -> (..., n_keys), the same
    bits on every run. `values` may carry extra leading dims (several quantities summed in one call).

    CPU's scatter_add walks each row's edges in order, so it is deterministic, and it is the cheaper of the two (the
    dense form's zero-fill costs ~7% of a CPU training step at P = 8). On CUDA scatter_add uses atomics, which add in
    a different order on every run; there the dense form below is used.
    """
    if values.device.type != "cpu":
        return _dense_sum_at_keys(values, idx, n_keys)
    flat = idx.flatten(-2).expand(*values.shape[:-2], -1)
    return values.new_zeros(*values.shape[:-2], n_keys).scatter_add_(-1, flat, values.flatten(-2))


def _dense_sum_at_keys(values: torch.Tensor, idx: torch.Tensor, n_keys: int) -> torch.Tensor:
    """`_sum_at_keys` without atomics: within one query row the top-k positions are distinct, so a plain scatter
    into a dense (..., Qc, n_keys) tensor writes each cell at most once, and the sum over the queries then runs in a
    fixed order."""
    dense = values.new_zeros(*values.shape[:-1], n_keys)
    return dense.scatter_(-1, idx.expand_as(values), values).sum(-2)


class _TokenLookup(torch.autograd.Function):
    """x[p, n] = wte[p, tokens[n]] for every member, with a backward that repeats bit for bit on every device.

    The backward adds the gradients of repeated tokens. CPU's index_add_ walks the tokens in order, so it is
    deterministic and the cheaper choice there. On CUDA index_add_ (and embedding_backward) adds with atomics, in a
    different order on every run, and F.embedding's backward also sorts with a host sync that a CUDA graph cannot
    capture (pytorch/pytorch#82886); there the backward is one matmul, one-hot(tokens)^T @ grad, whose summation
    order is fixed. The vocabulary is small (256 bytes), so the one-hot is cheap.
    """

    @staticmethod
    def forward(ctx, wte: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # (P, V, C), (N,) -> (P, N, C)
        ctx.save_for_backward(tokens)
        ctx.vocab = wte.shape[1]
        return wte.index_select(1, tokens)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (tokens,) = ctx.saved_tensors
        if grad.device.type == "cpu":
            return grad.new_zeros(grad.shape[0], ctx.vocab, grad.shape[2]).index_add_(1, tokens, grad), None
        return _one_hot_sum(tokens, grad, ctx.vocab), None


def _one_hot_sum(tokens: torch.Tensor, grad: torch.Tensor, vocab: int) -> torch.Tensor:
    """Per member, the sum of grad's rows by token: one-hot(tokens)^T @ grad, (N,), (P, N, C) -> (P, vocab, C)."""
    # Built by comparison, not F.one_hot, whose range check syncs with the host.
    one_hot = (tokens[None, :] == torch.arange(vocab, device=tokens.device)[:, None]).to(grad.dtype)
    return torch.matmul(one_hot, grad)  # (V, N) @ (P, N, C)


def _rms(x: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) over the last dim, as F.rms_norm computes it (the same ops, so the same bits)."""
    return x.pow(2).mean(-1, keepdim=True).add_(torch.finfo(x.dtype).eps).rsqrt_()


def _rms_norm_backward(g: torch.Tensor, x: torch.Tensor, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """d loss / d x of y = x r, r = _rms(x), written into `out`: the bits autograd gets through F.rms_norm's
    pow/mean/rsqrt/mul graph, in 4 passes over x instead of ~10.

    Autograd computes g r + (dm / n) (2 x) with dm = (-0.5 sum(g x)) r^3; (dm / n) (2 x) is formed here as
    x (2 dm / n), equal bit for bit (doubling is exact, so both are the one rounding of 2 x dm / n), and the two
    terms are added in either order (float addition of two terms commutes).
    """
    dm = (-0.5 * (g * x).sum(-1, keepdim=True)) * r.pow(3)
    torch.mul(g, r, out=out)
    return out.add_(x * (2 * (dm / x.shape[-1])))


class _NormRotary(torch.autograd.Function):
    """A projection's heads, RMS-normed, rotated and scaled: (P, B*T, H*D) -> contiguous (P, B, H, T, D).

    The rotation is written on whole rows, y = n cos2 + swap(n) sin2 with cos2 = [cos, cos], sin2 = [-sin, sin]
    and swap(n) = [n2, n1], which gives the bits of the half-row form [n1 cos - n2 sin, n1 sin + n2 cos] (negation
    is exact, two-term sums commute). The backward is written out the same way (autograd's ran ~20 passes through
    slices, zero-filled half gradients and copies, 2.5x the forward's time) and gives the same bits as autograd.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor, scale: float) -> torch.Tensor:
        P, N, HD = x.shape
        T, half = cos.shape
        x = x.to(torch.promote_types(x.dtype, torch.float32)).view(P, N // T, T, heads, 2 * half).transpose(2, 3)
        r = _rms(x)
        n = x * r
        cos2, sin2 = torch.cat([cos, cos], -1).to(x.dtype), torch.cat([-sin, sin], -1).to(x.dtype)
        y = torch.mul(n, cos2, out=torch.empty(P, N // T, heads, T, 2 * half, dtype=x.dtype, device=x.device))
        y.add_(_swap_halves(n).mul_(sin2))
        if scale != 1.0:
            y.mul_(scale)
        ctx.save_for_backward(x, r, cos2, sin2)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, r, cos2, sin2 = ctx.saved_tensors
        if ctx.scale != 1.0:
            g = g * ctx.scale
        gn = g * cos2
        gn.add_(_swap_halves(g * sin2))  # the transpose of the rotation
        P, B, H, T, D = x.shape
        out = torch.empty(P, B, T, H, D, dtype=x.dtype, device=x.device)
        _rms_norm_backward(gn, x, r, out.transpose(2, 3))  # written straight into the projection's layout
        return out.view(P, B * T, H * D), None, None, None, None


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([x[..., half:], x[..., :half]], dim=-1)


def norm_rotary(x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor, scale: float = 1.0,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """qk-norm, then rotary, then `scale`, of a (P, B*T, heads*D) projection: contiguous (P, B, heads, T, D), in
    float32 (or wider, as x) unless `dtype` is given, computed in float32 and then rounded to it."""
    y = _NormRotary.apply(x, heads, cos, sin, scale)
    return y if dtype is None else y.to(dtype)


def _logits_chain(d: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor, lam: torch.Tensor,
                  bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's softmax(d + lam log(sigmoid(d) scale + eps) + bias) and its slope d logits / d dots.

    d (..., Qc, keys) are the raw q.k/sqrt(D), scale (..., 1, keys) the keys' release scale; the slope is
    1 + lam scale s (1 - s) / (s scale + eps) with s = sigmoid(d). In-place where a value is not needed again.
    """
    s = torch.sigmoid(d)
    u = s * scale
    arg = u + eps
    logits = torch.log(arg).mul_(lam).add_(d).add_(bias)
    p = torch.softmax(logits, dim=-1)
    return p, u.div_(arg).mul_(s.neg_().add_(1.0)).mul_(lam).add_(1.0)


def _logits_chain_backward(p: torch.Tensor, dp: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """d loss / d dots of one chunk from d loss / d p: the softmax's backward, times the slope."""
    dlogits = p * dp
    dlogits.addcmul_(p, dlogits.sum(-1, keepdim=True), value=-1.0)
    return dlogits.mul_(slope)


class AttentionChains:
    """The attention's elementwise chains, as written (eager) or fused by torch.compile (`TrainConfig.compile`).

    Run op by op, each chain is many passes over small tensors: the logits chain and its backward ~10 passes each
    over a chunk's (..., Qc, keys) tensors; a chunk's state step (its release edges, the release, and the next
    chunk's logit scale) ~150 ops, two thirds of the kernels an eager CUDA step launches (bench/count_kernels.py).
    Inductor fuses each into a few loops (C++/OpenMP on CPU, Triton on CUDA). The state step is compiled on CUDA
    only: on 2 CPU cores the release step alone compiled for 69 s and ran no faster, and on the CPU the top-k and
    the release run, by default, through topk.c and release.c (`_release`), which give the eager ops' bits. Fused
    code may round differently from the eager ops (tests allow 1e-5 over 5 steps), and compiling costs 10-50 s per
    process on 2 CPU cores (shapes are dynamic: every chunk and population size shares a graph, except P = 1 and a
    last chunk that spans all keys), so it is an option, not the default.

    Given `kernels` (`fused_attention_kernels`, TrainConfig.fused_attention, CUDA) Triton kernels take over:
    `kernel` (nanochat/fused_attention.py) replaces the chunked logits, softmax and p @ v (and so the two chains)
    once the state loop has run, and the state loop's `state_step` and `logit_scale` are
    nanochat/release_triton.py's (four launches per chunk instead of ~150), and `norm_rotary` (q and k's norm,
    rotation and scale) is nanochat/rotary_triton.py's (one launch each way instead of ~20); without it `kernel` is
    None and the rest are the torch definitions. (The flag's other kernels, the norms and the MLP's relu^2, are the
    model's `RowOps`: `SynapticGPT`.)
    """

    def __init__(self, fuse: bool, device: torch.device, kernels: TritonKernels | None = None):
        self.forward, self.backward, self.state_step = _logits_chain, _logits_chain_backward, _state_step
        self.logit_scale, self.kernel, self.norm_rotary = PresynapticState.logit_scale, None, norm_rotary
        if kernels is not None:  # fused_attention_kernels(device)
            self.kernel, self.state_step = kernels.attention, kernels.state_step
            self.logit_scale, self.norm_rotary = kernels.logit_scale, kernels.norm_rotary
        if fuse:
            self.forward = compiled(_logits_chain)
            self.backward = compiled(_logits_chain_backward)
            if device.type == "cuda" and kernels is None:
                self.state_step = compiled(_state_step)


class TritonKernels(NamedTuple):
    """What `TrainConfig.fused_attention` runs as Triton kernels, each in place of the torch definition named."""

    attention: Callable  # fused_attention.presynaptic_attention: _ChunkedPresynapticAttention's logits, softmax, p @ v
    state_step: Callable  # release_triton.state_step: _state_step
    logit_scale: Callable  # release_triton.logit_scale: PresynapticState.logit_scale
    norm_rotary: Callable  # rotary_triton.norm_rotary: norm_rotary
    row_ops: RowOps  # norm_triton's norms and relu2_triton's relu^2: the model's norms and MLP activation


def fused_attention_kernels(device: torch.device) -> TritonKernels:
    """The kernels of `TrainConfig.fused_attention`, or a ConfigError saying why they cannot run here: they need
    Triton, and a CUDA device or Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError.about("fused_attention", f"needs a CUDA device, got {device.type!r} (its Triton kernels "
                                                   "run on a CPU only in Triton's slow interpreter, TRITON_INTERPRET=1)")
    try:
        from . import norm_triton, relu2_triton, release_triton, rotary_triton
        from .fused_attention import presynaptic_attention
    except ImportError as e:
        raise ConfigError.about("fused_attention", f"needs Triton, which does not import here ({e})") from None
    return TritonKernels(presynaptic_attention, release_triton.state_step, release_triton.logit_scale,
                         rotary_triton.norm_rotary,
                         RowOps(norm_triton.rms_norm, norm_triton.layer_norm, relu2_triton.relu_squared))


def _state_step(state: PresynapticState, d: torch.Tensor, own: torch.Tensor, n_keys: int, next_keys: int,
                ema: torch.Tensor, k: Knobs, uniforms: tuple[torch.Tensor, torch.Tensor] | None,
                out: torch.Tensor | None = None) -> torch.Tensor | None:
    """A chunk's state update after its logits: its queries' release edges (the top-k of the raw dots d, which it
    may overwrite), their release, then the logit scale of the next chunk's first `next_keys` keys (None for 0),
    written into `out` when given. One function, so that a compiled step fuses the three."""
    vals, idx, valid = top_edges(d, own, k.structure.attn_topk)
    _release(state, vals, idx, valid, n_keys, ema, k, uniforms)
    return state.logit_scale(next_keys, ema, k, out) if next_keys else None


def _release(state: PresynapticState, vals: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, n_keys: int,
             ema: torch.Tensor, k: Knobs, uniforms: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """`state.release(...)`; on the CPU in float32 through release.c where it builds (release_kernel.py): the same
    bits in three passes instead of ~90 ops."""
    lib = library("release") if usable(state, vals) else None
    if lib is None:
        return state.release(vals, idx, valid, n_keys, ema, k, uniforms)
    native_release(lib, state, vals, idx, valid, n_keys, ema, k, uniforms)


class _ChunkedPresynapticAttention(torch.autograd.Function):
    """softmax(dots + lam log(sigmoid(dots) scale + eps) + bias) @ v, chunk by chunk, with a hand-written backward.

    The forward walks the chunks once: queries [s, e) read keys [0, e) through views of one key/value tensor (no
    per-chunk prefix copies), the logit scale comes from the state the earlier chunks left, and then the chunk
    releases. Only the keys' state depends on earlier chunks and it carries no gradient, so the backward needs, per
    chunk, just the softmax output and d logits / d dots = 1 + lam scale s (1 - s) / (s scale + eps) with
    s = sigmoid(dots): two saved tensors per chunk instead of autograd's graph of ~10 ops (and its zero-filled
    full-size gradients of every prefix view). The gradient is with respect to q, k and v only.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, key: torch.Tensor, v: torch.Tensor, run: "_AttentionRun") -> torch.Tensor:
        T, Q = q.shape[-2], run.chunk
        outs, probs, slopes = [], [], []
        scale = run.state.logit_scale(min(Q, T), run.ema, run.knobs)  # the first chunk reads the fresh state
        for start in range(0, T, Q):
            stop = min(start + Q, T)  # queries [start, stop) see keys [0, stop)
            dots = q[..., start:stop, :] @ key[..., :stop, :].transpose(-1, -2)  # bf16 under autocast
            d = dots.to(run.state_dtype)
            p, slope = run.chains.forward(d, scale, run.eps, run.lam, run.bias[..., start:stop, :stop])
            outs.append(p @ v[..., :stop, :])
            probs.append(p)
            slopes.append(slope)
            scale = run.advance(d, start, stop, T)
        ctx.chunk, ctx.matmul_dtype, ctx.chains = Q, dots.dtype, run.chains
        ctx.probs, ctx.slopes = probs, slopes
        ctx.save_for_backward(q, key, v)
        return torch.cat(outs, dim=-2)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, key, v = ctx.saved_tensors
        T, Q, mm = q.shape[-2], ctx.chunk, ctx.matmul_dtype  # the backward's matmuls run in the forward's dtype
        qm, km, vm, gm = q.to(mm), key.to(mm), v.to(mm), grad_y.to(mm)
        dq, dk, dv = torch.empty_like(qm), torch.zeros_like(km), torch.zeros_like(vm)
        for i, start in enumerate(range(0, T, Q)):
            stop = min(start + Q, T)
            p, slope = ctx.probs[i], ctx.slopes[i]
            g = gm[..., start:stop, :]
            dp = (g @ vm[..., :stop, :].transpose(-1, -2)).to(p.dtype)
            ddots = ctx.chains.backward(p, dp, slope).to(mm)
            dq[..., start:stop, :] = ddots @ km[..., :stop, :]
            dk[..., :stop, :] += ddots.transpose(-1, -2) @ qm[..., start:stop, :]
            dv[..., :stop, :] += p.to(mm).transpose(-1, -2) @ g
        ctx.probs = ctx.slopes = ctx.chains = None
        return dq.to(q.dtype), dk.to(key.dtype), dv.to(v.dtype), None


class _AttentionRun:
    """What one layer's chunked attention reads besides q, k, v: the state, knobs, noise and fixed masks."""

    def __init__(self, state: PresynapticState, ema: torch.Tensor, knobs: Knobs, noise: ReleaseNoise | None,
                 training: bool, T: int, device: torch.device, dtype: torch.dtype, chains: AttentionChains):
        Q = knobs.structure.presyn_chunk
        self.state, self.ema, self.knobs, self.noise, self.training = state, ema, knobs, noise, training
        self.chains = chains
        self.chunk, self.state_dtype = Q, dtype
        self.positions = torch.arange(T, device=device)
        self.allowed = self.positions[None, :] <= self.positions[:, None]  # (T queries, T keys), causal
        self.lam = bcast(knobs.lambda_loge, 5).to(dtype)
        self.eps = bcast(knobs.release_eps, 5).to(dtype)

    @functools.cached_property
    def bias(self) -> torch.Tensor:
        """The barrier and causal mask, (P, 1, 1, T, T): built when the chunked attention first reads it (the fused
        kernel computes it in place)."""
        # Barrier distance in chunks (not fractions of T) so that barrier_strength <= 0.5 moves logits.
        distance = (self.positions[:, None] - self.positions[None, :]).abs().to(self.state_dtype) / self.chunk
        strength = bcast(self.knobs.barrier_strength, 5).to(self.state_dtype)
        return (-strength * distance).masked_fill(~self.allowed, float("-inf"))

    def advance(self, d: torch.Tensor, start: int, stop: int, T: int, table: torch.Tensor | None = None
                ) -> torch.Tensor | None:
        """The state step after the chunk of queries [start, stop), from its raw dots d (which it may overwrite):
        the next chunk's logit scale (written into its row of `table`, a scale table, when given), or None after
        the last chunk (whose release, when training, still moves ema)."""
        if not (self.training or stop < T):  # the last chunk's release would only matter to ema, when training
            return None
        edges = (*d.shape[:-1], min(self.knobs.structure.attn_topk, stop))
        uniforms = self.noise.draw_edges(edges) if self.noise is not None else None
        next_keys = min(stop + self.chunk, T) if stop < T else 0
        out = table[..., stop // self.chunk, None, :next_keys] if table is not None and next_keys else None
        return self.chains.state_step(self.state, d, self.allowed[start:stop, start:stop], stop, next_keys,
                                      self.ema, self.knobs, uniforms, out)

    @torch.no_grad()
    def scale_table(self, q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Every chunk's logit scale, (P, B, H, n_chunks, T) float32: the chunked forward's state loop without its
        logits, for the fused kernel (`AttentionChains.kernel`). Each step writes the next chunk's row in place.
        A chunk's row holds its keys up to its last query; the rest is never written, nor read by the kernel,
        which reads only causal keys. The dots stay in q's dtype: the Triton top-k widens them as it reads them."""
        T, Q = q.shape[-2], self.chunk
        table = q.new_empty(*q.shape[:-2], -(-T // Q), T, dtype=torch.float32)
        self.chains.logit_scale(self.state, min(Q, T), self.ema, self.knobs, table[..., 0, None, :min(Q, T)])
        for start in range(0, T, Q):
            stop = min(start + Q, T)
            if self.training or stop < T:
                self.advance(q[..., start:stop, :] @ key[..., :stop, :].transpose(-1, -2), start, stop, T, table)
        return table


class PresynapticAttention(nn.Module):
    """Causal self-attention whose logits carry a log(release) term and a distance barrier
    (MODEL.md: presynaptic attention)."""

    def __init__(self, mcfg: ModelConfig, population: int, chains: AttentionChains | None = None):
        super().__init__()
        C, D = mcfg.n_embd, mcfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = mcfg.n_head, mcfg.n_kv_head, D
        self.chains = chains if chains is not None else AttentionChains(False, torch.device("cpu"))  # as written
        self.c_q = PopulationLinear(population, C, mcfg.n_head * D)
        self.c_k = PopulationLinear(population, C, mcfg.n_kv_head * D)
        self.c_v = PopulationLinear(population, C, mcfg.n_kv_head * D)
        self.c_proj = PopulationLinear(population, C, C, zero_init=True)
        # Running mean release magnitude (per member), the normaliser of the log(release) term. Like a norm layer's
        # running statistic it persists across training steps; it is only updated while training.
        self.register_buffer("ema", torch.ones(population))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: Knobs,
                noise: ReleaseNoise | None) -> torch.Tensor:
        P, B, T, C = x.shape
        H, D = self.n_head, self.head_dim
        flat = matmul_input(x.reshape(P, B * T, C))  # under autocast one cast for the three projections
        q = self.c_q(flat)
        # The fused kernel multiplies q.k and p.v in the projections' dtype (autocast's, under autocast), so there q
        # and k leave the norm in it: the rotary kernel writes them so, and no cast runs either way (under bf16 a
        # cast each way of q and of k per layer). The chunked attention keeps them float32.
        qk_dtype = q.dtype if self.chains.kernel is not None else None
        q = self.chains.norm_rotary(q, H, cos, sin, 1.0 / math.sqrt(D), qk_dtype)  # qk-norm, rotary, 1/sqrt(D)
        key = self.chains.norm_rotary(self.c_k(flat), self.n_kv_head, cos, sin, 1.0, qk_dtype)
        v = self.c_v(flat).view(P, B, T, self.n_kv_head, D).transpose(2, 3)
        if self.n_kv_head != H:
            key = key.repeat_interleave(H // self.n_kv_head, dim=2)
            v = v.repeat_interleave(H // self.n_kv_head, dim=2)

        state_dtype = torch.promote_types(x.dtype, torch.float32)  # float32 under bf16 autocast, float64 in tests
        state = PresynapticState((P, B, H, T), k, x.device, state_dtype)
        ema = self.ema.clone()  # advanced chunk by chunk; written back only when training
        run = _AttentionRun(state, ema, k, noise if self.training else None, self.training, T, x.device, state_dtype,
                            self.chains)
        if self.chains.kernel is None:
            y = _ChunkedPresynapticAttention.apply(q.contiguous(), key.contiguous(), v.contiguous(), run)
        else:  # the same function, the state loop first and then one fused kernel over all queries
            # q, key and v share the projections' dtype, so the state loop's q.k per chunk casts nothing either
            # (under bf16 autocast it would cast each chunk's key prefix, ~4.5 key tensors a layer).
            y = self.chains.kernel(q, key, v, run.scale_table(q, key), k.lambda_loge, k.release_eps,
                                   k.barrier_strength, run.chunk)
        if self.training:
            self.ema.copy_(ema)
        return self.c_proj(y.transpose(2, 3).reshape(P, B * T, C)).view(P, B, T, C)


class SynapticLinear(nn.Module):
    """y = x W + b, then y <- y * (1 + fast + slow) + (y U) V, with Hebbian fast/slow gains
    (MODEL.md: postsynaptic MLP).

    `fast` and `slow` are (P, 1, d_out) per-member state over output channels, views into the model's
    `HebbianState` (`bind`), moved by its update after each training step (never by the optimizer); a training
    forward records the activity the update reads (`take_activity`). U (out x R) and V (R x out) are trainable,
    V starts at zero.
    """

    def __init__(self, population: int, d_in: int, d_out: int, rank: int, zero_init: bool = False):
        super().__init__()
        self.linear = PopulationLinear(population, d_in, d_out, bias=True, zero_init=zero_init)
        self.U = nn.Parameter(torch.empty(population, d_out, rank))
        self.V = nn.Parameter(torch.zeros(population, rank, d_out))
        self.d_out = d_out
        self.fast: torch.Tensor | None = None
        self.slow: torch.Tensor | None = None
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def bind(self, gains: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Use `gains` = (fast, slow), this layer's views of a HebbianState (`HebbianState.gains`)."""
        self.fast, self.slow = gains

    def take_activity(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (pre (P,), post (P, 1, d_out)) activity of the last training forward, once; None if none since."""
        stats, self._stats = self._stats, None
        return stats

    def init_member(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        d_out, rank = self.U.shape[1:]
        u = torch.randn(d_out, rank, generator=generator) / math.sqrt(d_out)
        return {"U": u, "V": torch.zeros(rank, d_out)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (P, N, in) -> (P, N, out)
        # y (1 + fast + slow) + (y U) V  =  x W_eff + b_eff  with  M = diag(1 + fast + slow) + U V,  W_eff = W M,
        # b_eff = b M. Folding M into the (in x out) weight costs O(in * out * R) per member instead of four extra
        # passes over the (N x out) activations forward and more backward (they dominated the CPU profile).
        if self.fast is None:
            raise RuntimeError("SynapticLinear has no Hebbian gains yet: bind() it to a HebbianState's gains")
        gain = 1.0 + self.fast + self.slow  # (P, 1, out), state, not trained
        w, b = self.linear.weight, self.linear.bias
        with full_precision(w.device):  # products of the float32 parameters, without autocast's casts each way
            w_eff = w * gain + torch.bmm(torch.bmm(w, self.U), self.V)
            b_eff = b * gain + torch.bmm(torch.bmm(b, self.U), self.V)
        if self.training:  # activity statistics for the Hebbian rule (no gradient)
            with torch.no_grad():
                # mean over tokens of y = x W + b is (mean over tokens of x) W + b: no (N x out) pass needed.
                with full_precision(w.device):  # the token mean summed and kept in w's dtype, also for a bf16 x
                    post = torch.baddbmm(b, x.mean(dim=1, keepdim=True, dtype=w.dtype), w)
                pre = abs_row_sums(x).sum(-1) / math.prod(x.shape[1:])  # mean |x|
                self._stats = (pre, post)
        return torch.baddbmm(b_eff, x, w_eff)


class _ReluSquared(torch.autograd.Function):
    """relu(h)^2 saving only relu(h): two passes over the (P, N, 4C) hidden activations instead of five."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        r = torch.relu(h)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return torch.mul(grad, r).mul_(2.0)  # = grad * 2r bit for bit, one fresh (P, N, 4C) tensor instead of two


def relu_squared(h: torch.Tensor) -> torch.Tensor:
    return _ReluSquared.apply(h)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],))


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],))


class RowOps(NamedTuple):
    """The model's norms and MLP activation: the torch definitions (`TORCH_ROW_OPS`), or with
    `TrainConfig.fused_attention` Triton kernels (the same bits for relu^2; the norms to float rounding)."""

    rms_norm: Callable[[torch.Tensor], torch.Tensor]  # over the last dimension, no weight
    layer_norm: Callable[[torch.Tensor], torch.Tensor]  # over the last dimension, no weight or bias
    relu_squared: Callable[[torch.Tensor], torch.Tensor]


TORCH_ROW_OPS = RowOps(rms_norm, layer_norm, relu_squared)


class SynapticMLP(nn.Module):
    """LayerNorm -> SynapticLinear(C, 4C) -> ReLU^2 -> SynapticLinear(4C, C), the norm and relu^2 from `ops`."""

    def __init__(self, mcfg: ModelConfig, rank: int, population: int, ops: RowOps = TORCH_ROW_OPS):
        super().__init__()
        C = mcfg.n_embd
        self.fc = SynapticLinear(population, C, 4 * C, rank)
        self.proj = SynapticLinear(population, 4 * C, C, rank, zero_init=True)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        P, B, T, C = x.shape
        h = self.fc(self.ops.layer_norm(x).reshape(P, B * T, C))
        return self.proj(self.ops.relu_squared(h)).view(P, B, T, C)


class Block(nn.Module):
    def __init__(self, mcfg: ModelConfig, rank: int, population: int, chains: AttentionChains,
                 ops: RowOps = TORCH_ROW_OPS):
        super().__init__()
        self.attn = PresynapticAttention(mcfg, population, chains)
        self.mlp = SynapticMLP(mcfg, rank, population, ops)
        self.ops = ops

    def forward(self, x, cos, sin, k: Knobs, noise: ReleaseNoise | None):
        x = x + self.attn(self.ops.rms_norm(x), cos, sin, k, noise)
        return x + self.mlp(x)


class SynapticGPT(nn.Module):
    """A population of P synaptic GPTs: embedding, n_layer blocks, final RMSNorm, untied lm_head.

    `configs[i]` and `seeds[i]` describe member i. Weights are initialised per distinct seed (same seed, same
    weights, whatever P), and stochastic release draws come from per-seed generators (`ReleaseNoise`).
    """

    def __init__(self, mcfg: ModelConfig, configs: list[SynapticConfig], seeds: list[int],
                 device: torch.device | str = "cpu", compile: bool = False, fused_attention: bool = False):
        super().__init__()
        if len(configs) != len(seeds):
            raise ValueError("configs and seeds must have one entry per member")
        device = torch.device(device)
        P = len(configs)
        self.mcfg, self.population, self.seeds = mcfg, P, list(seeds)
        self.knobs = Knobs(configs, device)
        rank = self.knobs.structure.post_rank
        self.wte = nn.Parameter(torch.empty(P, mcfg.vocab_size, mcfg.n_embd))
        kernels = fused_attention_kernels(device) if fused_attention else None
        chains = AttentionChains(compile, device, kernels)  # shared by the layers (compiled once)
        self.ops = TORCH_ROW_OPS if kernels is None else kernels.row_ops
        self.blocks = nn.ModuleList([Block(mcfg, rank, P, chains, self.ops) for _ in range(mcfg.n_layer)])
        self.lm_head = nn.Parameter(torch.empty(P, mcfg.n_embd, mcfg.vocab_size))
        D = mcfg.head_dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        angles = torch.outer(torch.arange(mcfg.sequence_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self._init_weights()
        self.to(device)
        linears = self._synaptic_linears()
        self.hebbian = HebbianState(P, [m.d_out for m in linears], device)  # every layer's gains, side by side
        for i, module in enumerate(linears):
            module.bind(self.hebbian.gains(i))
        self.noise = ReleaseNoise(self.seeds, self.knobs.host["stochastic_train_frac"], device)

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Draw each distinct seed's weights from its own generator, in a fixed order, then copy to its members."""
        distinct = sorted(set(self.seeds))
        member_group = torch.tensor([distinct.index(s) for s in self.seeds])
        per_group: dict[str, list[torch.Tensor]] = {}
        for seed in distinct:
            g = torch.Generator().manual_seed(_derive_seed(seed, stream=0))
            values = {
                "wte": torch.randn(self.mcfg.vocab_size, self.mcfg.n_embd, generator=g),
                "lm_head": torch.randn(self.mcfg.n_embd, self.mcfg.vocab_size, generator=g) * 1e-3,
            }
            for mod_name, module in self.named_modules():
                if hasattr(module, "init_member"):
                    for pname, value in module.init_member(g).items():
                        values[f"{mod_name}.{pname}"] = value
            for name, value in values.items():
                per_group.setdefault(name, []).append(value)
        params = dict(self.named_parameters())
        missing = set(params) - set(per_group)
        if missing:  # every parameter must come from a seeded generator, or batch invariance is lost
            raise RuntimeError(f"parameters without a seeded init: {sorted(missing)}")
        for name, values in per_group.items():
            params[name].copy_(torch.stack(values).index_select(0, member_group))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-member mean cross-entropy, shape (P,). idx/targets: (B, T) token ids shared by all members."""
        P, (B, T) = self.population, idx.shape
        V = self.mcfg.vocab_size
        x = _TokenLookup.apply(self.wte, idx.reshape(-1)).view(P, B, T, -1)
        x = self.ops.rms_norm(x)
        cos, sin = self.cos[:T], self.sin[:T]
        noise = self.noise if self.training else None
        for block in self.blocks:
            x = block(x, cos, sin, self.knobs, noise)
        x = self.ops.rms_norm(x)
        logits = torch.bmm(x.reshape(P, B * T, -1), self.lm_head)
        ce = F.cross_entropy(logits.reshape(P * B * T, V), targets.reshape(-1).repeat(P), reduction="none")
        return member_mean(ce.view(P, B * T))

    def _synaptic_linears(self) -> list[SynapticLinear]:
        return [m for m in self.modules() if isinstance(m, SynapticLinear)]

    @torch.no_grad()
    def hebbian_update(self, active: torch.Tensor) -> None:
        """The Hebbian rule after a training step, once for all layers (HebbianState); failed members stay frozen."""
        activity = [m.take_activity() for m in self._synaptic_linears()]
        if any(a is None for a in activity):  # no training forward since the last update
            return
        self.hebbian.update(self.knobs, activity, active)

    def estimate_flops(self) -> int:
        return estimate_flops(self.mcfg, self.knobs.structure.post_rank)


def estimate_flops(mcfg: ModelConfig, post_rank: int) -> int:
    """Training FLOPs per token per member: 6 * (matmul weights used per token) + 12 * n_layer * n_embd * T.

    6 = 2 (multiply-add) * 3 (forward, backward w.r.t. inputs, backward w.r.t. weights). Weights counted: q, k, v,
    output projection, both MLP matrices, both low-rank postsynaptic pairs (U, V) and the lm_head; the embedding is
    a lookup, not a matmul. The attention term counts q.k and att.v for every key position (the usual convention,
    which ignores causal masking). Elementwise work (presynaptic dynamics, norms, softmax) is not counted.
    """
    C, L, T, R = mcfg.n_embd, mcfg.n_layer, mcfg.sequence_len, post_rank
    kv = mcfg.n_kv_head * mcfg.head_dim
    attn = C * C + 2 * C * kv + C * C
    mlp = C * 4 * C + 4 * C * C + 2 * (4 * C * R) + 2 * (C * R)
    matmul_weights = L * (attn + mlp) + C * mcfg.vocab_size
    return 6 * matmul_weights + 12 * L * C * T
