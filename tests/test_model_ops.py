"""The model's fast paths compute exactly what nanochat/MODEL.md writes down (values and gradients), in float64."""

import platform

import pytest
import torch
import torch.nn.functional as F

from nanochat.config import ModelConfig, SynapticConfig
from nanochat.hebbian import FIELDS, HebbianState
from nanochat.hostmem import keep_freed_memory
from nanochat.population import Knobs
from helpers import rotary
from nanochat.synaptic import (PresynapticAttention, SynapticLinear, _binomial_draws, _one_hot_sum, _stochastic_release,
                               _TokenLookup, norm_rotary, relu_squared)


def test_synaptic_linear_folded_weight_matches_the_spec_formula():
    torch.manual_seed(0)
    P, N, d_in, d_out, R = 3, 10, 16, 24, 4
    layer = SynapticLinear(P, d_in, d_out, R).double().train()
    layer.bind(HebbianState(P, [d_out], dtype=torch.float64).gains(0))
    with torch.no_grad():
        for t in (layer.linear.weight, layer.linear.bias, layer.U, layer.V, layer.fast, layer.slow):
            t.copy_(torch.randn_like(t) * 0.3)
    x = torch.randn(P, N, d_in, dtype=torch.float64, requires_grad=True)
    params = [x, layer.linear.weight, layer.linear.bias, layer.U, layer.V]

    out = layer(x)
    got_grads = torch.autograd.grad((out * out.detach().cos()).sum(), params)
    pre, post = layer.take_activity()

    # MODEL.md (postsynaptic MLP): y = x W + b, then y <- y (1 + fast + slow) + (y U) V.
    y = torch.baddbmm(layer.linear.bias, x, layer.linear.weight)
    ref = y * (1 + layer.fast + layer.slow) + torch.bmm(torch.bmm(y, layer.U), layer.V)
    ref_grads = torch.autograd.grad((ref * ref.detach().cos()).sum(), params)

    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pre, x.detach().abs().mean(dim=(1, 2)))  # Hebbian pre activity: mean |x|
    torch.testing.assert_close(post, y.detach().mean(dim=1, keepdim=True))  # post activity: mean y over tokens


def test_hebbian_update_is_the_spec_rule_layer_by_layer_bit_for_bit_and_spares_failed_members():
    # MODEL.md's "Hebbian rule", written per layer and per member as a scalar trace times a channel vector; the
    # state runs all layers side by side in one update and must give the same bits.
    P, widths = 4, [24, 8, 16]
    configs = [SynapticConfig(hebb_gain=4.0 + i, post_trace_decay=0.5 + 0.1 * i, camkii_thr=0.05 * i,
                              pp1_tau=5.0 + i, bdnf_scale=0.5 * i) for i in range(P)]
    k = Knobs(configs, torch.device("cpu"))
    state = HebbianState(P, widths)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("fast", "slow", "post_trace", "camkii", "pp1", "bdnf"):
            getattr(state, name).copy_(torch.randn(getattr(state, name).shape, generator=g) * 0.3)
    pre_trace = [torch.rand(P, generator=g) for _ in widths]  # one value per layer and member
    for i, t in enumerate(pre_trace):
        state.pre_trace[..., sum(widths[:i]):sum(widths[:i + 1])] = t.view(P, 1, 1)
    activity = [(torch.rand(P, generator=g), torch.randn(P, 1, w, generator=g)) for w in widths]
    active = torch.tensor([True, False, True, True])
    before = {name: getattr(state, name).clone() for name in FIELDS}

    state.update(k, activity, active)

    b = lambda v: v.view(P, 1, 1)  # noqa: E731 - a (P,) knob against (P, 1, width)
    for i, ((pre, post), w) in enumerate(zip(activity, widths)):
        ch = slice(sum(widths[:i]), sum(widths[:i]) + w)
        old = {name: t[..., ch] for name, t in before.items()}
        d = k.post_trace_decay
        pre_tr = d * pre_trace[i] + (1 - d) * pre
        post_tr = b(d) * old["post_trace"] + (1 - b(d)) * post
        delta = b(k.hebb_gain * pre_tr) * post_tr
        level = post_tr.abs()
        camkii = old["camkii"] + b(k.camkii_up) * (torch.sigmoid(8.0 * (level - b(k.camkii_thr))) - old["camkii"])
        pp1 = old["pp1"] + (torch.sigmoid(8.0 * (b(k.pp1_thr) - level)) - old["pp1"]) / b(k.pp1_tau)
        bdnf = old["bdnf"] + (camkii - old["bdnf"]) / b(k.bdnf_tau)
        fast = b(k.post_fast_decay) * old["fast"] + b(k.post_fast_lr) * delta
        slow = old["slow"] + b(k.post_slow_lr) * (1 + b(k.bdnf_scale) * bdnf) * delta * (camkii - pp1)
        expected = {"pre_trace": b(pre_tr).expand(P, 1, w), "post_trace": post_tr, "camkii": camkii, "pp1": pp1,
                    "bdnf": bdnf, "fast": fast, "slow": slow}
        for name, value in expected.items():
            got = getattr(state, name)[..., ch]
            assert torch.equal(got[active], value[active]), (i, name)
            assert torch.equal(got[~active], old[name][~active]), (i, name)  # the failed member keeps its state
    fast, slow = state.gains(1)
    assert torch.equal(fast, state.fast[..., 24:32]) and fast.data_ptr() == state.fast[..., 24:].data_ptr()


