"""Configuration dataclasses for the synaptic GPT, its training run, and their validation.

Three configs travel through the code:

* `SynapticConfig`: the bio-inspired dynamics. Its *continuous* fields may differ per population member
  (the model turns them into `(P,)` tensors); its *structural* fields (rank, top-k, delay length, chunk size) set
  tensor shapes and must be equal across a population.
* `ModelConfig`: the GPT's shape (layers, heads, width, vocabulary, sequence length).
* `TrainConfig`: the budget, batch, learning rates and the failure rules of one training run.

Every validation error is a `ConfigError` whose message names the offending field, so the CLIs can print it as a
single line and exit non-zero before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """Invalid configuration or input; the message is a complete one-line explanation.

    `field` is the Python name of the parameter the message is about, when there is one, and the message then starts
    with it ("max_batch must be an integer >= 1, got 0"). The library speaks in parameter names; a command line
    that knows its own flag for that parameter shows the same message with the flag instead (`named`).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    @classmethod
    def about(cls, field: str, problem: str) -> "ConfigError":
        """An error about parameter `field`: the message is "<field> <problem>"."""
        return cls(f"{field} {problem}", field)

    def named(self, names: Mapping[str, str]) -> str:
        """The message with the field's name replaced by `names[field]` (e.g. a CLI flag), if it has one."""
        message = str(self)
        name = names.get(self.field) if self.field else None
        if name is None or not message.startswith(self.field):
            return message
        return name + message[len(self.field):]


# Every seed (eval seed, data seed, and the pilot's search and noise seeds) is an integer in [0, MAX_SEED]. In this
# range `synaptic._derive_seed` never wraps (seed * 1_000_003 + 7_919 < 2**63 - 1), so distinct seeds give distinct
# generator streams, and numpy, pycma and torch.manual_seed all accept it. Larger values are refused, not folded.
MAX_SEED = 2**32 - 1


