"""Launch settings of the state step's Triton kernels, timed as whole training steps on a GPU.

    python bench/tune_state_kernels.py --population 128 --out tune.json
    python bench/tune_state_kernels.py --device cpu --smoke     # Triton's interpreter: checks the script, not a GPU

Two kernels of `--fused-attention` take their launch settings from module constants: the release
(nanochat/release_triton.py: KEY_BLOCK keys per step of its key loop, one warp per EDGES_PER_WARP edges of a row) and
the release edges' top-k (nanochat/edges_triton.py: KEYS_PER_PROGRAM keys per program, one warp per KEYS_PER_WARP of
them). On an H200 at P = 128 they were the step's two largest kernels (about 23 and 11 ms of a 94 ms step), far from
the memory traffic they need. Each setting here is one training run of the baseline model at `--population` (TF32,
CUDA graph), timed by its median step: the release kernel's settings first, then the top-k's with the fastest release
setting, then the fastest pair at P = 1, 32 and 128 in TF32 and bf16, the settings before tuning beside the fastest
pair at small populations (`--compare-populations`), and the fastest pair's batch invariance. A setting changes only
the order of the release's per-key sums (the top-k selects the same edges), so every row's final losses are reported:
they may differ by float rounding, and any larger difference shows there. The report is rewritten after each row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check  # noqa: E402
from common import BASELINE_MODEL, candidates, sync  # noqa: E402

from nanochat import edges_triton, release_triton  # noqa: E402
from nanochat.config import TrainConfig  # noqa: E402
from nanochat.data import load_corpus  # noqa: E402
from nanochat.trainer import train_population  # noqa: E402

# (KEY_BLOCK, EDGES_PER_WARP): the baseline's rows have 256 edges, so 32 edges a warp is 8 warps. The first is the
# setting before tuning.
RELEASE_SETTINGS = [(8, 32), (8, 64), (8, 128), (8, 256), (4, 64), (4, 128), (4, 256), (2, 128), (2, 256), (1, 256),
                    (16, 64), (16, 32)]
# (KEYS_PER_PROGRAM, KEYS_PER_WARP): rows of up to 256 keys share a program up to KEYS_PER_PROGRAM keys.
TOP_K_SETTINGS = [(1024, 128), (1024, 256), (512, 128), (512, 256), (256, 128), (256, 256), (2048, 256)]


@contextlib.contextmanager
def launch_settings(release: tuple[int, int], top_k: tuple[int, int]):
    """The kernels' module constants set for one run, restored afterwards."""
    names = ((release_triton, "KEY_BLOCK"), (release_triton, "EDGES_PER_WARP"), (edges_triton, "KEYS_PER_PROGRAM"),
             (edges_triton, "KEYS_PER_WARP"))
    saved = [getattr(module, name) for module, name in names]
    for (module, name), value in zip(names, (*release, *top_k)):
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in zip(names, saved):
            setattr(module, name, value)


def timed_run(p: int, model, corpus, dev, steps: int, precision: str, release, top_k, batch_size: int = 8) -> dict:
    """One training run with these settings: its steady median step, member-steps/s and last losses."""
    train = TrainConfig(batch_size=batch_size, max_steps=steps, warmup_steps=1, **gpu_check.settings(precision))
    with launch_settings(release, top_k):
        sync(dev)
        t0 = time.perf_counter()
        result = train_population(candidates(p), model, train, corpus, dev)
        sync(dev)
    step = gpu_check.steady_step_s(result.step_times_s)
    return {"population": p, "precision": precision, "release": list(release), "top_k": list(top_k),
            "wall_s": time.perf_counter() - t0, "median_step_s": step, "member_steps_per_s": p / step,
            "execution": result.execution, "last_losses": [m.losses[-1] for m in result.members[:4]]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=None, help="skip the rows that would start after this")
    ap.add_argument("--compare-populations", default="1,4,8,32",
                    help="populations at which the settings before tuning (each list's first) and the fastest pair "
                         "are timed side by side, TF32: where a small grid wants more warps ('' for none)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model and batch, a few settings, P = 1, no invariance (Triton's interpreter)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    model = gpu_check.FUSED_SMOKE_MODEL if args.smoke else BASELINE_MODEL
    release_settings = RELEASE_SETTINGS[:2] if args.smoke else RELEASE_SETTINGS
    top_k_settings = TOP_K_SETTINGS[:1] if args.smoke else TOP_K_SETTINGS
    final_pops = [] if args.smoke else [1, 32, args.population]  # the smoke's compare rows time the fastest pair
    compare_pops = [1] if args.smoke else [int(x) for x in args.compare_populations.split(",") if x]
    final_precisions = ("fp32+fused",) if args.smoke else ("tf32+fused", "bf16+fused")
    precision = "fp32+fused" if args.smoke else "tf32+fused"  # the interpreter has no TF32
    corpus = load_corpus()
    started = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "torch": torch.__version__, "population": args.population, "steps": args.steps,
                    "release_rows": [], "top_k_rows": [], "best_rows": [], "compare_rows": [], "skipped": 0}

    def save() -> None:
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(report, f, indent=2)
            os.replace(args.out + ".tmp", args.out)

    def row(key: str, p: int, prec: str, release, top_k) -> dict | None:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            report["skipped"] += 1
            return None
        r = timed_run(p, model, corpus, dev, args.steps, prec, release, top_k, 2 if args.smoke else 8)
        report[key].append(r)
        print(json.dumps(r), flush=True)
        save()
        return r

    default_top_k = TOP_K_SETTINGS[0]
    timed = [row("release_rows", args.population if not args.smoke else 1, precision, s, default_top_k)
             for s in release_settings]
    best_release = min((r for r in timed if r), key=lambda r: r["median_step_s"],
                       default={"release": list(RELEASE_SETTINGS[0])})["release"]
    timed = [row("top_k_rows", args.population if not args.smoke else 1, precision, best_release, s)
             for s in top_k_settings]
    best_top_k = min((r for r in timed if r), key=lambda r: r["median_step_s"],
                     default={"top_k": list(default_top_k)})["top_k"]
    report["best"] = {"release": best_release, "top_k": best_top_k}
    for p in final_pops:
        for prec in final_precisions:
            row("best_rows", p, prec, best_release, best_top_k)
    for p in compare_pops:  # at P = 1 (32 programs a call) the tuned settings measured 9% slower on the H200
        for release, top_k in ((RELEASE_SETTINGS[0], default_top_k), (best_release, best_top_k)):
            row("compare_rows", p, precision, release, top_k)
    if not args.smoke:  # (minutes in the interpreter; tests/test_fused_attention.py checks invariance there)
        with launch_settings(tuple(best_release), tuple(best_top_k)):
            report["best_invariance"] = gpu_check.invariance(corpus, dev, precision, 20)
    report["total_s"] = time.perf_counter() - started
    save()
    print(json.dumps({"best": report["best"], "best_invariance": report.get("best_invariance")}), flush=True)
    for r in report["release_rows"] + report["top_k_rows"] + report["best_rows"] + report["compare_rows"]:
        print(f"{r['population']:4d} {r['precision']:11s} release {r['release']} top-k {r['top_k']}: "
              f"{1e3 * r['median_step_s']:7.2f} ms  {r['member_steps_per_s']:7.1f} member-steps/s", flush=True)
    return report


if __name__ == "__main__":
    main()