def test_relu_squared_matches_autograd_and_gradcheck():
    h = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(relu_squared(h), F.relu(h).square())
    (g,) = torch.autograd.grad(relu_squared(h).sum(), h)
    (r,) = torch.autograd.grad(F.relu(h).square().sum(), h)
    torch.testing.assert_close(g, r)
    assert torch.autograd.gradcheck(relu_squared, (h,))


def test_token_lookup_matches_index_select_values_and_gradients():
    # The lookup against a plain gather, values and gradients, repeated tokens included.
    torch.manual_seed(0)
    wte = torch.randn(3, 11, 5, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([4, 0, 10, 4, 4, 7, 0])
    out = _TokenLookup.apply(wte, tokens)
    ref = torch.stack([wte[p, tokens] for p in range(3)])
    weights = torch.randn_like(ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    (g,) = torch.autograd.grad((out * weights).sum(), wte)
    (r,) = torch.autograd.grad((ref * weights).sum(), wte)
    torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w: _TokenLookup.apply(w, tokens), (wte,))
    # CUDA's backward (a one-hot matmul, no atomics) sums the same rows as CPU's index_add_.
    grad = torch.randn(3, len(tokens), 5, dtype=torch.float64)
    want = torch.zeros_like(wte).index_add_(1, tokens, grad)
    torch.testing.assert_close(_one_hot_sum(tokens, grad, 11), want, rtol=1e-12, atol=1e-12)


def _norm_rotary_reference(raw, heads, cos, sin, scale):
    """qk-norm, rotary, scale as written before norm_rotary: F.rms_norm, half-row rotary, autograd throughout."""
    P, N, HD = raw.shape
    T, D = cos.shape[0], HD // heads
    return (rotary(F.rms_norm(raw.view(P, N // T, T, heads, D).transpose(2, 3), (D,)), cos, sin) * scale).contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D,scale", [(32, 1 / 32**0.5), (24, 1.0)])
def test_norm_rotary_matches_autograd_of_the_plain_form(dtype, D, scale):
    """Values and gradients of the fused qk-norm + rotary: equal to the plain form's in float64, and bit for bit in
    float32 (its backward is written to reproduce autograd's rounding, so training results do not move)."""
    torch.manual_seed(3)
    P, B, T, H = 3, 2, 16, 4
    angles = torch.outer(torch.arange(T, dtype=dtype), 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=dtype) / D)))
    cos, sin = angles.cos(), angles.sin()
    raw = (torch.randn(P, B * T, H * D, dtype=dtype) * 3).requires_grad_()
    weights = torch.randn(P, B, H, T, D, dtype=dtype)
    got = norm_rotary(raw, H, cos, sin, scale)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), raw)
    want = _norm_rotary_reference(raw, H, cos, sin, scale)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), raw)
    assert got.is_contiguous() and got.shape == (P, B, H, T, D)
    if dtype == torch.float32:
        assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    else:
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(lambda r: norm_rotary(r, H, cos, sin, scale), (raw[:1, :T].detach().requires_grad_(),))


