"""One prepared script for a lent GPU: CUDA batch invariance, throughput vs P, sequential ratio, memory, MFU.

    python bench/gpu_check.py --out results_gpu.json      # about 5 minutes on an H100

Writes a JSON report (and prints it). Every figure in bench/RESULTS.md's GPU section must come from this script's
output on a real device; nothing here is estimated except MFU, which divides estimate_flops() by the measured time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BASELINE_MODEL, bench_train, candidates  # noqa: E402
from nanochat.config import Member, ModelConfig, SynapticConfig, TrainConfig  # noqa: E402
from nanochat.data import load_corpus  # noqa: E402
from nanochat.synaptic import estimate_flops  # noqa: E402
from nanochat.trainer import train_population  # noqa: E402

# Dense FP32 (no tensor cores) peak of an H100 SXM; override with --peak-tflops for another card or TF32.
DEFAULT_PEAK_TFLOPS = 67.0


def invariance(corpus, dev: str) -> dict:
    model = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64)
    train = TrainConfig(batch_size=4, max_steps=20, warmup_steps=2)
    base = SynapticConfig(presyn_chunk=16)
    members = [Member(base.replace(alpha_c=0.1 + 0.1 * i, stochastic_train_frac=0.05 * i), 100 + i % 3)
               for i in range(8)]
    batched = train_population(members, model, train, corpus, dev)
    worst = 0.0
    for i, m in enumerate(members):
        alone = train_population([m], model, train, corpus, dev).members[0].losses
        worst = max(worst, max(abs(a - b) / abs(b) for a, b in zip(batched.members[i].losses, alone)))
    again = train_population(members, model, train, corpus, dev)
    repeat = all(a.losses == b.losses for a, b in zip(batched.members, again.members))
    return {"max_rel_diff_batched_vs_alone": worst, "bit_identical_repeat": repeat}


def timed(members, corpus, dev, steps) -> tuple[float, list[float]]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = train_population(members, BASELINE_MODEL, bench_train(steps), corpus, dev)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, r.step_times_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--populations", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = args.device
    corpus = load_corpus()
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps}
    report["invariance"] = invariance(corpus, dev)
    print(json.dumps(report), flush=True)

    flops_per_member_step = estimate_flops(BASELINE_MODEL, 8) * 8 * BASELINE_MODEL.sequence_len
    timed(candidates(1), corpus, dev, 2)  # warm-up
    rows = []
    for p in [int(x) for x in args.populations.split(",")]:
        torch.cuda.reset_peak_memory_stats()
        wall, step_times = timed(candidates(p), corpus, dev, args.steps)
        steady = sorted(step_times[1:])[len(step_times[1:]) // 2]  # median step, the first (warm-up) excluded
        rows.append({
            "population": p, "wall_s": wall, "median_step_s": steady,
            "member_steps_per_s": p / steady,
            "max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "mfu": p * flops_per_member_step / steady / (args.peak_tflops * 1e12),
        })
        print(json.dumps(rows[-1]), flush=True)
    report["throughput"] = rows

    members = candidates(32)
    batched_wall, _ = timed(members, corpus, dev, args.steps)
    t0 = time.perf_counter()
    for m in members:
        timed([m], corpus, dev, args.steps)
    sequential_wall = time.perf_counter() - t0
    report["p32_batched_vs_sequential"] = {"batched_s": batched_wall, "sequential_s": sequential_wall,
                                           "speedup": sequential_wall / batched_wall}
    print(json.dumps(report["p32_batched_vs_sequential"]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
