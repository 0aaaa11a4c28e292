"""`TrainConfig.fused_attention`'s relu^2 kernels (nanochat/relu2_triton.py), in Triton's interpreter: the torch
definition's bits (synaptic.relu_squared), values and gradients, special values included, and the model's MLP
taking them under the flag."""

import importlib
import math

import pytest
import torch

from nanochat import synaptic

from helpers import triton_interpreter_missing

SPECIAL = [0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, -1.5, 2.5, 1e-30, -1e-30, 3e38]


@pytest.fixture(scope="module")
def r2():
    if reason := triton_interpreter_missing():
        pytest.skip(reason)
    return importlib.import_module("nanochat.relu2_triton")


def _values_and_grad(fn, h, grad):
    h = h.detach().clone().requires_grad_()
    y = fn(h)
    (dh,) = torch.autograd.grad(y, h, grad)
    return y, dh


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns: NaN equals NaN, and -0 differs from +0."""
    ints = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(ints), b.view(ints))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_give_the_torch_definitions_bits(r2, dtype):
    """A (P, N, 4C)-like tensor that is not a multiple of the block, with every special value; d out likewise.
    (Not bfloat16: Triton 3.9's interpreter truncates float32 to bfloat16 where a GPU rounds to nearest, so
    bench/gpu_check.py's `kernel_bits` checks bfloat16 on a GPU.)"""
    g = torch.Generator().manual_seed(0)
    n = 3 * r2.BLOCK + 37
    h = torch.randn(n, generator=g) * 4
    grad = torch.randn(n, generator=g)
    h[:len(SPECIAL)] = torch.tensor(SPECIAL)
    grad[len(SPECIAL):2 * len(SPECIAL)] = torch.tensor(SPECIAL)  # d out's specials against ordinary h
    grad[:len(SPECIAL)] = 1.0
    h, grad = h.to(dtype).view(1, -1, 1), grad.to(dtype).view(1, -1, 1)
    y, dh = _values_and_grad(r2.relu_squared, h, grad)
    y_ref, dh_ref = _values_and_grad(synaptic.relu_squared, h, grad)
    assert _same_bits(y, y_ref)
    assert _same_bits(dh, dh_ref)
    assert torch.signbit(y[0, 1]) == torch.signbit(y_ref[0, 1])  # -0 passes relu, as torch's clamp passes it
    assert y[0, 2].isnan() and dh[0, 2].isnan()  # a NaN stays NaN both ways


def test_a_float32_gradient_for_16_bit_activations_rounds_as_torch(r2):
    """Autograd may hand the backward a gradient of another dtype: the product is taken in float32 and rounded
    once to h's dtype, as torch's mul and autograd's cast do."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 300, 8, generator=g).to(torch.float16)
    grad = torch.randn(2, 300, 8, generator=g)  # float32
    ref = synaptic._ReluSquared.backward(type("Ctx", (), {"saved_tensors": (torch.relu(h),)})(), grad).to(h.dtype)
    got = r2._ReluSquared.backward(type("Ctx", (), {"saved_tensors": (h,)})(), grad)
    assert _same_bits(got, ref)


def test_kernel_refuses_other_dtypes(r2):
    with pytest.raises(ValueError, match="h must be one of"):
        r2.relu_squared(torch.ones(4, dtype=torch.float64))


def test_fused_models_mlp_uses_the_kernel(r2):
    from nanochat.config import ModelConfig, SynapticConfig

    net = synaptic.SynapticGPT(ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=16),
                               [SynapticConfig(presyn_chunk=8)] * 2, [0, 1], "cpu", fused_attention=True)
    assert net.blocks[0].mlp.ops.relu_squared is r2.relu_squared
    plain = synaptic.SynapticGPT(ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=16),
                                 [SynapticConfig(presyn_chunk=8)] * 2, [0, 1], "cpu")
    assert plain.blocks[0].mlp.ops.relu_squared is synaptic.relu_squared
