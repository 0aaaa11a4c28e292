"""Shared pieces of the throughput benchmarks: the pilot document's baseline model, candidate populations, timers.

Every benchmark trains real candidates of the baseline model (4 layers, width 128, 4 heads, sequence 256, batch 8)
on the embedded corpus. `BENCH_DEVICE` (default cpu) picks the device; `BENCH_STEPS` the steps per measurement.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from nanochat.config import Member, ModelConfig, SynapticConfig, TrainConfig
from nanochat.synaptic import SynapticGPT
from nanochat.trainer import train_population

DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
STEPS = int(os.environ.get("BENCH_STEPS", "4"))
BASELINE_MODEL = ModelConfig()  # the pilot document's Phase-1 baseline


def bench_train(steps: int = STEPS) -> TrainConfig:
    return TrainConfig(max_steps=steps, warmup_steps=1)


def candidates(n: int, seed: int = 123) -> list[Member]:
    """n distinct candidates spread over the knob ranges, sharing one eval seed (as a pilot generation does)."""
    out = []
    for i in range(n):
        f = (i + 0.5) / n
        cfg = SynapticConfig(
            tau_c=0.70 + 0.29 * f, alpha_c=0.1 + 0.9 * (1 - f), init_rrp=1.0 + 17.0 * f,
            lambda_loge=4.0 * (1 - f), stochastic_train_frac=0.4 * f, post_fast_lr=10 ** (-4.5 + 2.5 * f),
        )
        out.append(Member(cfg, seed))
    return out


def sync(device: torch.device | str = DEVICE) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that a timer measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_batched(members: list[Member], corpus, steps: int = STEPS) -> float:
    """Wall seconds to train all members as one population (model construction included)."""
    sync()
    t0 = time.perf_counter()
    train_population(members, BASELINE_MODEL, bench_train(steps), corpus, DEVICE)
    sync()
    return time.perf_counter() - t0


def time_sequential(members: list[Member], corpus, steps: int = STEPS) -> float:
    """Wall seconds to train the same members one after another in this process."""
    sync()
    t0 = time.perf_counter()
    for m in members:
        train_population([m], BASELINE_MODEL, bench_train(steps), corpus, DEVICE)
    sync()
    return time.perf_counter() - t0


def time_subprocess(steps: int, out_dir: str, seed: int = 123) -> float:
    """Wall seconds of one `python -m nanochat.train` candidate, interpreter and torch start-up included."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nanochat.train", "--device", DEVICE, "--seed", str(seed),
                    "--max-steps", str(steps), "--warmup-steps", "1", "--out-dir", out_dir, "--overwrite",
                    "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def nan_loss_at(member: int, step: int):
    """Within the block, `member`'s training loss is NaN at `step` (a fault to isolate). Steps are counted in a device
    tensor, so the fault also fires when the step is replayed as a CUDA graph."""
    original = SynapticGPT.forward

    def forward(self, idx, targets):
        loss = original(self, idx, targets)
        counter = self.__dict__.setdefault("_bench_step", torch.zeros((), dtype=torch.long, device=loss.device))
        hit = (torch.arange(loss.shape[0], device=loss.device) == member) & (counter == step)
        counter.add_(int(self.training))
        return torch.where(hit & self.training, torch.nan, loss)

    SynapticGPT.forward = forward
    try:
        yield
    finally:
        SynapticGPT.forward = original
