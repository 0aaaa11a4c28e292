"""One prepared script for a lent GPU: CUDA batch invariance, throughput vs P, sequential ratio, memory, MFU, profile.

    python bench/gpu_check.py --out gpu.json                     # about 4 minutes on an H100
    python bench/gpu_check.py --device cpu --smoke --out x.json  # seconds: the same code path on a tiny model

The report is rewritten after every phase (a time-out still leaves what was measured) and each row is printed as
one JSON line. Every GPU figure in bench/RESULTS.md must come from this script's output on a real device; nothing
here is estimated except MFU, which divides estimate_flops() by the measured step time. A population that does not
fit is recorded as "oom" and the script goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BASELINE_MODEL, candidates  # noqa: E402

from nanochat.config import Member, ModelConfig, SynapticConfig, TrainConfig  # noqa: E402
from nanochat.data import load_corpus  # noqa: E402
from nanochat.synaptic import estimate_flops  # noqa: E402
from nanochat.trainer import train_population  # noqa: E402

# Dense FP32 (no tensor cores) peak of an H100 SXM; override with --peak-tflops for another card.
DEFAULT_PEAK_TFLOPS = 67.0
# Batch invariance on CUDA is checked at these relative tolerances on every loss of a 20-step run (CPU is exact):
# cuBLAS may pick a different kernel for a different batch count, which reorders fp32 sums; bf16 rounds more.
INVARIANCE_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}
SMOKE_MODEL = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def invariance(corpus, dev: torch.device, precision: str, steps: int) -> dict:
    """A mixed population of 8 (4 seeds, stochastic release on 7) against each member trained alone."""
    model = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64)
    train = TrainConfig(batch_size=4, max_steps=steps, warmup_steps=2, precision=precision)
    base = SynapticConfig(presyn_chunk=16)
    members = [Member(base.replace(alpha_c=0.1 + 0.1 * i, stochastic_train_frac=0.05 * i), 100 + i % 3)
               for i in range(8)]
    batched = train_population(members, model, train, corpus, dev)
    worst = 0.0
    for i, m in enumerate(members):
        alone = train_population([m], model, train, corpus, dev).members[0].losses
        worst = max(worst, max(abs(a - b) / abs(b) for a, b in zip(batched.members[i].losses, alone)))
    again = train_population(members, model, train, corpus, dev)
    return {
        "precision": precision, "steps": steps, "max_rel_diff_batched_vs_alone": worst,
        "tolerance": INVARIANCE_TOLERANCE[precision], "passed": worst <= INVARIANCE_TOLERANCE[precision],
        "bit_identical_repeat": all(a.losses == b.losses for a, b in zip(batched.members, again.members)),
        "all_ok": all(m.ok for m in batched.members),
    }


def run(members, model, corpus, dev, steps: int, precision: str = "fp32") -> tuple[float, list[float]]:
    """Wall seconds (construction included) and the per-step device times of one population."""
    train = TrainConfig(max_steps=steps, warmup_steps=1, precision=precision)
    sync(dev)
    t0 = time.perf_counter()
    result = train_population(members, model, train, corpus, dev)
    sync(dev)
    return time.perf_counter() - t0, result.step_times_s


def throughput_row(p: int, model, corpus, dev, steps: int, precision: str, peak_tflops: float) -> dict:
    row: dict = {"population": p, "precision": precision}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        wall, step_times = run(candidates(p), model, corpus, dev, steps, precision)
    except torch.OutOfMemoryError:
        row["status"] = "oom"
        return row
    steady = statistics.median(step_times[1:]) if len(step_times) > 1 else step_times[0]  # first step excluded
    flops_per_member_step = estimate_flops(model, 8) * 8 * model.sequence_len
    row.update(status="ok", wall_s=wall, median_step_s=steady, member_steps_per_s=p / steady,
               mfu_vs_fp32_peak=p * flops_per_member_step / steady / (peak_tflops * 1e12))
    if dev.type == "cuda":
        row["max_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return row


def profile_top_ops(p: int, model, corpus, dev, rows: int = 15) -> list[dict]:
    """Top operators of two training steps of a population of p (device time on CUDA, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    run(candidates(p), model, corpus, dev, 1)  # warm-up outside the profile
    with profile(activities=activities) as prof:
        run(candidates(p), model, corpus, dev, 2)
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:rows]
    total = sum(getattr(e, key, 0.0) for e in prof.key_averages()) or 1.0
    return [{"op": e.key, "share": getattr(e, key, 0.0) / total, "calls": e.count} for e in events]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--populations", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--ratio-population", type=int, default=32, help="P for the batched-vs-sequential ratio")
    ap.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS)
    ap.add_argument("--smoke", action="store_true", help="tiny model and populations: checks the script, not a GPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    model = SMOKE_MODEL if args.smoke else BASELINE_MODEL
    pops = [1, 2] if args.smoke else [int(x) for x in args.populations.split(",")]
    ratio_p = 2 if args.smoke else args.ratio_population
    inv_steps = 3 if args.smoke else 20
    corpus = load_corpus()
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'unknown'})",
        "torch": torch.__version__, "steps": args.steps, "model": model.to_dict(), "smoke": args.smoke,
    }

    def emit(key: str, value) -> None:
        report[key] = value
        print(json.dumps({key: value}), flush=True)
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(report, f, indent=2)
            os.replace(args.out + ".tmp", args.out)

    emit("invariance", [invariance(corpus, dev, prec, inv_steps) for prec in ("fp32", "bf16")])
    run(candidates(1), model, corpus, dev, 2)  # warm-up (CUDA context, cuBLAS handles, allocator)
    rows = []
    for p in pops:
        rows.append(throughput_row(p, model, corpus, dev, args.steps, "fp32", args.peak_tflops))
        emit("throughput", rows)
    rows.append(throughput_row(ratio_p, model, corpus, dev, args.steps, "bf16", args.peak_tflops))
    emit("throughput", rows)

    # The headline ratio: the same ratio_p candidates as one population vs one after another, same steps, paired.
    members = candidates(ratio_p)
    batched, sequential = [], []
    for _ in range(2):
        batched.append(run(members, model, corpus, dev, args.steps)[0])
        t0 = time.perf_counter()
        for m in members:
            run([m], model, corpus, dev, args.steps)
        sequential.append(time.perf_counter() - t0)
    emit("batched_vs_sequential", {
        "population": ratio_p, "steps": args.steps, "batched_s": batched, "sequential_s": sequential,
        "speedup_median": statistics.median(sequential) / statistics.median(batched),
    })
    emit("profile", {"population": ratio_p, "top_ops": profile_top_ops(ratio_p, model, corpus, dev)})
    return report


if __name__ == "__main__":
    main()
