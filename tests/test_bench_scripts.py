"""The prepared GPU scripts run end to end (on CPU, tiny model), so a lent GPU's minutes are not lost to a crash."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import fewer_key_loop_steps, triton_interpreter_missing

BENCH = Path(__file__).resolve().parent.parent / "bench"
KERNEL_BITS = ("values_equal", "gradients_equal", "rotary_values_equal", "rotary_gradients_equal")  # gpu_check


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_smoke_on_cpu_writes_a_complete_report(tmp_path, monkeypatch):
    out = tmp_path / "gpu.json"
    # On the CPU the fused attention's kernels run in Triton's interpreter (conftest.py): one small row of each kind,
    # where that interpreter can run them.
    fused = not triton_interpreter_missing()
    if fused:
        fewer_key_loop_steps(monkeypatch)
    report = load_bench("gpu_check").main(["--device", "cpu", "--smoke", "--steps", "2", "--out", str(out)] +
                                          ([] if fused else ["--fused-populations", ""]))
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    # The order is the lease's priority: the rows first, torch.compile's (minutes to compile) last.
    assert [r["precision"] for r in report["invariance"]] == ["fp32", "tf32", "bf16"]  # compiled: not in smokes
    assert all(r["passed"] and r["bit_identical_repeat"] and r["all_ok"] for r in report["invariance"])
    rows = report["throughput"]
    assert [(r["population"], r["precision"], r["cuda_graph"]) for r in rows] == [
        (1, "fp32", True), (2, "fp32", True)] + ([(1, "fp32+fused", True)] if fused else []) + [
        (2, "bf16", True), (2, "tf32", True), (2, "fp32", False), (2, "fp32+compile", True)]
    assert all(r["execution"] == "eager" for r in rows)  # CUDA graphs exist on CUDA only
    eq = report["graph_equivalence"]
    assert eq["bit_identical"] and eq["same_statuses"] and eq["statuses"] == ["ok"] * 4 + ["nan"]
    assert eq["failure_steps"][-1] == 4
    same = report["cpu_vs_device"]  # cpu against cpu here: the same function, so no difference at all
    assert len(same["cpu_losses"]) == len(same["device_losses"]) == 3
    assert same["max_rel_loss_diff_first_3"] == 0.0 and all(d == 0.0 for _, d in same["worst_grad_rel_diff_step0"])
    assert all(r["status"] == "ok" and r["member_steps_per_s"] > 0 and r["mfu"] > 0 for r in rows)
    ratio = report["batched_vs_sequential"]
    assert ratio["population"] == 2 and len(ratio["batched_s"]) == len(ratio["sequential_s"]) == 2
    assert ratio["speedup_median"] > 0
    assert [(p["population"], p["precision"]) for p in report["profile"]] == [(2, "fp32"), (2, "fp32+compile")]
    ops = report["profile"][0]["top_ops"]
    assert ops and any(op["op"] == "aten::bmm" for op in ops) and all(0 <= op["share"] <= 1 for op in ops)
    counted = report["kernel_count"]  # the same population and model, counted on the meta device
    assert counted["population"] == 2 and counted["kernels_per_step"] == sum(counted["parts"].values()) > 0
    if fused:
        assert report["kernel_count_fused"]["kernels_per_step"] < counted["kernels_per_step"]
        assert report["kernel_bits"] == {"fp32": dict.fromkeys(KERNEL_BITS, True)}
        assert list(report["attention_error"]) == ["fp32"] and report["attention_error"]["fp32"]["within"]
    assert report["errors"] == {} and report["skipped"] == []


def test_gpu_check_records_a_failing_phase_and_goes_on(tmp_path, monkeypatch):
    gpu_check = load_bench("gpu_check")

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(gpu_check, "invariance", broken)
    monkeypatch.setattr(gpu_check, "profile_top_ops", broken)
    out = tmp_path / "gpu.json"
    report = gpu_check.main(["--device", "cpu", "--smoke", "--steps", "2", "--compile-populations", "",
                             "--fused-populations", "", "--out", str(out)])
    assert report["errors"]["invariance_fp32"] == "RuntimeError: planted failure"
    assert set(report["errors"]) == {"invariance_fp32", "invariance_tf32", "invariance_bf16", "profile_P2"}
    assert len(report["throughput"]) == 5 and report["batched_vs_sequential"]["speedup_median"] > 0
    assert json.loads(out.read_text())["errors"] == report["errors"]


def test_gpu_check_skips_phases_past_its_budget(tmp_path):
    report = load_bench("gpu_check").main(["--device", "cpu", "--smoke", "--steps", "2", "--budget-s", "0"])
    assert {"graph_equivalence", "invariance_fp32", "batched_vs_sequential"} <= set(report["skipped"])
    assert "throughput" not in report and report["errors"] == {}


def test_gpu_check_runs_only_the_phases_asked_for():
    report = load_bench("gpu_check").main(["--device", "cpu", "--smoke", "--steps", "2",
                                           "--phases", "^throughput_fp32_P1$|^kernel_count$"])
    assert [(r["population"], r["precision"]) for r in report["throughput"]] == [(1, "fp32")]
    assert set(report["phase_seconds"]) == {"throughput_fp32_P1", "kernel_count"}
    assert {"graph_equivalence", "throughput_fp32+fused_P1", "warm_up", "kernel_count_fused"} <= set(
        report["not_selected"])
    assert report["errors"] == {} and report["skipped"] == []


def test_attention_probe_smoke_on_cpu(monkeypatch):
    fused = not triton_interpreter_missing()  # the Triton kernels' rows, in the interpreter (conftest.py)
    if not fused:  # an interpreter that cannot run them (Triton < 3.7): the probe is told no Triton runs here
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    else:
        fewer_key_loop_steps(monkeypatch)
    report = load_bench("attention_probe").main(["--device", "cpu", "--smoke", "--repeats", "1"])
    assert report["population"] == 2 and report["two_stage_same_set"] is True
    for part in ("eager", "compiled") + (("fused",) if fused else ()):
        assert report[f"layer_{part}_fwd_s"] > 0 and report[f"layer_{part}_bwd_s"] > 0
    assert ("state_loop_triton_s" in report) == fused
    assert set(report["topk_s"]) == {"topk", "top_edges", "two_stage", "two_stage_sorted_by_key", "sort_rows",
                                     "rounds_of_max"} | ({"triton_top_edges"} if fused else set())
    assert "flex_fwd_bwd_s" not in report  # CUDA only


@pytest.mark.skipif(bool(triton_interpreter_missing()), reason=triton_interpreter_missing() or "runs")
def test_tune_kernels_smoke_times_each_setting_and_restores_the_constants(tmp_path):
    tune = load_bench("tune_kernels")
    before = tune.in_force()
    report = tune.main(["--device", "cpu", "--smoke", "--steps", "1", "--phases", "dq,release",
                        "--out", str(tmp_path / "tune.json")])
    for phase in ("dq", "release"):
        rows = report["phase_rows"][phase]
        assert [r["settings"][phase] for r in rows] == [tune._plain(s) for s in tune.PHASES[phase][2][:2]]
        assert report["best"][phase] in [r["settings"][phase] for r in rows]
    assert all(r["agrees"] for phase in ("dq", "release") for r in report["phase_rows"][phase])
    # the release phase ran with the dq phase's fastest setting in force
    assert {r["settings"]["dq"] == report["best"]["dq"] for r in report["phase_rows"]["release"]} == {True}
    assert [r["settings"] for r in report["compare_rows"]] == [before, report["best"]]
    # On one member a block's size changes the order of a few sums: float rounding, nothing more.
    losses = [loss for key in ("dq", "release") for r in report["phase_rows"][key] for loss in r["last_losses"]]
    assert max(losses) - min(losses) <= 1e-5 * max(losses)
    assert tune.in_force() == before
    assert report["kernel_bits"] == {"fp32": dict.fromkeys(KERNEL_BITS, True)}
    assert list(report["attention_error"]) == ["fp32"] and report["attention_error"]["fp32"]["within"]
    assert json.loads((tmp_path / "tune.json").read_text()) == json.loads(json.dumps(report))


def test_tune_kernels_phases_start_from_the_settings_in_force_and_name_real_constants():
    """Each phase's first setting is the one the modules hold, so its first row is the build as it is."""
    tune = load_bench("tune_kernels")
    for phase, (module, names, settings) in tune.PHASES.items():
        assert all(hasattr(module, n) for n in names), phase
        assert tune._plain(settings[0]) == tune.in_force()[phase], phase
        assert len({tune._setting(phase, tune._plain(s)) for s in settings}) == len(settings) > 1, phase
    with pytest.raises(SystemExit):
        tune.main(["--phases", "dq,warp_speed"])
    # a row whose losses are off by more than rounding cannot be the fastest
    assert tune.losses_agree([3.0469, 3.0470], [3.0469 + 3e-5, 3.0470])
    assert not tune.losses_agree([3.0469, 3.1], [3.0469, 3.0470])
    assert not tune.losses_agree([float("nan")], [3.0469]) and not tune.losses_agree([3.0], [3.0, 3.0])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_tune_kernels_resources_read_registers_and_loops_from_the_machine_code(tmp_path):
    """--resources compiles each setting for sm_90 without a GPU (in a process of its own: this one's kernels are
    the interpreter's) and reads the cubins: the top-k's rounds are straight-line code, the scan one loop (four
    keys a trip) that is a fraction of its code."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, stated (it warns when unset)
    out = tmp_path / "resources.json"
    done = subprocess.run([sys.executable, str(BENCH / "tune_kernels.py"), "--resources", "--phases", "top_k",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["resources"]
    assert [r["setting"][0] for r in rows] == ["rounds", "scan", "scan", "scan"]
    assert all(r["registers"] > 0 and r["stack_bytes"] == 0 for r in rows)
    assert rows[0]["loop_instructions"] == []
    assert all(len(r["loop_instructions"]) == 1 and 8 * 4 < r["loop_instructions"][0] < r["instructions"]
               for r in rows[1:])


def test_count_kernels_counts_a_tensors_bytes_once_however_it_is_viewed():
    span = load_bench("count_kernels")._span
    x = torch.empty(4, 6, device="meta")
    assert span(x) == span(x.t()) == 4 * 6 * 4
    assert span(torch.empty(6, device="meta").expand(4, 6)) == 6 * 4  # a broadcast row is read once
    assert span(x[:, :2]) == 4 * 2 * 4  # a slice: its own elements
    assert span(x[:0]) == 0


def test_count_kernels_takes_the_gpu_path_and_does_not_grow_with_the_population():
    from tiny import TRAINER_MODEL  # 2 layers, sequences of 64: two presynaptic chunks of 32 per layer

    count = load_bench("count_kernels").count
    two, five = count(2, TRAINER_MODEL, batch_size=2), count(5, TRAINER_MODEL, batch_size=2)
    assert two["kernels_per_step"] == five["kernels_per_step"] > 500  # no Python loop over members
    # ... while the bytes the operators move grow with it (per-member activations, weights and state)
    moved = two["operand_bytes"]
    assert moved["total"] == sum(moved["parts"].values()) == sum(moved["lines"].values()) > 0
    assert set(moved["lines"]) == set(two["lines"])  # every line that launches has its bytes, and no other
    assert five["operand_bytes"]["total"] > 2 * moved["total"]
    assert sum(two["parts"].values()) == two["kernels_per_step"]
    assert {"aten::topk", "aten::scatter_"} <= set(two["ops"])  # CUDA's top-k and dense per-key sums
    assert "aten::scatter_add_" not in two["ops"] and "aten::empty" not in two["ops"]
    regions = two["compiled_regions"]
    # the state step, the chain and its backward per layer and chunk; the Hebbian update; the optimizer step
    assert regions["calls"] == 3 * TRAINER_MODEL.n_layer * 2 + 2
    assert regions["ops_inside"] + regions["ops_outside"] == two["kernels_per_step"]
    assert two["parts"]["release step"] > two["parts"]["top-k edges"] > 0
    # F.rms_norm as CUDA runs it, one kernel each way: a block's, the embedding's and the final one
    norms = TRAINER_MODEL.n_layer + 2
    assert two["ops"]["count_kernels::fused_rms_norm"] == two["ops"]["count_kernels::fused_rms_norm_backward"] == norms
    assert "aten::rsqrt" not in two["ops"]
    # autograd's operators are charged to the forward line that made their node: the projections' gradients
    projections = {line for line in two["lines"] if line.startswith("autograd of population.py:")}
    assert {line.split()[-1] for line in projections} >= {"aten::bmm"}
    unplaced = sum(n for line, n in two["lines"].items() if line.startswith("autograd aten::"))
    assert unplaced <= 6  # the step's own masked loss sum, outside nanochat

    if importlib.util.find_spec("triton") is None:
        return  # the fused step's modules import Triton
    # The Triton modules, their kernels' launches standing in (one operator each).
    fused = count(2, TRAINER_MODEL, batch_size=2, fused_attention=True)
    layers, chunks = TRAINER_MODEL.n_layer, 2
    # per layer the attention's forward, dk/dv and dq, q's and k's norm and rotation each way and the MLP's relu^2
    # each way; per chunk the edges, the release, the running mean and a logit scale; the residual stream's norms
    # each way (an RMSNorm and a LayerNorm a layer, and the RMSNorms after the embedding and before the head)
    norms = 2 * (2 * layers + 2)
    assert (fused["ops"]["count_kernels::triton_kernel"]
            == 3 * layers + 4 * layers + 2 * layers + 4 * chunks * layers + norms)
    assert fused["parts"]["q and k norm and rotary kernels"] == 4 * layers
    assert fused["parts"]["RMSNorm and LayerNorm kernels"] == norms
    assert not {"aten::native_layer_norm", "count_kernels::fused_rms_norm"} & set(fused["ops"])
    assert fused["parts"]["MLP relu^2 kernels"] == 2 * layers and "aten::relu" not in fused["ops"]
    assert fused["parts"]["top-k edges"] == chunks * layers and "aten::topk" not in fused["ops"]
    assert fused["parts"]["fused attention kernels, forward"] == layers
    assert fused["parts"]["release step"] == 2 * chunks * layers  # the release kernel and the running mean
    # the state loop launches only each chunk's q.k (the scales go straight into their rows of the table), and the
    # attention's backward only its two kernels (the dq kernel writes the softmax backward's row sums)
    assert fused["parts"]["state loop's q.k and scale table (fused attention)"] == chunks * layers
    assert fused["parts"]["fused attention kernels, backward"] == 2 * layers
    # by source line: every kernel once; the Hebbian rule runs once for all layers (no per-layer line repeats it)
    assert sum(fused["lines"].values()) == fused["kernels_per_step"]
    hebbian_sigmoids = sum(n for line, n in fused["lines"].items()
                           if line.startswith("hebbian.py:") and line.endswith(" aten::sigmoid"))
    assert hebbian_sigmoids == 2  # CaMKII's and PP1's, whatever the number of layers
    assert not any(part.startswith("logits chain") for part in fused["parts"])
    assert fused["kernels_per_step"] < two["kernels_per_step"] - two["parts"]["release step"]

    # bf16: autocast's casts (emulated on meta, every operator checked against its rule). q, k and the state loop's
    # dots stay in the matmuls' dtype: the state loop launches only its q.k, and nothing casts around the rotary
    bf16 = count(2, TRAINER_MODEL, batch_size=2, fused_attention=True, precision="bf16")
    assert bf16["autocast_misses"] == {} and bf16["ops"]["aten::_to_copy"] > fused["ops"].get("aten::_to_copy", 0)
    assert bf16["parts"]["state loop's q.k and scale table (fused attention)"] == chunks * layers
    assert not [line for line in bf16["lines"] if "rotary_triton.py" in line and line.endswith("aten::_to_copy")]


def test_count_kernels_casts_as_autocast_does_each_way():
    """_AutocastOnMeta against torch.autocast itself, on the CPU, for the matmuls (where CPU's rules are CUDA's):
    the same casts forward and backward (autograd's casts of the gradients back), the same dtypes out; and an
    operator the emulation does not reach is reported by the counter's check, not silently counted in float32."""
    ck = load_bench("count_kernels")

    def step(device, autocast):
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=g).to(device).requires_grad_() for shape in
                   ((2, 3, 4), (2, 4, 4), (2, 1, 4)))
        with ck._Counter() as counter:
            with autocast:
                y = torch.baddbmm(b, x, w)
                z = torch.bmm(y, w.transpose(1, 2)) @ w
            z.float().sum().backward()
        return y.dtype, z.dtype, x.grad.dtype, counter.ops["aten::_to_copy"]

    real = step("cpu", torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))  # as the trainer runs it
    assert real[:3] == (torch.bfloat16, torch.bfloat16, torch.float32) and real[3] >= 6
    assert step("meta", ck._AutocastOnMeta(torch.bfloat16)) == real

    with ck._Counter() as counter:
        counter.autocast = ck._AutocastOnMeta(torch.bfloat16)  # as in a bf16 forward, but the mode not entered
        torch.bmm(torch.empty(2, 3, 4, device="meta"), torch.empty(2, 4, 5, device="meta"))
    assert counter.autocast_misses == {"aten::bmm torch.float32": 1}
