"""The release edges (nanochat/edges.py): the C kernel, the torch fallback and the GPU's Triton kernel
(nanochat/edges_triton.py, run here by Triton's interpreter) all give exactly the documented edges, checked against
a plain Python oracle. (Building the C kernels, and training with and without them: test_native.py; training with
the Triton kernels: test_fused_attention.py.)"""

import math

import pytest
import torch

from nanochat import native
from nanochat.edges import _native_top_edges, _torch_top_edges, top_edges

from helpers import triton_interpreter_missing

needs_compiler = pytest.mark.skipif(native.find_compiler() is None, reason="no C compiler on this machine")
needs_interpreter = pytest.mark.skipif(bool(triton_interpreter_missing()), reason=triton_interpreter_missing())


def oracle(dots: torch.Tensor, k: int):
    """The rule of edges.py, one row at a time: query j of the chunk's Qc sees keys [0, n - Qc + 1 + j); of those,
    the k largest (NaN largest, -0 == +0, the earlier key first among equals), listed by position; missing slots s
    get position s; vals 0 and valid False where the dot is not finite."""
    q, n = dots.shape[-2:]
    rows = dots.reshape(-1, n).tolist()
    vals, idx, valid = [], [], []
    for r, row in enumerate(rows):
        m = n - (q - 1 - r % q)
        rank = lambda j: (0 if math.isnan(row[j]) else 1, -row[j] if not math.isnan(row[j]) else 0.0, j)  # noqa: E731
        chosen = sorted(sorted(range(m), key=rank)[:k]) + list(range(m, k))
        for j in chosen:
            finite = j < m and math.isfinite(row[j])
            vals.append(row[j] if finite else 0.0)
            idx.append(j)
            valid.append(finite)
    shape = (*dots.shape[:-1], k)
    return (torch.tensor(vals, dtype=dots.dtype).view(shape), torch.tensor(idx).view(shape),
            torch.tensor(valid).view(shape))


def own_mask(q: int) -> torch.Tensor:
    return torch.ones(q, q, dtype=torch.bool).tril()


def awkward(shape, seed: int) -> torch.Tensor:
    """Scores with the cases that decide an order: ties (values on a coarse grid), +-0, +-inf, NaN of both signs,
    rows all equal (every key a candidate) and rows all -inf."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2).round() / 2
    flat = x.view(-1, shape[-1])
    r = torch.randint(0, flat.shape[0], (6, 4), generator=g)
    flat[r[0], r[1] % shape[-1]] = -0.0
    flat[r[1], r[2] % shape[-1]] = float("inf")
    flat[r[2], r[3] % shape[-1]] = float("-inf")
    flat[r[3], r[0] % shape[-1]] = float("nan")
    flat[r[4], r[5] % shape[-1]] = -float("nan")
    flat[r[5, 0]] = 1.5
    flat[r[5, 1]] = float("-inf")
    return x


def scores(lead: tuple, q: int, n: int, k: int, kind: str) -> torch.Tensor:
    """A case's (*lead, q, n) scores: random normal, or `awkward`."""
    shape = (*lead, q, n)
    return torch.randn(shape, generator=torch.Generator().manual_seed(n * 31 + k)) if kind == "normal" else awkward(
        shape, n + k)


CASES = [  # (rows before the chunk dims, Qc, keys, k)
    ((3, 2), 8, 8, 8), ((2, 3), 5, 17, 8), ((2, 2), 16, 33, 8), ((2,), 32, 64, 8), ((2,), 32, 256, 8),
    ((2,), 7, 100, 3), ((3,), 4, 40, 1), ((2,), 16, 48, 9), ((2,), 32, 96, 64), ((1,), 2, 4, 8),
]


@needs_compiler
@pytest.mark.parametrize("lead, q, n, k", CASES)
@pytest.mark.parametrize("kind", ["normal", "awkward"])
def test_native_and_torch_edges_follow_the_rule(lead, q, n, k, kind):
    dots = scores(lead, q, n, k, kind)
    kk = min(k, n)
    want = oracle(dots, kk)
    lib = native.library("topk")
    assert lib is not None
    for name, got in (("native", _native_top_edges(lib, dots.clone(), kk)),
                      ("torch", _torch_top_edges(dots.clone(), own_mask(q), kk))):
        for part, a, b in zip(("vals", "idx", "valid"), got, want):
            assert torch.equal(a, b), f"{name} {part} differs from the rule"


