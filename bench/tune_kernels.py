"""Launch settings of the fused path's Triton kernels: what each compiles to, and its time in whole training steps.

    python bench/tune_kernels.py --population 128 --budget-s 420 --out tune.json   # a GPU: about 7 minutes
    python bench/tune_kernels.py --resources --out resources.json    # no GPU needed: registers, spills, shared memory
    python bench/tune_kernels.py --device cpu --smoke                # Triton's interpreter: checks the script only

`--fused-attention` takes five kernels' launch settings from module constants (`PHASES`):

  dkdv, dq, forward  the attention's backward and forward (nanochat/fused_attention.py: BACKWARD_DKDV, BACKWARD_DQ,
                     FORWARD, each a Launch: queries and keys a block, warps, pipeline stages);
  release            the state step's release (nanochat/release_triton.py: KEY_BLOCK, EDGES_PER_WARP, SUMS_FIRST,
                     UPDATE_BLOCK);
  top_k              the release edges' top-k (nanochat/edges_triton.py: METHOD, "rounds" of a row maximum over
                     KEYS_PER_PROGRAM keys on a warp per KEYS_PER_WARP, or a "scan" of each row by one thread on
                     SCAN_WARPS warps a program).

Timing (a GPU). First `kernel_bits` (gpu_check.py: the relu^2 kernels against torch, and the rotary kernels' 16-bit
stores against a torch cast, float32 and bfloat16, a second) and `attention_error` (gpu_check.py: the attention's
kernels, with the GPU's approximate log, exp and division, against the formula in float64). Then each phase in
`--phases` order times its settings, the one in force first, each as one training run of the baseline model at
`--population` (TF32, CUDA graph) read by its median step; the fastest setting of a phase stays in force for the
phases after it. Then the fastest set at P = 1, 32 and `--population` in TF32 and bf16, the settings in force beside
the fastest set at small populations (`--compare-populations`), the fastest set's batch invariance and its profiles
at `--population` in TF32 and in bf16 (kernels by device time; bf16's shows its casts, which `count_kernels.py
--precision bf16` counts). A setting changes the order of some sums (a block's size), never what is computed, so
each row's final losses are reported and must agree with the phase's first row to float rounding (`LOSS_REL_TOL`); a
row that does not is not chosen. The report is rewritten after each row; `--budget-s` skips the rows that would
start after it.

Resources (`--resources`, the CPU is enough). Triton's compiler builds every setting for sm_90 (an H100 or H200), and
cuobjdump (shipped in Triton's wheel) reads each cubin's registers per thread and its stack, where spilled registers
go; the shared memory is Triton's. At 255 registers a program spills; at many, fewer programs fit on an SM. That is
how the settings below were chosen (those that spill were left out); which of them is fastest, only a GPU says.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check  # noqa: E402
from common import BASELINE_MODEL, candidates, sync  # noqa: E402

from nanochat import edges_triton, fused_attention, release_triton  # noqa: E402
from nanochat.config import TrainConfig  # noqa: E402
from nanochat.data import load_corpus  # noqa: E402
from nanochat.trainer import train_population  # noqa: E402

Launch = fused_attention.Launch

# A phase: the module, the constants it sets, and the settings it times; the first is the setting in force (a test
# checks that). Every candidate after it compiles for sm_90 without spilling (--resources), except one of the
# release's, with its stochastic draws: SUMS_FIRST on 1 warp (kept to time the restructure alone). The release's rows
# hold 256 edges, so EDGES_PER_WARP 128 is 2 warps; the match's settings were timed on the H200 (tenth session),
# the search's (KEY_SUMS) and the top-k's scan (METHOD) never were.
PHASES: dict[str, tuple[object, tuple[str, ...], list[tuple]]] = {
    "dkdv": (fused_attention, ("BACKWARD_DKDV",), [
        (Launch(32, 64, 4, 3),), (Launch(32, 64, 4, 2),), (Launch(32, 64, 4, 1),), (Launch(32, 64, 8, 2),),
        (Launch(16, 64, 4, 2),), (Launch(32, 128, 8, 2),), (Launch(16, 128, 8, 2),)]),
    "dq": (fused_attention, ("BACKWARD_DQ",), [
        (Launch(64, 32, 4, 3),), (Launch(64, 32, 8, 3),), (Launch(64, 16, 4, 3),), (Launch(128, 32, 8, 3),),
        (Launch(16, 32, 2, 2),), (Launch(64, 32, 4, 1),), (Launch(32, 32, 4, 2),)]),
    "forward": (fused_attention, ("FORWARD",), [
        (Launch(64, 32, 4, 3),), (Launch(64, 32, 8, 3),), (Launch(64, 16, 4, 3),), (Launch(128, 32, 8, 3),),
        (Launch(128, 64, 8, 2),), (Launch(32, 32, 4, 2),), (Launch(16, 32, 2, 2),)]),
    "release": (release_triton, ("KEY_SUMS", "KEY_BLOCK", "EDGES_PER_WARP", "SUMS_FIRST", "UPDATE_BLOCK"), [
        ("match", 4, 256, False, 256), ("match", 4, 256, True, 256), ("match", 4, 64, True, 256),
        ("search", 4, 128, False, 256), ("search", 4, 64, False, 256), ("search", 4, 32, False, 256),
        ("search", 4, 64, False, 128)]),
    "top_k": (edges_triton, ("METHOD", "KEYS_PER_PROGRAM", "KEYS_PER_WARP", "SCAN_WARPS"), [
        ("rounds", 256, 256, 4), ("scan", 256, 256, 4), ("scan", 256, 256, 2), ("scan", 256, 256, 8)]),
}
# Two settings of one phase sum in other orders: after 10 steps their losses differ by float rounding (the tenth
# session's release and top-k rows on the H200: under 1e-5 relative, TF32). A row further off is not chosen.
LOSS_REL_TOL = 1e-3
DEFAULT_PHASES = "dkdv,dq,forward,release,top_k"


def in_force() -> dict[str, list]:
    """Each phase's constants as they are now, as JSON lists."""
    return {name: _plain(tuple(getattr(module, c) for c in names)) for name, (module, names, _) in PHASES.items()}


