"""Wall time of the pilot document's example pilot (2 generations x 4, --target-flops 1e10): --batched vs --sequential.

Target (issue 4): batched >= 5x faster on 2 CPU cores, because the sequential path pays a Python + torch start-up
per evaluation (8 candidates + baseline and noise seeds + the best's confirmation) and the batched path pays once.
"""

from __future__ import annotations

import tempfile
import time

from cmaes_inproc import run_pilot
from nanochat.config import TrainConfig

from common import DEVICE, median

ROUNDS = 2


def run_seed_example(evaluator: str, artifacts: str, run_id: str) -> float:
    t0 = time.perf_counter()
    run_pilot(run_id=run_id, artifacts_dir=artifacts, device=DEVICE, generations=2, population_size=4,
              search_seed=0, eval_seed=123, evaluator=evaluator, plots=False, train=TrainConfig(target_flops=1e10))
    return time.perf_counter() - t0


def test_seed_example_batched_vs_sequential(benchmark):
    batched, sequential = [], []
    with tempfile.TemporaryDirectory() as tmp:
        def paired_round():
            n = len(batched)
            batched.append(run_seed_example("batched", tmp, f"b{n}"))
            sequential.append(run_seed_example("sequential", tmp, f"s{n}"))

        benchmark.pedantic(paired_round, rounds=ROUNDS, iterations=1)
    speedup = median(sequential) / median(batched)
    benchmark.extra_info.update(device=DEVICE, batched_s=batched, sequential_s=sequential, speedup=speedup)
    assert speedup >= 5.0, f"batched pilot only {speedup:.1f}x faster than --sequential (target 5x)"
