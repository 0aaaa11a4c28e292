"""Each query's release edges as one Triton kernel, for the GPU: the same edges, in the same order, as topk.c.

    vals, idx, valid = top_edges(dots, own, k)     # dots (..., Qc, keys) of one chunk -> three (..., Qc, k)

The definition is edges.py's: the k largest dots among the keys a query may see (NaN counts as largest, -0 equals
+0, of equal values the earlier key wins), listed in ascending key position; a query that sees fewer than k keys
takes them all and fills the remaining slots s with position s, not valid; `vals` is 0 and `valid` False where a dot
is not finite. `own` must be the causal mask of the chunk's own keys (the last Qc of the keys), as it always is in
the attention; the kernel computes it from positions and does not read it.

Why: on an H200, torch.topk on CUDA (a radix select per row, `gatherTopK`) was 10.6% of a training step's kernel
time at P = 32 and 14.5% at P = 128, 0.88 ms per call there (bench/RESULTS.md); a chunk's top 8 of at most a few
hundred keys per row is a few passes over registers. A program holds a block of rows whole: each key gets its dot's
place in the order above as an int32, k rounds each pick the row's largest and, of the keys that have it, the
earliest, and a running count over the row gives each chosen key its slot in key order ("rounds"). The other method
("scan", `METHOD`) gives each row to one thread, which reads its keys in order, four to a load, and inserts each
into its best k so far (a key that ties a listed one ranks after it, being later); then each chosen key's slot is
the number of chosen keys before it. Compiled for sm_90 (Triton 3.9, bench/tune_kernels.py --resources), a row of
256 keys costs the rounds 864 warp instructions (one warp, 80 registers, values crossing its threads; 1,189 and 145
when a round took one maximum of 64-bit (order, position) ranks) and the scan about 320 (a loop of 160 per 4 keys,
32 rows to a warp; 32 registers); which is faster, only a GPU says. Nothing depends on how the GPU schedules either:
the edges are a function of the dots, as on the CPU, so stochastic release (which draws its uniforms per slot) sees
the same edges on every device. It is used with `TrainConfig.fused_attention` (release_triton.state_step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A program takes as many whole rows as fit in 256 keys (at least one row), on one warp per 256 of its keys (at most
# 8). Timed on an H200 at P = 128, rows of 32 to 256 keys (bench/tune_kernels.py): of seven settings this was
# the fastest, a training step of 76.1 ms against 79.4 ms with the former 1,024 keys on 8 warps (one per 128 keys).
# Compiled for sm_90 (ptxas): 80 registers for a 256-key row on 1 warp, no spills; longer rows get more warps (1,024
# keys on 4 use 64 registers, 2,048 on 8 use 72), not timed on a GPU. (The timed build ranked 64-bit keys: 145
# registers, and a 1,024-key row spilled on 1 warp.)
KEYS_PER_PROGRAM = 256
KEYS_PER_WARP = 256
MAX_WARPS = 8
# The other way to the same edges (METHOD = "scan", `_scan_kernel`): one thread per row walks its keys in order, four
# at a time, and keeps its best k in registers, so no value crosses threads and a program needs few registers. Which
# is faster only a GPU says (bench/tune_kernels.py's top_k phase times both); "rounds" was timed on an H200.
METHOD = "rounds"
SCAN_WARPS = 4  # a scan program's warps: 32 rows each
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # of the dots; the edges' values are float32


def warps_for(keys: int) -> int:
    """Warps for a program of `keys` keys: one per KEYS_PER_WARP, 1 to MAX_WARPS."""
    return min(MAX_WARPS, max(1, keys // KEYS_PER_WARP))


@triton.jit
def _top_edges_kernel(DOTS, VALS, IDX, VALID, rows, n, q, K: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    j = tl.arange(0, BN)
    seen = n - (q - 1 - r % q)  # row r is query r % q of the chunk, whose q queries are the last q keys
    live = r < rows
    visible = (j[None, :] < seen[:, None]) & live[:, None]
    x = tl.load(DOTS + r.to(tl.int64)[:, None] * n + j[None, :], mask=visible, other=0.0).to(tl.float32)
    # The dot's place in the order -inf < ... < -0 = +0 < ... < +inf < NaN, as an int32 (topk.c's order_key); keys
    # the query may not see rank below every dot.
    bits = x.to(tl.int32, bitcast=True)
    order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    order = tl.where(x == 0.0, 0, order)
    order = tl.where(x != x, 0x7FFFFFFF, order)
    order = tl.where(visible, order, -0x7FFFFFFF)
    # Each round takes the row's largest order, and of the keys that have it the earliest: two 32-bit reductions
    # (one instruction each across a warp on sm_90), where one over a 64-bit (order, position) rank took a dozen.
    # A taken key's order becomes the int32 minimum, below every key, seen or not: that is what marks it chosen.
    for _ in tl.static_range(K):
        at_top = order == tl.max(order, 1)[:, None]
        hit = j[None, :] == tl.min(tl.where(at_top, j[None, :], BN), 1)[:, None]
        order = tl.where(hit, -2147483648, order)
    chosen = order == -2147483648
    slot = tl.cumsum(chosen.to(tl.int32), 1) - 1  # the chosen keys in ascending position
    finite = visible & (tl.abs(x) < float("inf"))
    out = r.to(tl.int64)[:, None] * K + slot
    store = chosen & live[:, None]
    tl.store(IDX + out, j[None, :].to(tl.int64) + tl.zeros((BR, BN), tl.int64), mask=store)
    tl.store(VALS + out, tl.where(finite, x, 0.0), mask=store)
    tl.store(VALID + out, finite, mask=store)


@triton.jit
def _insert(best_o, best_p, o, p, K: tl.constexpr):
    """(o, p), a key after every key in the list, into the list of the K best so far: `best_o` (order) and `best_p`
    (position), two K-tuples of rows, best first. Of equal orders the earlier key is better, so a listed key stays
    ahead of (o, p) when its order is at least o; the keys behind it move down one slot, and the last falls off."""
    new_o = ()
    new_p = ()
    ahead = best_o[0] >= o  # the key in slot s stays ahead of (o, p): true for a prefix of the slots
    new_o = new_o + (tl.where(ahead, best_o[0], o),)
    new_p = new_p + (tl.where(ahead, best_p[0], p),)
    for s in tl.static_range(1, K):
        stays = best_o[s] >= o
        new_o = new_o + (tl.where(stays, best_o[s], tl.where(ahead, o, best_o[s - 1])),)
        new_p = new_p + (tl.where(stays, best_p[s], tl.where(ahead, p, best_p[s - 1])),)
        ahead = stays
    return new_o, new_p


@triton.jit
def _scan_kernel(DOTS, VALS, IDX, VALID, rows, n, q, K: tl.constexpr, BR: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)  # one row a thread
    seen = n - (q - 1 - r % q)
    live = r < rows
    base = DOTS + r.to(tl.int64) * n
    best_o = (tl.full((BR,), -2147483648, tl.int32),) * K  # below every key (an empty slot)
    best_p = (tl.zeros((BR,), tl.int32),) * K
    for j in range(0, n, 4):
        c = j + tl.arange(0, 4)
        # The whole row is read (a key the query may not see is in it too), so that the four keys are one load.
        x = tl.load(base[:, None] + c[None, :], mask=live[:, None] & (c[None, :] < n), other=0.0).to(tl.float32)
        # The order of `_top_edges_kernel`; a key the query may not see below every dot, a column past the row's
        # end below that (it never enters the list).
        bits = x.to(tl.int32, bitcast=True)
        order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        order = tl.where(x == 0.0, 0, order)
        order = tl.where(x != x, 0x7FFFFFFF, order)
        order = tl.where(c[None, :] < seen[:, None], order, -0x7FFFFFFF)
        order = tl.where(c[None, :] < n, order, -2147483648)
        even, odd = tl.split(tl.reshape(order, (BR, 2, 2)))  # columns (0, 2) and (1, 3)
        o0, o2 = tl.split(even)
        o1, o3 = tl.split(odd)
        best_o, best_p = _insert(best_o, best_p, o0, j, K)
        best_o, best_p = _insert(best_o, best_p, o1, j + 1, K)
        best_o, best_p = _insert(best_o, best_p, o2, j + 2, K)
        best_o, best_p = _insert(best_o, best_p, o3, j + 3, K)
    out = r.to(tl.int64) * K
    for a in tl.static_range(K):  # each chosen key's slot: the chosen keys before it
        slot = tl.zeros((BR,), tl.int32)
        for b in tl.static_range(K):
            slot += (best_p[b] < best_p[a]).to(tl.int32)
        visible = best_p[a] < seen
        x = tl.load(base + best_p[a], mask=live & visible, other=0.0).to(tl.float32)
        finite = visible & (tl.abs(x) < float("inf"))
        tl.store(IDX + out + slot, best_p[a].to(tl.int64), mask=live)
        tl.store(VALS + out + slot, tl.where(finite, x, 0.0), mask=live)
        tl.store(VALID + out + slot, finite, mask=live)


def top_edges(dots: torch.Tensor, own: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vals, idx, valid) of the chunk's queries, as edges.top_edges of the dots in float32; `own` the causal mask.
    `dots` may be 16-bit (the matmuls' dtype under autocast): the kernel widens each as it reads it, which is
    exact, so the edges are those of `dots.float()` and `vals` is float32, without a float32 copy of the dots."""
    if dots.dtype not in DTYPES:
        raise ValueError(f"dots must be one of {DTYPES}, got {dots.dtype}")
    dots, k = dots.contiguous(), min(topk, dots.shape[-1])
    *lead, q, n = dots.shape
    rows = dots.numel() // n
    vals = dots.new_empty(*lead, q, k, dtype=torch.float32)
    idx = dots.new_empty(*lead, q, k, dtype=torch.int64)
    valid = dots.new_empty(*lead, q, k, dtype=torch.bool)
    if rows and METHOD == "scan":
        block_r = 32 * SCAN_WARPS
        _scan_kernel[(triton.cdiv(rows, block_r),)](dots, vals, idx, valid, rows, n, q, K=k, BR=block_r,
                                                    num_warps=SCAN_WARPS)
    elif rows:
        block_n = triton.next_power_of_2(n)
        block_r = max(1, KEYS_PER_PROGRAM // block_n)
        _top_edges_kernel[(triton.cdiv(rows, block_r),)](dots, vals, idx, valid, rows, n, q, K=k, BR=block_r,
                                                          BN=block_n, num_warps=warps_for(block_r * block_n))
    return vals, idx, valid
