"""Train a population of synaptic GPTs in lock-step under one FLOPs budget and report per-member results.

This is the core that `python -m nanochat.train` (P = 1), the pilot's batched evaluator and the benchmarks share:

    result = train_population(members, ModelConfig(), TrainConfig(), load_corpus(), device="cpu")
    result.members[i].losses / .status / .failure_step / .failure_reason / .score(3)

The back-propagated loss is the sum over members of each member's mean cross-entropy, so every member gets exactly
its own gradient. Failure detection runs on the device (no host sync per step): a member whose loss is NaN/Inf
("nan") or exceeds `diverge_factor` times its first loss ("diverged") is frozen from that step on.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .config import ConfigError, Member, ModelConfig, TrainConfig, check_same_structure
from .data import BatchStream, Corpus
from .fused import compiled
from .hostmem import keep_freed_memory
from .optim import PopulationOptimizer
from .status import Status
from .synaptic import SynapticGPT, estimate_flops, fused_attention_kernels
from .validation import check_val_batches, measure_val_loss, val_flops

_FAILURE_CODES = {1: Status.NAN, 2: Status.DIVERGED}


@dataclass(frozen=True)
class Budget:
    """How a FLOPs target turns into optimizer steps (identical for every member of a population)."""

    max_steps: int
    target_flops: float
    flops_per_token_est: int
    tokens_per_step_global: int  # tokens one member processes per step
    flops_per_step_est: int
    planned_total_flops_est: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan_budget(model_cfg: ModelConfig, train_cfg: TrainConfig, post_rank: int = 8) -> Budget:
    """steps = ceil(target_flops / (flops_per_token * batch_size * sequence_len)), capped by max_steps."""
    per_token = estimate_flops(model_cfg, post_rank)
    tokens = train_cfg.batch_size * model_cfg.sequence_len
    steps = max(1, math.ceil(train_cfg.target_flops / (per_token * tokens)))
    if train_cfg.max_steps is not None:
        steps = min(steps, train_cfg.max_steps)
    return Budget(steps, float(train_cfg.target_flops), per_token, tokens, per_token * tokens, per_token * tokens * steps)


@dataclass
class MemberResult:
    losses: list[float]  # one per step the member trained (the failing step's value included)
    status: Status = Status.OK
    failure_step: int | None = None
    failure_reason: str | None = None
    val_loss: float = math.nan  # mean loss on the validation batches (NaN unless measured and the member finished)

    @property
    def ok(self) -> bool:
        return self.status.ok

    def score(self, tail: int = 3) -> float:
        """Mean of the last `tail` losses (NaN if the member failed or has no finite tail)."""
        if not self.ok or not self.losses:
            return math.nan
        last = self.losses[-tail:]
        return sum(last) / len(last)


@dataclass
class PopulationResult:
    members: list[MemberResult]
    budget: Budget
    device: str
    step_times_s: list[float] = field(default_factory=list)
    measured_time_s: float = 0.0
    tokens_per_second: float = 0.0  # per member
    population: int = 1
    execution: str = "eager"  # on CUDA: "replayed" when the step ran as a CUDA graph, else why not
    val_batches: int = 0  # validation batches measured after training (0: none)
    val_flops: int = 0  # FLOPs of that measurement per member (not part of the training budget)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError.about("device", f"{str(device)!r} is not supported; use cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError.about("device", "'cuda' was requested but CUDA is not available; use cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError.about("device", f"{str(device)!r} is not supported; use cpu, cuda or auto")
    return dev


def resolve_run_device(device: str | torch.device, train_cfg: TrainConfig) -> torch.device:
    """`resolve_device`, and a ConfigError if the run's options cannot run there (TrainConfig.fused_attention needs
    Triton and a CUDA device): callers check this before they write anything."""
    dev = resolve_device(device)
    if train_cfg.fused_attention:
        fused_attention_kernels(dev)
    return dev


def lr_scale(step: int, total: int, warmup: int, warmdown_frac: float) -> float:
    """Linear warmup, constant, then linear decay to 10% over the final `warmdown_frac` of the steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    warmdown = int(round(total * warmdown_frac))
    if warmdown > 0 and step >= total - warmdown:
        progress = (step - (total - warmdown) + 1) / warmdown
        return 1.0 - 0.9 * progress
    return 1.0


