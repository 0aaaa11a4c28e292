"""Peak memory per member of a batched population: CPU RSS (fresh process per P) or CUDA max allocated.

Each P runs in its own interpreter so the peak is not inherited from an earlier, larger population; the per-member
figure is (peak(P) - peak(1)) / (P - 1), i.e. what one more candidate costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


from common import DEVICE

ON_GPU = DEVICE.startswith("cuda")
SIZES = [1, 8, 32, 128] if ON_GPU else [1, 8]

_PROBE = """
import json, resource, sys, torch
sys.path.insert(0, sys.argv[2])
from common import BASELINE_MODEL, DEVICE, bench_train, candidates
from nanochat.data import load_corpus
from nanochat.trainer import train_population
p = int(sys.argv[1])
train_population(candidates(p), BASELINE_MODEL, bench_train(2), load_corpus(), DEVICE)
cuda = torch.cuda.max_memory_allocated() / 2**20 if DEVICE.startswith('cuda') else None
print(json.dumps({'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'cuda_mib': cuda}))
"""


def peak(population: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(population), os.path.dirname(os.path.abspath(__file__))], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_per_member(benchmark):
    peaks = {}

    def measure():
        for p in SIZES:
            peaks[p] = peak(p)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    key = "cuda_mib" if ON_GPU else "rss_mib"
    per_member = {p: (peaks[p][key] - peaks[1][key]) / (p - 1) for p in SIZES if p > 1}
    benchmark.extra_info.update(device=DEVICE, peaks=peaks, per_member_mib=per_member, measure=key)
    assert all(v > 0 for v in per_member.values())
    if ON_GPU:
        assert 128 in peaks, "P = 128 must fit in memory"
