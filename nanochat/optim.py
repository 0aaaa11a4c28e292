"""Per-member optimizers: AdamW for embeddings, lm_head and vectors; Muon for the blocks' matrices.

Both act on (P, ...) parameters with a per-member learning rate (P,), which is zero for failed members, so a
diverged member stops moving while the others carry on. Muon's Newton-Schulz iteration normalises each member's
matrix by that member's own norm: no statistic mixes members.

The step is vectorised: AdamW runs as a few `torch._foreach_*` calls over all its parameters, and Muon stacks the
matrices of one shape (a wide matrix and the transpose of a tall one count as the same shape) into one
(matrices x P, m, n) batch, so the Newton-Schulz iteration is 15 batched matmuls per shape (4 shapes in the baseline
model) instead of 15 per matrix (40 matrices). Stacking only adds slices to the batch: each slice is still
normalised by its own norm and multiplied by the same kernel, so a member's update does not depend on P.

Under `TrainConfig(precision="bf16")` the Newton-Schulz matmuls run in bfloat16 too (`matmul_dtype`), as in Muon's
reference: outside autocast they would otherwise run as IEEE float32, which on an H200 was ~9 ms of a 77 ms bf16
step at P = 128 (CUDA-core FFMA GEMMs in the tenth session's profile, bench/RESULTS.md), more than a TF32 step spends.
"""

from __future__ import annotations

import torch
from torch import nn

from .population import bcast, member_sum

