"""Each row's sum of |x|, as torch.linalg.vector_norm(x, ord=1, dim=-1) computes it, through abs_sums.c on the CPU.

    sums = abs_row_sums(x)     # (..., n) -> (...), the bits of vector_norm(x, ord=1, dim=-1)

On the CPU, vector_norm(ord=1) adds one element after another along each row; abs_sums.c keeps that order per row
and sums eight rows side by side (2-5x faster on 2 cores). Elsewhere (CUDA, float64, no C compiler) it is
vector_norm itself.
"""

from __future__ import annotations

import torch

from .native import library


def abs_row_sums(x: torch.Tensor) -> torch.Tensor:
    lib = library("abs_sums") if x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() > 0 else None
    if lib is None:
        return torch.linalg.vector_norm(x, ord=1, dim=-1)
    x = x.contiguous()
    out = torch.empty(x.shape[:-1], dtype=x.dtype)
    if lib.abs_row_sums(x.data_ptr(), out.numel(), x.shape[-1], out.data_ptr()):
        raise RuntimeError("abs_sums.c: bad arguments")
    return out
