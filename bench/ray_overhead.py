"""What Ray costs on one machine: the pilot document's example with `--ray --num-actors 1` vs `--batched`.

    python bench/ray_overhead.py --repeats 3 --model tiny --out ray_overhead.json

Both arms run the same pilot (2 generations x 4, search seed 0, eval seed 123, --target-flops 1e10: one training step
per evaluation; `--model tiny` (default) so that the overhead is not lost in the noise of a loaded machine, or
`--model baseline`, the pilot document's model) in this process, alternating, and are timed from the
pilot's own progress events:

* start-up: from calling run_pilot to its "start" event (for Ray: starting a local Ray, starting the actor, shipping
  the corpus, the handshake; for batched: loading the corpus and checks, the same in both);
* generation 0 (the baseline's 3 seeds ride along: 7 members) and generation 1 (4 members): from the previous
  event to the "generation" event;
* total wall.

The actor gets as many cores as the batched process uses (`--threads`, default 1, for both), so the
difference is Ray's own overhead (scheduling, shipping requests and summaries), not a thread count. Each arm's
scores are checked equal, so a faster wrong run cannot pass for a result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from cmaes_inproc import run_pilot  # noqa: E402
from nanochat.config import ModelConfig, TrainConfig  # noqa: E402


MODELS = {"tiny": ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=32),  # overhead-dominated
          "baseline": ModelConfig()}  # the pilot document's model: one step of P = 7 costs seconds on a CPU


def timed_pilot(evaluator: str, artifacts: str, run_id: str, cpus: int, model: ModelConfig) -> dict:
    marks: list[tuple[str, float]] = []

    def progress(event) -> None:
        if event.kind in ("start", "generation", "done"):
            marks.append((event.kind, time.perf_counter()))

    extra = dict(num_actors=1, cpus_per_actor=cpus) if evaluator == "ray" else {}
    t0 = time.perf_counter()
    result = run_pilot(run_id=run_id, artifacts_dir=artifacts, device="cpu", generations=2, population_size=4,
                       search_seed=0, eval_seed=123, evaluator=evaluator, plots=False, progress=progress,
                       model=model, train=TrainConfig(target_flops=1e10), **extra)
    end = time.perf_counter()
    times = [t for _, t in marks]
    gens = [t for kind, t in marks if kind == "generation"]
    start = next(t for kind, t in marks if kind == "start")
    return {"startup_s": start - t0, "gen0_s": gens[0] - start, "gen1_s": gens[1] - gens[0], "total_s": end - t0,
            "after_last_gen_s": end - times[times.index(gens[1])],
            "scores": sorted((r.gen, r.cand, r.score) for r in result.records)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--threads", type=int, default=1, help="torch threads here and cores of the actor")
    args = p.parse_args(argv)
    cpus = args.threads
    torch.set_num_threads(cpus)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {"batched": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for arm in ("batched", "ray"):
                runs[arm].append(timed_pilot(arm, tmp, f"{arm}{i}", cpus, MODELS[args.model]))
                print(arm, i, {k: round(v, 2) for k, v in runs[arm][-1].items() if k != "scores"}, flush=True)
    same = all(r["scores"] == runs["batched"][0]["scores"] for arm in runs.values() for r in arm)
    medians = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "scores"}
               for arm, rs in runs.items()}
    report = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": cpus, "torch": torch.__version__,
        "python": platform.python_version(), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "repeats": args.repeats, "model": args.model,
        "medians": medians, "runs": {arm: [{k: v for k, v in r.items() if k != "scores"} for r in rs]
                                     for arm, rs in runs.items()},
        "same_scores": same,
    }
    print(json.dumps({"medians": medians, "same_scores": same}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


if __name__ == "__main__":
    report = main()
    sys.exit(0 if report["same_scores"] else 1)
