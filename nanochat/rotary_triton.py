"""The attention's qk-norm, rotary embedding and scale as one Triton kernel each way, for the GPU.

    q = norm_rotary(c_q(x), heads, cos, sin, 1 / sqrt(D))   # (P, B*T, heads*D) -> (P, B, heads, T, D)

`synaptic.norm_rotary` defines it: each head's row of D values RMS-normed, rotated by its position's angles (the
half-row form [n1 cos - n2 sin, n1 sin + n2 cos]) and scaled, written in the attention's (P, B, heads, T, D) layout.
In torch that is about ten passes over the projection forward and ten backward; at P = 128 a projection is 134 MB,
so the q and k of four layers moved about 34 GB per step (counted). Here one program takes a block of rows, reads
each row and its swapped halves once, and writes the result once; the backward recomputes the row's norm from the
projection instead of saving it, and writes the gradient in the projection's layout. The numbers are the torch
definition's to float rounding (the mean of squares adds in another order); rows never mix, so a member's numbers do
not depend on the others, and a run repeats bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# 16 rows of a head (D = 32: 512 values) per program on 4 warps: 56-60 registers for sm_90 (ptxas), no spills, so
# many programs share an SM, as a memory-bound kernel wants; 64 rows took 188-202 registers.
ROWS_PER_PROGRAM = 16
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _row_block(rows, n_rows, tokens, T, H, B, D, BD: tl.constexpr):
    """Column offsets, masks and the (P, B, H, T, D) offsets of a block of rows (p, n, h) of the projection."""
    cols = tl.arange(0, BD)
    half = D // 2
    partner = tl.where(cols < half, cols + half, cols - half)  # the column a rotation pairs with
    mask = (rows < n_rows)[:, None] & (cols < D)[None, :]
    r64 = rows.to(tl.int64)
    h = r64 % H
    n = (r64 // H) % tokens
    p = r64 // (H * tokens)
    b, t = n // T, n % T
    out_row = ((p * B + b) * H + h) * T + t  # the row's index in (P, B, H, T) order
    return cols, partner, mask, r64, t, out_row


@triton.jit
def _angles(COS, SIN, t, cols, mask, D):
    """cos and the signed sin of each column's angle: -sin on the first half, +sin on the second."""
    half = D // 2
    at = t[:, None] * half + (cols % half)[None, :]
    c = tl.load(COS + at, mask=mask, other=0.0)
    s = tl.load(SIN + at, mask=mask, other=0.0)
    return c, tl.where((cols < half)[None, :], -s, s)


@triton.jit
def _inverse_rms(x, D, eps):
    return tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)


@triton.jit
def _forward_kernel(X, COS, SIN, Y, n_rows, tokens, T, H, B, D, scale, eps, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols, partner, mask, r64, t, out_row = _row_block(rows, n_rows, tokens, T, H, B, D, BD)
    x = tl.load(X + r64[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(X + r64[:, None] * D + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    r = _inverse_rms(x, D, eps)[:, None]
    c, s = _angles(COS, SIN, t, cols, mask, D)
    y = (x * r * c + xp * r * s) * scale
    tl.store(Y + out_row[:, None] * D + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(X, COS, SIN, G, DX, n_rows, tokens, T, H, B, D, scale, eps, BR: tl.constexpr,
                     BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols, partner, mask, r64, t, out_row = _row_block(rows, n_rows, tokens, T, H, B, D, BD)
    x = tl.load(X + r64[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + out_row[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32) * scale
    gp = tl.load(G + out_row[:, None] * D + partner[None, :], mask=mask, other=0.0).to(tl.float32) * scale
    c, s = _angles(COS, SIN, t, cols, mask, D)
    # The rotation's transpose: column j gets g_j cos_j plus its partner's g times the partner's signed sin, -s_j.
    dn = g * c - gp * s
    r = _inverse_rms(x, D, eps)[:, None]
    dm = -0.5 * tl.sum(dn * x, axis=1)[:, None] * (r * r * r)
    dx = dn * r + x * (2.0 * dm / D)
    tl.store(DX + r64[:, None] * D + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _launch(kernel, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, scale: float, *tensors):
    P, N, HD = x.shape
    T, D = cos.shape[0], HD // heads
    n_rows = P * N * heads
    kernel[(triton.cdiv(n_rows, ROWS_PER_PROGRAM),)](
        x, cos, sin, *tensors, n_rows, N, T, heads, N // T, D, scale, torch.finfo(torch.float32).eps,
        BR=ROWS_PER_PROGRAM, BD=max(2, triton.next_power_of_2(D)))


class _NormRotary(torch.autograd.Function):
    """Both kernels compute in float32 and round what they store to its tensor's dtype (to nearest even, as a
    cast does): y to `dtype`, the gradient to x's. So a 16-bit y or x costs no cast kernel either way, and gives
    the bits of the float32 result cast."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor, scale: float,
                dtype: torch.dtype):
        P, N, HD = x.shape
        T = cos.shape[0]
        y = torch.empty(P, N // T, heads, T, HD // heads, device=x.device, dtype=dtype)
        _launch(_forward_kernel, x, cos, sin, heads, scale, y)
        ctx.save_for_backward(x, cos, sin)
        ctx.heads, ctx.scale = heads, scale
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, cos, sin = ctx.saved_tensors
        dx = torch.empty_like(x)
        _launch(_backward_kernel, x, cos, sin, ctx.heads, ctx.scale, g.contiguous(), dx)
        return dx, None, None, None, None, None


def norm_rotary(x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor, scale: float = 1.0,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """synaptic.norm_rotary on these kernels: qk-norm, rotary and `scale` of a (P, B*T, heads*D) projection, as a
    contiguous (P, B, heads, T, D) in `dtype` (float32 when None), computed in float32. x is float32 or 16-bit;
    cos and sin are the (T, D/2) angles."""
    dtype = torch.float32 if dtype is None else dtype
    if x.dtype not in DTYPES or dtype not in DTYPES:
        raise ValueError(f"x and dtype must be one of {DTYPES}, got {x.dtype} and {dtype}")
    P, N, HD = x.shape
    T, half = cos.shape
    if HD != heads * 2 * half or N % T or sin.shape != cos.shape:
        raise ValueError(f"x {tuple(x.shape)} does not hold {heads} heads of {2 * half} for angles "
                         f"{tuple(cos.shape)} over whole sequences")
    return _NormRotary.apply(x.contiguous(), heads, cos.float().contiguous(), sin.float().contiguous(), float(scale),
                             dtype)