def _plain(setting: tuple) -> list:
    """A phase's setting as a JSON list: a one-constant Launch as its four numbers."""
    return list(setting[0]) if len(setting) == 1 and isinstance(setting[0], tuple) else list(setting)


def _setting(phase: str, values: list) -> tuple:
    """A JSON list back as the phase's constants."""
    names = PHASES[phase][1]
    return (Launch(*values),) if len(names) == 1 else tuple(values)


@contextlib.contextmanager
def launch_settings(chosen: dict[str, list]):
    """The named phases' constants set for one run (JSON lists, as in_force gives them), restored afterwards."""
    saved = []
    try:
        for phase, values in chosen.items():
            module, names, _ = PHASES[phase]
            for name, value in zip(names, _setting(phase, values)):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, value)
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def timed_run(p: int, model, corpus, dev, steps: int, precision: str, chosen: dict[str, list],
              batch_size: int = 8) -> dict:
    """One training run with these settings: its steady median step, member-steps/s and last losses."""
    train = TrainConfig(batch_size=batch_size, max_steps=steps, warmup_steps=1, **gpu_check.settings(precision))
    with launch_settings(chosen):
        sync(dev)
        t0 = time.perf_counter()
        result = train_population(candidates(p), model, train, corpus, dev)
        sync(dev)
    step = gpu_check.steady_step_s(result.step_times_s)
    return {"population": p, "precision": precision, "settings": chosen, "wall_s": time.perf_counter() - t0,
            "median_step_s": step, "member_steps_per_s": p / step, "execution": result.execution,
            "last_losses": [m.losses[-1] for m in result.members[:4]]}


def losses_agree(losses: list[float], reference: list[float], rel: float = LOSS_REL_TOL) -> bool:
    """Whether a row's last losses are the reference row's to float rounding (NaN agrees with nothing)."""
    return len(losses) == len(reference) and all(abs(a - b) <= rel * abs(b) for a, b in zip(losses, reference))


# --- resources: each setting compiled for sm_90 on the CPU -------------------------------------------------------

_INTEGERS = {"T", "D", "n_cols", "rows_per_member", "n_chunks", "chunk", "rows", "n", "q", "n_keys",
             "Qc", "row_u_stride", "u_stride", "n_rows", "tokens", "H", "B", "out_row", "QK_PB", "QK_H",
             "QK_T", "VO_PB", "VO_H", "VO_T"}
_FLOATS = {"scale", "eps"}


