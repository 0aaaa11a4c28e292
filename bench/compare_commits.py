"""Member-steps/s of two checkouts side by side in one run: fresh processes, A and B interleaved, medians.

    git worktree add --detach /tmp/before c5c57d3            # or: git archive c5c57d3 | tar -x -C /tmp/before
    python bench/compare_commits.py --before /tmp/before --population 8 --steps 6 --repeats 5

Each measurement is a fresh `python` process that imports `nanochat` from its checkout, trains the same P
candidates of the baseline model (bench/common.py) for --steps steps through `train_population`, and reports its
step times. The first step (allocator and autograd warm-up) is left out; member-steps/s = P / median step time.
Rounds alternate the order (AB, BA, AB, ...) so that drifting load on a shared machine hits both arms alike, and the
report gives every sample, the medians and the min-max spread, and the process CPU time per step as well: with one
thread (--threads 1) that is a load-independent second measure when other jobs share the machine. It also compares the two checkouts' losses, which
must agree to float rounding when only the speed changed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Runs inside the measured checkout: argv = root, population, steps, threads, compile (0/1).
WORKER = """
import json, sys, time
root, population, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
options = {"compile": True} if sys.argv[5] == "1" else {}  # a checkout from before TrainConfig.compile has no such field
sys.path[:0] = [root, root + "/bench"]
import torch
torch.set_num_threads(threads)
from common import BASELINE_MODEL, candidates
from nanochat.config import TrainConfig
from nanochat.data import load_corpus
from nanochat.trainer import train_population
corpus = load_corpus()
marks = [(time.perf_counter(), time.process_time())]
record = lambda step, total: marks.append((time.perf_counter(), time.process_time()))
result = train_population(candidates(population), BASELINE_MODEL, TrainConfig(max_steps=steps, warmup_steps=1, **options), corpus,
                          progress=record)
print(json.dumps({"step_times_s": [b[0] - a[0] for a, b in zip(marks, marks[1:])],
                  "step_cpu_s": [b[1] - a[1] for a, b in zip(marks, marks[1:])], "wall_s": marks[-1][0] - marks[0][0],
                  "losses": [m.losses for m in result.members], "torch": torch.__version__}))
"""


def measure(root: Path, population: int, steps: int, threads: int, compile: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(root), str(population), str(steps), str(threads),
                          str(int(compile))],
                         cwd=root, env=env, check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["median_step_s"] = statistics.median(row["step_times_s"][1:])
    row["member_steps_per_s"] = population / row["median_step_s"]
    row["median_step_cpu_s"] = statistics.median(row["step_cpu_s"][1:])
    return row


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summary(rows: list[dict]) -> dict:
    rates = [r["member_steps_per_s"] for r in rows]
    cpu = [r["median_step_cpu_s"] for r in rows]
    return {"member_steps_per_s": rates, "median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "median_step_cpu_s": cpu, "median_cpu": statistics.median(cpu), "wall_s": [r["wall_s"] for r in rows]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="checkout A (e.g. the commit before a change)")
    ap.add_argument("--after", default=str(HERE.parent), help="checkout B (default: this one)")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="steps per process; the first is not timed")
    ap.add_argument("--repeats", type=int, default=5, help="processes per checkout")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in each process")
    ap.add_argument("--after-compile", action="store_true",
                    help="train checkout B with TrainConfig(compile=True) (its first, compiling step is not timed)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    roots = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    started = time.time()
    for r in range(args.repeats):
        for arm in (("before", "after") if r % 2 == 0 else ("after", "before")):
            row = measure(roots[arm], args.population, args.steps, args.threads, arm == "after" and args.after_compile)
            rows[arm].append(row)
            print(json.dumps({"round": r, "arm": arm, "member_steps_per_s": round(row["member_steps_per_s"], 3),
                              "median_step_s": round(row["median_step_s"], 3),
                              "median_step_cpu_s": round(row["median_step_cpu_s"], 3)}), flush=True)
    a, b = summary(rows["before"]), summary(rows["after"])
    la, lb = rows["before"][0]["losses"], rows["after"][0]["losses"]
    report = {
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": args.threads},
        "after_compile": args.after_compile,
        "torch": rows["after"][0]["torch"], "population": args.population, "steps": args.steps,
        "repeats": args.repeats, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "roots": {k: str(v) for k, v in roots.items()}, "before": a, "after": b,
        "speedup_of_medians": b["median"] / a["median"], "cpu_time_ratio": a["median_cpu"] / b["median_cpu"],
        "max_rel_loss_diff": max(abs(x - y) / abs(x) for ma, mb in zip(la, lb) for x, y in zip(ma, mb)),
    }
    print(json.dumps({k: report[k] for k in ("machine", "speedup_of_medians", "cpu_time_ratio", "max_rel_loss_diff")}))
    print(f"before {a['median']:.3f} [{a['min']:.3f}, {a['max']:.3f}]  after {b['median']:.3f} "
          f"[{b['min']:.3f}, {b['max']:.3f}] member-steps/s  ->  {report['speedup_of_medians']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
