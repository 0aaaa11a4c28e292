"""Each query's release edges: its top-k allowed keys by raw q.k, listed by key position (MODEL.md, release step).

    vals, idx, valid = top_edges(dots, own, k)     # dots (..., Qc, keys) of one chunk -> three (..., Qc, k)

The chosen keys are the k largest dots the query may see (NaN counts as largest, -0 equals +0, and of equal values
the earlier key wins), listed in ascending key position; a query that sees fewer than k keys takes them all and
fills the remaining slots s with position s, marked not valid. `vals` is 0 and `valid` False where a dot is not
finite. The order matters: stochastic release draws its uniforms per slot.

On the CPU this is the C kernel of topk.c (`native.py` builds it): torch.topk costs ~8 ns per (row, key) whatever k,
and was ~14% of a training step. Where the kernel cannot run (no C compiler, float64 in tests, k > 64),
`_torch_top_edges` computes the same edges from torch.topk, slower. On CUDA the edges are torch.topk's, in the
order it returns them (unsorted): the same keys up to ties at the k-th value, in an order of torch's choosing;
with `TrainConfig.fused_attention` they are the Triton kernel's of edges_triton.py, which follows the rule above.
"""

from __future__ import annotations

import torch

from .native import library

_MAX_NATIVE_K = 64  # topk.c's MAX_K


def top_edges(dots: torch.Tensor, own: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vals, idx, valid) of the chunk's queries. `own` (Qc, Qc) is the causal mask of the chunk's own keys (the
    last Qc of `dots`' keys). `dots` may be overwritten (the torch paths mask it in place)."""
    k = min(topk, dots.shape[-1])
    if dots.device.type != "cpu":  # topk.c reads host memory; every other device (CUDA) takes torch's top-k
        dots[..., -dots.shape[-2]:].masked_fill_(~own, float("-inf"))
        vals, idx = dots.topk(k, dim=-1, sorted=False)  # unsorted: 7% cheaper, and only the set is specified here
        valid = torch.isfinite(vals)
        return torch.where(valid, vals, torch.zeros_like(vals)), idx, valid
    lib = library("topk") if dots.dtype == torch.float32 and k <= _MAX_NATIVE_K else None
    if lib is None:
        return _torch_top_edges(dots, own, k)
    return _native_top_edges(lib, dots.contiguous(), k)


def _native_top_edges(lib, dots: torch.Tensor, k: int):
    *lead, q, n = dots.shape
    rows = dots.numel() // n
    vals = torch.empty(*lead, q, k, dtype=dots.dtype)
    idx = torch.empty(*lead, q, k, dtype=torch.int64)
    valid = torch.empty(*lead, q, k, dtype=torch.bool)
    threads = max(1, min(torch.get_num_threads(), rows // 512))  # a few hundred rows per thread at least
    if lib.top_edges(dots.data_ptr(), rows, n, k, q, vals.data_ptr(), idx.data_ptr(), valid.data_ptr(), threads):
        raise RuntimeError("topk.c: top_edges failed (bad arguments or out of memory)")
    return vals, idx, valid


def _torch_top_edges(dots: torch.Tensor, own: torch.Tensor, k: int):
    """The same edges as topk.c, with torch ops. torch.topk picks the k largest (NaN first) but breaks ties at the
    k-th value, and orders NaNs, as it likes; the rows where that could matter (a visible key equal to the k-th
    value left out, a NaN anywhere, fewer than k finite keys) are chosen again by a stable sort, in which masked keys
    (-inf) sort after every visible key and an earlier key wins a tie. Then the positions are put in order."""
    dots[..., -dots.shape[-2]:].masked_fill_(~own, float("-inf"))
    idx = dots.topk(k, dim=-1, sorted=False).indices
    kth = torch.gather(dots, -1, idx).amin(dim=-1, keepdim=True)
    redo = ((dots >= kth).sum(-1) > k) | dots.isnan().any(-1) | kth.squeeze(-1).isnan()
    if redo.any():
        rows = redo.nonzero(as_tuple=True)
        idx[rows] = torch.sort(dots[rows], dim=-1, descending=True, stable=True).indices[..., :k]
    idx = idx.sort(dim=-1).values
    vals = torch.gather(dots, -1, idx)
    valid = torch.isfinite(vals)
    return torch.where(valid, vals, torch.zeros_like(vals)), idx, valid
