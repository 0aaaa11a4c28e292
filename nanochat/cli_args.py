"""The model and training flags shared by `python -m nanochat.train` and `python -m cmaes_inproc`.

Declared once so the pilot and the sequential reference path accept the same flags with the same defaults (taken
from the config dataclasses), and turned into configs once, so a flag cannot be read by one CLI and dropped by the
other. Validation stays in the dataclasses: a bad value raises ConfigError naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses

from .config import MATMUL_PRECISIONS, PRECISIONS, ModelConfig, TrainConfig

_MODEL = ModelConfig()
_TRAIN = TrainConfig()


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{argparse dest: the flag a user types for it} for every optional argument of `parser` (its first long option,
    else its first option string), e.g. {"target_flops": "--target-flops"}. A CLI prints `ConfigError.named(...)`
    with this mapping, so errors the library raises about a parameter name the flag instead."""
    names: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in (argparse.SUPPRESS, "help"):
            continue
        long = [o for o in action.option_strings if o.startswith("--")]
        names.setdefault(action.dest, (long or action.option_strings)[0])
    return names


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`prog: error: ...`, exit 2) instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_model_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--vocab-size", type=int, default=_MODEL.vocab_size)
    group.add_argument("--n-layer", type=int, default=_MODEL.n_layer)
    group.add_argument("--n-head", type=int, default=_MODEL.n_head)
    group.add_argument("--n-kv-head", type=int, default=_MODEL.n_kv_head)
    group.add_argument("--n-embd", type=int, default=_MODEL.n_embd)
    group.add_argument("--sequence-len", type=int, default=_MODEL.sequence_len)


def add_training_args(group: argparse._ActionsContainer) -> None:
    """Every TrainConfig field except time_limit_s (each CLI names its wall-time limit its own way)."""
    group.add_argument("--batch-size", type=int, default=_TRAIN.batch_size)
    group.add_argument("--target-flops", type=float, default=_TRAIN.target_flops,
                       help=f"FLOPs budget per training run (default {_TRAIN.target_flops:g}: 146 steps of the "
                            "baseline model)")
    group.add_argument("--max-steps", type=int, default=None, help="cap on the steps derived from --target-flops")
    group.add_argument("--learning-rate", type=float, default=_TRAIN.learning_rate,
                       help="AdamW rate (embeddings, lm_head, vectors)")
    group.add_argument("--matrix-lr", type=float, default=_TRAIN.matrix_lr, help="Muon rate (block matrices)")
    group.add_argument("--weight-decay", type=float, default=_TRAIN.weight_decay)
    group.add_argument("--warmup-steps", type=int, default=_TRAIN.warmup_steps)
    group.add_argument("--warmdown-frac", type=float, default=_TRAIN.warmdown_frac,
                       help="final fraction of steps decaying to 10%% of the rate")
    group.add_argument("--log-interval", type=int, default=_TRAIN.log_interval)
    group.add_argument("--diverge-factor", type=float, default=_TRAIN.diverge_factor,
                       help="a loss above this multiple of the first loss marks the run diverged")
    group.add_argument("--data-seed", type=int, default=_TRAIN.data_seed, help="batch order (shared by all candidates)")
    group.add_argument("--precision", default=_TRAIN.precision, choices=PRECISIONS,
                       help="fp32 (default, the reference) or bf16 autocast of the matmuls (meant for CUDA)")
    group.add_argument("--matmul-precision", default=_TRAIN.matmul_precision, choices=MATMUL_PRECISIONS,
                       help="float32 matmuls: highest (default, IEEE fp32, the reference) or high (TF32 on CUDA)")
    group.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                       help="on CUDA, launch every step's kernels from Python instead of replaying a CUDA graph")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the step's many small kernels (attention chains, on CUDA the presynaptic "
                            "state step, Hebbian update, optimizer step): a one-off compile per process (~80 s on 2 "
                            "CPU cores with a cold cache); results differ from the default by rounding")
    group.add_argument("--fused-attention", action="store_true",
                       help="on CUDA, the presynaptic attention as Triton kernels: its logits, softmax and p @ v (no "
                            "queries x keys tensor in memory), each chunk's state step (four launches instead of "
                            "~150), q and k's norm and rotation and the MLP's relu^2; results differ from the "
                            "default by rounding")


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_kv_head=args.n_kv_head, n_embd=args.n_embd, sequence_len=args.sequence_len)


def train_config_from_args(args: argparse.Namespace, time_limit_s: float | None) -> TrainConfig:
    return TrainConfig(batch_size=args.batch_size, target_flops=args.target_flops, max_steps=args.max_steps,
                       learning_rate=args.learning_rate, matrix_lr=args.matrix_lr, weight_decay=args.weight_decay,
                       warmup_steps=args.warmup_steps, warmdown_frac=args.warmdown_frac,
                       log_interval=args.log_interval, diverge_factor=args.diverge_factor,
                       data_seed=args.data_seed, time_limit_s=time_limit_s, precision=args.precision,
                       cuda_graph=args.cuda_graph, matmul_precision=args.matmul_precision, compile=args.compile,
                       fused_attention=args.fused_attention)


def config_args(model_cfg: ModelConfig, train_cfg: TrainConfig) -> list[str]:
    """The flags that reproduce both configs, one per field (`--field-name value`), so no field can be dropped.

    Unset optional fields (None) are left out; a boolean field is written only when it differs from its default,
    as `--field-name` (off by default) or `--no-field-name` (on by default). Floats are written with repr(), which
    round-trips exactly.
    """
    args: list[str] = []
    for cfg in (model_cfg, train_cfg):
        for f in dataclasses.fields(cfg):
            value, flag = getattr(cfg, f.name), f.name.replace("_", "-")
            if value is None:
                continue
            if isinstance(value, bool):
                args += [] if value == f.default else [f"--{flag}" if value else f"--no-{flag}"]
            else:
                args += [f"--{flag}", repr(float(value)) if isinstance(value, float) else str(value)]
    return args
