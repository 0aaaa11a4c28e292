"""Muon's Newton-Schulz iteration: each matrix by its own norm, in the matmul dtype the run asks for."""

import torch

from nanochat import optim
from nanochat.config import TrainConfig
from nanochat.trainer import train_population
from tiny import TRAINER_MODEL, TRAINER_SYNAPTIC, mixed_population


def _matrices() -> torch.Tensor:
    """Six wide matrices at scales 1e-3 to 1e2: the normalisation must not let one slice's norm reach another."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1e-3, 1.0, 10.0, 1.0, 1.0, 1e2])
    return torch.randn(6, 16, 48, generator=g) * scales[:, None, None]


def test_newton_schulz_pushes_every_singular_value_near_one_slice_by_slice():
    x = _matrices()
    y = optim.newton_schulz(x)
    s = torch.linalg.svdvals(y)
    assert s.min() > 0.6 and s.max() < 1.2, (s.min(), s.max())  # the quintic's band, whatever the input's scale
    for i in range(len(x)):  # a slice alone gives the same bits: stacking members and shapes adds nothing
        assert torch.equal(optim.newton_schulz(x[i:i + 1]), y[i:i + 1])
    assert torch.equal(optim.newton_schulz(x.transpose(-1, -2)), y.transpose(-1, -2))  # tall = transposed wide


def test_newton_schulz_in_bfloat16_returns_float32_near_the_float32_iteration():
    x = _matrices()
    y, yb = optim.newton_schulz(x), optim.newton_schulz(x, dtype=torch.bfloat16)
    assert yb.dtype == torch.float32
    assert not torch.equal(yb, y)  # the iteration really ran in bfloat16
    assert (yb - y).abs().max() <= 0.05 * y.abs().max()  # bfloat16 keeps ~3 digits over 5 steps
    s = torch.linalg.svdvals(yb)
    assert s.min() > 0.6 and s.max() < 1.2
    for i in range(len(x)):
        assert torch.equal(optim.newton_schulz(x[i:i + 1], dtype=torch.bfloat16), yb[i:i + 1])


def test_the_bfloat16_iteration_starts_from_the_normalised_matrix_rounded():
    """The normalisation writes bfloat16 directly (one pass, no float32 copy to cast): the same bits as dividing in
    float32 and casting, so the iteration is the one written out here, bit for bit, wide and tall."""
    a, b, c = optim._NS_COEFFS
    for x in (_matrices(), _matrices().transpose(-1, -2)):
        wide = x.transpose(-1, -2) if x.shape[-2] > x.shape[-1] else x
        y = (wide / (wide * wide).sum(-1).sum(-1).sqrt().add(1e-7)[:, None, None]).to(torch.bfloat16)
        for _ in range(5):
            gram = y @ y.transpose(-1, -2)
            y = torch.baddbmm(y, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
        y = y.float()
        assert torch.equal(optim.newton_schulz(x, dtype=torch.bfloat16), y if x is wide else y.transpose(-1, -2))


def test_a_bf16_run_orthogonalises_in_bf16_and_an_fp32_run_in_fp32(monkeypatch, corpus):
    seen = []
    real = optim.newton_schulz

    def recording(grad, *args, dtype=None, **kwargs):
        seen.append(dtype)
        return real(grad, *args, dtype=dtype, **kwargs)

    monkeypatch.setattr(optim, "newton_schulz", recording)
    members = mixed_population(TRAINER_SYNAPTIC)[:2]
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seen.clear()
        cfg = TrainConfig(batch_size=2, max_steps=1, warmup_steps=0, precision=precision)
        assert train_population(members, TRAINER_MODEL, cfg, corpus).members[0].status == "ok"
        assert seen and set(seen) == {dtype}, (precision, seen)