class _StepGraph:
    """Runs the training step eagerly for WARMUP_STEPS steps on a side stream, then captures it once as a CUDA graph
    and replays it for the remaining steps.

    A step of a small population is ~10k small kernels whose launch costs more than their work; one graph replay
    launches them all at once. The captured step reads every per-step value (batch, step index, learning rates)
    from tensors updated before each replay, and the release-noise generators are registered with the graph so each
    replay draws fresh numbers. If the capture fails the run carries on eagerly (`.failed` says why).
    """

    WARMUP_STEPS = 2  # eager steps before capture: lazy cuBLAS/autograd set-up must not happen inside a capture

    def __init__(self, model: SynapticGPT, steps: int, enabled: bool):
        self.model = model
        self.enabled = enabled and steps > self.WARMUP_STEPS  # disabled: every step runs eagerly, as on CPU
        self.generators = [g for g, on in zip(model.noise.generators, model.noise.group_active) if on]
        self.side = torch.cuda.Stream() if self.enabled else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None

    @contextlib.contextmanager
    def stream_for(self, step: int):
        """A warm-up step runs on a side stream (as capture requires), fenced on both sides; later steps as they are."""
        if not (self.enabled and step < self.WARMUP_STEPS):
            yield
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream().wait_stream(self.side)

    @property
    def status(self) -> str:
        if self.graph is not None:
            return "replayed"
        return f"eager (capture failed: {self.failed})" if self.failed else "eager"

    def run(self, step: int, train_step: Callable[[], None]) -> None:
        if not self.enabled or step < self.WARMUP_STEPS or self.failed is not None:
            train_step()
            return
        if self.graph is None:
            self._capture(train_step)
            if self.graph is None:
                train_step()
                return
        self.graph.replay()

    def _capture(self, train_step: Callable[[], None]) -> None:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up's cached activations would otherwise sit beside the graph's pool
        saved = [g.get_state() for g in self.generators]
        graph = torch.cuda.CUDAGraph()
        try:
            for g in self.generators:
                graph.register_generator_state(g)
            with torch.cuda.graph(graph):
                train_step()
        except Exception as exc:  # noqa: BLE001 - fall back to eager steps, which compute the same thing
            # Nothing captured has run, so parameters and state are as the warm-up left them; undo the host side.
            self.failed = f"{type(exc).__name__}: {exc}"
            for g, state in zip(self.generators, saved):
                g.set_state(state)
            self.model.zero_grad(set_to_none=True)  # a half-captured backward may have left unexecuted grads
            del graph
            if isinstance(exc, torch.OutOfMemoryError):
                raise  # callers split the population and retry, as for an eager step
            return
        self.graph = graph


@contextlib.contextmanager
def matmul_precision(level: str):
    """TF32 for cuBLAS float32 matmuls while a run with matmul_precision "high" lasts, then the caller's setting.

    Only the CUDA flag is touched (torch.set_float32_matmul_precision would also switch CPU oneDNN matmuls), through
    the legacy switch that the rest of the code and bench/gpu_check.py read: torch refuses to read it once the newer
    per-backend API has set it.
    """
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = level == "high"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def train_population(
    members: list[Member],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    corpus: Corpus,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    on_log: Callable[[int, list[float]], None] | None = None,
    val_batches: int = 0,
) -> PopulationResult:
    """Train all members at once; see the module docstring. Raises ConfigError on bad input and lets
    torch.OutOfMemoryError propagate (callers split the population and retry).

    `progress(step, total)` is called after every step without touching the device; `on_log(step, losses)` every
    `train_cfg.log_interval` steps and at the end, with the members' current losses (this one syncs the device).
    `val_batches` > 0 measures each finished member's held-out loss after training (validation.py).
    """
    with matmul_precision(train_cfg.matmul_precision):
        return _train_population(members, model_cfg, train_cfg, corpus, device, progress, on_log, val_batches)


