"""nanochat/precision.py under bf16 autocast (the CPU's, which casts matmul inputs as CUDA's does): the attention's
projections share one cast of their input, SynapticLinear's weight products and Hebbian statistics stay float32
without casts each way, and without autocast nothing changes."""

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nanochat.hebbian import HebbianState
from nanochat.precision import full_precision, matmul_input
from nanochat.synaptic import SynapticLinear


class _Ops(TorchDispatchMode):
    """Counts the aten operators a block runs, forward and backward."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.name()] += 1
        return func(*args, **(kwargs or {}))


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)  # as the trainer runs it


def test_matmul_input_casts_once_for_several_matmuls_under_autocast_only():
    x = torch.randn(2, 5, 4)
    assert matmul_input(x) is x  # no autocast: x itself
    with bf16():
        cast = matmul_input(x)
        assert cast.dtype == torch.bfloat16 and torch.equal(cast, x.to(torch.bfloat16))
        assert matmul_input(cast) is cast and matmul_input(x.double()).dtype == torch.float64
    weights = [torch.randn(2, 4, 3, requires_grad=True) for _ in range(3)]

    def casts(share: bool) -> tuple[int, torch.Tensor]:
        x.grad = None
        with _Ops() as counter:
            with bf16():
                inp = matmul_input(x) if share else x
                y = sum(torch.bmm(inp, w).float().sum() for w in weights)
            y.backward()
        return counter.ops["aten::_to_copy"], x.grad

    x.requires_grad_()
    (shared, grad), (each, ref) = casts(True), casts(False)
    assert shared == each - 4  # two casts of x fewer, and two of its gradients
    assert grad.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(grad, ref, rtol=2 ** -7, atol=1e-2)  # three bf16 gradients added in bf16


def test_full_precision_turns_autocast_off_inside_only():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    with bf16():
        with full_precision(a.device):
            assert torch.bmm(a, b).dtype == torch.float32
        assert torch.bmm(a, b).dtype == torch.bfloat16


def _linear():
    torch.manual_seed(0)
    layer = SynapticLinear(3, 8, 16, 2).train()
    with torch.no_grad():
        layer.linear.weight.normal_()
        layer.linear.bias.normal_()
        layer.U.normal_()
        layer.V.normal_()
    layer.bind(HebbianState(3, [16]).gains(0))
    return layer


def test_synaptic_linear_casts_only_its_matmul_operands_under_bf16():
    """The effective weight (W diag(gain) + W U V) and the Hebbian statistics are float32 products of float32
    parameters: under autocast they cast nothing, and the layer's one matmul casts its three operands (x, W_eff and
    b_eff), each gradient cast back once."""
    layer, x = _linear(), torch.randn(3, 10, 8, requires_grad=True)
    with _Ops() as counter:
        with bf16():
            y = layer(x)
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and counter.ops["aten::_to_copy"] == 3 + 3 + 2  # + y.float() each way
    pre, post = layer.take_activity()
    assert pre.dtype == post.dtype == torch.float32
    ref = _linear()
    ref(x)
    ref_pre, ref_post = ref.take_activity()  # float32 without autocast: the same statistics
    torch.testing.assert_close(post, ref_post)
    torch.testing.assert_close(pre, ref_pre)
    # a bf16 input (the MLP's second layer reads relu^2 of a bf16 matmul): its token mean is taken in float32, not
    # rounded to bf16 first, and so is the product
    xb = x.detach().to(torch.bfloat16)
    with bf16():
        layer(xb)
    post = layer.take_activity()[1]
    w, b = layer.linear.weight.detach(), layer.linear.bias.detach()
    assert post.dtype == torch.float32 and torch.equal(post, torch.baddbmm(b, xb.float().mean(1, keepdim=True), w))
