"""One prepared script for a lent GPU: CUDA batch invariance, throughput vs P, sequential ratio, memory, MFU, profile.

Rows are labelled fp32 (IEEE float32 matmuls, the reference), tf32 (float32 with --matmul-precision high) and bf16
(autocast), with "+compile" (TrainConfig.compile) and "+fused" (TrainConfig.fused_attention: the attention and its
state loop as Triton kernels) where those are on. Invariance rows also say whether two repeats of the same run gave
bit-identical losses; the profiles count kernels per step, beside bench/count_kernels.py's count of the same step
without a GPU.

    python bench/gpu_check.py --out gpu.json --budget-s 300      # a few minutes on an H100
    python bench/gpu_check.py --device cpu --smoke --out x.json  # a minute on a CPU: the code paths, a tiny model

The report is rewritten after every phase (a time-out still leaves what was measured) and each row is printed as
one JSON line. Each phase is isolated: an exception is recorded under "errors" and the next phase runs; phases
that would start after --budget-s are listed under "skipped". Every GPU figure in bench/RESULTS.md must come from
this script's output on a real device; nothing here is estimated except MFU, which divides estimate_flops() by the
measured step time. A population that does not fit is recorded as "oom" and the script goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import count_kernels  # noqa: E402
from common import BASELINE_MODEL, candidates, nan_loss_at, sync  # noqa: E402

from nanochat.config import Member, ModelConfig, SynapticConfig, TrainConfig  # noqa: E402
from nanochat.data import load_corpus  # noqa: E402
from nanochat.synaptic import estimate_flops  # noqa: E402
from nanochat.trainer import train_population  # noqa: E402

# Dense peaks of an H100 SXM: FP32 without tensor cores (fp32 rows: --matmul-precision highest), TF32 tensor cores
# (tf32 rows: fp32 with --matmul-precision high) and BF16 tensor cores (bf16 autocast rows). Override with
# --peak-tflops / --peak-tflops-tf32 / --peak-tflops-bf16 for another card.
DEFAULT_PEAK_TFLOPS = {"fp32": 67.0, "tf32": 494.7, "bf16": 989.0}
# Batch invariance on CUDA is checked at these relative tolerances on every loss of a 20-step run (CPU is exact):
# cuBLAS may pick a different kernel for a different batch count, which reorders fp32 sums; TF32 and bf16 round more.
INVARIANCE_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-3, "bf16": 1e-2, "fp32+compile": 1e-4, "tf32+compile": 1e-3,
                        "fp32+fused": 1e-4, "tf32+fused": 1e-3, "bf16+fused": 1e-2}
BASE_SETTINGS = {"fp32": ("fp32", "highest"), "tf32": ("fp32", "high"), "bf16": ("bf16", "highest")}


def settings(label: str) -> dict:
    """A row label ("tf32+compile+fused") as TrainConfig fields."""
    base, *extras = label.split("+")
    precision, matmul = BASE_SETTINGS[base]
    return {"precision": precision, "matmul_precision": matmul, "compile": "compile" in extras,
            "fused_attention": "fused" in extras}



SMOKE_MODEL = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64)
INVARIANCE_MODEL = SMOKE_MODEL
# The smoke run's fused rows run in Triton's interpreter, one kernel program after another: a smaller model.
FUSED_SMOKE_MODEL = ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=32)


def kernel_bits(dev: torch.device, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """Whether two of the fused path's kernels round as torch does on this device, values and gradients, per dtype
    (Triton's CPU interpreter truncates to bfloat16 instead of rounding, so bfloat16 is checked on a GPU only):

    * values/gradients_equal: the relu^2 kernels (nanochat/relu2_triton.py) against the torch definition, a
      (P, N, 4C)-like tensor with NaN, -0 and infinities in it;
    * rotary_values/gradients_equal: the qk-norm and rotary kernels writing q in the matmuls' dtype
      (rotary_triton.norm_rotary(..., dtype)) against their float32 result cast by torch, each way."""
    from nanochat import relu2_triton, rotary_triton, synaptic

    g = torch.Generator().manual_seed(0)
    h, grad = torch.randn(2, 3000, 64, generator=g) * 4, torch.randn(2, 3000, 64, generator=g)
    h.view(-1)[:5] = torch.tensor([math.nan, -0.0, 0.0, math.inf, -math.inf])
    proj, angles = torch.randn(2, 4 * 16, 2 * 32, generator=g) * 3, torch.rand(16, 16, generator=g) * 6
    grad_q = torch.randn(2, 4, 2, 16, 32, generator=g)
    cos, sin = angles.cos().to(dev), angles.sin().to(dev)
    out = {}
    for name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
        results = []
        for fn, inp, grad_out in ((relu2_triton.relu_squared, h, grad), (synaptic.relu_squared, h, grad),
                                  (lambda x: rotary_triton.norm_rotary(x, 2, cos, sin, 0.5, dtype), proj, grad_q),
                                  (lambda x: rotary_triton.norm_rotary(x, 2, cos, sin, 0.5).to(dtype), proj, grad_q)):
            x = inp.to(dev, dtype).requires_grad_()
            y = fn(x)
            (dx,) = torch.autograd.grad(y, x, grad_out.to(dev, dtype))
            results.append([t.detach().cpu().view(bits) for t in (y, dx)])
        (y, dx), (y_ref, dx_ref), (q, dq), (q_ref, dq_ref) = results
        out[name] = {"values_equal": torch.equal(y, y_ref), "gradients_equal": torch.equal(dx, dx_ref),
                     "rotary_values_equal": torch.equal(q, q_ref), "rotary_gradients_equal": torch.equal(dq, dq_ref)}
    return out


# attention_error's bounds on each of y, dq, dk, dv's largest error relative to its largest value: float32 as the
# interpreter's test holds the kernels (tests/test_fused_attention.py), TF32 and bfloat16 products at their rounding.
ATTENTION_TOLERANCE = {"fp32": 1e-5, "tf32": 1e-2, "bf16": 5e-2}


def attention_error(dev: torch.device, rows: tuple[str, ...] = ("fp32", "tf32", "bf16"),
                    lengths: tuple[int, ...] = (200, 256)) -> dict:
    """The fused attention's kernels on this device against the formula in float64 (fused_attention.dense_reference),
    values and gradients: each of y, dq, dk, dv's largest error relative to its largest value (the worst over
    `lengths`), per row (fp32: IEEE float32 products, tf32, bf16), and whether all are within ATTENTION_TOLERANCE.
    On a GPU the kernels' log, exponentials and divisions are the hardware's approximate instructions (libdevice's
    fast_logf, fast_expf, fast_dividef), which Triton's CPU interpreter does not run: they are checked here. The
    lengths: 200 ends inside a block (masked loads), 256 is the baseline's, which the blocks tile (no load masked)."""
    from nanochat import fused_attention

    P, B, H, D, chunk = 3, 2, 2, 32, 32
    knobs = (torch.linspace(0.0, 2.0, P), torch.linspace(0.05, 0.2, P), torch.linspace(0.3, 0.0, P))
    out, tf32 = {row: {} for row in rows}, torch.backends.cuda.matmul.allow_tf32

    def values_and_grads(fn, dtype, q, key, v, scales, grad_out):
        inputs = [x.to(dev, dtype).requires_grad_() for x in (q, key, v)]
        y = fn(*inputs, scales.to(dev), *(x.to(dev) for x in knobs), chunk)
        return [t.detach().double().cpu() for t in (y, *torch.autograd.grad(y, inputs, grad_out.to(dev, y.dtype)))]

    try:
        for T in lengths:
            g = torch.Generator().manual_seed(T)
            q, key, v = (torch.randn(P, B, H, T, D, generator=g) * s for s in (0.5, 1.0, 1.0))
            data = (q, key, v, torch.rand(P, B, H, -(-T // chunk), T, generator=g) * 3,
                    torch.randn(P, B, H, T, D, generator=g))
            reference = values_and_grads(fused_attention.dense_reference, torch.float64, *data)
            for row in rows:
                torch.backends.cuda.matmul.allow_tf32 = row == "tf32"
                got = values_and_grads(fused_attention.presynaptic_attention,
                                       torch.bfloat16 if row == "bf16" else torch.float32, *data)
                for name, a, b in zip(("y", "dq", "dk", "dv"), got, reference):
                    out[row][name] = max(out[row].get(name, 0.0), float((a - b).abs().max() / b.abs().max()))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    for row, errors in out.items():
        errors["within"] = all(e <= ATTENTION_TOLERANCE[row] for e in errors.values())
    return out


def invariance(corpus, dev: torch.device, precision: str, steps: int, population: int = 8,
               model: ModelConfig = INVARIANCE_MODEL) -> dict:
    """A mixed population of 8 (4 seeds, stochastic release on 7) against each member trained alone."""
    train = TrainConfig(batch_size=4, max_steps=steps, warmup_steps=2, **settings(precision))
    base = SynapticConfig(presyn_chunk=16)
    members = [Member(base.replace(alpha_c=0.1 + 0.1 * i, stochastic_train_frac=0.05 * i), 100 + i % 3)
               for i in range(population)]
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
        "all_ok": all(m.ok for m in batched.members), "execution": batched.execution,
    }


def graph_equivalence(corpus, dev: torch.device, steps: int) -> dict:
    """The same mixed population (stochastic release, a NaN injected at step 4) with and without the CUDA graph."""
    model = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64)
    base = SynapticConfig(presyn_chunk=16)
    members = [Member(base.replace(alpha_c=0.2 + 0.2 * i, stochastic_train_frac=0.1 * i), 100 + i % 2) for i in range(4)]
    members.append(Member(base, 7))
    results = {}
    for graphed in (True, False):
        train = TrainConfig(batch_size=4, max_steps=steps, warmup_steps=2, cuda_graph=graphed)
        with nan_loss_at(member=4, step=4):
            results[graphed] = train_population(members, model, train, corpus, dev)
    g, e = results[True], results[False]
    worst = max(abs(a - b) / abs(b) for mg, me in zip(g.members, e.members) for a, b in zip(mg.losses, me.losses)
                if math.isfinite(b))
    return {
        "steps": steps, "execution": g.execution, "max_rel_diff_graph_vs_eager": worst,
        "bit_identical": all(mg.losses == me.losses or (mg.status == me.status == "nan")
                             for mg, me in zip(g.members, e.members)),
        "same_statuses": [m.status for m in g.members] == [m.status for m in e.members],
        "statuses": [m.status for m in g.members], "failure_steps": [m.failure_step for m in g.members],
    }


