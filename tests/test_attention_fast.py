"""The chunked presynaptic attention (hand-written backward, per-key sums without atomics) computes what the
equations of nanochat/MODEL.md ("presynaptic attention") say, in float64: values, gradients, state and running mean.

The reference below is the equations written plainly with autograd, chunk by chunk: a key/value prefix per chunk,
the release edges scattered with scatter_add, every intermediate left to autograd. It is the implementation the
fast path replaced (commit c5c57d3), with its state in float64. Release noise is drawn per (query, edge slot), so the
reference lists each query's edges in the documented order (nanochat/edges.py: the k largest visible dots, the earlier
key first among equals, listed by key position), here by a stable sort.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import rotary
from nanochat.config import ModelConfig, SynapticConfig
from nanochat.population import Knobs, bcast, member_sum
from nanochat.synaptic import (AttentionChains, PresynapticAttention, ReleaseNoise, _dense_sum_at_keys,
                               _sum_at_keys, release_probability)


def reference_release(state: dict, dots, allowed, ema, k: Knobs, noise) -> None:
    """One chunk's release onto each query's top-k keys, then the keys' state update (MODEL.md equations)."""
    n_keys = dots.shape[-1]
    masked = dots.masked_fill(~allowed, float("-inf"))
    chosen = masked.sort(dim=-1, descending=True, stable=True).indices[..., :min(k.structure.attn_topk, n_keys)]
    idx = chosen.sort(dim=-1).values
    vals = masked.gather(-1, idx)
    valid = torch.isfinite(vals)
    vals = torch.where(valid, vals, torch.zeros_like(vals))
    at = lambda t: torch.gather(t[..., :n_keys].unsqueeze(-2).expand(*idx.shape[:-1], n_keys), -1, idx)  # noqa: E731
    b = lambda name, nd=4: bcast(getattr(k, name), nd)  # noqa: E731
    rrp_e = at(state["rrp"])
    c_e = b("tau_c", 5) * at(state["c"]) + b("alpha_c", 5) * F.softplus(vals)
    p_e = release_probability(c_e, at(state["cl"]), at(state["sn"]), k, 5)
    r_e = p_e * rrp_e
    if noise is not None and noise.enabled:
        rows = noise.draw(tuple(idx.shape[1:-1]))
        u = noise.draw(tuple(idx.shape[1:]) + (8,))
        n = rrp_e.clamp(0, 8).round()
        draws = ((u < p_e.unsqueeze(-1)) & (torch.arange(8) < n.unsqueeze(-1))).sum(-1).to(r_e.dtype)
        r_e = torch.where((rows < b("stochastic_train_frac")).unsqueeze(-1), draws, r_e)
    r_e = r_e * valid
    zeros = torch.zeros(*idx.shape[:-2], n_keys, dtype=r_e.dtype)
    released = zeros.scatter_add(-1, idx.flatten(-2), r_e.flatten(-2))
    drive = zeros.scatter_add(-1, idx.flatten(-2), vals.flatten(-2))
    touched = zeros.scatter_add(-1, idx.flatten(-2), valid.to(r_e.dtype).flatten(-2)) > 0
    s = {name: t[..., :n_keys] for name, t in state.items() if name != "queue"}
    queue = state["queue"][..., :n_keys, :]
    released = torch.minimum(released, s["rrp"])
    amp_before = s["amp"].clone()
    s["c"].copy_(b("tau_c") * s["c"] + (1 - b("tau_c")) * b("alpha_c") * F.softplus(drive) * touched)
    s["rrp"] -= released
    s["res"] += queue[..., 0]
    queue.copy_(torch.cat([queue[..., 1:], (b("rec_rate") * released).unsqueeze(-1)], dim=-1))
    room = (1.0 - s["rrp"] / b("init_rrp")).clamp_min(0.0)
    flux = torch.minimum(b("prime_rate") * s["res"] * room * s["en"], s["res"])
    s["res"] -= flux
    s["rrp"] += flux
    s["sn"].copy_((s["sn"] - b("unprime_per_release") * released + b("nsf_recover") * (1 - s["sn"])).clamp(0, 1))
    s["cl"].copy_((s["cl"] + b("nsf_recover") * (b("init_clamp") - s["cl"])
                   - b("unprime_per_release") * released * s["cl"]).clamp_min(0))
    s["amp"].copy_((s["amp"] + b("amp_load") * released - b("amp_leak") * (s["amp"] - b("init_amp"))).clamp_min(0))
    s["en"].copy_((s["en"] + b("energy_fill") * (1 - s["en"]) - b("energy_use") * released).clamp(0, 1))
    amp_e = torch.gather(amp_before.unsqueeze(-2).expand(*idx.shape[:-1], n_keys), -1, idx)
    ema.mul_(0.99).add_(0.01 * member_sum((r_e * amp_e).abs()) / member_sum(valid.to(r_e.dtype)).clamp_min(1.0))


