"""Profile batched training steps of the baseline model and print the top operators.

    python bench/profile_step.py --population 8 --steps 3 [--device cuda] [--sort self_cpu_time_total]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BASELINE_MODEL, candidates  # noqa: E402
from nanochat.data import BatchStream, load_corpus  # noqa: E402
from nanochat.hostmem import keep_freed_memory  # noqa: E402
from nanochat.optim import PopulationOptimizer  # noqa: E402
from nanochat.synaptic import SynapticGPT  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cpu":
        keep_freed_memory()  # as train_population does: without it fresh large tensors are page-faulted anew
    members = candidates(args.population)
    model = SynapticGPT(BASELINE_MODEL, [m.synaptic for m in members], [m.seed for m in members], dev).train()
    opt = PopulationOptimizer(model, 3e-3, 0.02)
    stream = BatchStream(load_corpus(), 8, BASELINE_MODEL.sequence_len, 0, dev)
    active = torch.ones(args.population, dtype=torch.bool, device=dev)

    def step():
        x, y = stream.next()
        model(x, y).sum().backward()
        model.hebbian_update(active)
        opt.set_schedule(1.0)
        opt.step(active)
        opt.zero_grad()

    step()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
