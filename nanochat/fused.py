"""torch.compile as `TrainConfig.compile` uses it: dynamic shapes, and no "duck sizing".

    fn = compiled(fn)      # same arguments, same results to float rounding; the first call of a shape compiles

What is compiled, and where: the attention's logits chain and its backward, and on CUDA each chunk's state step
(`synaptic.AttentionChains`); the Hebbian update and the optimizer step (the trainer). Run op by op these are
hundreds of small kernels per training step (bench/count_kernels.py); inductor fuses each into a few loops
(C++/OpenMP on CPU, Triton on CUDA).
"""

from __future__ import annotations

from typing import Callable

import torch


def compiled(fn: Callable) -> Callable:
    """torch.compile(fn) with dynamic shapes and without duck sizing: by default two dimensions that happen to be
    equal when a function is first compiled (P = B = 8, or a first chunk's Qc = keys) are assumed equal forever, and
    every population or chunk where they differ compiles again."""
    from torch.fx.experimental import _config as fx_config  # torch's symbolic-shape settings

    fused = torch.compile(fn, dynamic=True)

    def call(*args):
        with fx_config.patch(use_duck_shape=False):
            return fused(*args)

    return call
