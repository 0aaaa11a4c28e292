"""Shared fixtures: a model and budget small enough for CI's two cores, and the embedded corpus (loaded once)."""

import pytest

from nanochat.data import load_corpus
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
    """Tiny models gain nothing from a second thread, and two torch processes with two threads each starve one another
    on a 2-core runner; the test runs with one torch thread, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
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
