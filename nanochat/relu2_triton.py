"""The MLP's activation relu(h)^2 as one Triton kernel each way, for the GPU: the same bits as synaptic.relu_squared.

    y = relu_squared(h)      # any shape, float32 or 16-bit; differentiable

`synaptic.relu_squared` runs it as torch ops: relu, then r * r forward (saving r), and (grad * r) * 2 backward, four
passes over the (P, B*T, 4C) hidden activations, the largest tensors of a step (537 MB each in float32 at P = 128):
about 19 GB of the step's memory traffic (bench/count_kernels.py). Here the forward reads h and writes y once, and
the backward reads the gradient and h and writes once, recomputing r = relu(h) instead of saving it: about 10 GB.

Each element is computed as torch computes it: r = h where h is not below zero (NaN and -0 pass, as torch.relu's
clamp passes them), r * r, and grad * r * 2 with the product rounded once to the tensor's dtype (for 16 bits, the
product of two 16-bit values is exact in float32 and doubling is exact, so rounding once equals torch's rounding
of the product, then doubling); there is no sum, so the values do not depend on blocks or on other members.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program; an elementwise pass is bound by memory, so a program streams 4 KB of float32 per tensor.
BLOCK = 1024
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _relu(h):
    return tl.where(h < 0.0, 0.0, h)  # NaN and -0 pass through, as in torch.relu


@triton.jit
def _forward_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    r = _relu(tl.load(X + offs, mask=live, other=0.0).to(tl.float32))
    tl.store(Y + offs, (r * r).to(Y.dtype.element_ty), mask=live)


@triton.jit
def _backward_kernel(X, G, DX, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    r = _relu(tl.load(X + offs, mask=live, other=0.0).to(tl.float32))
    g = tl.load(G + offs, mask=live, other=0.0).to(tl.float32)
    tl.store(DX + offs, ((g * r) * 2.0).to(DX.dtype.element_ty), mask=live)


class _ReluSquared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(h)
        if h.numel():
            _forward_kernel[(triton.cdiv(h.numel(), BLOCK),)](h, y, h.numel(), BLOCK=BLOCK)
        ctx.save_for_backward(h)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        grad = grad.contiguous()  # read in its own dtype: the product is taken in float32, as torch's mul would
        dh = torch.empty_like(h)
        if h.numel():
            _backward_kernel[(triton.cdiv(h.numel(), BLOCK),)](h, grad, dh, h.numel(), BLOCK=BLOCK)
        return dh


def relu_squared(h: torch.Tensor) -> torch.Tensor:
    """relu(h)^2 of a float32 or 16-bit tensor, on these kernels."""
    if h.dtype not in DTYPES:
        raise ValueError(f"h must be one of {DTYPES}, got {h.dtype}")
    return _ReluSquared.apply(h.contiguous())