def cpu_vs_device(corpus, dev: torch.device, steps: int, model_cfg: ModelConfig) -> dict:
    """The same member trained on the CPU and on this device: losses step by step, and one step's gradients.

    With no release noise (its generators differ between devices) the two runs compute the same function and may
    differ only by float rounding, which training amplifies slowly; the first losses must agree to ~1e-6 and the
    gradients of the first step to ~1e-4 (float32). A systematic gap points at an op that behaves differently.
    """
    from nanochat.data import BatchStream
    from nanochat.synaptic import SynapticGPT

    config = SynapticConfig(stochastic_train_frac=0.0)
    train = TrainConfig(max_steps=steps, warmup_steps=2, cuda_graph=False)
    curves = {d: train_population([Member(config, 123)], model_cfg, train, corpus, d).members[0].losses
              for d in ("cpu", str(dev))}
    rel = [abs(a - b) / abs(a) for a, b in zip(curves["cpu"], curves[str(dev)])]
    # Built twice from the same seed: the same initial weights (drawn on the CPU, then copied), and knobs and noise
    # generators on each model's own device.
    cpu_model = SynapticGPT(model_cfg, [config], [123], "cpu").train()
    dev_model = SynapticGPT(model_cfg, [config], [123], dev).train()
    inputs, targets = BatchStream(corpus, 8, model_cfg.sequence_len, 0, torch.device("cpu")).next()
    cpu_model(inputs, targets).sum().backward()
    dev_model(inputs.to(dev), targets.to(dev)).sum().backward()
    grads = {}
    for (name, a), (_, b) in zip(cpu_model.named_parameters(), dev_model.named_parameters()):
        grads[name] = ((a.grad - b.grad.cpu()).norm() / a.grad.norm().clamp_min(1e-30)).item()
    worst = sorted(grads.items(), key=lambda kv: kv[1], reverse=True)[:8]
    return {"steps": steps, "cpu_losses": curves["cpu"], "device_losses": curves[str(dev)],
            "max_rel_loss_diff_first_3": max(rel[:3]), "rel_loss_diff_last": rel[-1],
            "worst_grad_rel_diff_step0": worst}


