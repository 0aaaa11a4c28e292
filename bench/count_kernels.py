"""Count the kernels one training step launches on the GPU code path, without a GPU, by part of the model.

    python bench/count_kernels.py --population 32 [--fused-attention] [--precision bf16] [--by-line 20]
        [--bandwidth-tbs 4.8] [--out counts.json]

The model is built on PyTorch's `meta` device: tensors with shapes and no data, so a step costs only Python and any
population size is free. Every device check in nanochat is "CPU or not", so a meta step takes the CUDA branches
(torch top-k, dense per-key sums, every query row's Binomial draws), and the CUDA path never reads a value on the
host (it is replayed as a CUDA graph), so it runs without data. One step is counted after a warm-up step, under a
dispatch mode that sees every aten operator below autograd:

* an operator that launches work counts as one kernel; views, allocations and `_unsafe_view` launch nothing and
  are left out. A few operators launch more than one kernel on CUDA (large reductions, top-k's passes), and the
  trainer's loss bookkeeping (about a dozen small ops) is not in this step. Checked against a real profile: for the
  build that was profiled on an H200 (bb3df3e) this count gives 7,898 per step at P = 32, and the H200 measured
  8,098 kernels per step, a figure that includes the model's construction spread over the two profiled steps (153
  host-to-device copies alone);
* a `_foreach_` operator counts as one launch, or one per tensor where its lists broadcast (CUDA's slow path);
* `F.rms_norm` counts as CUDA runs it, one fused kernel each way (`aten::_fused_rms_norm` in the H200's profile);
  on other devices, meta included, torch composes it of five operators forward and more backward;
* each operator is charged to the innermost part of the model on its Python stack (`PARTS`), and by line to the
  innermost line of nanochat on it; an operator of autograd's backward, which has no nanochat frame, is charged by
  line to the forward line that made its graph node ("autograd of synaptic.py:632"; the step runs in anomaly mode,
  which records each node's forward stack);
* with --precision bf16 (TrainConfig.precision) the forward runs under bf16 autocast's casts, which autocast itself
  would not make on meta tensors: `_AutocastOnMeta` applies autocast(cuda)'s rule for each operator (from the
  dispatcher's table) above autograd, so the backward casts each gradient back as on CUDA, and the counter checks
  every forward operator's dtypes against its rule (`autocast_misses`, empty when nothing was missed);
* `compiled_regions` are the functions that `TrainConfig.compile` hands to torch.compile on CUDA (`fused.py`).
  Compiled, each call becomes a few fused kernels; the operators outside them are what a compiled step still
  launches one by one.

With --fused-attention (TrainConfig.fused_attention) the step runs the real modules of its Triton kernels
(fused_attention.py, edges_triton.py, release_triton.py, rotary_triton.py, relu2_triton.py, norm_triton.py; this
needs Triton installed), whose torch operators are counted as usual; only the kernels cannot run on meta tensors, so
each `kernel[grid](...)` launch stands in as one operator (`count_kernels::triton_kernel`).

The count does not grow with the population (one model serves P = 1 and P = N, with no Python loop over members),
which the tests check; P = 1 launches one clone fewer in autograd.

It also adds up each operator's operand bytes (every input read once, every output written once, a broadcast
dimension counted once): an estimate of the step's memory traffic, not a measurement, which --bandwidth-tbs turns
into a floor on the step's time on a card (a GEMM that keeps its tiles in cache moves less; a gather moves only
what it indexes, and a Triton launch is charged each tensor it is passed once).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import json
import os
import re
import sys

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BASELINE_MODEL, candidates  # noqa: E402

from nanochat import edges, synaptic  # noqa: E402
from nanochat.config import ModelConfig  # noqa: E402
from nanochat.optim import PopulationOptimizer  # noqa: E402
from nanochat.synaptic import SynapticGPT  # noqa: E402

def _code(fn):
    """The code object a frame of fn runs (under torch.no_grad's and autograd.Function's wrappers)."""
    return inspect.unwrap(fn).__code__


@torch.library.custom_op("count_kernels::triton_kernel", mutates_args=())
def _triton_launch(operands: list[torch.Tensor], kernel: str) -> None:
    raise NotImplementedError("a stand-in for counting on the meta device")


_triton_launch.register_fake(lambda operands, kernel: None)


@torch.library.custom_op("count_kernels::fused_rms_norm", mutates_args=())
def _fused_rms_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raise NotImplementedError("a stand-in for counting on the meta device")


@torch.library.custom_op("count_kernels::fused_rms_norm_backward", mutates_args=())
def _fused_rms_norm_backward(grad: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError("a stand-in for counting on the meta device")


_fused_rms_norm.register_fake(lambda x: (torch.empty_like(x), x.new_empty(x.shape[:-1])))
_fused_rms_norm_backward.register_fake(lambda grad, x, rstd: torch.empty_like(x))
_fused_rms_norm.register_autograd(
    lambda ctx, grad, _: _fused_rms_norm_backward(grad, *ctx.saved_tensors),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0], output[1]))


def _rms_norm_as_on_cuda(x: torch.Tensor, normalized_shape, weight=None, eps=None) -> torch.Tensor:
    """F.rms_norm as CUDA runs it, one kernel each way (`aten::_fused_rms_norm`, which the H200's profile shows);
    elsewhere, meta included, it is composite: pow, mean, add, rsqrt and mul forward, twice that backward. A torch
    function mode sees it as aten::rms_norm (`autocast_op`), so bf16 autocast's float32 rule applies to it."""
    if torch.overrides.has_torch_function_unary(x):
        return torch.overrides.handle_torch_function(_rms_norm_as_on_cuda, (x,), x, normalized_shape, weight, eps)
    if weight is not None or len(normalized_shape) != 1:
        raise NotImplementedError("nanochat's RMSNorms have no weight and normalise the last dimension")
    return _fused_rms_norm(x)[0]


_rms_norm_as_on_cuda.autocast_op = "rms_norm"


class _Launch:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args)` dispatches one operator the count sees."""

    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            operands = list({id(a): a for a in args if isinstance(a, torch.Tensor)}.values())  # each tensor once
            _triton_launch(operands, self.name)

        return launch


def _triton_modules() -> dict:
    """The modules of TrainConfig.fused_attention, by name (they import Triton)."""
    from nanochat import edges_triton, fused_attention, norm_triton, release_triton, relu2_triton, rotary_triton

    return {"edges_triton": edges_triton, "fused_attention": fused_attention, "release_triton": release_triton,
            "rotary_triton": rotary_triton, "relu2_triton": relu2_triton, "norm_triton": norm_triton}


def _fused_parts() -> dict:
    """PARTS of the Triton modules, where Triton imports."""
    try:
        m = _triton_modules()
    except ImportError:  # no Triton: fused steps cannot be counted here
        return {}
    return {
        m["edges_triton"].top_edges: "top-k edges",
        m["release_triton"].state_step: "release step",
        m["release_triton"].release: "release step",
        m["release_triton"].logit_scale: "logit scale (release probability of every key)",
        m["fused_attention"]._PresynapticAttention.forward: "fused attention kernels, forward",
        m["fused_attention"]._PresynapticAttention.backward: "fused attention kernels, backward",
        m["rotary_triton"]._NormRotary.forward: "q and k norm and rotary kernels",
        m["rotary_triton"]._NormRotary.backward: "q and k norm and rotary kernels",
        m["relu2_triton"]._ReluSquared.forward: "MLP relu^2 kernels",
        m["relu2_triton"]._ReluSquared.backward: "MLP relu^2 kernels",
        m["norm_triton"]._Norm.forward: "RMSNorm and LayerNorm kernels",
        m["norm_triton"]._Norm.backward: "RMSNorm and LayerNorm kernels",
    }


# Innermost function on the stack -> the part of the step it belongs to.
PARTS = {
    synaptic.PresynapticState.release: "release step",
    synaptic.PresynapticState.logit_scale: "logit scale (release probability of every key)",
    edges.top_edges: "top-k edges",
    synaptic.ReleaseNoise.draw_edges: "release noise",
    synaptic._logits_chain: "logits chain, forward",
    synaptic._logits_chain_backward: "logits chain, backward",
    synaptic._ChunkedPresynapticAttention.forward: "attention q.k and p.v, forward",
    synaptic._ChunkedPresynapticAttention.backward: "attention q.k and p.v, backward",
    synaptic.SynapticGPT.hebbian_update: "Hebbian update",
    PopulationOptimizer.step: "optimizer",
    synaptic._AttentionRun.scale_table: "state loop's q.k and scale table (fused attention)",
    synaptic.SynapticGPT.forward: "rest of the forward (projections, norms, MLP, loss)",
    **_fused_parts(),
}
BACKWARD_REST = "rest of the backward (autograd)"
# What TrainConfig.compile fuses on CUDA (nanochat/fused.py).
COMPILED_REGIONS = (synaptic._logits_chain, synaptic._logits_chain_backward, synaptic._state_step,
                    synaptic.SynapticGPT.hebbian_update, PopulationOptimizer.step)
_PART_OF_CODE = {_code(f): label for f, label in PARTS.items()}
_REGION_CODES = {_code(f) for f in COMPILED_REGIONS}
NO_KERNEL = {"aten::_unsafe_view", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
             "aten::new_empty_strided", "aten::detach", "aten::lift_fresh", "aten::alias", "aten::promote_types"}


def _autocast_kernels() -> dict[str, str]:
    """The operators torch.autocast(cuda) has a rule for (a kernel, not a fallthrough, in the dispatcher's
    AutocastCUDA entry; a CPU build registers them too), by name, with the rule: "lower" (floating inputs cast to
    the autocast dtype: the matmuls), "fp32" (cast to float32), "fp32_dtype" (run with dtype=float32: sums,
    softmaxes), "fp32_norm" (norm's float32 variant) or "promote" (to the widest input type)."""
    lower = {"_convolution", "_scaled_dot_product_flash_attention", "_thnn_fused_gru_cell", "_thnn_fused_lstm_cell",
             "addbmm", "addmm", "addmv", "addr", "baddbmm", "bmm", "chain_matmul", "conv1d", "conv2d", "conv3d",
             "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "convolution",
             "cudnn_convolution", "cudnn_convolution_transpose", "einsum", "gru_cell", "linalg_multi_dot",
             "linalg_vecdot", "linear", "lstm_cell", "matmul", "mm", "mv", "prelu", "rnn_relu_cell",
             "rnn_tanh_cell", "scaled_dot_product_attention"}
    fp32_dtype = {"cumprod", "cumsum", "log_softmax", "prod", "softmax", "sum", "linalg_vector_norm",
                  "linalg_matrix_norm"}
    promote = {"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler", "index_put",
               "scatter_add", "tensordot", "vdot"}
    rules = {}
    for op in torch._C._dispatch_get_all_op_names():
        if not op.startswith("aten::"):
            continue
        table = torch._C._dispatch_dump_table(op)
        if any(line.startswith("AutocastCUDA:") and "[kernel]" in line for line in table.splitlines()):
            name = op[len("aten::"):].split(".")[0]
            rules[name] = ("lower" if name in lower else "fp32_dtype" if name in fp32_dtype else
                           "fp32_norm" if name == "norm" else "promote" if name in promote else "fp32")
    return rules


AUTOCAST_RULES = _autocast_kernels()


class _AutocastOnMeta(TorchFunctionMode):
    """torch.autocast("cuda", bfloat16)'s casts on the meta device, where autocast casts nothing (it casts only
    tensors on its own device, and this CPU build cannot make tensors that claim a CUDA device and have a gradient).

    Applied where autocast applies them, above autograd, so the backward casts each gradient back as it does on
    CUDA: a torch function named after an operator with a rule in `AUTOCAST_RULES` gets its floating tensors cast
    by that rule (cross_entropy as the log_softmax and nll_loss it is made of). The counter checks the result:
    every aten operator with a rule that runs inside the forward must see the dtypes its rule gives
    (`_Counter.autocast_misses`), so an operator this emulation does not reach is reported, not miscounted.

    nanochat.precision asks autocast's state, which the meta device has none of: `matmul_input` and `off` stand in
    for its two functions (the counter patches them in)."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.dtype = dtype
        self.paused = 0  # inside `off` blocks

    def matmul_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype) if x.dtype == torch.float32 and not self.paused else x

    @contextlib.contextmanager
    def off(self, device: torch.device | None = None):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        name = getattr(func, "autocast_op", None) or getattr(func, "__name__", "")
        if name.startswith("__") and name.endswith("__"):  # Tensor.__matmul__, __rmatmul__, __pow__, __rpow__
            name = {"rmatmul": "matmul", "rpow": "pow"}.get(name[2:-2], name[2:-2])
        if name == "cross_entropy" and not self._floating(args, kwargs, (torch.float32, torch.float64)):
            options = {**dict(zip(("input", "target", "weight"), args)), **kwargs}
            if (options.get("weight") is not None or options.get("label_smoothing", 0.0) != 0.0
                    or options.get("size_average") is not None or options.get("reduce") is not None):
                raise NotImplementedError("cross_entropy with weights or label smoothing is not emulated")
            logp = torch.log_softmax(options["input"], 1, dtype=torch.float32)  # autocast's dtype rule for it
            return F.nll_loss(logp, options["target"], ignore_index=options.get("ignore_index", -100),
                              reduction=options.get("reduction", "mean"))
        rule = AUTOCAST_RULES.get(name)
        if rule == "lower":
            args, kwargs = self._cast((args, kwargs), (torch.float32,), self.dtype)
        elif rule == "fp32":
            args, kwargs = self._cast((args, kwargs), (torch.bfloat16, torch.float16), torch.float32)
        elif rule == "promote":
            widest = self._floating(args, kwargs, (torch.float32, torch.float64))
            if widest:
                args, kwargs = self._cast((args, kwargs), (torch.bfloat16, torch.float16), widest[0])
        elif rule == "fp32_dtype" and "dtype" not in kwargs and self._floating(args, kwargs, (self.dtype,)):
            kwargs = {**kwargs, "dtype": torch.float32}
        elif rule == "fp32_norm":
            raise NotImplementedError("torch.norm under autocast is not emulated")
        return func(*args, **kwargs)

    @staticmethod
    def _floating(args, kwargs, dtypes) -> list:
        return [t.dtype for t in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and t.dtype in dtypes]

    @staticmethod
    def _cast(tree, from_dtypes, to_dtype):
        return torch.utils._pytree.tree_map(
            lambda t: t.to(to_dtype) if isinstance(t, torch.Tensor) and t.dtype in from_dtypes else t, tree)


class _MetaNoise(synaptic.ReleaseNoise):
    """Release noise on the meta device: a meta tensor has no generator, so the (host) generators are made on the
    CPU; drawing on meta only shapes the result."""

    def __init__(self, seeds: list[int], fracs: list[float], device: torch.device):
        super().__init__(seeds, fracs, torch.device("cpu"))
        self.device = device
        self.group_of_member = self.group_of_member.to(device)


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.parts: collections.Counter = collections.Counter()
        self.lines: collections.Counter = collections.Counter()  # "synaptic.py:123 aten::mul" -> kernels
        self.part_bytes: collections.Counter = collections.Counter()  # operand bytes, by part
        self.line_bytes: collections.Counter = collections.Counter()  # operand bytes, by line and operator
        self.inside_regions = 0
        self.region_calls: dict[int, object] = {}  # holding each call's frame keeps its id unique
        self.autocast: _AutocastOnMeta | None = None  # set while a forward runs under it
        self.autocast_misses: collections.Counter = collections.Counter()  # "aten::bmm float32": calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name().split(".")[0]  # "aten::add", "count_kernels::triton_kernel"
        result = func(*args, **(kwargs or {}))
        if self.autocast is not None and not self.autocast.paused:
            self._check_autocast(name, args, kwargs or {}, result)
        if not func.is_view and name not in NO_KERNEL:
            n = _kernels(name, args)
            self.ops[name] += n
            part, region = _where(sys._getframe(1))
            self.parts[part] += n
            moved = _operand_bytes(args, kwargs or {}, result)
            line = f"{_nanochat_line(sys._getframe(1))} {name}"
            self.part_bytes[part] += moved
            self.line_bytes[line] += moved
            self.lines[line] += n
            if region is not None:
                self.inside_regions += n
                self.region_calls[id(region)] = region
        return result


    def _check_autocast(self, name: str, args, kwargs, result) -> None:
        """Count an operator whose input dtypes are not what autocast's rule for it gives (an emulation miss)."""
        rule = AUTOCAST_RULES.get(name.removeprefix("aten::"))
        leaves = torch.utils._pytree.tree_leaves
        floating = {t.dtype for t in leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()}
        out = {t.dtype for t in leaves(result) if isinstance(t, torch.Tensor)}
        low = self.autocast.dtype
        if (rule == "lower" and torch.float32 in floating or rule == "fp32" and low in floating
                or rule == "fp32_dtype" and low in floating and torch.float32 not in out
                or rule == "promote" and len(floating - {torch.float64}) > 1):
            self.autocast_misses[f"{name} {'/'.join(sorted(str(d) for d in floating))}"] += 1


def _span(t: torch.Tensor) -> int:
    """Bytes of the elements a tensor holds, a broadcast (stride 0) dimension counted once."""
    if t.numel() == 0:
        return 0
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 1 and stride > 0)
    return min(extent, t.numel()) * t.element_size()


def _operand_bytes(args: tuple, kwargs: dict, result) -> int:
    """What an operator reads and writes, counted from its operands: every input tensor read once, every output
    written once (an in-place operator reads and writes its tensor). An estimate of its memory traffic, not a
    measurement: a matmul that fits in cache reads less, a gather reads only what it indexes; a Triton launch
    counts each tensor it is passed once."""
    leaves = torch.utils._pytree.tree_leaves
    reads = {id(t): t for t in leaves((args, {k: v for k, v in kwargs.items() if k != "out"}))
             if isinstance(t, torch.Tensor)}  # x * x reads x once
    writes = [t for t in leaves(result) if isinstance(t, torch.Tensor)]
    return sum(_span(t) for t in [*reads.values(), *writes])


def _kernels(name: str, args: tuple) -> int:
    """One, except for a `_foreach_` operator whose tensor lists differ in shape (a broadcast), which CUDA runs as
    one kernel per tensor; with matching lists it is one multi-tensor launch (very long lists take a few)."""
    if not name.startswith("aten::_foreach_"):
        return 1
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    first = lists[0]
    same = all(len(other) == len(first) and all(t.shape == f.shape for t, f in zip(other, first)) for other in lists)
    return 1 if same else len(first)


_NANOCHAT_DIR = os.path.dirname(synaptic.__file__)


_TRACEBACK_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def _nanochat_line(frame) -> str:
    """The innermost line of nanochat's code on the stack ("synaptic.py:123"). An operator that autograd's engine
    runs has no nanochat frame; it is charged to the forward line that made its graph node ("autograd of
    synaptic.py:123"), which the step records by running its forward in anomaly mode, or "autograd" if none."""
    while frame is not None:
        path = frame.f_code.co_filename
        if os.path.dirname(path) == _NANOCHAT_DIR:
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    node = torch._C._current_autograd_node()
    for entry in reversed(node.metadata.get("traceback_", []) if node is not None else []):
        for path, line in reversed(_TRACEBACK_LINE.findall(entry)):
            if os.path.dirname(path) == _NANOCHAT_DIR:
                return f"autograd of {os.path.basename(path)}:{line}"
    return "autograd"


def _where(frame) -> tuple[str, object]:
    """The part an operator belongs to, and the frame of the compiled function's call it runs in (None outside)."""
    part = region = None
    while frame is not None:
        if part is None:
            part = _PART_OF_CODE.get(frame.f_code)
        if region is None and frame.f_code in _REGION_CODES:
            region = frame
        frame = frame.f_back
    return part or BACKWARD_REST, region


PRECISIONS = ("fp32", "bf16")  # TrainConfig.precision; TF32 (--matmul-precision high) launches what fp32 does


def count(population: int, model: ModelConfig = BASELINE_MODEL, batch_size: int = 8,
          fused_attention: bool = False, precision: str = "fp32") -> dict:
    """Operators (kernels) of one training step of a population on the GPU code path, counted on the meta device.
    precision="bf16" runs the forward under bf16 autocast's casts (`_AutocastOnMeta`) and the optimizer's
    Newton-Schulz in bf16, as the trainer does under TrainConfig(precision="bf16")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    meta = torch.device("meta")
    members = candidates(population)
    autocast = _AutocastOnMeta(torch.bfloat16) if precision == "bf16" else None
    with _patching() as patch:
        patch(synaptic, "ReleaseNoise", _MetaNoise)
        patch(torch.nn.functional, "rms_norm", _rms_norm_as_on_cuda)
        # nanochat.precision's questions to autocast, which has no state for the meta device
        patch(synaptic, "matmul_input", autocast.matmul_input if autocast else lambda x: x)
        patch(synaptic, "full_precision", autocast.off if autocast else lambda device: contextlib.nullcontext())
        if fused_attention:  # the real modules; only their kernels' launches stand in
            modules = _triton_modules()
            for module in modules.values():
                for name, value in vars(module).items():
                    if type(value).__name__ in ("JITFunction", "InterpretedFunction"):  # @triton.jit (interpreted)
                        patch(module, name, _Launch(name))
            real = synaptic.fused_attention_kernels  # what the flag uses, past its "needs CUDA" check
            patch(synaptic, "fused_attention_kernels", lambda device: real(torch.device("cuda")))
        net = SynapticGPT(model, [m.synaptic for m in members], [m.seed for m in members], meta,
                          fused_attention=fused_attention).train()
        return _count_step(net, model, population, batch_size, fused_attention, autocast)


@contextlib.contextmanager
def _patching():
    """patch(obj, name, value) sets an attribute until the block ends."""
    saved = []
    try:
        yield lambda obj, name, value: (saved.append((obj, name, getattr(obj, name))), setattr(obj, name, value))
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def _count_step(net, model: ModelConfig, population: int, batch_size: int, fused_attention: bool,
                autocast: _AutocastOnMeta | None) -> dict:
    meta = torch.device("meta")
    opt = PopulationOptimizer(net, 3e-3, 0.02, matmul_dtype=autocast.dtype if autocast else torch.float32)
    tokens = torch.zeros(batch_size, model.sequence_len, dtype=torch.long, device=meta)
    active = torch.ones(population, dtype=torch.bool, device=meta)

    def step(counter: _Counter | None = None) -> None:
        if counter is not None:
            counter.autocast = autocast  # the forward's operators are checked against autocast's rules
        with autocast if autocast else contextlib.nullcontext():
            loss = net(tokens, tokens).float()
        if counter is not None:
            counter.autocast = None
        torch.where(active, loss, torch.zeros_like(loss)).sum().backward()
        net.hebbian_update(active)
        opt.set_schedule(1.0)
        opt.step(active)
        opt.zero_grad()

    step()  # warm-up: the optimizer's state is created on the first step
    # Anomaly mode (without its NaN checks, which would read values) records where each graph node was made.
    with torch.autograd.set_detect_anomaly(True, check_nan=False), _Counter() as counter:
        step(counter)
    total = sum(counter.ops.values())
    return {
        "population": population,
        "fused_attention": fused_attention,
        "precision": "bf16" if autocast else "fp32",
        "autocast_misses": dict(counter.autocast_misses),
        "kernels_per_step": total,
        "parts": dict(counter.parts.most_common()),
        "ops": dict(counter.ops.most_common()),
        "lines": dict(counter.lines.most_common()),
        "operand_bytes": {"total": sum(counter.part_bytes.values()), "parts": dict(counter.part_bytes.most_common()),
                          "lines": dict(counter.line_bytes.most_common())},
        "compiled_regions": {"calls": len(counter.region_calls), "ops_inside": counter.inside_regions,
                             "ops_outside": total - counter.inside_regions},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--fused-attention", action="store_true", help="count a step with TrainConfig.fused_attention")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="TrainConfig.precision: bf16 counts the casts of bf16 autocast (emulated on the meta "
                         "device) and Newton-Schulz in bf16")
    ap.add_argument("--by-line", type=int, default=0, metavar="N",
                    help="also print the N source lines (and operators) that launch the most kernels, and the N "
                         "that move the most operand bytes")
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8,
                    help="memory bandwidth (TB/s) to turn operand bytes into a floor on step time; default 4.8, the "
                         "H200's specification (an H100 SXM's is 3.35)")
    ap.add_argument("--out", default=None, help="also write the counts as JSON")
    args = ap.parse_args(argv)
    if args.population < 1:
        ap.error(f"--population must be at least 1, got {args.population}")
    if not args.bandwidth_tbs > 0:
        ap.error(f"--bandwidth-tbs must be > 0, got {args.bandwidth_tbs}")
    report = count(args.population, fused_attention=args.fused_attention, precision=args.precision)
    print(f"P = {report['population']}, {args.precision}: {report['kernels_per_step']} kernels per training step "
          f"(GPU code path)")
    if report["autocast_misses"]:
        print(f"  operators autocast would have cast otherwise (not emulated): {report['autocast_misses']}")
    for part, n in report["parts"].items():
        print(f"  {n:6d}  {n / report['kernels_per_step']:6.1%}  {part}")
    if args.by_line:
        print(f"the {args.by_line} lines of nanochat that launch the most:")
        for line, n in list(report["lines"].items())[:args.by_line]:
            print(f"  {n:6d}  {line}")
    regions = report["compiled_regions"]
    print(f"with TrainConfig.compile: {regions['ops_inside']} of them in {regions['calls']} calls of compiled "
          f"functions (a few fused kernels each), {regions['ops_outside']} still launched one by one")
    moved = report["operand_bytes"]
    floor_s = moved["total"] / (args.bandwidth_tbs * 1e12)
    print(f"operand bytes per step: {moved['total'] / 1e9:.1f} GB ({moved['total'] / 1e6 / args.population:.0f} MB "
          f"per member-step); at {args.bandwidth_tbs:g} TB/s at least {floor_s * 1e3:.1f} ms per step, at most "
          f"{args.population / floor_s:,.0f} member-steps/s if memory traffic were all that limited it")
    for part, n in list(moved["parts"].items())[:8]:
        print(f"  {n / 1e9:8.2f} GB  {n / moved['total']:6.1%}  {part}")
    if args.by_line:
        print(f"the {args.by_line} lines of nanochat that move the most operand bytes:")
        for line, n in list(moved["lines"].items())[:args.by_line]:
            print(f"  {n / 1e9:8.2f} GB  {n / moved['total']:6.1%}  {line}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
