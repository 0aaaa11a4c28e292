"""`TrainConfig.fused_attention`'s qk-norm and rotary kernels (nanochat/rotary_triton.py), in Triton's interpreter.

Against a float64 reference written from the formula (values and gradients; head sizes that are and are not powers
of two, several heads, scales), against the torch definition (synaptic.norm_rotary) under bfloat16 inputs, and a NaN
member's rows left to that member.
"""

import importlib

import pytest
import torch

from nanochat import synaptic

from helpers import triton_interpreter_missing


@pytest.fixture(scope="module")
def rt():
    if reason := triton_interpreter_missing():
        pytest.skip(reason)
    return importlib.import_module("nanochat.rotary_triton")


def _inputs(P, B, T, H, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(T, D // 2, generator=g) * 6
    x = (torch.randn(P, B * T, H * D, generator=g) * 3).to(dtype)
    return x, angles.cos(), angles.sin()


def _reference(x, heads, cos, sin, scale):
    """MODEL.md: each head's row RMS-normed (float32's eps), rotated as [n1 cos - n2 sin, n1 sin + n2 cos], scaled;
    float64, in the (P, B, heads, T, D) layout."""
    P, N, HD = x.shape
    T, half = cos.shape
    rows = x.double().view(P, N // T, T, heads, 2 * half).transpose(2, 3)
    n = rows / (rows.pow(2).mean(-1, keepdim=True) + torch.finfo(torch.float32).eps).sqrt()
    n1, n2 = n[..., :half], n[..., half:]
    c, s = cos.double(), sin.double()
    return torch.cat([n1 * c - n2 * s, n1 * s + n2 * c], -1) * scale


@pytest.mark.parametrize("P, B, T, H, D, scale", [(2, 3, 8, 2, 8, 0.35), (1, 2, 5, 3, 16, 1.0), (3, 1, 4, 1, 6, 0.5),
                                                  (2, 2, 16, 4, 32, 32 ** -0.5)])
def test_values_and_gradients_match_a_float64_reference(rt, P, B, T, H, D, scale):
    x, cos, sin = _inputs(P, B, T, H, D)
    grad_out = torch.randn(P, B, H, T, D, generator=torch.Generator().manual_seed(1))
    got_x = x.clone().requires_grad_()
    got = rt.norm_rotary(got_x, H, cos, sin, scale)
    (got * grad_out).sum().backward()
    ref_x = x.double().requires_grad_()
    ref = _reference(ref_x, H, cos, sin, scale)
    (ref * grad_out.double()).sum().backward()

    assert got.shape == (P, B, H, T, D) and got.is_contiguous() and got.dtype == torch.float32
    assert (got.double() - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert (got_x.grad.double() - ref_x.grad).abs().max() <= 1e-6 * ref_x.grad.abs().max()


def test_bfloat16_projections_give_the_torch_definitions_numbers(rt):
    """Under autocast the projections are 16-bit; both paths compute in float32 from them and return float32."""
    x, cos, sin = _inputs(2, 2, 8, 2, 8, torch.bfloat16)
    got_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, ref = rt.norm_rotary(got_x, 2, cos, sin, 0.5), synaptic.norm_rotary(ref_x, 2, cos, sin, 0.5)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    (got * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    assert got.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert got_x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got_x.grad, ref_x.grad)


def test_a_16_bit_result_is_the_float32_result_rounded_and_so_is_its_gradient(rt):
    """dtype= (the fused attention's q and k in the matmuls' dtype): the kernels round what they store, which must
    give the bits a cast gives, forward (y) and backward (the 16-bit projection's gradient from a 16-bit one).
    float16 here: Triton's interpreter truncates to bfloat16 where a GPU rounds, so bench/gpu_check.py's
    `kernel_bits` checks bfloat16 on a GPU."""
    dtype = torch.float16
    x, cos, sin = _inputs(2, 2, 8, 2, 8, dtype)
    got_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = rt.norm_rotary(got_x, 2, cos, sin, 0.35, dtype)
    ref = rt.norm_rotary(ref_x, 2, cos, sin, 0.35).to(dtype)  # float32, then cast each way by torch
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    got.backward(grad_out)
    ref.backward(grad_out)
    assert got.dtype == dtype and got.is_contiguous() and torch.equal(got, ref)
    assert got_x.grad.dtype == dtype and torch.equal(got_x.grad, ref_x.grad)
    torch_def = synaptic.norm_rotary(x, 2, cos, sin, 0.35, dtype)  # the definition takes dtype= too
    assert torch_def.dtype == dtype
    torch.testing.assert_close(torch_def.float(), got.float(), rtol=2 ** -10, atol=1e-6)


def test_a_nan_member_stays_in_its_own_rows(rt):
    x, cos, sin = _inputs(3, 2, 8, 2, 8)
    clean = rt.norm_rotary(x, 2, cos, sin)
    x[1, 3, 5] = float("nan")
    dirty = rt.norm_rotary(x, 2, cos, sin)
    assert torch.equal(dirty[0], clean[0]) and torch.equal(dirty[2], clean[2])  # bit for bit
    assert dirty[1].isnan().any()


def test_refuses_what_it_cannot_compute(rt):
    x, cos, sin = _inputs(1, 1, 8, 2, 8)
    with pytest.raises(ValueError, match="x and dtype must be one of"):
        rt.norm_rotary(x.double(), 2, cos, sin)
    with pytest.raises(ValueError, match="x and dtype must be one of"):
        rt.norm_rotary(x, 2, cos, sin, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not hold 3 heads of 8"):
        rt.norm_rotary(x, 3, cos, sin)