def check_seed(field: str, value: Any) -> int:
    """`value` as an int if it is a supported seed (an integer, not a bool, in [0, MAX_SEED]); else a ConfigError
    about `field`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        raise ConfigError.about(field, f"must be an integer in [0, {MAX_SEED}], got {value!r}")
    return int(value)


# Fields of SynapticConfig that fix tensor shapes (or loop structure) and so must be shared by a whole population.
STRUCTURAL_FIELDS = ("attn_topk", "presyn_chunk", "endo_delay", "post_rank")


@dataclass(frozen=True)
class SynapticConfig:
    """Knobs and constants of the presynaptic attention and postsynaptic MLP (equations: nanochat/MODEL.md).

    The first ten fields are the pilot's search space, with the pilot document's defaults.
    """

    # --- the ten searched knobs -------------------------------------------------------------------------------
    tau_c: float = 0.85  # residual calcium kept per chunk (leaky: settles within ~1/(1-tau_c) chunks); edge carry-over
    alpha_c: float = 0.55  # calcium influx per softplus(drive): a spike's, and the level residual calcium settles at
    init_rrp: float = 6.0  # readily releasable pool at sequence start; also the pool's capacity for priming
    prime_rate: float = 0.075  # reserve -> RRP flux coefficient
    rec_rate: float = 0.06  # fraction of released vesicles recycled (through the endocytosis delay) to the reserve
    lambda_loge: float = 1.0  # weight of the log(release) term added to attention logits
    barrier_strength: float = 0.1  # logit penalty per chunk of query-key distance
    stochastic_train_frac: float = 0.12  # fraction of query rows whose release is a Binomial draw (training only)
    post_fast_lr: float = 1.5e-3  # Hebbian rate of the fast (decaying) postsynaptic gain
    post_slow_lr: float = 5e-4  # Hebbian rate of the slow (consolidated, CaMKII/PP1-gated) gain

    # --- release probability p(c, cl, sn) ---------------------------------------------------------------------
    syt1_slope: float = 8.0  # synaptotagmin-1 (fast, low affinity) sensor slope around c = 0.55
    syt7_slope: float = 4.0  # synaptotagmin-7 (slow, high affinity) sensor slope around c = 0.25
    doc2_gain: float = 0.1  # Doc2 (spontaneous, very high affinity) contribution around c = 0.12
    cpx_thresh: float = 0.3  # calcium level at which the complexin clamp starts to let go
    complexin_bias: float = 0.0  # extra clamp strength added to the clamp state

    # --- presynaptic pools and slow variables -----------------------------------------------------------------
    init_reserve: float = 4.0  # reserve pool at sequence start (small, so it runs down within a sequence)
    init_snare: float = 1.0  # SNARE availability at sequence start, in [0, 1]
    init_clamp: float = 0.5  # complexin clamp at sequence start (relaxes back towards this value)
    init_amp: float = 1.0  # AMPA gain at sequence start (relaxes back towards this value)
    init_energy: float = 1.0  # ATP/energy at sequence start, in [0, 1]
    unprime_per_release: float = 0.05  # SNARE (and clamp) consumed per released vesicle
    nsf_recover: float = 0.1  # NSF recovery rate of SNARE availability and of the clamp, per chunk
    amp_load: float = 0.02  # AMPA gain increase per released vesicle
    amp_leak: float = 0.05  # AMPA gain relaxation rate towards init_amp, per chunk
    energy_fill: float = 0.1  # energy refill rate towards 1, per chunk
    energy_use: float = 0.02  # energy spent per released vesicle
    release_eps: float = 1e-4  # epsilon inside log(release) and in the normaliser

    # --- postsynaptic Hebbian plasticity ----------------------------------------------------------------------
    post_trace_decay: float = 0.9  # decay of the pre/post eligibility traces per training step
    post_fast_decay: float = 0.99  # decay of the fast gain per step (0.9 kept it too small for post_fast_lr to matter)
    hebb_gain: float = 4.0  # scale of the co-activity delta (not normalised away; sets what the two rates mean)
    camkii_up: float = 0.2  # CaMKII activation rate towards its activity-driven target
    camkii_thr: float = 0.1  # |post trace| above which CaMKII switches on
    pp1_tau: float = 10.0  # PP1 time constant, in training steps
    pp1_thr: float = 0.05  # |post trace| below which PP1 switches on
    bdnf_tau: float = 20.0  # BDNF time constant, in training steps
    bdnf_scale: float = 1.0  # BDNF boost of the slow learning rate

    # --- structural (must match across a population) ----------------------------------------------------------
    attn_topk: int = 8  # release edges per query: its top-k keys by q.k
    presyn_chunk: int = 32  # queries per presynaptic chunk; state advances between chunks
    endo_delay: int = 2  # endocytosis delay, in chunks
    post_rank: int = 8  # rank R of the low-rank postsynaptic term (y U) V

    def __post_init__(self) -> None:
        _validate_synaptic(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SynapticConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any], base: "SynapticConfig | None" = None) -> "SynapticConfig":
        """Apply a mapping of field overrides (e.g. a parsed JSON file) with type checking."""
        base = base or cls()
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"synaptic config must be a JSON object, got {type(overrides).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(f"unknown SynapticConfig key(s): {', '.join(unknown)}")
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            want = known[name].type
            if want == "int":
                if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
                    raise ConfigError(f"SynapticConfig.{name} must be an integer, got {value!r}")
                changes[name] = int(value)
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"SynapticConfig.{name} must be a number, got {value!r}")
                try:
                    changes[name] = float(value)
                except OverflowError:  # an integer too large for a float (JSON allows any size)
                    raise ConfigError(f"SynapticConfig.{name} must be finite, got {value!r:.40}") from None
        return dataclasses.replace(base, **changes)


def load_synaptic_config(path: str | Path) -> SynapticConfig:
    """Read a JSON object of SynapticConfig overrides; every problem becomes a one-line ConfigError (about the file,
    "synaptic_config ...", or about a knob in it)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError.about("synaptic_config", f"file not found: {path}") from None
    except OSError as exc:
        raise ConfigError.about("synaptic_config", f"{path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ConfigError.about("synaptic_config", f"path {str(path)!r} is not usable: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError.about("synaptic_config", f"{path} is not UTF-8 text (byte {exc.start}); expected a JSON "
                                                   "object") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError.about("synaptic_config", f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise ConfigError.about("synaptic_config", f"{path} is nested too deeply to be a JSON object of "
                                                   "overrides") from None
    if not isinstance(data, dict):
        raise ConfigError.about("synaptic_config", f"{path} must hold a JSON object, got {type(data).__name__}")
    return SynapticConfig.from_overrides(data)


# Range rules: name -> (low, high, low_inclusive, high_inclusive). None means unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "tau_c": (0.0, 1.0, False, False),
    "post_trace_decay": (0.0, 1.0, False, False),
    "post_fast_decay": (0.0, 1.0, False, False),
    "init_rrp": (0.0, None, False, True),
    "init_reserve": (0.0, None, True, True),
    "init_snare": (0.0, 1.0, False, True),
    "init_energy": (0.0, 1.0, False, True),
    "stochastic_train_frac": (0.0, 1.0, True, True),
    "release_eps": (0.0, None, False, True),
    "pp1_tau": (1.0, None, True, True),
    "bdnf_tau": (1.0, None, True, True),
    "camkii_up": (0.0, 1.0, True, True),
}
# Rates, gains and slopes that must simply be non-negative.
_NON_NEGATIVE = (
    "alpha_c", "prime_rate", "rec_rate", "lambda_loge", "barrier_strength", "post_fast_lr", "post_slow_lr",
    "syt1_slope", "syt7_slope", "doc2_gain", "init_clamp", "init_amp", "unprime_per_release", "nsf_recover",
    "amp_load", "amp_leak", "energy_fill", "energy_use", "hebb_gain", "bdnf_scale",
)


def _check_range(name: str, value: float, low, high, low_inc: bool, high_inc: bool) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"SynapticConfig.{name} must be finite, got {value!r}")
    bad_low = low is not None and (value < low or (value == low and not low_inc))
    bad_high = high is not None and (value > high or (value == high and not high_inc))
    if bad_low or bad_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = ("[" if low_inc else "(") + f"{lo}, {hi}" + ("]" if high_inc else ")")
        raise ConfigError(f"SynapticConfig.{name} must be in {interval}, got {value!r}")


