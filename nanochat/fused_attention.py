"""The presynaptic attention's logits, softmax and p @ v as fused Triton kernels (forward and backward), for CUDA.

    y = presynaptic_attention(q, key, v, scales, lam, eps, barrier, chunk)   # (P, B, H, T, D), differentiable

For query i, key j <= i and raw score s = q_i . k_j (q already carries 1/sqrt(D)), with c(i) = i // chunk:

    z_ij = s + lam log(sigmoid(s) scales[c(i), j] + eps) - barrier |i - j| / chunk,    y_i = sum_j softmax_j(z_i) v_j

the function `_ChunkedPresynapticAttention` (synaptic.py) computes chunk by chunk, once the state loop has written
every chunk's logit scale into `scales`. The chunked form writes and rereads each chunk's (queries x keys) logits
about 23 times (forward and backward, op by op or a few times fused); here no such tensor exists. A program owns a
block of queries and walks the causal keys block by block, keeping each row's running max and sum (the
flash-attention recurrence); the backward recomputes the scores from q, k and the row's log-sum-exp, one program
per query block for dq (which first writes each row's delta, out . d out, for the other kernel) and then one per key
block for dk and dv, whose scores are computed transposed (keys x queries: k q^T), as dk = ds^T q and dv = p^T d out
take them. Every sum runs in a fixed order (no atomics), so a run repeats bit for bit, and nothing mixes
rows of different members.

Per-member knobs (lam, eps, barrier: (P,) float32) are read per row; `scales` is (P, B, H, n_chunks, T) float32.
The kernels step each tensor by its own strides, one layout for q, k and their gradients and one for v, the output
and theirs: the model's v is a view of its (P, B, T, H * D) projection, and its output projection reads the output
through such a view, so neither way needs a transposing copy (four copies of a (P, B, T, C) tensor per layer, 4.3 GB
a step at P = 128, counted by bench/count_kernels.py).
Matmuls follow the run's precision: float32 inputs use TF32 when `torch.backends.cuda.matmul.allow_tf32` is set
(`--matmul-precision high`), IEEE float32 otherwise; bfloat16 inputs multiply in bfloat16 with float32 sums.

A score's work is what the kernels' time goes to, so it is kept small: on the GPU the log, the exponentials and the
sigmoid's division are the hardware's approximate instructions (FAST_MATH below), the distance penalty is a row's
and a column's term, the causal mask is one comparison a score (the scales are masked per key only), and a block
reads a row of scales once for each chunk its queries span, not a scale for each score.

Triton compiles these for the GPU. Its interpreter (`TRITON_INTERPRET=1`, set before triton is imported) runs them
on CPU tensors, slowly, with tl.log and tl.exp; the tests check them that way against the formula in float64
(`dense_reference`), and bench/gpu_check.py does on a GPU.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


class Launch(NamedTuple):
    """One kernel's launch settings: a block's queries and keys, the program's warps and its pipeline stages."""

    queries: int
    keys: int
    warps: int = 4
    stages: int = 3


# The forward and the dq kernel give a program a block of queries and walk the causal keys a block at a time; the
# dk/dv kernel gives a program a block of keys and walks the query blocks that see them, its scores transposed (keys x
# queries, as dk and dv take them). Forward and dq use 64 queries and 32 keys, dk/dv 32 queries and 64 keys, on
# Triton's default 4 warps and 3 stages; none was timed on a GPU (bench/tune_kernels.py times alternatives). Compiled
# for sm_90 in TF32 by Triton 3.9 they take 150 (forward), 211 (dk/dv) and 200 (dq) registers a thread, none spilled;
# at the baseline's shapes (chunk 32, T 256, D 32: no load masked) a score costs their key loops 1.22, 1.71 and 1.40
# warp instructions (bench/tune_kernels.py --resources), where the build before this file's fast math, per-key masks,
# transposed dk/dv, a row of scales a chunk and unmasked loads took 3.06, 4.74 and 3.70 (64 x 32 blocks each, 196, 206
# and 255 registers; dq spilled 40 bytes). Fixed numbers, not triton.autotune: a block's size sets the order of its
# sums, so a run must not pick one by timing.
FORWARD = Launch(64, 32)
BACKWARD_DKDV = Launch(32, 64)
BACKWARD_DQ = Launch(64, 32)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# FAST_MATH (on the GPU; Triton's interpreter, which runs the kernels on CPU tensors, has no libdevice): the
# hardware's approximate instructions, flushing subnormals to zero, for a score's log, exponentials and divisions. A
# log is one MUFU.LG2 instead of tl.log's polynomial of about twenty instructions, an exp drops tl.exp's subnormal
# handling, a division is a reciprocal and a product without IEEE division's range checks. Each is within a few ulp
# of float32 (max error 2^-21 or so), far inside TF32's and bf16's rounding; bench/gpu_check.py's `attention_error`
# checks the result on a GPU.
@triton.jit
def _log(x, FAST_MATH: tl.constexpr):
    return libdevice.fast_logf(x) if FAST_MATH else tl.log(x)


