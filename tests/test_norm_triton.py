"""`TrainConfig.fused_attention`'s norm kernels (nanochat/norm_triton.py), in Triton's interpreter: F.rms_norm's and
F.layer_norm's values and gradients to float rounding (against float64), rows that never mix (a NaN row keeps to
itself, and a row's numbers do not depend on the rows beside it), 16-bit inputs, and the model taking them under
the flag."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from nanochat import synaptic

from helpers import triton_interpreter_missing


@pytest.fixture(scope="module")
def nt():
    if reason := triton_interpreter_missing():
        pytest.skip(reason)
    return importlib.import_module("nanochat.norm_triton")


def _values_and_grad(fn, x, grad):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    return y, dx


def _references(C):
    """The torch definitions, with the kernels' epsilons (rms: float32's, whatever dtype the reference runs in)."""
    return {"rms_norm": lambda x: F.rms_norm(x, (C,), eps=torch.finfo(torch.float32).eps),
            "layer_norm": lambda x: F.layer_norm(x, (C,))}


@pytest.mark.parametrize("C", [128, 48, 3])
def test_kernels_match_the_torch_definitions_in_float64(nt, C):
    """A (P, B, T, C)-like tensor whose rows are not a multiple of the program's, offset and scaled so that the
    mean matters; C not a power of two too."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2 * nt.ROWS + 5, C, generator=g) * 3 + 1
    grad = torch.randn(x.shape, generator=g)
    for name, ref in _references(C).items():
        y_ref, dx_ref = _values_and_grad(ref, x.double(), grad.double())
        y, dx = _values_and_grad(getattr(nt, name), x, grad)
        assert y.dtype == dx.dtype == torch.float32 and y.shape == x.shape
        assert (y.double() - y_ref).abs().max() <= 1e-6 * y_ref.abs().max(), name
        assert (dx.double() - dx_ref).abs().max() <= 1e-5 * dx_ref.abs().max(), name


def test_rows_never_mix(nt):
    """A NaN row gives NaN in its own row only, each way; and a row alone gives the bits it gives among others
    (a member's numbers do not depend on the population around it)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3 * nt.ROWS, 64, generator=g)
    grad = torch.randn(x.shape, generator=g)
    x[5, 7] = float("nan")
    for name in ("rms_norm", "layer_norm"):
        y, dx = _values_and_grad(getattr(nt, name), x, grad)
        others = torch.ones(len(x), dtype=torch.bool)
        others[5] = False
        assert y[5].isnan().all() and dx[5].isnan().all(), name
        assert y[others].isfinite().all() and dx[others].isfinite().all(), name
        y_one, dx_one = _values_and_grad(getattr(nt, name), x[20:21], grad[20:21])
        assert torch.equal(y_one[0], y[20]) and torch.equal(dx_one[0], dx[20]), name


def test_half_precision_in_and_out(nt):
    """16-bit x gives 16-bit y and dx (statistics in float32). Float16 here: Triton 3.9's interpreter truncates
    float32 to bfloat16 where a GPU rounds."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(37, 128, generator=g) * 2 + 0.5
    grad = torch.randn(x.shape, generator=g)
    for name, ref in _references(128).items():
        y_ref, dx_ref = _values_and_grad(ref, x.double(), grad.double())
        y, dx = _values_and_grad(getattr(nt, name), x.half(), grad.half())
        assert y.dtype == dx.dtype == torch.float16
        assert (y.double() - y_ref).abs().max() <= 2e-3 * y_ref.abs().max(), name
        assert (dx.double() - dx_ref).abs().max() <= 2e-3 * dx_ref.abs().max(), name


def test_kernels_refuse_other_dtypes(nt):
    for fn in (nt.rms_norm, nt.layer_norm):
        with pytest.raises(ValueError, match="x must be one of"):
            fn(torch.ones(4, 8, dtype=torch.float64))


def test_fused_model_norms_with_the_kernels(nt):
    from nanochat.config import ModelConfig, SynapticConfig

    model = ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=16)
    net = synaptic.SynapticGPT(model, [SynapticConfig(presyn_chunk=8)] * 2, [0, 1], "cpu", fused_attention=True)
    assert (net.ops.rms_norm, net.ops.layer_norm) == (nt.rms_norm, nt.layer_norm)
    assert net.blocks[0].ops.rms_norm is nt.rms_norm and net.blocks[0].mlp.ops.layer_norm is nt.layer_norm
    plain = synaptic.SynapticGPT(model, [SynapticConfig(presyn_chunk=8)] * 2, [0, 1], "cpu")
    assert plain.ops == synaptic.TORCH_ROW_OPS and plain.blocks[0].ops.rms_norm is synaptic.rms_norm
