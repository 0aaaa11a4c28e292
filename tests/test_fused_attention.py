"""`TrainConfig.fused_attention`: the presynaptic attention's logits, softmax and p @ v as Triton kernels
(nanochat/fused_attention.py), checked on the CPU in Triton's interpreter.

The kernel against the formula in float64 (`fused_attention.dense_reference`; values and gradients, several chunk
sizes, lengths that are not a multiple of the kernel's blocks, float32 and float16), one member's NaN left in its
own rows, and training with the kernel against the default chunked attention (a mixed population with stochastic
release; a member alone vs in the population; a repeat bit for bit), the dtype the kernel gets under autocast, and
the kernels compiled for an sm_90 GPU by Triton's compiler, which needs no GPU. The interpreter runs the kernels'
programs one by one in numpy, so the shapes are small; it has no libdevice, so the GPU's approximate log, exp and
division are checked on a GPU (bench/gpu_check.py's `attention_error`). Triton is in the `test` extra; CUDA builds
of torch bring their own.
"""

import importlib
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from nanochat import synaptic
from nanochat.cli_args import config_args
from nanochat.config import ConfigError, ModelConfig, TrainConfig
from nanochat.trainer import train_population

from helpers import fewer_key_loop_steps, parse_training_flags, triton_interpreter_missing
from tiny import PILOT_MODEL, PILOT_SYNAPTIC, mixed_population


@pytest.fixture(scope="module")
def interpreted():
    """nanochat.fused_attention, its kernels run by Triton's interpreter on CPU tensors."""
    if reason := triton_interpreter_missing():
        pytest.skip(reason)
    return importlib.import_module("nanochat.fused_attention")