@triton.jit
def _exp(x, FAST_MATH: tl.constexpr):
    return libdevice.fast_expf(x) if FAST_MATH else tl.exp(x)


@triton.jit
def _div(x, y, FAST_MATH: tl.constexpr):
    return libdevice.fast_dividef(x, y) if FAST_MATH else x / y


@triton.jit
def _sigmoid(x, FAST_MATH: tl.constexpr):
    return libdevice.fast_dividef(1.0, 1.0 + libdevice.fast_expf(-x)) if FAST_MATH else tl.sigmoid(x)


@triton.jit
def _logits(s, m, n, T, sc, lam, eps, row_term, per_pos, FAST_MATH: tl.constexpr):
    """A block's logits z from its raw scores s (-inf outside the causal triangle), and the sigmoid and `keep` (query
    m sees key n) behind them. The block is (queries x keys) or, for the dk/dv kernel, (keys x queries): m and n are
    the query and key positions, row_term and the scales sc (`_block_scales`) shaped to broadcast so. The distance
    penalty -barrier (i - j) / chunk is per_pos j - row_term, with per_pos = barrier / chunk and row_term = per_pos i:
    a product a key and a query instead of a conversion and a division a score."""
    keep = (n <= m) & (m < T)  # a key past T is past every query
    sig = _sigmoid(s, FAST_MATH)
    z = (lam * _log(sig * sc + eps, FAST_MATH) + s) + (n.to(tl.float32) * per_pos - row_term)
    return tl.where(keep, z, float("-inf")), sig, keep