def compile_for_hopper(kernel, constants: dict, pointers: dict | None = None, warps: int = 4, stages: int = 3,
                       aligned: tuple[str, ...] = ()):
    """`kernel` compiled by Triton for sm_90 without a GPU; pointers are float32 unless `pointers` names them, the
    `constants` are compile-time, and the arguments named in `aligned` are known to be multiples of 16 (Triton's
    launcher tells its compiler so for every pointer and integer that is, and compiles a variant for it). Returns
    Triton's compiled kernel (its cubin in .asm["cubin"])."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {n: "constexpr" if n in constants else "i32" if n in _INTEGERS else "fp32" if n in _FLOATS
                 else (pointers or {}).get(n, "*fp32") for n in names}
    source = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constants.items()},
                       attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def resource_usage(compiled) -> dict:
    """Registers per thread and stack bytes (spills) of a compiled kernel's cubin (cuobjdump), its shared memory, and
    its machine code's length: instructions (NOPs left out) and the instructions of each loop body (from a
    backward branch's target to the branch), a static measure of the work a program does, not a time."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    code = [(int(at, 16), ins) for at, ins in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for at, ins in code:  # sm_90 instructions are 16 bytes
        branch = re.search(r"\bBRA\s+(?:`\()?0x([0-9a-f]+)", ins)
        if branch and int(branch.group(1), 16) < at:
            loops.append((at - int(branch.group(1), 16)) // 16 + 1)
    return {"registers": int(re.search(r"REG:(\d+)", out).group(1)),
            "stack_bytes": int(re.search(r"STACK:(\d+)", out).group(1)), "shared_bytes": compiled.metadata.shared,
            "instructions": sum("NOP" not in ins for _, ins in code), "loop_instructions": loops}


def _builds(phase: str):
    """(variant, kernel, constants, pointers, warps, stages, aligned) of a phase's kernel with the settings in force,
    at the baseline's shapes: heads of 32 and sequences of 256 in chunks of 32 (the attention's blocks tile them:
    EVEN), release rows of 256 edges (a chunk's 32 queries x their top 8) and top-k rows of 256 keys. Warps come from
    the modules' own rules (warps_for)."""
    if phase in ("dkdv", "dq", "forward"):
        kernel = {"dkdv": fused_attention._backward_dkdv_kernel, "dq": fused_attention._backward_dq_kernel,
                  "forward": fused_attention._forward_kernel}[phase]
        launch = getattr(fused_attention, PHASES[phase][1][0])
        for dtype, precision in (("fp32", "tf32"), ("bf16", "ieee")):
            pointers = {n: "*" + dtype for n in ("Q", "K", "V", "OUT", "DO", "DK", "DV", "DQ")}
            yield (dtype, kernel, {"PREC": precision, "BM": launch.queries, "BN": launch.keys, "BD": 32,
                                   "FAST_MATH": True, "CHUNK": 32, "EVEN": True}, pointers,
                   launch.warps, launch.stages, ())
    elif phase == "release":
        rt = release_triton
        for draws in (False, True):
            yield ("draws" if draws else "no draws", rt._release_kernel,
                   {"K": 8, "E": 256, "DELAY": 2, "DRAWS": draws, "N_KNOBS": 19, "BK": rt.KEY_BLOCK,
                    "SUMS_FIRST": rt.SUMS_FIRST, "BL": rt.UPDATE_BLOCK, "SEARCH": rt.KEY_SUMS == "search",
                    "K_BITS": 4}, {"IDX": "*i64", "VALID": "*i1"}, rt.warps_for(256), 3, ())
    elif edges_triton.METHOD == "scan":
        yield ("scan", edges_triton._scan_kernel, {"K": 8, "BR": 32 * edges_triton.SCAN_WARPS},
               {"IDX": "*i64", "VALID": "*i1"}, edges_triton.SCAN_WARPS, 3, ("DOTS", "n"))
    else:
        rows = max(1, edges_triton.KEYS_PER_PROGRAM // 256)
        yield ("256 keys", edges_triton._top_edges_kernel, {"K": 8, "BR": rows, "BN": 256},
               {"IDX": "*i64", "VALID": "*i1"}, edges_triton.warps_for(rows * 256), 3, ())


def resources(phases: list[str]) -> list[dict]:
    rows = []
    for phase in phases:
        for setting in PHASES[phase][2]:
            with launch_settings({phase: _plain(setting)}):
                for variant, kernel, constants, pointers, warps, stages, aligned in _builds(phase):
                    usage = resource_usage(compile_for_hopper(kernel, constants, pointers, warps, stages, aligned))
                    row = {"phase": phase, "setting": _plain(setting), "variant": variant, "warps": warps, **usage}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--phases", default=DEFAULT_PHASES, help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--budget-s", type=float, default=None, help="skip the rows that would start after this")
    ap.add_argument("--compare-populations", default="1,4,8,32",
                    help="populations at which the settings in force and the fastest set are timed side by side, "
                         "TF32 ('' for none)")
    ap.add_argument("--resources", action="store_true",
                    help="compile every setting for sm_90 and report registers, spills and shared memory (no GPU)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model and batch, each phase's first two settings, P = 1 (Triton's interpreter)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    if unknown := [p for p in phases if p not in PHASES]:
        ap.error(f"--phases: unknown {', '.join(unknown)} (known: {', '.join(PHASES)})")
    report: dict = {"torch": torch.__version__, "triton": triton.__version__, "phases": phases,
                    "in_force": in_force()}

    def save() -> None:
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(report, f, indent=2)
            os.replace(args.out + ".tmp", args.out)

    if args.resources:
        report["resources"] = resources(phases)
        save()
        return report
    dev = torch.device(args.device)
    model = gpu_check.FUSED_SMOKE_MODEL if args.smoke else BASELINE_MODEL
    population = 1 if args.smoke else args.population
    precision = "fp32+fused" if args.smoke else "tf32+fused"  # the interpreter has no TF32
    final_pops = [] if args.smoke else [1, 32, args.population]
    final_precisions = ("tf32+fused", "bf16+fused")
    compare_pops = [1] if args.smoke else [int(x) for x in args.compare_populations.split(",") if x]
    corpus = load_corpus()
    started = time.perf_counter()
    report.update({"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                   "population": population, "steps": args.steps, "phase_rows": {}, "best_rows": [],
                   "compare_rows": [], "skipped": 0})
    report["kernel_bits"] = gpu_check.kernel_bits(dev, ("fp32",) if args.smoke else ("fp32", "bf16"))  # a second
    print(json.dumps({"kernel_bits": report["kernel_bits"]}), flush=True)
    report["attention_error"] = (gpu_check.attention_error(dev, ("fp32",), (40,)) if args.smoke  # seconds
                                 else gpu_check.attention_error(dev))
    print(json.dumps({"attention_error": report["attention_error"]}), flush=True)

    def row(rows: list, p: int, prec: str, chosen: dict) -> dict | None:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            report["skipped"] += 1
            return None
        r = timed_run(p, model, corpus, dev, args.steps, prec, chosen, 2 if args.smoke else 8)
        rows.append(r)
        print(json.dumps(r), flush=True)
        save()
        return r

    best = in_force()
    for phase in phases:
        settings = PHASES[phase][2][:2] if args.smoke else PHASES[phase][2]
        rows = report["phase_rows"].setdefault(phase, [])
        timed = [r for r in (row(rows, population, precision, {**best, phase: _plain(s)}) for s in settings) if r]
        for r in timed:  # a setting that computes something else (a compiler's fault) must not win by its speed
            r["agrees"] = losses_agree(r["last_losses"], timed[0]["last_losses"])
        fastest = min((r for r in timed if r["agrees"]), key=lambda r: r["median_step_s"], default=None)
        if fastest:
            best = fastest["settings"]
        save()
    report["best"] = best
    for p in final_pops:
        for prec in final_precisions:
            row(report["best_rows"], p, prec, best)
    for p in compare_pops:  # a small grid may want other settings (the tuned release lost 9% at P = 1 on an H200)
        for chosen in (in_force(), best):
            row(report["compare_rows"], p, precision, chosen)
    if not args.smoke:  # (minutes in the interpreter; tests/test_fused_attention.py checks invariance there)
        with launch_settings(best):
            report["best_invariance"] = gpu_check.invariance(corpus, dev, precision, 20)
            save()
            # where the step goes now, and in bf16 (its casts)
            for key, prec in (("best_profile", precision), ("best_profile_bf16", "bf16+fused")):
                if args.budget_s is None or time.perf_counter() - started <= args.budget_s:
                    report[key] = gpu_check.profile_top_ops(population, model, corpus, dev, rows=25, precision=prec)
                    save()
    report["total_s"] = time.perf_counter() - started
    save()
    print(json.dumps({"best": best, "best_invariance": report.get("best_invariance")}), flush=True)
    for r in [r for rows in report["phase_rows"].values() for r in rows] + report["best_rows"] + report[
            "compare_rows"]:
        print(f"{r['population']:4d} {r['precision']:11s} {r['settings']}: {1e3 * r['median_step_s']:7.2f} ms  "
              f"{r['member_steps_per_s']:7.1f} member-steps/s", flush=True)
    return report


if __name__ == "__main__":
    main()