def _inputs(P, B, H, T, D, chunk, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, key, v = (torch.randn(P, B, H, T, D, generator=g) * s for s in (0.5, 1.0, 1.0))
    scales = torch.rand(P, B, H, -(-T // chunk), T, generator=g) * 3
    lam = torch.linspace(0.0, 2.0, P)  # lam = 0 leaves plain attention with a barrier
    eps = torch.linspace(0.05, 0.2, P)
    barrier = torch.linspace(0.3, 0.0, P)
    return q, key, v, scales, lam, eps, barrier


def _values_and_grads(fn, inputs, grad_out, dtype):
    q, key, v = (x.to(dtype, copy=True).requires_grad_() for x in inputs[:3])
    y = fn(q, key, v, *inputs[3:])
    return (y, *torch.autograd.grad(y, (q, key, v), grad_out.to(y.dtype)))


@pytest.mark.parametrize("T, chunk, D", [(40, 8, 16), (70, 16, 32), (33, 4, 8), (70, 32, 16), (70, 64, 8),
                                         (70, 24, 16), (64, 16, 16)])
def test_kernel_matches_a_float64_reference_values_and_gradients(interpreted, T, chunk, D):
    """A block's scales three ways: blocks of queries holding whole chunks (chunks of 4 to 32 in the forward's and
    dq's 64 queries: a row a chunk), blocks inside one chunk (32 and 64: one row), and chunks of 24, which neither
    divide nor are divided by the blocks (each score reads its own). Lengths and head sizes past the blocks' (masked
    loads), and one that the blocks tile exactly (T = 64, D = 16: no load masked)."""
    inputs = _inputs(3, 2, 2, T, D, chunk)
    grad_out = torch.randn(3, 2, 2, T, D, generator=torch.Generator().manual_seed(1))
    ref = _values_and_grads(lambda *a: interpreted.dense_reference(*a, chunk), inputs, grad_out, torch.float64)
    got = _values_and_grads(lambda *a: interpreted.presynaptic_attention(*a, chunk), inputs, grad_out,
                            torch.float32)
    for name, a, b in zip(("y", "dq", "dk", "dv"), got, ref):
        assert a.dtype == torch.float32
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max(), name


@pytest.mark.parametrize("forward, dkdv, dq", [((32, 16), (16, 64), (16, 32)), ((128, 64), (32, 32), (32, 64))])
def test_other_block_shapes_compute_the_same_attention(interpreted, monkeypatch, forward, dkdv, dq):
    """bench/tune_kernels.py times other blocks of queries and keys: more keys than queries, blocks past T (40)
    and chunk boundaries inside a block give the float64 reference's values and gradients too."""
    for name, blocks in (("FORWARD", forward), ("BACKWARD_DKDV", dkdv), ("BACKWARD_DQ", dq)):
        monkeypatch.setattr(interpreted, name, interpreted.Launch(*blocks))
    inputs = _inputs(2, 1, 2, 40, 16, 8)
    grad_out = torch.randn(2, 1, 2, 40, 16, generator=torch.Generator().manual_seed(1))
    ref = _values_and_grads(lambda *a: interpreted.dense_reference(*a, 8), inputs, grad_out, torch.float64)
    got = _values_and_grads(lambda *a: interpreted.presynaptic_attention(*a, 8), inputs, grad_out, torch.float32)
    for name, a, b in zip(("y", "dq", "dk", "dv"), got, ref):
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max(), name


def _tokens_first(x: torch.Tensor) -> torch.Tensor:
    """x (P, B, H, T, D) as the model's v is: a view of a (P, B, T, H, D) projection output."""
    return x.transpose(2, 3).contiguous().transpose(2, 3)


def test_the_projections_layout_is_read_and_written_in_place_with_the_same_bits(interpreted):
    """The model hands the kernel v as a view of its (P, B, T, H * D) projection and reads the output through
    such a view: the kernels step those strides (no transposing copies), the output and dv come back in v's layout,
    and every number is the contiguous call's, bit for bit. q and key in different layouts, or a tensor the kernel
    cannot step (a slice), are made contiguous first, with the same bits again."""
    q, key, v, *rest = _inputs(3, 2, 2, 40, 16, 8)
    grad = torch.randn(3, 2, 2, 40, 16, generator=torch.Generator().manual_seed(1))
    leaf = lambda x: x.detach().clone().requires_grad_()  # noqa: E731  (clone keeps a dense tensor's strides)

    def run(q, key, v, grad_out):
        y = interpreted.presynaptic_attention(q, key, v, *rest, 8)
        return y, torch.autograd.grad(y, (q, key, v), grad_out)

    y0, grads0 = run(leaf(q), leaf(key), leaf(v), grad)
    v_t = leaf(_tokens_first(v))
    y1, grads1 = run(leaf(q), leaf(key), v_t, _tokens_first(grad))
    assert v_t.stride() != v.stride()
    assert y1.stride() == v_t.stride() and grads1[2].stride() == v_t.stride()  # the projection's layout, no copy
    assert grads1[0].stride() == q.stride()
    y2, grads2 = run(leaf(q), leaf(key), leaf(_tokens_first(v)), grad)  # a contiguous d out: copied into place
    y3, grads3 = run(leaf(_tokens_first(q)), leaf(key), leaf(v), grad)  # q and key differ: both made contiguous
    longer = torch.zeros(3, 2, 2, 48, 16)
    longer[..., :40, :] = v
    longer.requires_grad_()
    sliced = longer[..., :40, :]
    assert interpreted._layout(sliced) is None
    y4, grads4 = run(leaf(q), leaf(key), sliced, grad)  # a slice of a longer sequence: not dense, made contiguous
    for y, grads in ((y1, grads1), (y2, grads2), (y3, grads3), (y4, grads4)):
        assert torch.equal(y, y0)
        for a, b in zip(grads, grads0):
            assert torch.equal(a, b)


def test_kernel_in_half_precision_is_close_to_the_reference(interpreted):
    """16-bit inputs (products in 16 bits, sums in float32). Float16 here: Triton 3.9's interpreter multiplies
    bfloat16 wrongly (a 16 x 16 bf16 dot comes out ~1e10 off), so bfloat16 is checked on a GPU (bench/gpu_check.py)."""
    inputs = _inputs(2, 2, 2, 40, 16, 8)
    grad_out = torch.randn(2, 2, 2, 40, 16, generator=torch.Generator().manual_seed(1))
    ref = _values_and_grads(lambda *a: interpreted.dense_reference(*a, 8), inputs, grad_out, torch.float64)
    got = _values_and_grads(lambda *a: interpreted.presynaptic_attention(*a, 8), inputs, grad_out, torch.float16)
    for name, a, b in zip(("y", "dq", "dk", "dv"), got, ref):
        assert a.dtype == torch.float16
        assert (a.double() - b).abs().max() <= 1e-2 * b.abs().max(), name


def test_a_nan_member_stays_in_its_own_rows(interpreted):
    q, key, v, scales, lam, eps, barrier = _inputs(3, 2, 2, 24, 16, 8)
    grad_out = torch.randn(3, 2, 2, 24, 16, generator=torch.Generator().manual_seed(1))
    clean = _values_and_grads(lambda *a: interpreted.presynaptic_attention(*a, 8),
                              (q, key, v, scales, lam, eps, barrier), grad_out, torch.float32)
    q[1, 0, 1, 5], lam[1] = math.nan, math.nan  # member 1: a NaN query row and a NaN knob
    broken = _values_and_grads(lambda *a: interpreted.presynaptic_attention(*a, 8),
                               (q, key, v, scales, lam, eps, barrier), grad_out, torch.float32)
    for a, b in zip(broken, clean):
        assert torch.equal(a[[0, 2]], b[[0, 2]])  # the other members, bit for bit
        assert a[1].isnan().any()


def test_kernel_refuses_mismatched_inputs(interpreted):
    q, key, v, scales, lam, eps, barrier = _inputs(1, 1, 1, 16, 16, 8)
    with pytest.raises(ValueError, match="scales must be float32"):
        interpreted.presynaptic_attention(q, key, v, scales[..., :1, :], lam, eps, barrier, 8)
    with pytest.raises(ValueError, match="share one dtype"):
        interpreted.presynaptic_attention(q.double(), key, v, scales, lam, eps, barrier, 8)


def test_under_autocast_the_kernel_multiplies_in_the_autocast_dtype(interpreted, monkeypatch):
    """Under autocast the chunked path's matmuls run in autocast's dtype, and so do the kernel's: q and k leave the
    fused path's qk-norm in it (the rotary kernel writes them so), as v leaves its projection. (Float16: see the
    half-precision test on bfloat16.)"""
    members = mixed_population(PILOT_SYNAPTIC)[:3]
    tokens = torch.randint(0, PILOT_MODEL.vocab_size, (2, PILOT_MODEL.sequence_len),
                           generator=torch.Generator().manual_seed(0))
    dtypes = []
    kernel = interpreted.presynaptic_attention
    monkeypatch.setattr(interpreted, "presynaptic_attention",
                        lambda q, key, v, *rest: dtypes.append((q.dtype, key.dtype, v.dtype)) or kernel(q, key, v, *rest))
    out = {}
    for fused in (False, True):
        net = synaptic.SynapticGPT(PILOT_MODEL, [m.synaptic for m in members], [m.seed for m in members], "cpu",
                                   fused_attention=fused).train()
        with torch.no_grad():  # the output projection starts at zero: give the attention's output a way out
            net.blocks[0].attn.c_proj.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", dtype=torch.float16):
            loss = net(tokens, tokens)
        loss.sum().backward()
        out[fused] = loss.detach(), net.blocks[0].attn.c_q.weight.grad
    assert dtypes == [(torch.float16,) * 3]
    assert ((out[True][0] - out[False][0]).abs() <= 1e-3 * out[False][0].abs()).all()
    grad, ref = out[True][1], out[False][1]
    assert (grad - ref).abs().max() <= 2e-2 * ref.abs().max()


def _train(corpus, members, fused: bool, steps: int = 4):
    cfg = TrainConfig(batch_size=2, max_steps=steps, warmup_steps=1, fused_attention=fused)
    return train_population(members, PILOT_MODEL, cfg, corpus, "cpu", val_batches=1)


def test_training_with_the_kernel_matches_the_chunked_attention(interpreted, corpus, monkeypatch):
    """The pilot's test model (4 chunks per sequence, so the state evolves) on three members, two of them drawing
    stochastic releases: the kernel's losses within float rounding of the default's, member by member; a member
    alone gives its numbers in the population; and a second run repeats the first bit for bit."""
    from nanochat import release_triton

    members = mixed_population(PILOT_SYNAPTIC)[4:7]
    fewer_key_loop_steps(monkeypatch)
    calls, state_steps = [], []
    kernel, state_step = interpreted.presynaptic_attention, release_triton.state_step
    monkeypatch.setattr(interpreted, "presynaptic_attention", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(release_triton, "state_step", lambda *a: state_steps.append(1) or state_step(*a))
    chunked = _train(corpus, members, False)
    assert not calls and not state_steps
    fused = _train(corpus, members, True)
    assert len(calls) == 4 + 1  # every training step, and the validation batch
    assert state_steps  # the state loop on the Triton kernels too (test_release_triton.py checks them)
    for f, c in zip(fused.members, chunked.members):
        assert f.ok and c.ok and len(f.losses) == len(c.losses) == 4
        assert max(abs(a - b) / abs(b) for a, b in zip(f.losses, c.losses)) <= 1e-5
        assert abs(f.val_loss - c.val_loss) <= 1e-5 * abs(c.val_loss)
    assert chunked.members[0].losses[-1] != chunked.members[0].losses[0]  # it trained
    alone = _train(corpus, members[1:2], True).members[0]
    assert max(abs(a - b) / abs(b) for a, b in zip(alone.losses, fused.members[1].losses)) <= 1e-5
    again = _train(corpus, members, True)
    assert [m.losses for m in again.members] == [m.losses for m in fused.members]


def test_fused_attention_is_a_checked_flag_that_round_trips(monkeypatch):
    with pytest.raises(ConfigError, match="fused_attention must be True or False"):
        TrainConfig(fused_attention=1)
    on = parse_training_flags(["--fused-attention"])
    assert on.fused_attention is True and parse_training_flags([]).fused_attention is False
    flags = config_args(ModelConfig(), on)  # what a subprocess evaluation is given
    assert "--fused-attention" in flags
    assert parse_training_flags(flags[flags.index("--batch-size"):]) == on
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="fused_attention needs a CUDA device, got 'cpu'"):
        synaptic.fused_attention_kernels(torch.device("cpu"))


def test_both_clis_refuse_the_fused_attention_on_a_cpu_before_writing(tmp_path, monkeypatch, capsys):
    from cmaes_inproc.cli import main as pilot_main
    from nanochat.train import main as train_main

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for main, prog, args in ((train_main, "nanochat.train", ["--out-dir", str(tmp_path / "one")]),
                             (pilot_main, "cmaes_inproc", ["--artifacts-dir", str(tmp_path / "art"), "--quiet"])):
        assert main(["--fused-attention", "--device", "cpu", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"{prog}: error: --fused-attention needs a CUDA device, got 'cpu' (its Triton kernels run on "
                         "a CPU only in Triton's slow interpreter, TRITON_INTERPRET=1)"]
    assert not any(tmp_path.iterdir())  # nothing written


COMPILE_FOR_HOPPER = """
import sys
sys.path.insert(0, BENCH)
from tune_kernels import compile_for_hopper
from nanochat import edges_triton as et, fused_attention as fa, release_triton as rt, relu2_triton as r2
from nanochat import norm_triton as nt, rotary_triton as ro


def build(kernel, constants, pointers=None, warps=4, stages=3, aligned=()):
    compiled = compile_for_hopper(kernel, constants, pointers, warps, stages, aligned)
    assert compiled.asm["cubin"], kernel
    print(kernel.fn.__name__, constants, compiled.metadata.shared)


for dtype, precision in (("fp32", "tf32"), ("bf16", "ieee")):  # the attention, q/k/v/out and their grads in dtype
    inputs = {n: "*" + dtype for n in ("Q", "K", "V", "OUT", "DO", "DK", "DV", "DQ")}
    for kernel, launch in ((fa._forward_kernel, fa.FORWARD), (fa._backward_dkdv_kernel, fa.BACKWARD_DKDV),
                           (fa._backward_dq_kernel, fa.BACKWARD_DQ)):
        build(kernel, {"PREC": precision, "BM": launch.queries, "BN": launch.keys, "BD": 32, "FAST_MATH": True,
                       "CHUNK": 32, "EVEN": True}, inputs, launch.warps, launch.stages)
for keys in (256, 2048):  # the release edges, rows of 256 and 2,048 keys
    rows = max(1, et.KEYS_PER_PROGRAM // keys)
    build(et._top_edges_kernel, {"K": 8, "BR": rows, "BN": keys}, {"IDX": "*i64", "VALID": "*i1"},
          et.warps_for(rows * keys))
for aligned in ((), ("DOTS", "n")):  # the other method, one thread a row (any row length; a multiple of 16)
    build(et._scan_kernel, {"K": 8, "BR": 32 * et.SCAN_WARPS}, {"IDX": "*i64", "VALID": "*i1"}, et.SCAN_WARPS,
          aligned=aligned)
for draws in (False, True):  # the release step, with and without stochastic rows, its keys' sums both ways
    for search in (False, True):
        build(rt._release_kernel, {"K": 8, "E": 256, "DELAY": 2, "DRAWS": draws, "N_KNOBS": 19, "BK": rt.KEY_BLOCK,
                                   "SUMS_FIRST": rt.SUMS_FIRST, "BL": rt.UPDATE_BLOCK, "SEARCH": search,
                                   "K_BITS": 4}, {"IDX": "*i64", "VALID": "*i1"}, rt.warps_for(256))
build(rt._running_mean_kernel, {"BR": 32})
build(rt._logit_scale_kernel, {"N_KNOBS": 19, "BL": 256})
for dtype in ("fp32", "bf16"):  # q and k's norm and rotation, from float32 or 16-bit projections
    for kernel in (ro._forward_kernel, ro._backward_kernel):
        build(kernel, {"BR": ro.ROWS_PER_PROGRAM, "BD": 32}, {"X": "*" + dtype})
for center in (False, True):  # the RMSNorm and the LayerNorm each way, rows of 128
    build(nt._forward_kernel, {"CENTER": center, "BR": nt.ROWS, "BC": 128})
    build(nt._backward_kernel, {"CENTER": center, "BR": nt.ROWS, "BC": 128})
for dtype in ("fp32", "bf16"):  # the MLP's relu^2 each way (d out in h's dtype)
    build(r2._forward_kernel, {"BLOCK": r2.BLOCK}, {"X": "*" + dtype, "Y": "*" + dtype})
    build(r2._backward_kernel, {"BLOCK": r2.BLOCK}, {"X": "*" + dtype, "G": "*" + dtype, "DX": "*" + dtype})
"""


def test_kernels_compile_for_a_hopper_gpu_without_one():
    """The interpreter does not compile anything: here Triton's compiler builds every Triton kernel of
    `fused_attention` for sm_90 (an H100/H200) down to a cubin, as a GPU's first step would: the attention's three
    in float32 with TF32 products and in bfloat16, the release edges' by both methods (nanochat/edges_triton.py),
    the state step's (nanochat/release_triton.py), q and k's norm and rotation (nanochat/rotary_triton.py), the
    RMSNorm and LayerNorm (nanochat/norm_triton.py) and the MLP's relu^2 (nanochat/relu2_triton.py)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs Triton (the test extra installs it on Linux x86-64)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, stated (it warns when unset)
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    done = subprocess.run([sys.executable, "-c", f"BENCH = {bench!r}\n" + COMPILE_FOR_HOPPER], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 6 + 2 + 2 + 4 + 2 + 4 + 4 + 4