def run(members, model, corpus, dev, steps: int, precision: str = "fp32", graph: bool = True):
    """Wall seconds (construction included), the per-step device times and how the steps ran, for one population."""
    train = TrainConfig(max_steps=steps, warmup_steps=1, cuda_graph=graph, **settings(precision))
    sync(dev)
    t0 = time.perf_counter()
    result = train_population(members, model, train, corpus, dev)
    sync(dev)
    return time.perf_counter() - t0, result.step_times_s, result.execution


def steady_step_s(step_times: list[float]) -> float:
    """The median step once steady: the two eager warm-up steps and the graph's capture step are left out (on every
    path, to compare alike), unless the run had no more steps than those."""
    return statistics.median(step_times[3:] if len(step_times) > 3 else step_times)


def throughput_row(p: int, model, corpus, dev, steps: int, precision: str, peak_tflops: dict, graph: bool) -> dict:
    row: dict = {"population": p, "precision": precision, "cuda_graph": graph}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        wall, step_times, execution = run(candidates(p), model, corpus, dev, steps, precision, graph)
    except torch.OutOfMemoryError:
        row["status"] = "oom"
        return row
    steady = steady_step_s(step_times)
    flops_per_member_step = estimate_flops(model, 8) * 8 * model.sequence_len
    row.update(status="ok", execution=execution, wall_s=wall, median_step_s=steady, member_steps_per_s=p / steady,
               mfu=p * flops_per_member_step / steady / (peak_tflops[precision.split("+")[0]] * 1e12),
               mfu_peak_tflops=peak_tflops[precision.split("+")[0]])
    if dev.type == "cuda":
        row["max_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["max_allocated_mib_per_member"] = row["max_allocated_mib"] / p
    return row


def profile_top_ops(p: int, model, corpus, dev, rows: int = 15, precision: str = "fp32") -> dict:
    """Top operators of two training steps of a population of p (device time on CUDA, CPU time otherwise).

    On CUDA it also gives kernels per step and the kernels' device time per step: set against the unprofiled
    median step time of the throughput rows, that says whether the GPU or the Python/launch side sets the pace.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    run(candidates(p), model, corpus, dev, 2, precision, graph=False)  # warm-up (and compiling) outside the profile
    steps = 2  # eager: a replayed graph would show kernels but not the operators that launched them
    sync(dev)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        run(candidates(p), model, corpus, dev, steps, precision, graph=False)
    wall = time.perf_counter() - t0
    averages = prof.key_averages()
    aten_calls = sum(e.count for e in averages if e.key.startswith("aten::"))
    out: dict = {"population": p, "precision": precision, "profiled_steps": steps, "profiled_wall_s": wall,
                 "aten_calls_per_step_incl_construction": aten_calls / steps}
    if dev.type == "cuda":
        # Each kernel is counted once: as a device event. An aten op's self device time is the kernels it launched
        # directly, so op shares are of the kernels' total (summing ops and kernels together would count twice).
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_us = sum(e.self_device_time_total for e in kernels) or 1.0
        ops = [e for e in averages if e.key.startswith("aten::")]
        top = sorted(ops, key=lambda e: e.self_device_time_total, reverse=True)[:rows]
        out["top_ops"] = [{"op": e.key, "share": e.self_device_time_total / kernel_us, "calls": e.count} for e in top]
        by_kernel: dict[str, list[float]] = {}
        for e in kernels:
            by_kernel.setdefault(e.name, []).append(e.self_device_time_total)
        top_k = sorted(by_kernel.items(), key=lambda kv: sum(kv[1]), reverse=True)[:rows]
        out["top_kernels"] = [{"kernel": k[:120], "share": sum(v) / kernel_us, "calls": len(v)} for k, v in top_k]
        out["kernels_per_step_incl_construction"] = len(kernels) / steps
        out["kernel_s_per_step_incl_construction"] = kernel_us / 1e6 / steps
    else:
        top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        total = sum(e.self_cpu_time_total for e in averages) or 1.0
        out["top_ops"] = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in top]
    return out


def pilot_wall(evaluator: str, target_flops: float, model, dev, artifacts: str, run_id: str) -> dict:
    """Wall time and verdict of the pilot document's example pilot (2 generations x 4) through the public API."""
    from cmaes_inproc import run_pilot  # needs pycma; imported here so the other phases run without it

    t0 = time.perf_counter()
    result = run_pilot(run_id=run_id, artifacts_dir=artifacts, device=str(dev), generations=2, population_size=4,
                       search_seed=0, eval_seed=123, evaluator=evaluator, plots=False, model=model,
                       train=TrainConfig(target_flops=target_flops))
    wall = time.perf_counter() - t0
    v = result.verdict
    return {"evaluator": evaluator, "target_flops": target_flops, "wall_s": wall, "go": v.go,
            "baseline_score": v.baseline_score, "best_score": v.best_score,
            "confirmed_improvement": v.confirmed_improvement, "seed_noise": v.seed_noise, "failures": v.failures}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=10, help="steps per throughput run (the first 3 are not timed)")
    ap.add_argument("--populations", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--eager-populations", default="1,4,32,256",
                    help="populations also timed with --no-cuda-graph, in the same run, for the graph's gain")
    ap.add_argument("--ratio-population", type=int, default=32, help="P for the batched-vs-sequential ratio")
    ap.add_argument("--no-ratio", action="store_true", help="skip the batched-vs-sequential ratio (P sequential runs)")
    ap.add_argument("--compile-populations", default="32,128",
                    help="populations also timed with TrainConfig(compile=True), fp32 and tf32, in the same run")
    ap.add_argument("--fused-populations", default="32,128",
                    help="populations also timed with TrainConfig(fused_attention=True) (tf32, bf16, tf32+compile)")
    ap.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS["fp32"])
    ap.add_argument("--peak-tflops-tf32", type=float, default=DEFAULT_PEAK_TFLOPS["tf32"])
    ap.add_argument("--peak-tflops-bf16", type=float, default=DEFAULT_PEAK_TFLOPS["bf16"])
    ap.add_argument("--phases", default=None,
                    help="a regular expression: run only the phases whose name it matches (re.search), e.g. "
                         "'throughput_.*fused' (the report lists the others under 'not_selected')")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip the phases that would start after this many seconds (the report says which)")
    ap.add_argument("--pilot", choices=("none", "batched", "all"), default="none",
                    help="also time the pilot document's example pilot (1e10 FLOPs) and the default-budget pilot, batched; "
                         "'all' adds the example with --sequential (one subprocess per candidate)")
    ap.add_argument("--smoke", action="store_true", help="tiny model and populations: checks the script, not a GPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    model = SMOKE_MODEL if args.smoke else BASELINE_MODEL
    pops = [1, 2] if args.smoke else [int(x) for x in args.populations.split(",")]
    eager_pops = [2] if args.smoke else [int(x) for x in args.eager_populations.split(",") if x]
    ratio_p = 2 if args.smoke else args.ratio_population
    inv_steps = 2 if args.smoke else 20
    peaks = {"fp32": args.peak_tflops, "tf32": args.peak_tflops_tf32, "bf16": args.peak_tflops_bf16}
    corpus = load_corpus()
    started = time.perf_counter()
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'unknown'})",
        "torch": torch.__version__, "steps": args.steps, "model": model.to_dict(), "smoke": args.smoke,
        "phase_seconds": {}, "errors": {}, "skipped": [], "not_selected": [],
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "cpu_threads": torch.get_num_threads(),
    }

    def save() -> None:
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(report, f, indent=2)
            os.replace(args.out + ".tmp", args.out)

    def emit(key: str, value) -> None:
        report[key] = value
        print(json.dumps({key: value}), flush=True)
        save()

    def phase(name: str, fn) -> None:
        """Run one phase; an exception is recorded and the next phase still runs (minutes on a GPU are scarce)."""
        if args.phases is not None and not re.search(args.phases, name):
            report["not_selected"].append(name)
            return
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            report["skipped"].append(name)
            save()
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the report, not swallowed
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(json.dumps({"error": {name: report["errors"][name]}}), flush=True)
        report["phase_seconds"][name] = time.perf_counter() - t0
        save()

    fused_pops = [int(x) for x in args.fused_populations.split(",") if x]
    if fused_pops:  # (a second; the fused path's kernels need Triton)
        dtypes = ("fp32",) if args.smoke else ("fp32", "bf16")
        phase("kernel_bits", lambda: emit("kernel_bits", kernel_bits(dev, dtypes)))
        phase("attention_error", lambda: emit("attention_error", attention_error(
            dev, ("fp32",) if args.smoke else ("fp32", "tf32", "bf16"), (40,) if args.smoke else (200, 256))))
    phase("graph_equivalence", lambda: emit("graph_equivalence", graph_equivalence(corpus, dev, 6 if args.smoke else 12)))
    phase("cpu_vs_device", lambda: emit("cpu_vs_device", cpu_vs_device(corpus, dev, 3 if args.smoke else 30, model)))
    invariance_rows: list = []
    compile_pops = [int(x) for x in args.compile_populations.split(",") if x]  # "" for none
    compile_pops = [2] if args.smoke and compile_pops else compile_pops
    # Smoke runs on the CPU take the kernels through Triton's interpreter (TRITON_INTERPRET=1), which is slow and
    # multiplies bfloat16 wrongly: one float32 row of each kind, on small populations.
    fused_pops = [1] if args.smoke and fused_pops else fused_pops
    fused_rows = ("fp32+fused",) if args.smoke else ("tf32+fused", "bf16+fused", "fp32+fused")
    # (The smoke leaves out the fused invariance rows: the same function as the others' rows, and minutes in the
    # interpreter; tests/test_fused_attention.py checks the fused training's invariance there.)
    fused_invariance = () if args.smoke else ("fp32+fused", "tf32+fused", "bf16+fused")

    def check_invariance(prec: str) -> None:
        small = args.smoke and "fused" in prec
        size, inv_model = (2, FUSED_SMOKE_MODEL) if small else (8, INVARIANCE_MODEL)
        phase(f"invariance_{prec}", lambda: (
            invariance_rows.append(invariance(corpus, dev, prec, inv_steps, size, inv_model)),
            emit("invariance", invariance_rows)))

    for prec in ("fp32", "tf32", "bf16") + (fused_invariance if fused_pops else ()):
        check_invariance(prec)
    phase("warm_up", lambda: run(candidates(1), model, corpus, dev, 2))  # CUDA context, cuBLAS handles, allocator
    rows: list = []

    def throughput(p: int, precision: str, graph: bool = True, model: ModelConfig = model) -> None:
        rows.append(throughput_row(p, model, corpus, dev, args.steps, precision, peaks, graph))
        emit("throughput", rows)

    # The phases that decide issue 12 first (each takes seconds on a GPU), every torch.compile phase last (its first
    # calls take minutes): a short lease's --budget-s skips what comes last.
    for p in pops:
        phase(f"throughput_fp32_P{p}", lambda p=p: throughput(p, "fp32"))
    for p in fused_pops:
        for prec in fused_rows:
            phase(f"throughput_{prec}_P{p}", lambda p=p, prec=prec: throughput(
                p, prec, model=FUSED_SMOKE_MODEL if args.smoke else model))
    for p in [ratio_p] + sorted(({p for p in pops if p >= 128} | {max(pops)}) - {ratio_p}):  # P = 128: the targets
        for prec in ("bf16", "tf32"):
            phase(f"throughput_{prec}_P{p}", lambda p=p, prec=prec: throughput(p, prec))
    for p in eager_pops:
        phase(f"throughput_fp32_eager_P{p}", lambda p=p: throughput(p, "fp32", graph=False))
    profiles: list = []

    def profile(name: str, p: int, precision: str) -> None:
        phase(name, lambda: (profiles.append(profile_top_ops(p, model, corpus, dev, precision=precision)),
                             emit("profile", profiles)))

    profile(f"profile_P{ratio_p}", ratio_p, "fp32")
    if fused_pops and not args.smoke:  # the fused step's kernels (counted: 929 at P = 32), and where P = 128's go
        profile(f"profile_fused_P{ratio_p}", ratio_p, "fp32+fused")
        profile(f"profile_fused_P{max(fused_pops)}", max(fused_pops), "tf32+fused")
    # The same steps' kernels counted on the meta device (bench/count_kernels.py), to set beside the profiles'.
    phase("kernel_count", lambda: emit("kernel_count", count_kernels.count(ratio_p, model)))
    if fused_pops:
        phase("kernel_count_fused", lambda: emit("kernel_count_fused",
                                                 count_kernels.count(ratio_p, model, fused_attention=True)))

    def ratio() -> None:
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

    if not args.no_ratio:
        phase("batched_vs_sequential", ratio)
    if compile_pops:
        if fused_pops and not args.smoke:
            for p in compile_pops:
                phase(f"throughput_tf32+compile+fused_P{p}", lambda p=p: throughput(p, "tf32+compile+fused"))
            profile(f"profile_compile_fused_P{ratio_p}", ratio_p, "fp32+compile+fused")
        if not args.smoke:  # (a minute of CPU compiles; tests/test_compile_option.py checks compiled invariance)
            check_invariance("fp32+compile")
        for p in compile_pops:
            for prec in ("fp32+compile",) + (() if args.smoke else ("tf32+compile",)):  # (a smoke compiles once)
                phase(f"throughput_{prec}_P{p}", lambda p=p, prec=prec: throughput(p, prec))
        profile(f"profile_compile_P{ratio_p}", ratio_p, "fp32+compile")
    if args.pilot != "none":
        import tempfile

        pilots: list = []
        small, default = (1e8, 1e9) if args.smoke else (1e10, TrainConfig().target_flops)
        plan = [("batched", default), ("batched", small)] + ([("sequential", small)] if args.pilot == "all" else [])
        with tempfile.TemporaryDirectory() as artifacts:
            for evaluator, flops in plan:
                phase(f"pilot_{evaluator}_{flops:g}", lambda e=evaluator, f=flops: (
                    pilots.append(pilot_wall(e, f, model, dev, artifacts, f"{e}_{f:g}")), emit("pilot", pilots)))
    report["total_seconds"] = time.perf_counter() - started
    save()
    print(summary(report), flush=True)
    return report


