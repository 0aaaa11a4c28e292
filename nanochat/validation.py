"""The held-out loss: each member's mean cross-entropy on a fixed set of validation batches, after training.

Why a separate measurement: the train score (mean of the last train losses) rewards a config that memorises the
batches it has seen; the validation split (the corpus's last `VAL_FRACTION`, never trained on) does not. The batches
are drawn from the val split by `BatchStream(..., split="val")` seeded with `data_seed`, so they are identical for
every member, candidate and eval seed.

Rules it keeps: the model is put in eval mode (no release noise, no Hebbian statistics, no persistent presynaptic
state written back) under `torch.no_grad()`, so measuring changes nothing a later step could see; and every number
is a per-member reduction (`model(...)` returns one mean loss per member, summed over batches elementwise), so a
member's val loss does not depend on the population it was trained in (batch invariance). Its FLOPs are reported
(`val_flops`), not charged to the training budget.
"""

from __future__ import annotations

import torch

from .config import ConfigError, ModelConfig, TrainConfig
from .data import BatchStream, Corpus
from .synaptic import SynapticGPT


def check_val_batches(value: object) -> int:
    """`val_batches` must be an integer >= 0 (0: no validation measurement)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError.about("val_batches", f"must be an integer >= 0, got {value!r}")
    return value


def val_flops(flops_per_token: int, model_cfg: ModelConfig, train_cfg: TrainConfig, batches: int) -> int:
    """Forward-only FLOPs of the measurement per member: a third of the training estimate (2 of its 6 FLOPs per
    weight and token are the forward pass) for every validation token."""
    return flops_per_token // 3 * train_cfg.batch_size * model_cfg.sequence_len * batches


def measure_val_loss(model: SynapticGPT, corpus: Corpus, model_cfg: ModelConfig, train_cfg: TrainConfig,
                     batches: int, device: torch.device) -> list[float]:
    """Each member's mean loss over `batches` validation batches (see the module docstring)."""
    stream = BatchStream(corpus, train_cfg.batch_size, model_cfg.sequence_len, train_cfg.data_seed, device,
                         split="val")
    bf16 = train_cfg.precision == "bf16"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total = None
            for _ in range(batches):
                inputs, targets = stream.next()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                    loss = model(inputs, targets).float()
                total = loss if total is None else total + loss
    finally:
        model.train(was_training)
    return (total / batches).cpu().tolist()