def reference_attention(attn: PresynapticAttention, ema, x, cos, sin, k: Knobs, noise, training: bool):
    """Logits dots + lam log(sigmoid(dots) p rrp amp / (ema + eps) + eps) + barrier, softmax, @ v, per chunk."""
    P, B, T, C = x.shape
    H, D, Q = attn.n_head, attn.head_dim, k.structure.presyn_chunk
    flat = x.reshape(P, B * T, C)
    heads = lambda t: t.view(P, B, T, H, D).transpose(2, 3)  # noqa: E731
    q = rotary(F.rms_norm(heads(attn.c_q(flat)), (D,)), cos, sin) / math.sqrt(D)
    key = rotary(F.rms_norm(heads(attn.c_k(flat)), (D,)), cos, sin)
    v = heads(attn.c_v(flat))
    full = lambda name: bcast(getattr(k, name), 4).double().expand(P, B, H, T).clone()  # noqa: E731
    state = {"c": torch.zeros(P, B, H, T, dtype=torch.float64), "rrp": full("init_rrp"), "res": full("init_reserve"),
             "sn": full("init_snare"), "cl": full("init_clamp"), "amp": full("init_amp"), "en": full("init_energy"),
             "queue": torch.zeros(P, B, H, T, k.structure.endo_delay, dtype=torch.float64)}
    ema = ema.clone()
    lam, eps = bcast(k.lambda_loge, 5), bcast(k.release_eps, 5)
    pos = torch.arange(T)
    outs = []
    for start in range(0, T, Q):
        stop = min(start + Q, T)
        dots = q[..., start:stop, :] @ key[..., :stop, :].transpose(-1, -2)
        qpos, kpos = pos[start:stop, None], pos[None, :stop]
        allowed = kpos <= qpos
        bias = (-bcast(k.barrier_strength, 5) * ((qpos - kpos).abs().double() / Q)).masked_fill(~allowed, -math.inf)
        sl = slice(0, stop)
        p = release_probability(state["c"][..., sl], state["cl"][..., sl], state["sn"][..., sl], k, 4)
        scale = (p * state["rrp"][..., sl] * state["amp"][..., sl] / bcast(ema + k.release_eps, 4)).unsqueeze(-2)
        logits = dots + lam * torch.log(torch.sigmoid(dots) * scale + eps) + bias
        outs.append(torch.softmax(logits, dim=-1) @ v[..., :stop, :])
        if training or stop < T:
            reference_release(state, dots.detach(), allowed, ema, k, noise if training else None)
    y = torch.cat(outs, dim=3).transpose(2, 3).reshape(P, B * T, C)
    return attn.c_proj(y).view(P, B, T, C), ema