@needs_compiler
def test_the_kernel_reads_the_scores_and_does_not_depend_on_threads():
    dots = awkward((4, 4, 32, 160), 7)
    before = dots.clone()
    lib = native.library("topk")
    outs = []
    for threads in (1, 2, 7):
        vals, idx, valid = (torch.empty(4, 4, 32, 8), torch.empty(4, 4, 32, 8, dtype=torch.int64),
                            torch.empty(4, 4, 32, 8, dtype=torch.bool))
        assert lib.top_edges(dots.data_ptr(), 4 * 4 * 32, 160, 8, 32, vals.data_ptr(), idx.data_ptr(),
                             valid.data_ptr(), threads) == 0
        outs.append((vals, idx, valid))
    assert torch.equal(dots.view(torch.int32), before.view(torch.int32))  # read only, bit for bit
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other))
    assert lib.top_edges(dots.data_ptr(), 1, 160, 65, 32, vals.data_ptr(), idx.data_ptr(), valid.data_ptr(), 1) == -1


def test_float64_and_large_k_take_the_torch_path(monkeypatch):
    calls = []
    monkeypatch.setattr("nanochat.edges.library", lambda name: calls.append(name))
    dots = torch.randn(2, 8, 40, dtype=torch.float64)
    got = top_edges(dots.clone(), own_mask(8), 8)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(got, oracle(dots, 8)))
    wide = torch.randn(1, 4, 80)  # float32, but k = 65 is past the kernel's limit of 64
    got = top_edges(wide.clone(), own_mask(4), 65)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(got, oracle(wide, 65)))


TRITON_CASES = [(*case, method) for case in CASES for method in ("rounds", "scan")]
TRITON_CASES.append(((2,), 7, 1500, 8, "rounds"))  # a row longer than a program's 1,024 keys


@needs_interpreter
@pytest.mark.parametrize("lead, q, n, k, method", TRITON_CASES)
@pytest.mark.parametrize("kind", ["normal", "awkward"])
def test_the_triton_kernel_follows_the_rule(lead, q, n, k, method, kind, monkeypatch):
    """Both of the kernel's methods (edges_triton.METHOD): rounds of a row maximum, and one thread scanning a row."""
    from nanochat import edges_triton
    from nanochat.edges_triton import top_edges as triton_top_edges

    monkeypatch.setattr(edges_triton, "METHOD", method)
    dots = scores(lead, q, n, k, kind)
    before = dots.clone()
    got = triton_top_edges(dots, own_mask(q), k)
    assert torch.equal(dots.view(torch.int32), before.view(torch.int32))  # the scores are only read
    for part, a, b in zip(("vals", "idx", "valid"), got, oracle(dots, min(k, n))):
        assert torch.equal(a, b), f"triton {part} differs from the rule"


@needs_interpreter
@pytest.mark.parametrize("lead, q, n, k", [((2, 3), 5, 17, 8), ((2,), 32, 96, 64), ((2,), 7, 100, 3)])
@pytest.mark.parametrize("method", ["rounds", "scan"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_triton_kernel_reads_16_bit_dots_as_their_float32_values(lead, q, n, k, method, dtype, monkeypatch):
    """Under bf16 autocast the state loop's dots are the matmul's 16-bit result: the kernel widens each as it reads
    it, so its edges are the rule's for dots.float() (values float32), rounding's many ties included."""
    from nanochat import edges_triton

    monkeypatch.setattr(edges_triton, "METHOD", method)
    dots = (awkward((*lead, q, n), n + k) * 3.3).to(dtype)  # off the 0.5 grid, so rounding makes new ties
    got = edges_triton.top_edges(dots, own_mask(q), k)
    assert got[0].dtype == torch.float32
    for part, a, b in zip(("vals", "idx", "valid"), got, oracle(dots.float(), min(k, n))):
        assert torch.equal(a, b), f"triton {part} differs from the rule"


@needs_interpreter
def test_the_triton_kernel_refuses_other_dtypes():
    from nanochat.edges_triton import top_edges as triton_top_edges

    with pytest.raises(ValueError, match="dots must be one of"):
        triton_top_edges(torch.zeros(2, 4, 8, dtype=torch.float64), own_mask(4), 8)
