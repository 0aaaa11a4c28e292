"""The fused step's Triton kernels as compiled for an sm_90 GPU (no GPU needed), held to this build's machine code.

The attention's kernels and the state step's top-k and release are bound by the instructions they issue (on the
H200, the release's and the top-k's instruction counts predicted their measured times within 1.5x; bench/RESULTS.md),
so their key loops' instructions are held here like the kernel count in test_kernel_count.py: per score for the
attention (warp instructions x warps / the block's scores), per row of 256 keys for the top-k, per key-loop step for
the release; and none of them may spill. The ceilings are Triton 3.9's code (other versions compile other code, so
the test runs on 3.9 only); a change that adds instructions fails here, one that removes some should lower them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("the fused step's kernels are Triton's", allow_module_level=True)

import triton  # noqa: E402

from nanochat import edges_triton, fused_attention, release_triton  # noqa: E402

pytestmark = pytest.mark.skipif(not triton.__version__.startswith("3.9"),
                                reason=f"the ceilings are Triton 3.9's machine code, this is {triton.__version__}")

# Warp instructions a score in the key loop, TF32 / bf16 (this build: 1.22 / 1.13, 1.71 / 1.48, 1.40 / 1.34), at the
# baseline's shapes, whose blocks tile T and D (EVEN: no load masked).
ATTENTION_CEILINGS = {"forward": (1.25, 1.16), "dkdv": (1.74, 1.51), "dq": (1.43, 1.37)}
TOP_K_ROW_CEILING = 870  # rounds, a row of 256 keys on one warp (this build: 864; 1,189 with 64-bit ranks)
RELEASE_STEP_CEILING = 650  # match, a key-loop step with stochastic draws (this build: 644; 1,131 before)

# In a process of its own: Triton's compiler, not its interpreter (which the tests' conftest may have turned on here).
_COMPILE = """
import json, sys
sys.path.insert(0, {bench!r})
from tune_kernels import _builds, compile_for_hopper, resource_usage
print(json.dumps({{variant: resource_usage(compile_for_hopper(kernel, constants, pointers, warps, stages, aligned))
                  for variant, kernel, constants, pointers, warps, stages, aligned in _builds({phase!r})}}))
"""


def _machine_code(phase: str) -> dict:
    """Each variant of the phase's kernel with the settings in force: its resources (tune_kernels.resource_usage)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, stated (it warns when unset)
    code = _COMPILE.format(bench=os.path.dirname(os.path.abspath(__file__)), phase=phase)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("phase", ["forward", "dkdv", "dq"])
def test_attention_key_loops(benchmark, phase):
    usage = benchmark.pedantic(_machine_code, args=(phase,), rounds=1, iterations=1)
    launch = getattr(fused_attention, {"forward": "FORWARD", "dkdv": "BACKWARD_DKDV", "dq": "BACKWARD_DQ"}[phase])
    per_score = {variant: u["loop_instructions"][0] * launch.warps / (launch.queries * launch.keys)
                 for variant, u in usage.items()}
    benchmark.extra_info.update(per_score=per_score, registers={v: u["registers"] for v, u in usage.items()})
    assert all(u["stack_bytes"] == 0 and len(u["loop_instructions"]) == 1 for u in usage.values()), usage
    tf32, bf16 = ATTENTION_CEILINGS[phase]
    assert per_score["fp32"] <= tf32 and per_score["bf16"] <= bf16, per_score


def test_top_k_rounds(benchmark):
    if edges_triton.METHOD != "rounds":
        pytest.skip("the top-k in force is the scan")
    usage = benchmark.pedantic(_machine_code, args=("top_k",), rounds=1, iterations=1)["256 keys"]
    benchmark.extra_info.update(usage)
    assert usage["stack_bytes"] == 0 and usage["instructions"] <= TOP_K_ROW_CEILING, usage


def test_release_key_loop(benchmark):
    if (release_triton.KEY_SUMS, release_triton.SUMS_FIRST) != ("match", False):
        pytest.skip("the ceiling is the match's key loop, and another method is in force")
    usage = benchmark.pedantic(_machine_code, args=("release",), rounds=1, iterations=1)
    benchmark.extra_info.update(usage)
    (step,) = usage["draws"]["loop_instructions"]
    assert step <= RELEASE_STEP_CEILING, usage
    assert usage["no draws"]["stack_bytes"] == 0, usage  # (with draws 416 bytes spill, outside the loop)