def test_stochastic_release_counts_only_the_selected_rows_with_the_same_bits():
    """The CPU form (count the stochastic rows only) and the GPU form (count every row, keep the stochastic ones)
    give the same release, and each count is a Binomial(n, p) draw: n uniforms below p."""
    torch.manual_seed(4)
    P, B, H, Q, K = 3, 2, 2, 5, 4
    rrp = torch.rand(P, B, H, Q, K) * 10 - 1  # n = round(clamp(rrp, 0, 8)), including 0 and 8
    p = torch.rand(P, B, H, Q, K)
    r_e = p * rrp
    uniforms = (torch.rand(P, B, H, Q), torch.rand(P, B, H, Q, K, 8))
    frac = torch.tensor([0.0, 0.5, 1.0]).view(P, 1, 1, 1)  # no row, about half the rows, every row
    selected = _stochastic_release(r_e, rrp, p, uniforms, frac, select_rows=True)
    dense = _stochastic_release(r_e, rrp, p, uniforms, frac, select_rows=False)
    assert torch.equal(selected, dense)
    assert torch.equal(selected[0], r_e[0])  # fraction 0: the expected release, untouched
    n = rrp.clamp(0, 8).round()
    counts = ((uniforms[1] < p.unsqueeze(-1)) & (torch.arange(8) < n.unsqueeze(-1))).sum(-1).float()
    assert torch.equal(selected[2], counts[2]) and torch.equal(_binomial_draws(rrp, p, uniforms[1]), counts)
    stochastic = uniforms[0][1] < 0.5
    assert 0 < stochastic.sum() < stochastic.numel()
    assert torch.equal(selected[1][stochastic], counts[1][stochastic])
    assert torch.equal(selected[1][~stochastic], r_e[1][~stochastic])


@pytest.mark.parametrize("chunk", [16, 24, 64])
def test_chunked_attention_without_release_terms_is_causal_softmax_attention(chunk):
    """With lambda_loge = 0 and barrier_strength = 0 the presynaptic terms vanish, so the chunked loop (including
    chunks that do not divide T) must give plain causal attention, forward and backward."""
    torch.manual_seed(1)
    mcfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=64)
    P, B, T, C, H, D = 2, 3, 64, 32, 2, 16
    cfg = SynapticConfig(presyn_chunk=chunk, lambda_loge=0.0, barrier_strength=0.0)
    attn = PresynapticAttention(mcfg, P).double().train()
    with torch.no_grad():
        for lin in (attn.c_q, attn.c_k, attn.c_v, attn.c_proj):
            lin.weight.copy_(torch.randn_like(lin.weight) * 0.2)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), 1.0 / (10000 ** (torch.arange(0, D, 2) / D)))
    cos, sin = angles.cos(), angles.sin()
    x = torch.randn(P, B, T, C, dtype=torch.float64, requires_grad=True)
    knobs = Knobs([cfg] * P, torch.device("cpu"))
    knobs.lambda_loge, knobs.barrier_strength = knobs.lambda_loge.double(), knobs.barrier_strength.double()

    out = attn(x, cos, sin, knobs, None)
    (got,) = torch.autograd.grad((out * out.detach().sin()).sum(), x)

    flat = x.reshape(P, B * T, C)
    heads = lambda t: t.view(P, B, T, H, D).transpose(2, 3)  # noqa: E731
    q = rotary(F.rms_norm(heads(attn.c_q(flat)), (D,)), cos, sin)
    k = rotary(F.rms_norm(heads(attn.c_k(flat)), (D,)), cos, sin)
    y = F.scaled_dot_product_attention(q, k, heads(attn.c_v(flat)), is_causal=True)
    ref = attn.c_proj(y.transpose(2, 3).reshape(P, B * T, C)).view(P, B, T, C)
    (want,) = torch.autograd.grad((ref * ref.detach().sin()).sum(), x)

    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_is_accepted_by_glibc_and_idempotent():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
