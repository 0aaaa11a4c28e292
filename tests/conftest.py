"""Shared fixtures: a model and budget small enough for CI's two cores, and the embedded corpus (loaded once).

Triton's kernels (nanochat/fused_attention.py) run in its CPU interpreter in these tests. Triton reads
TRITON_INTERPRET when it is first imported (torch.compile imports it too), so it is set here, before any test runs.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from nanochat.data import load_corpus
from helpers import one_thread as single_thread
from tiny import TRAINER_MODEL, TRAINER_SYNAPTIC, TRAINER_TRAIN


@pytest.fixture(scope="session")
def corpus():
    return load_corpus()


@pytest.fixture
def tiny_model():
    return TRAINER_MODEL


@pytest.fixture
def tiny_train():
    return TRAINER_TRAIN


@pytest.fixture
def tiny_synaptic():
    return TRAINER_SYNAPTIC


@pytest.fixture
def one_thread():
    """The test runs with one torch thread (and one OpenMP thread in its subprocesses): see helpers.one_thread."""
    with single_thread():
        yield


@pytest.fixture(params=[1, 3], ids=lambda n: f"{n}-threads")
def torch_threads(request):
    """The test runs with 1, then 3 torch (OpenMP) threads: the C kernels share their rows out over them."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def nan_loss_at(monkeypatch):
    """`nan_loss_at(member, step)`: from then on, that member's training loss is NaN at that step.

    It wraps the model's forward pass and counts training steps in a device tensor, so it also works when the step
    is replayed as a CUDA graph. The trainer must then mark the member "nan" without moving any other member.
    """
    import torch

    from nanochat.synaptic import SynapticGPT

    def install(member: int, step: int) -> None:
        original = SynapticGPT.forward

        def forward(self, idx, targets):
            loss = original(self, idx, targets)
            if not self.training:
                return loss
            counter = self.__dict__.setdefault("_test_step", torch.zeros((), dtype=torch.long, device=loss.device))
            hit = (torch.arange(loss.shape[0], device=loss.device) == member) & (counter == step)
            counter.add_(1)
            return torch.where(hit, torch.nan, loss)

        monkeypatch.setattr(SynapticGPT, "forward", forward)

    return install