def _validate_synaptic(cfg: SynapticConfig) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"SynapticConfig.{f.name} must be an integer, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"SynapticConfig.{f.name} must be a number, got {value!r}")
        elif not math.isfinite(value):
            raise ConfigError(f"SynapticConfig.{f.name} must be finite, got {value!r}")
    for name, (low, high, low_inc, high_inc) in _RANGES.items():
        _check_range(name, getattr(cfg, name), low, high, low_inc, high_inc)
    for name in _NON_NEGATIVE:
        _check_range(name, getattr(cfg, name), 0.0, None, True, True)
    for name in ("attn_topk", "presyn_chunk", "post_rank"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"SynapticConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.endo_delay < 0:
        raise ConfigError(f"SynapticConfig.endo_delay must be >= 0, got {cfg.endo_delay}")


def check_same_structure(configs: list[SynapticConfig]) -> None:
    """A population shares tensor shapes: its structural fields must be equal."""
    for name in STRUCTURAL_FIELDS:
        values = {getattr(c, name) for c in configs}
        if len(values) > 1:
            raise ConfigError(f"structural SynapticConfig.{name} differs across the population: {sorted(values)}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the GPT (the pilot document's Phase-1 baseline by default)."""

    vocab_size: int = 256  # byte-level tokens; larger values add unused rows
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 128
    sequence_len: int = 256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "sequence_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError.about(name, f"must be a positive integer, got {value!r}")
        if self.vocab_size < 256:
            raise ConfigError.about("vocab_size", f"must be >= 256 for byte-level tokens, got {self.vocab_size}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError.about("n_embd", f"({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head != 0:
            raise ConfigError.about("n_head", f"({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ConfigError(f"head dim n_embd/n_head = {self.n_embd // self.n_head} must be even (rotary embeddings)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The default budget: ~150 optimizer steps of the baseline model (see README, "Choosing the budget"). The pilot document's
# 1e10 is about one step with an honest FLOPs count, and a one-step objective cannot rank candidates.
DEFAULT_TARGET_FLOPS = 2e12

# "fp32" is the reference; "bf16" runs the forward pass under torch.autocast(bfloat16) (matmuls in bf16, softmax,
# norms and the loss in fp32), and Muon's Newton-Schulz matmuls in bf16 (optim.py). Batch invariance is checked at a
# looser tolerance for bf16 (see tests and bench/).
PRECISIONS = ("fp32", "bf16")
# float32 matmuls: "highest" is IEEE fp32 (the reference); "high" lets cuBLAS use TF32 tensor cores (CUDA only: CPU
# matmuls are unchanged, so on CPU the two give the same numbers).
MATMUL_PRECISIONS = ("highest", "high")


@dataclass(frozen=True)
class TrainConfig:
    """One training run's budget, batch, optimizer and failure rules (shared by every member of a population)."""

    batch_size: int = 8
    target_flops: float = DEFAULT_TARGET_FLOPS
    max_steps: int | None = None  # if set, caps the steps derived from target_flops
    learning_rate: float = 3e-3  # AdamW: embeddings, lm_head, vectors
    matrix_lr: float = 0.02  # Muon: the block matrices
    weight_decay: float = 0.0
    warmup_steps: int = 10
    warmdown_frac: float = 0.3  # final fraction of steps with linear decay to 10% of the peak rate
    log_interval: int = 10
    diverge_factor: float = 3.0  # a member whose loss exceeds this multiple of its first loss has diverged
    data_seed: int = 0  # batch order; deliberately independent of the eval seed so all members see the same data
    time_limit_s: float | None = None  # members still running past this wall time are marked "timeout"
    precision: str = "fp32"  # one of PRECISIONS
    cuda_graph: bool = True  # on CUDA, replay the training step as one CUDA graph after two eager steps
    matmul_precision: str = "highest"  # one of MATMUL_PRECISIONS; set for the run only, restored after
    compile: bool = False  # torch.compile the small-kernel parts of a step (nanochat/fused.py says which)
    fused_attention: bool = False  # CUDA: the attention, its state loop and qk-norm as Triton kernels (AttentionChains)

    def __post_init__(self) -> None:
        # Types first, so a string or bool from an API caller is a ConfigError naming the field, not a TypeError
        # from a comparison below (and True is not taken for 1).
        for name, optional in (("max_steps", True), ("warmup_steps", False), ("log_interval", False)):
            value = getattr(self, name)
            if not (optional and value is None) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError.about(name, f"must be an integer, got {value!r}")
        for name, optional in (("target_flops", False), ("learning_rate", False), ("matrix_lr", False),
                               ("weight_decay", False), ("warmdown_frac", False), ("diverge_factor", False),
                               ("time_limit_s", True)):
            value = getattr(self, name)
            if not (optional and value is None) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError.about(name, f"must be a number, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError.about("batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.target_flops, (int, float)) and math.isfinite(self.target_flops) and self.target_flops > 0):
            raise ConfigError.about("target_flops", f"must be a positive number, got {self.target_flops!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError.about("max_steps", f"must be a positive integer, got {self.max_steps!r}")
        for name in ("learning_rate", "matrix_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError.about(name, f"must be a positive number, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError.about("weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        if self.warmup_steps < 0:
            raise ConfigError.about("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise ConfigError.about("warmdown_frac", f"must be in [0, 1], got {self.warmdown_frac}")
        if self.log_interval < 1:
            raise ConfigError.about("log_interval", f"must be >= 1, got {self.log_interval}")
        if not self.diverge_factor > 1.0:
            raise ConfigError.about("diverge_factor", f"must be > 1, got {self.diverge_factor}")
        check_seed("data_seed", self.data_seed)
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ConfigError.about("time_limit_s", f"must be > 0, got {self.time_limit_s}")
        for name in ("cuda_graph", "compile", "fused_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError.about(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError.about("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError.about("matmul_precision", f"must be one of {', '.join(MATMUL_PRECISIONS)}, "
                                                        f"got {self.matmul_precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Member:
    """One population member: its synaptic config and its eval seed (weight init + stochastic release)."""

    synaptic: SynapticConfig = field(default_factory=SynapticConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
