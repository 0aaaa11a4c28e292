"""Where the model steps around autocast (TrainConfig(precision="bf16")): one cast where autocast would make several,
and none for products of weights.

Autocast casts each float32 input of every matmul, each time, and autograd casts each of their gradients back. Two
places in the model would pay that for nothing (counted at P = 128 with bench/count_kernels.py --precision bf16):

* `matmul_input`: the attention's q, k and v projections read one normed input; autocast cast it three times and
  autograd its three gradients back, where one cast each way serves (the three gradients then add in bf16, as any
  bf16 tensor's do);
* `full_precision`: SynapticLinear's effective weight W (diag(gain) + U V) and its Hebbian statistics are products
  of float32 parameters, as small as the weights; under autocast each cast W, U and V to bf16 and back (about 130
  cast kernels a step), and they now run in float32, as they do without autocast.

Without autocast both do nothing, so float32 runs compute what they did, bit for bit.
"""

from __future__ import annotations

import torch


def matmul_input(x: torch.Tensor) -> torch.Tensor:
    """x as autocast casts a matmul's input (to autocast's dtype, where it is on for x's device and x is float32),
    so that several matmuls that read x share one cast; x itself otherwise."""
    device = x.device.type
    if x.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def full_precision(device: torch.device) -> torch.autocast:
    """A block in which autocast is off for `device`: its matmuls run in their inputs' dtype."""
    return torch.autocast(device.type, enabled=False)