# Quintic Newton-Schulz coefficients (as popularised by Muon) that push singular values towards 1 in few steps.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None
                  ) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a batch, (N, m, n) -> (N, m, n), each by its own norm.

    The norm is taken in grad's dtype; the iteration's matmuls run in `dtype` (default: grad's), and the result
    comes back in grad's dtype. bfloat16 is what Muon's reference uses: the iteration only needs singular values
    near 1, not their digits."""
    a, b, c = _NS_COEFFS
    x = grad
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.transpose(-1, -2)
    norm = bcast(member_sum(x * x).sqrt() + eps, 3)
    dtype = dtype or grad.dtype
    # in `dtype` straight from the division (it rounds as a cast would), not a float32 result cast in a second pass
    x = x / norm if dtype == x.dtype else torch.div(x, norm, out=torch.empty_like(x, dtype=dtype))
    for _ in range(steps):  # x <- a x + (b G + c G G) x with G = x x^T, as two fused multiply-adds
        gram = x @ x.transpose(-1, -2)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.to(grad.dtype)
    return x.transpose(-1, -2) if transposed else x


class PopulationOptimizer:
    """AdamW + Muon over a population model; `set_schedule(lr_scale)` then `step(active)` updates active members."""

    def __init__(self, model: nn.Module, learning_rate: float, matrix_lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 matmul_dtype: torch.dtype = torch.float32):
        self.adam_params: list[nn.Parameter] = []
        self.muon_params: list[nn.Parameter] = []
        for name, p in model.named_parameters():
            # Block matrices (P, m, n) go to Muon; embeddings, lm_head, biases and other vectors to AdamW.
            if name.startswith("blocks.") and p.dim() == 3 and min(p.shape[1:]) > 1:
                self.muon_params.append(p)
            else:
                self.adam_params.append(p)
        self.lr, self.matrix_lr, self.wd = learning_rate, matrix_lr, weight_decay
        self.betas, self.eps, self.momentum = betas, eps, momentum
        self.matmul_dtype = matmul_dtype  # of Muon's Newton-Schulz matmuls (bfloat16 under TrainConfig bf16)
        self.adam_state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.adam_params]
        self.muon_state = [torch.zeros_like(p) for p in self.muon_params]
        self.t = 0
        # The per-step scalars live in 0-dim device tensors (float64, like the Python floats they replace), so that
        # step() launches the same kernels on the same memory every step: that is what lets a CUDA graph replay it.
        device = self.adam_params[0].device if self.adam_params else self.muon_params[0].device
        scalar = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        self._adam_lr, self._muon_lr, self._bias1, self._bias2 = scalar(), scalar(), scalar(), scalar()
        # What a failed member's gradients become: one device zero, not a Python 0.0 that torch.where turns into a
        # fresh device scalar (a fill kernel) for every parameter.
        self._zero = torch.zeros((), device=device)

    def set_schedule(self, lr_scale: float) -> None:
        """Advance the step count and write this step's learning rates and bias corrections (outside any graph)."""
        self.t += 1
        b1, b2 = self.betas
        self._adam_lr.fill_(self.lr * lr_scale)
        self._muon_lr.fill_(self.matrix_lr * lr_scale)
        self._bias1.fill_(1 - b1**self.t)
        self._bias2.fill_(1 - b2**self.t)

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One update with the rates of the last set_schedule(); `active` (P,) bool. Gradients of inactive members
        are zeroed (they may be NaN/Inf). Nothing here reads host state that changes per step, so it can be captured.
        """
        self._adam_step(active)
        self._muon_step(active)

    def _adam_step(self, active: torch.Tensor) -> None:
        live = [i for i, p in enumerate(self.adam_params) if p.grad is not None]
        if not live:
            return
        params = [self.adam_params[i] for i in live]
        ms, vs = [self.adam_state[i][0] for i in live], [self.adam_state[i][1] for i in live]
        b1, b2 = self.betas
        grads = [torch.where(bcast(active, p.dim()), p.grad, self._zero) for p in params]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, grads, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        denom = torch._foreach_div(vs, self._bias2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(ms, self._bias1)
        torch._foreach_div_(update, denom)
        if self.wd:
            torch._foreach_add_(update, params, alpha=self.wd)
        rate = self._adam_lr * active.to(torch.float32)  # (P,): zero for failed members
        torch._foreach_mul_(update, [bcast(rate, p.dim()) for p in params])
        torch._foreach_sub_(params, update)

    def _muon_step(self, active: torch.Tensor) -> None:
        live = [i for i, p in enumerate(self.muon_params) if p.grad is not None]
        if not live:
            return
        params, bufs = [self.muon_params[i] for i in live], [self.muon_state[i] for i in live]
        grads = [torch.where(bcast(active, p.dim()), p.grad, self._zero) for p in params]
        torch._foreach_mul_(bufs, self.momentum)
        torch._foreach_add_(bufs, grads)
        nesterov = torch._foreach_add(grads, bufs, alpha=self.momentum)
        # Group by the orientation-free shape: tall matrices are orthogonalised as their (wide) transpose.
        groups: dict[tuple[int, int], list[int]] = {}
        for j, g in enumerate(nesterov):
            rows, cols = g.shape[-2:]
            groups.setdefault((min(rows, cols), max(rows, cols)), []).append(j)
        orthogonal: dict[int, torch.Tensor] = {}
        for members in groups.values():
            wide = [nesterov[j].transpose(-1, -2) if nesterov[j].shape[-2] > nesterov[j].shape[-1] else nesterov[j]
                    for j in members]
            stacked = newton_schulz(torch.cat(wide), dtype=self.matmul_dtype)  # (len(members) * P, m, n)
            for j, out in zip(members, stacked.split([w.shape[0] for w in wide])):
                orthogonal[j] = out.transpose(-1, -2) if nesterov[j].shape[-2] > nesterov[j].shape[-1] else out
        rate = self._muon_lr * active.to(torch.float32)
        # p -= rate * (scale * o + wd * p), as a few multi-tensor launches instead of five kernels per matrix;
        # scale keeps the update's RMS comparable for tall and wide matrices.
        scales = [max(1.0, p.shape[-2] / p.shape[-1]) ** 0.5 for p in params]
        update = torch._foreach_mul([orthogonal[j] for j in range(len(params))], scales)
        if self.wd:
            torch._foreach_add_(update, torch._foreach_mul(params, self.wd))
        torch._foreach_mul_(update, [bcast(rate, p.dim()) for p in params])
        torch._foreach_sub_(params, update)

    def zero_grad(self) -> None:
        for p in self.adam_params + self.muon_params:
            p.grad = None