def make_layer(chunk: int, T: int = 64):
    torch.manual_seed(3)
    mcfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=T)
    base = SynapticConfig(presyn_chunk=chunk, attn_topk=6, lambda_loge=1.5, barrier_strength=0.3)
    configs = [base, base.replace(alpha_c=0.95, init_rrp=2.0, stochastic_train_frac=0.5),
               base.replace(tau_c=0.6, lambda_loge=3.0, stochastic_train_frac=0.0)]
    P, D = len(configs), 16
    attn = PresynapticAttention(mcfg, P).double()
    with torch.no_grad():
        for lin in (attn.c_q, attn.c_k, attn.c_v, attn.c_proj):
            lin.weight.copy_(torch.randn_like(lin.weight) * 0.4)
        attn.ema.copy_(torch.tensor([1.0, 0.5, 2.0]))
    angles = torch.outer(torch.arange(T, dtype=torch.float64), 1.0 / (10000 ** (torch.arange(0, D, 2) / D)))
    x = torch.randn(P, 2, T, 32, dtype=torch.float64, requires_grad=True)
    return attn, Knobs(configs, torch.device("cpu")), angles.cos(), angles.sin(), x, [5, 9, 5]


def check_against_reference(attn, knobs, cos, sin, x, seeds, training: bool) -> None:
    """The layer's output, its input and weight gradients and its running mean against the float64 reference."""
    attn.train(training)
    fracs = knobs.host["stochastic_train_frac"]
    params = [x] + [lin.weight for lin in (attn.c_q, attn.c_k, attn.c_v, attn.c_proj)]
    ema_before = attn.ema.clone()

    out = attn(x, cos, sin, knobs, ReleaseNoise(seeds, fracs, x.device))
    got = torch.autograd.grad((out * out.detach().sin()).sum(), params)
    ref, ref_ema = reference_attention(attn, ema_before, x, cos, sin, knobs, ReleaseNoise(seeds, fracs, x.device), training)
    want = torch.autograd.grad((ref * ref.detach().sin()).sum(), params)

    assert out.dtype == torch.float64 and out.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        assert w.abs().max() > 1e-3
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    if training:
        torch.testing.assert_close(attn.ema, ref_ema, rtol=1e-12, atol=0)
        assert not torch.equal(attn.ema, ema_before)
    else:
        assert torch.equal(attn.ema, ema_before), "ema only moves while training"


@pytest.mark.parametrize("chunk", [8, 16, 24, 64])
@pytest.mark.parametrize("training", [True, False])
def test_chunked_attention_matches_the_reference_in_float64(chunk, training):
    """Values, input and weight gradients, and the running mean, at chunk sizes that do and do not divide T; in
    training with stochastic release on two members (both sides draw the same uniforms in the same order)."""
    check_against_reference(*make_layer(chunk), training)


def test_compiled_chains_match_the_reference_in_float64():
    """The torch.compile'd logits chain and its backward (TrainConfig.compile), in training with stochastic release,
    at a chunk size that does not divide T."""
    attn, *rest = make_layer(24)
    attn.chains = AttentionChains(True, torch.device("cpu"))
    check_against_reference(attn, *rest, training=True)


def test_release_terms_change_the_output():
    """Guards the reference comparison against a vacuous pass: lambda_loge really moves the output."""
    attn, knobs, cos, sin, x, _ = make_layer(16)
    attn.eval()
    with_release = attn(x, cos, sin, knobs, None)
    knobs.lambda_loge = torch.zeros_like(knobs.lambda_loge)
    assert (attn(x, cos, sin, knobs, None) - with_release).abs().max() > 1e-3


@pytest.mark.parametrize("sum_at_keys", [_sum_at_keys, _dense_sum_at_keys], ids=["cpu", "dense"])
def test_per_key_sums_equal_scatter_add(sum_at_keys):
    """Both forms of the per-key edge sum (scatter_add on CPU, the dense atomics-free form used on CUDA)."""
    torch.manual_seed(0)
    values = torch.randn(2, 3, 4, 5, 7, 6, dtype=torch.float64)  # (quantities, P, B, H, Qc, K)
    idx = torch.rand(3, 4, 5, 7, 20).argsort(-1)[..., :6]  # distinct keys within a query row
    got = sum_at_keys(values, idx, 20)
    want = torch.zeros(2, 3, 4, 5, 20, dtype=torch.float64).scatter_add(
        -1, idx.flatten(-2).expand(2, -1, -1, -1, -1), values.flatten(-2))
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
