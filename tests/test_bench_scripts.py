"""The prepared GPU check runs end to end (on CPU, tiny model), so a lent GPU's minutes are not lost to a crash."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_smoke_on_cpu_writes_a_complete_report(tmp_path):
    out = tmp_path / "gpu.json"
    report = load_gpu_check().main(["--device", "cpu", "--smoke", "--steps", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [r["precision"] for r in report["invariance"]] == ["fp32", "bf16"]
    assert all(r["passed"] and r["bit_identical_repeat"] and r["all_ok"] for r in report["invariance"])
    rows = report["throughput"]
    assert [(r["population"], r["precision"]) for r in rows] == [(1, "fp32"), (2, "fp32"), (2, "bf16")]
    assert all(r["status"] == "ok" and r["member_steps_per_s"] > 0 and r["mfu_vs_fp32_peak"] > 0 for r in rows)
    ratio = report["batched_vs_sequential"]
    assert ratio["population"] == 2 and len(ratio["batched_s"]) == len(ratio["sequential_s"]) == 2
    assert ratio["speedup_median"] > 0
    ops = report["profile"]["top_ops"]
    assert ops and any(op["op"] == "aten::bmm" for op in ops) and all(0 <= op["share"] <= 1 for op in ops)