def summary(report: dict) -> str:
    """A short table of the headline numbers (the device's reply carries only the end of the output)."""
    lines = [f"device {report['device']}  torch {report['torch']}  total {report.get('total_seconds', 0):.0f} s"]
    for r in report.get("throughput", []):
        tail = (f"{r['member_steps_per_s']:9.1f} member-steps/s  step {1e3 * r['median_step_s']:8.2f} ms  "
                f"mfu {100 * r['mfu']:5.2f}%  {r.get('max_allocated_mib', 0):8.0f} MiB  {r['execution']}"
                if r.get("status") == "ok" else r.get("status", "?"))
        lines.append(f"P={r['population']:<4} {r['precision']:12} graph={int(r['cuda_graph'])}  {tail}")
    for r in report.get("invariance", []):
        lines.append(f"invariance {r['precision']}: max rel {r['max_rel_diff_batched_vs_alone']:.2e} "
                     f"(tol {r['tolerance']:g}) passed={r['passed']} repeat bit-identical={r['bit_identical_repeat']}")
    if "graph_equivalence" in report:
        g = report["graph_equivalence"]
        lines.append(f"graph vs eager: max rel {g['max_rel_diff_graph_vs_eager']:.2e} "
                     f"bit_identical={g['bit_identical']} statuses same={g['same_statuses']}")
    if "cpu_vs_device" in report:
        c = report["cpu_vs_device"]
        lines.append(f"cpu vs device: first losses max rel {c['max_rel_loss_diff_first_3']:.2e}, step {c['steps']} rel "
                     f"{c['rel_loss_diff_last']:.2e}; worst step-0 grads " +
                     ", ".join(f"{n} {d:.1e}" for n, d in c["worst_grad_rel_diff_step0"][:4]))
    if "batched_vs_sequential" in report:
        b = report["batched_vs_sequential"]
        lines.append(f"batched vs sequential P={b['population']}: {b['speedup_median']:.1f}x")
    for prof in report.get("profile", []):
        kernels = prof.get("kernels_per_step_incl_construction", 0)
        kernel_s = prof.get("kernel_s_per_step_incl_construction", 0)
        lines.append(f"profile P={prof['population']} {prof.get('precision', 'fp32')}: kernels/step {kernels:.0f}  kernel s/step {kernel_s:.4f}")
        lines += [f"   {o['share']:6.1%} {o['calls']:6d}  {o.get('kernel', o.get('op'))[:90]}"
                  for o in prof.get("top_kernels", prof.get("top_ops", []))[:10]]
    for pl in report.get("pilot", []):
        lines.append(f"pilot {pl['evaluator']} {pl['target_flops']:g}: {pl['wall_s']:.1f} s go={pl['go']} "
                     f"baseline {pl['baseline_score']:.4f} best {pl['best_score']:.4f}")
    lines += [f"ERROR {k}: {v}" for k, v in report.get("errors", {}).items()]
    lines += [f"skipped {', '.join(report['skipped'])}"] if report.get("skipped") else []
    return "\n".join(lines)


if __name__ == "__main__":
    main()