def _train_population(members, model_cfg, train_cfg, corpus, device, progress, on_log,
                      val_batches) -> PopulationResult:
    if not members:
        raise ConfigError("a population needs at least one member")
    check_same_structure([m.synaptic for m in members])
    check_val_batches(val_batches)
    dev = resolve_run_device(device, train_cfg)
    if dev.type == "cpu":
        keep_freed_memory()  # step activations are reused instead of page-faulted anew (see hostmem.py)
    budget = plan_budget(model_cfg, train_cfg, members[0].synaptic.post_rank)
    stream = BatchStream(corpus, train_cfg.batch_size, model_cfg.sequence_len, train_cfg.data_seed, dev)
    model = SynapticGPT(model_cfg, [m.synaptic for m in members], [m.seed for m in members], dev,
                        compile=train_cfg.compile, fused_attention=train_cfg.fused_attention)
    model.train()
    bf16 = train_cfg.precision == "bf16"  # autocast: matmuls in bf16; softmax, norms, loss, state in fp32
    opt = PopulationOptimizer(model, train_cfg.learning_rate, train_cfg.matrix_lr, train_cfg.weight_decay,
                              matmul_dtype=torch.bfloat16 if bf16 else torch.float32)  # Newton-Schulz's, too
    # After the backward pass: the Hebbian update, then the optimizer step, fused with the model's chains under
    # TrainConfig.compile (hundreds of small kernels each, op by op).
    hebbian_update, optimizer_step = model.hebbian_update, opt.step
    if train_cfg.compile:
        hebbian_update, optimizer_step = compiled(hebbian_update), compiled(optimizer_step)

    P, steps = len(members), budget.max_steps
    losses = torch.full((steps, P), math.nan, device=dev)
    # Everything one step reads or writes lives in a tensor allocated here and updated in place, so the same step
    # can run eagerly or as a replayed CUDA graph (which fixes every address and every Python-side constant).
    step_index = torch.zeros((), dtype=torch.long, device=dev)
    step_loss = torch.zeros(P, device=dev)
    first_loss = torch.full((P,), math.inf, device=dev)
    active = torch.ones(P, dtype=torch.bool, device=dev)
    fail_step = torch.full((P,), -1, dtype=torch.long, device=dev)
    fail_code = torch.zeros(P, dtype=torch.long, device=dev)
    batch = stream.next()
    inputs, targets = batch[0].clone(), batch[1].clone()

    def train_step() -> None:
        # autocast's weight-cast cache cannot live across graph replays; the casts it saves are few here.
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss = model(inputs, targets).float()
        detached = loss.detach()
        step_loss.copy_(detached)
        finite = torch.isfinite(detached)
        first_loss.copy_(torch.where((step_index == 0) & finite, detached, first_loss))
        exploded = detached > first_loss * train_cfg.diverge_factor
        newly_failed = active & (~finite | exploded)
        fail_step.copy_(torch.where(newly_failed, step_index, fail_step))
        fail_code.copy_(torch.where(newly_failed, torch.where(finite, 2, 1), fail_code))
        active.copy_(active & ~newly_failed)
        # Failed members contribute nothing: where() keeps their (possibly NaN) loss out of the backward pass.
        torch.where(active, loss, torch.zeros_like(loss)).sum().backward()
        hebbian_update(active)
        optimizer_step(active)
        opt.zero_grad()

    graph = _StepGraph(model, steps, enabled=dev.type == "cuda" and train_cfg.cuda_graph)
    timed_out_at: int | None = None
    step_times: list[float] = []
    use_events = dev.type == "cuda"
    events = []
    t_start = time.perf_counter()
    steps_run = 0
    for step in range(steps):
        t0 = time.perf_counter()
        with graph.stream_for(step):
            if use_events:
                ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                ev0.record()
            if step > 0:
                batch = stream.next()
                inputs.copy_(batch[0])
                targets.copy_(batch[1])
            step_index.fill_(step)
            opt.set_schedule(lr_scale(step, steps, train_cfg.warmup_steps, train_cfg.warmdown_frac))
            graph.run(step, train_step)
            losses[step].copy_(step_loss)
            steps_run = step + 1
            if use_events:
                ev1.record()
                events.append((ev0, ev1))
            else:
                step_times.append(time.perf_counter() - t0)
        if progress is not None:
            progress(step + 1, steps)
        if on_log is not None and ((step + 1) % train_cfg.log_interval == 0 or step + 1 == steps):
            on_log(step + 1, step_loss.cpu().tolist())
        if train_cfg.time_limit_s is not None and time.perf_counter() - t_start > train_cfg.time_limit_s and step + 1 < steps:
            timed_out_at = step
            break
    if use_events:
        torch.cuda.synchronize(dev)
        step_times = [a.elapsed_time(b) / 1000.0 for a, b in events]
    measured = time.perf_counter() - t_start

    val = measure_val_loss(model, corpus, model_cfg, train_cfg, val_batches, dev) if val_batches else [math.nan] * P
    losses_host = losses[:steps_run].T.cpu().tolist()
    fail_step_host, fail_code_host = fail_step.cpu().tolist(), fail_code.cpu().tolist()
    results = []
    for i in range(P):
        if fail_step_host[i] >= 0:
            s = fail_step_host[i]
            status = _FAILURE_CODES[fail_code_host[i]]
            value = losses_host[i][s]
            reason = (f"loss is {value} at step {s}" if status is Status.NAN
                      else f"loss {value:.4g} at step {s} exceeds {train_cfg.diverge_factor:g}x the first loss "
                           f"{losses_host[i][0]:.4g}")
            results.append(MemberResult(losses_host[i][: s + 1], status, s, reason))
        elif timed_out_at is not None:
            reason = f"time limit {train_cfg.time_limit_s:g}s reached after {steps_run} of {steps} steps"
            results.append(MemberResult(losses_host[i], Status.TIMEOUT, timed_out_at, reason))
        else:
            results.append(MemberResult(losses_host[i], val_loss=val[i]))
    tokens = budget.tokens_per_step_global * steps_run
    return PopulationResult(results, budget, str(dev), step_times, measured, tokens / measured if measured else 0.0, P,
                            graph.status, val_batches,
                            val_flops(budget.flops_per_token_est, model_cfg, train_cfg, val_batches))
