"""The model's RMSNorm and LayerNorm (over the last dimension, no affine) as one Triton kernel each way, for the GPU.

    y = rms_norm(x)       # F.rms_norm(x, (C,)), eps = the machine epsilon of x's dtype; differentiable
    y = layer_norm(x)     # F.layer_norm(x, (C,)), eps = 1e-5; differentiable

A step norms the (P, B, T, C) residual stream ten times (an RMSNorm before each attention and around the blocks, a
LayerNorm before each MLP), each way. torch's CUDA kernels give a row of C = 128 values a block of threads of its
own: on the H200 at P = 128 (262,144 rows, 134 MB a tensor) its forwards moved 0.7-1.3 TB/s, and the ten norms
took 4.8 ms of a 76 ms step (bench/RESULTS.md). Here a program takes ROWS rows, reads them once and writes the
result and each row's statistics (its 1 / rms, and its mean for the LayerNorm); the backward reads x, the gradient
and the statistics once and writes the input's gradient:

    rms:    dx = r (g - x^ mean(g x^)),                x^ = x r
    layer:  dx = r (g - mean(g) - x^ mean(g x^)),      x^ = (x - mean(x)) r

The numbers are torch's to float rounding (the row sums add in another order; 1 / sqrt is the GPU's rsqrt); rows
never mix, so a member's numbers do not depend on the others, and a run repeats bit for bit. Statistics are float32
whatever x's dtype, as torch keeps them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows per program: 8 rows of 128 (4 KB of float32) on 4 warps, each thread holding 8 values of a tensor in two wide
# loads. Compiled for sm_90 (bench/tune_kernels.py's compile_for_hopper) they take 48-64 registers a thread, no
# spills, so eight programs share an SM, as a memory-bound kernel wants (16 rows took 93-143). Not timed on a GPU.
ROWS = 8
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYER_NORM_EPS = 1e-5  # F.layer_norm's default


@triton.jit
def _rows(n_cols, n_rows, BR: tl.constexpr, BC: tl.constexpr):
    """A program's block of rows: row indices, the (BR, BC) offsets into a (rows, n_cols) tensor, and what is inside
    it."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.arange(0, BC)
    inside = (r < n_rows)[:, None] & (c < n_cols)[None, :]
    return r, r.to(tl.int64)[:, None] * n_cols + c[None, :], inside


@triton.jit
def _forward_kernel(X, Y, STATS, n_rows, n_cols, eps, CENTER: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    r, at, inside = _rows(n_cols, n_rows, BR, BC)
    x = tl.load(X + at, mask=inside, other=0.0).to(tl.float32)
    if CENTER:
        mean = tl.sum(x, 1) / n_cols
        x = tl.where(inside, x - mean[:, None], 0.0)
        tl.store(STATS + n_rows + r, mean, mask=r < n_rows)
    rstd = tl.rsqrt(tl.sum(x * x, 1) / n_cols + eps)
    tl.store(STATS + r, rstd, mask=r < n_rows)
    tl.store(Y + at, (x * rstd[:, None]).to(Y.dtype.element_ty), mask=inside)


@triton.jit
def _backward_kernel(X, G, STATS, DX, n_rows, n_cols, CENTER: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    r, at, inside = _rows(n_cols, n_rows, BR, BC)
    x = tl.load(X + at, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(G + at, mask=inside, other=0.0).to(tl.float32)
    rstd = tl.load(STATS + r, mask=r < n_rows, other=0.0)
    if CENTER:
        x = tl.where(inside, x - tl.load(STATS + n_rows + r, mask=r < n_rows, other=0.0)[:, None], 0.0)
    xhat = x * rstd[:, None]
    mean_gx = tl.sum(g * xhat, 1) / n_cols
    dx = g - xhat * mean_gx[:, None]
    if CENTER:
        dx = dx - (tl.sum(g, 1) / n_cols)[:, None]
    tl.store(DX + at, (dx * rstd[:, None]).to(DX.dtype.element_ty), mask=inside)


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, center: bool, eps: float) -> torch.Tensor:
        C = x.shape[-1]
        rows = x.numel() // C if C else 0
        y = torch.empty_like(x)
        stats = x.new_empty((2 if center else 1) * rows, dtype=torch.float32)  # 1 / rms, then the means
        if rows:
            _forward_kernel[(triton.cdiv(rows, ROWS),)](x, y, stats, rows, C, eps, CENTER=center, BR=ROWS,
                                                        BC=triton.next_power_of_2(C))
        ctx.save_for_backward(x, stats)
        ctx.center = center
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, stats = ctx.saved_tensors
        grad = grad.contiguous()
        dx = torch.empty_like(x)
        C = x.shape[-1]
        rows = x.numel() // C if C else 0
        if rows:
            _backward_kernel[(triton.cdiv(rows, ROWS),)](x, grad, stats, dx, rows, C, CENTER=ctx.center, BR=ROWS,
                                                         BC=triton.next_power_of_2(C))
        return dx, None, None


def _checked(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in DTYPES:
        raise ValueError(f"x must be one of {DTYPES}, got {x.dtype}")
    return x.contiguous()


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """F.rms_norm(x, (x.shape[-1],)) on these kernels: x / sqrt(mean(x^2) + eps), eps = finfo(x.dtype).eps."""
    x = _checked(x)
    return _Norm.apply(x, False, torch.finfo(x.dtype).eps)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """F.layer_norm(x, (x.shape[-1],)) on these kernels: (x - mean) / sqrt(var + 1e-5), no weight or bias."""
    return _Norm.apply(_checked(x), True, LAYER_NORM_EPS)