@triton.jit
def _base(r, H, S_PB, S_H):
    """Where row r's (T, D) matrix starts: r = (member * B + b) * H + h, at b's stride S_PB and h's stride S_H."""
    r64 = r.to(tl.int64)
    return (r64 // H) * S_PB + (r64 % H) * S_H


@triton.jit
def _rows(X, base, offs, S_T, offs_d, D, T, EVEN: tl.constexpr):
    """A block of rows (len(offs), BD) of one (T, D) matrix whose rows are S_T apart, zero past T and past D. EVEN:
    the blocks tile T and D exactly, so no load needs a mask (a predicate and a select fewer per element)."""
    if EVEN:
        rows = tl.load(X + base + offs[:, None] * S_T + offs_d[None, :])
    else:
        rows = tl.load(X + base + offs[:, None] * S_T + offs_d[None, :],
                       mask=(offs < T)[:, None] & (offs_d < D)[None, :], other=0.0)
    return rows


@triton.jit
def _knobs(LAM, EPS, BAR, r, rows_per_member, chunk):
    """lam, eps and the distance penalty a position, per_pos = barrier / chunk, of the member that row r (one
    (member, batch row, head)) belongs to."""
    member = r // rows_per_member
    return tl.load(LAM + member), tl.load(EPS + member), tl.load(BAR + member) / chunk


@triton.jit
def _block_scales(SC, r, m0, offs_m, offs_n, T, n_chunks, CHUNK: tl.constexpr, BM: tl.constexpr,
                  KEYS_FIRST: tl.constexpr):
    """The scales of row r's block of BM queries from m0 (offs_m) and its keys offs_n, (queries x keys), or (keys x
    queries) with KEYS_FIRST, each query's from its chunk's row of the table. Blocks and chunks that divide one
    another (powers of two do) read each chunk's row once a key and broadcast it over the chunk's queries: one row
    when the block lies in a chunk, BM / CHUNK rows when it holds whole chunks. Else each score reads its own. The
    scales of keys a query does not see are read too (masked per key, not per score) and not used; rows past T read
    the last chunk's."""
    table = SC + r.to(tl.int64) * n_chunks * T
    BN: tl.constexpr = offs_n.shape[0]
    if CHUNK % BM == 0:
        row = tl.load(table + (m0 // CHUNK) * T + offs_n, mask=offs_n < T, other=0.0)
        if KEYS_FIRST:
            sc = row[:, None]
        else:
            sc = row[None, :]
    elif BM % CHUNK == 0:
        NC: tl.constexpr = BM // CHUNK
        chunks = tl.minimum(m0 // CHUNK + tl.arange(0, NC), n_chunks - 1)
        if KEYS_FIRST:
            rows = tl.load(table + chunks[None, :] * T + offs_n[:, None], mask=(offs_n < T)[:, None], other=0.0)
            sc = tl.reshape(tl.broadcast_to(rows[:, :, None], (BN, NC, CHUNK)), (BN, BM))
        else:
            rows = tl.load(table + chunks[:, None] * T + offs_n[None, :], mask=(offs_n < T)[None, :], other=0.0)
            sc = tl.reshape(tl.broadcast_to(rows[:, None, :], (NC, CHUNK, BN)), (BM, BN))
    else:
        rows = table + (tl.minimum(offs_m, T - 1) // CHUNK) * T
        if KEYS_FIRST:
            sc = tl.load(rows[None, :] + offs_n[:, None], mask=(offs_n < T)[:, None], other=0.0)
        else:
            sc = tl.load(rows[:, None] + offs_n[None, :], mask=(offs_n < T)[None, :], other=0.0)
    return sc


@triton.jit
def _query_block(Q, DO, LSE, DELTA, r, qk, QK_T, vo, VO_T, offs_m, offs_d, D, T, EVEN: tl.constexpr):
    """What the dk/dv kernel reads of a block of queries: q, d out, and each row's log-sum-exp and delta (the dq
    kernel, which writes delta, loads the first three itself)."""
    q, do = _rows(Q, qk, offs_m, QK_T, offs_d, D, T, EVEN), _rows(DO, vo, offs_m, VO_T, offs_d, D, T, EVEN)
    lse = tl.load(LSE + r.to(tl.int64) * T + offs_m, mask=(offs_m < T) | EVEN, other=0.0)
    delta = tl.load(DELTA + r.to(tl.int64) * T + offs_m, mask=(offs_m < T) | EVEN, other=0.0)
    return q, do, lse, delta


@triton.jit
def _forward_kernel(Q, K, V, SC, LAM, EPS, BAR, OUT, LSE, T, D, rows_per_member, n_chunks, CHUNK: tl.constexpr, H,
                    QK_PB, QK_H, QK_T, VO_PB, VO_H, VO_T, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BD: tl.constexpr, FAST_MATH: tl.constexpr, EVEN: tl.constexpr):
    m0 = tl.program_id(1) * BM
    r = tl.program_id(0)  # one (member, batch row, head): on the grid's x, which has room for 2**31 - 1
    lam, eps, per_pos = _knobs(LAM, EPS, BAR, r, rows_per_member, CHUNK)
    offs_m, offs_d = m0 + tl.arange(0, BM), tl.arange(0, BD)
    qk, vo = _base(r, H, QK_PB, QK_H), _base(r, H, VO_PB, VO_H)  # q, k | v, out: each pair's layout
    q = _rows(Q, qk, offs_m, QK_T, offs_d, D, T, EVEN)
    row_term = offs_m.to(tl.float32) * per_pos
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, BD), tl.float32)
    for n0 in range(0, tl.minimum(m0 + BM, T), BN):  # causal: keys up to the block's last query
        offs_n = n0 + tl.arange(0, BN)
        k, v = _rows(K, qk, offs_n, QK_T, offs_d, D, T, EVEN), _rows(V, vo, offs_n, VO_T, offs_d, D, T, EVEN)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
        sc = _block_scales(SC, r, m0, offs_m, offs_n, T, n_chunks, CHUNK, BM, False)
        z, _, _ = _logits(s, offs_m[:, None], offs_n[None, :], T, sc, lam, eps, row_term[:, None], per_pos, FAST_MATH)
        m_new = tl.maximum(m_i, tl.max(z, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows past T see no key
        p = _exp(z - m_safe[:, None], FAST_MATH)
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)  # accumulates in place
        m_i = m_new
    rows = offs_m < T
    l_i = tl.where(rows, l_i, 1.0)  # rows past T are not stored
    tl.store(OUT + vo + offs_m[:, None] * VO_T + offs_d[None, :], (acc / l_i[:, None]).to(OUT.dtype.element_ty),
             mask=rows[:, None] & (offs_d < D)[None, :])
    tl.store(LSE + r.to(tl.int64) * T + offs_m, m_i + tl.log(l_i), mask=rows)


@triton.jit
def _dscores(p, dp, delta, sig, sc, keep, lam, eps, FAST_MATH: tl.constexpr):
    """d loss / d s from the probabilities: the softmax's backward p (dp - delta), times d z / d s =
    1 + lam sc sig (1 - sig) / (sig sc + eps); zero where the key is not seen (whatever its scale entry holds)."""
    u = sig * sc
    slope = _div(u, u + eps, FAST_MATH) * (1.0 - sig) * lam + 1.0
    return tl.where(keep, p * (dp - delta) * slope, 0.0)


@triton.jit
def _backward_dkdv_kernel(Q, K, V, SC, LAM, EPS, BAR, DO, LSE, DELTA, DK, DV, T, D, rows_per_member, n_chunks,
                          CHUNK: tl.constexpr, H, QK_PB, QK_H, QK_T, VO_PB, VO_H, VO_T, PREC: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, FAST_MATH: tl.constexpr,
                          EVEN: tl.constexpr):
    n0 = tl.program_id(1) * BN
    r = tl.program_id(0)
    lam, eps, per_pos = _knobs(LAM, EPS, BAR, r, rows_per_member, CHUNK)
    offs_n, offs_d = n0 + tl.arange(0, BN), tl.arange(0, BD)
    qk, vo = _base(r, H, QK_PB, QK_H), _base(r, H, VO_PB, VO_H)  # q, k, dk | v, d out, dv
    k, v = _rows(K, qk, offs_n, QK_T, offs_d, D, T, EVEN), _rows(V, vo, offs_n, VO_T, offs_d, D, T, EVEN)
    dk = tl.zeros((BN, BD), tl.float32)
    dv = tl.zeros((BN, BD), tl.float32)
    # The block's scores transposed, (keys x queries): k q^T, so that dv += p^T d out and dk += ds^T q take them as
    # they are.
    for m0 in range((n0 // BM) * BM, T, BM):  # the query blocks that see these keys, in order
        offs_m = m0 + tl.arange(0, BM)
        q, do, lse, delta = _query_block(Q, DO, LSE, DELTA, r, qk, QK_T, vo, VO_T, offs_m, offs_d, D, T, EVEN)
        s = tl.dot(k, tl.trans(q), input_precision=PREC)
        sc = _block_scales(SC, r, m0, offs_m, offs_n, T, n_chunks, CHUNK, BM, True)
        z, sig, keep = _logits(s, offs_m[None, :], offs_n[:, None], T, sc, lam, eps,
                               (offs_m.to(tl.float32) * per_pos)[None, :], per_pos, FAST_MATH)
        p = tl.where(keep, _exp(z - lse[None, :], FAST_MATH), 0.0)
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision=PREC)
        dp = tl.dot(v, tl.trans(do), input_precision=PREC)
        ds = _dscores(p, dp, delta[None, :], sig, sc, keep, lam, eps, FAST_MATH)
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=PREC)
    kv_mask = (offs_n < T)[:, None] & (offs_d < D)[None, :]
    tl.store(DK + qk + offs_n[:, None] * QK_T + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + vo + offs_n[:, None] * VO_T + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _backward_dq_kernel(Q, K, V, SC, LAM, EPS, BAR, OUT, DO, LSE, DELTA, DQ, T, D, rows_per_member, n_chunks,
                        CHUNK: tl.constexpr, H, QK_PB, QK_H, QK_T, VO_PB, VO_H, VO_T, PREC: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, FAST_MATH: tl.constexpr,
                        EVEN: tl.constexpr):
    """dq of a block of queries; first their delta = sum_d out * d out (the softmax backward's sum_j p dp), which it
    writes for the dk/dv kernel, launched after it."""
    m0 = tl.program_id(1) * BM
    r = tl.program_id(0)
    lam, eps, per_pos = _knobs(LAM, EPS, BAR, r, rows_per_member, CHUNK)
    offs_m, offs_d = m0 + tl.arange(0, BM), tl.arange(0, BD)
    qk, vo = _base(r, H, QK_PB, QK_H), _base(r, H, VO_PB, VO_H)  # q, k, dq | v, out, d out
    q, do = _rows(Q, qk, offs_m, QK_T, offs_d, D, T, EVEN), _rows(DO, vo, offs_m, VO_T, offs_d, D, T, EVEN)
    lse = tl.load(LSE + r.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    o = _rows(OUT, vo, offs_m, VO_T, offs_d, D, T, EVEN)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + r.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)
    row_term = offs_m.to(tl.float32) * per_pos
    dq = tl.zeros((BM, BD), tl.float32)
    for n0 in range(0, tl.minimum(m0 + BM, T), BN):
        offs_n = n0 + tl.arange(0, BN)
        k, v = _rows(K, qk, offs_n, QK_T, offs_d, D, T, EVEN), _rows(V, vo, offs_n, VO_T, offs_d, D, T, EVEN)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
        sc = _block_scales(SC, r, m0, offs_m, offs_n, T, n_chunks, CHUNK, BM, False)
        z, sig, keep = _logits(s, offs_m[:, None], offs_n[None, :], T, sc, lam, eps, row_term[:, None], per_pos,
                               FAST_MATH)
        p = tl.where(keep, _exp(z - lse[:, None], FAST_MATH), 0.0)
        ds = _dscores(p, tl.dot(do, tl.trans(v), input_precision=PREC), delta[:, None], sig, sc, keep, lam, eps,
                      FAST_MATH)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    tl.store(DQ + qk + offs_m[:, None] * QK_T + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=(offs_m < T)[:, None] & (offs_d < D)[None, :])


def _launch(kernel, launch: Launch, blocks: int, args: tuple, T: int, D: int, R: int, rows_per_member: int,
            n_chunks: int, chunk: int, precision: str, H: int, qk: tuple[int, int, int],
            vo: tuple[int, int, int]) -> None:
    """kernel over R rows x `blocks` blocks of each row's queries (forward, dq) or keys (dk/dv); qk and vo are the
    layouts (`_layout`) of q, k and their gradients and of v, out and theirs. FAST_MATH on CUDA tensors only: CPU
    tensors are run by Triton's interpreter, which has no libdevice."""
    block_d = max(16, triton.next_power_of_2(D))  # tl.dot needs 16 or more
    kernel[(R, blocks)](*args, T, D, rows_per_member, n_chunks, chunk, H, *qk, *vo, PREC=precision,
                        BM=launch.queries, BN=launch.keys, BD=block_d, FAST_MATH=args[0].device.type == "cuda",
                        EVEN=T % launch.queries == 0 and T % launch.keys == 0 and D == block_d,
                        num_warps=launch.warps, num_stages=launch.stages)


def _layout(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(S_PB, S_H, S_T), the strides the kernels step a (P, B, H, T, D) tensor by: of (member, batch row) as one
    index, of the head and of the position; None unless t is dense (its dimensions a permutation of a contiguous
    tensor's, so that empty_like keeps its strides), D is contiguous and P and B merge into one stride."""
    P, B, H, T, D = t.shape
    s_p, s_b, s_h, s_t, s_d = t.stride()
    span = 1
    for size, stride in sorted([(sz, st) for sz, st in zip(t.shape, t.stride()) if sz > 1], key=lambda d: d[1]):
        if stride != span:
            return None
        span *= size
    if (D > 1 and s_d != 1) or (P > 1 and B > 1 and s_p != B * s_b):
        return None
    return (s_b if B > 1 else s_p), s_h, s_t


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """a and b as they are where the kernels can read both with one layout, else both made contiguous."""
    layout = _layout(a)
    if layout is None or _layout(b) != layout:
        a, b = a.contiguous(), b.contiguous()
        layout = _layout(a)
    return a, b, layout


def _precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


class _PresynapticAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, key, v, scales, lam, eps, barrier, chunk: int):
        P, B, H, T, D = q.shape
        R, n_chunks = P * B * H, scales.shape[-2]
        q, key, qk = _same_layout(q, key)
        out = torch.empty_like(v)  # in v's layout (a projection's (P, B, T, H, D), whose output projection reads it)
        out, v, vo = _same_layout(out, v)
        lse = torch.empty(R, T, device=q.device, dtype=torch.float32)
        precision = _precision(q.dtype)
        _launch(_forward_kernel, FORWARD, triton.cdiv(T, FORWARD.queries),
                (q, key, v, scales, lam, eps, barrier, out, lse), T, D, R, B * H, n_chunks, chunk, precision, H, qk, vo)
        ctx.save_for_backward(q, key, v, scales, lam, eps, barrier, out, lse)
        ctx.chunk, ctx.precision, ctx.layouts = chunk, precision, (qk, vo)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, key, v, scales, lam, eps, barrier, out, lse = ctx.saved_tensors
        P, B, H, T, D = q.shape
        R, n_chunks = P * B * H, scales.shape[-2]
        qk, vo = ctx.layouts
        grad_out = grad_out.to(q.dtype)
        if _layout(grad_out) != vo:  # it comes in out's layout when out's reader is a view of it, as in the model
            grad_out = torch.empty_like(out).copy_(grad_out)
        delta = lse.new_empty(R, T)  # sum_j p_ij dp_ij per query row: written by the dq kernel, read by dk/dv's
        dq, dk, dv = torch.empty_like(q), torch.empty_like(key), torch.empty_like(v)  # q's, key's, v's layouts
        common = (T, D, R, B * H, n_chunks, ctx.chunk, ctx.precision, H, qk, vo)
        _launch(_backward_dq_kernel, BACKWARD_DQ, triton.cdiv(T, BACKWARD_DQ.queries),
                (q, key, v, scales, lam, eps, barrier, out, grad_out, lse, delta, dq), *common)
        _launch(_backward_dkdv_kernel, BACKWARD_DKDV, triton.cdiv(T, BACKWARD_DKDV.keys),
                (q, key, v, scales, lam, eps, barrier, grad_out, lse, delta, dk, dv), *common)
        return dq, dk, dv, None, None, None, None, None


def presynaptic_attention(q: torch.Tensor, key: torch.Tensor, v: torch.Tensor, scales: torch.Tensor,
                          lam: torch.Tensor, eps: torch.Tensor, barrier: torch.Tensor, chunk: int) -> torch.Tensor:
    """softmax(s + lam log(sigmoid(s) scales + eps) - barrier |i - j| / chunk) @ v over causal keys, (P, B, H, T, D).

    q, key, v: (P, B, H, T, D) of one dtype in DTYPES, in any layout (q and key are read in place where they share
    one whose D is contiguous, v likewise; the output takes v's layout, so v as a (P, B, T, H, D) projection's view
    gives an output whose (P, B, T, H * D) view needs no copy); scales: (P, B, H, n_chunks, T) float32 with
    n_chunks = ceil(T / chunk), whose entries for keys after a chunk's queries are read but not used (they may hold
    anything); lam, eps, barrier: (P,) float32. Gradients flow to q, key and v."""
    if q.dtype not in DTYPES or key.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, key and v must share one dtype of {DTYPES}, got {q.dtype}, {key.dtype}, {v.dtype}")
    T = q.shape[-2]
    if scales.shape != (*q.shape[:3], -(-T // chunk), T) or scales.dtype != torch.float32:
        raise ValueError(f"scales must be float32 {(*q.shape[:3], -(-T // chunk), T)}, got {scales.dtype} "
                         f"{tuple(scales.shape)}")
    args = [t.contiguous() for t in (scales, lam.float(), eps.float(), barrier.float())]
    return _PresynapticAttention.apply(q, key, v, *args, chunk)


def dense_reference(q: torch.Tensor, key: torch.Tensor, v: torch.Tensor, scales: torch.Tensor, lam: torch.Tensor,
                    eps: torch.Tensor, barrier: torch.Tensor, chunk: int) -> torch.Tensor:
    """What presynaptic_attention computes (same arguments), as the formula over the whole (queries x keys) matrix in
    the inputs' dtype: the kernels' reference in float64 (tests/test_fused_attention.py, and on a GPU
    bench/gpu_check.py's `attention_error`)."""
    T = q.shape[-2]
    i, j = torch.arange(T, device=q.device)[:, None], torch.arange(T, device=q.device)[None, :]
    s = q @ key.transpose(-1, -2)
    sc = scales[..., (i // chunk).expand(T, T), j.expand(T, T)].to(s.dtype)
    per = lambda x: x.to(s.dtype).view(-1, 1, 1, 1, 1)  # noqa: E731
    z = s + per(lam) * torch.log(torch.sigmoid(s) * sc + per(eps)) - per(barrier) * (i - j).to(s.dtype) / chunk
    return torch.softmax(z.masked_fill(j > i, float("-inf")), -1) @ v
