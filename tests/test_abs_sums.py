"""abs_row_sums (nanochat/abs_sums.py, abs_sums.c) gives torch.linalg.vector_norm(x, ord=1, dim=-1)'s bits."""

import pytest
import torch

from nanochat import native
from nanochat.abs_sums import abs_row_sums


@pytest.mark.skipif(native.find_compiler() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("shape", [(8, 2048, 128), (3, 37, 512), (5, 7), (13,), (2, 0, 4), (4, 0), (9, 3, 1)])
def test_c_row_sums_are_vector_norms_bits(shape, torch_threads):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) ** 3 * 1e3  # a wide range of magnitudes: the order of the adds shows
    flat = x.view(-1)
    if flat.numel() > 40:
        flat[3], flat[17], flat[29], flat[31] = -0.0, float("inf"), float("nan"), -float("inf")
    want = torch.linalg.vector_norm(x, ord=1, dim=-1)
    got = abs_row_sums(x)
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num().view(torch.int32), want.nan_to_num().view(torch.int32))
    if x.dim() == 3 and x.shape[-1] > 1 and x.numel():  # not vacuous: a pairwise sum would differ somewhere
        assert not torch.equal(x.abs().sum(-1), want)


def test_other_dtypes_and_no_kernel_fall_back_to_vector_norm(monkeypatch):
    calls = []
    monkeypatch.setattr("nanochat.abs_sums.library", lambda name: calls.append(name))
    x = torch.randn(4, 9, dtype=torch.float64)
    assert torch.equal(abs_row_sums(x), torch.linalg.vector_norm(x, ord=1, dim=-1)) and calls == []
    y = torch.randn(4, 9)
    assert torch.equal(abs_row_sums(y), torch.linalg.vector_norm(y, ord=1, dim=-1)) and calls == ["abs_sums"]
