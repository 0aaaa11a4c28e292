"""The release step in C (nanochat/release_kernel.py, release.c) against its definition in torch
(PresynapticState.release): the same state, running mean and bits, on states with the values that decide a result
(NaN, +-0, pools at rounding boundaries, empty and overfull pools), with and without stochastic rows and the
endocytosis queue, partial blocks of edges and keys, and per-member knobs."""

import copy

import pytest
import torch

from nanochat import native, release_kernel
from nanochat.config import SynapticConfig
from nanochat.edges import top_edges
from nanochat.population import Knobs
from nanochat.synaptic import PresynapticState

needs_compiler = pytest.mark.skipif(native.find_compiler() is None, reason="no C compiler on this machine")

STATE = ("c", "rrp", "res", "sn", "cl", "amp", "en", "queue")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, except that any NaN matches any NaN (ATen's minimum returns a NaN of its own)."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.masked_fill(nan, 0).view(torch.int32),
                                                       b.masked_fill(nan, 0).view(torch.int32))


def population_knobs(endo_delay: int, stochastic: bool) -> Knobs:
    base = SynapticConfig(endo_delay=endo_delay)
    configs = [
        base.replace(stochastic_train_frac=0.5 if stochastic else 0.0),
        base.replace(tau_c=0.7, alpha_c=0.95, init_rrp=1.0, prime_rate=0.2, doc2_gain=0.3),
        base.replace(stochastic_train_frac=0.3 if stochastic else 0.0, rec_rate=0.2, cpx_thresh=0.1),
    ]
    return Knobs(configs, torch.device("cpu"))


def awkward_state(shape, k: Knobs, seed: int) -> PresynapticState:
    """A state as training leaves it, plus the values where a different order or rule would show."""
    g = torch.Generator().manual_seed(seed)
    state = PresynapticState(shape, k, torch.device("cpu"), torch.float32)
    for name in STATE:
        t = getattr(state, name)
        t.copy_(torch.rand(t.shape, generator=g) * 3)
    state.rrp.view(-1)[::7] = (torch.randint(0, 17, state.rrp.view(-1)[::7].shape, generator=g) / 2)  # n + 0.5
    state.rrp.view(-1)[::11] = 0.0
    state.rrp.view(-1)[::13] = 20.0  # more than the Binomial's 8 trials
    for name in ("sn", "cl", "amp", "en", "c"):
        getattr(state, name).view(-1)[::17] = -0.0
    state.c[1, 0, 0, 3] = float("nan")  # a diverged member: NaN calcium, and NaN pools on keys with or without edges
    state.rrp[1, 0, 0, 1::9] = float("nan")
    state.amp[1, -1, -1, 5] = float("inf")
    return state


def edges_and_draws(shape, q: int, n_keys: int, topk: int, seed: int, stochastic: bool, shared_draws: bool):
    P, B, H, _ = shape
    g = torch.Generator().manual_seed(seed)
    dots = (torch.randn(P, B, H, q, n_keys, generator=g) * 2).round() / 2  # ties
    dots[0, 0, 0, 0, 0] = float("nan")
    dots[0, -1, -1, 2, :] = float("-inf")  # a query that sees no finite key
    own = torch.ones(q, q, dtype=torch.bool).tril()
    vals, idx, valid = top_edges(dots, own, topk)
    if not stochastic:
        return vals, idx, valid, None
    lead = 1 if shared_draws else P
    rows = torch.rand(lead, B, H, q, generator=g)
    u = torch.rand(lead, B, H, q, idx.shape[-1], 8, generator=g)
    if shared_draws:  # one seed: every member reads the same draws through a broadcast view
        rows, u = rows.expand(P, *rows.shape[1:]), u.expand(P, *u.shape[1:])
    return vals, idx, valid, (rows, u)


CASES = [  # (B, H, T, Qc, n_keys, k, endo_delay, stochastic, shared draws)
    (2, 2, 64, 16, 48, 8, 2, True, True),
    (2, 3, 64, 16, 64, 8, 2, True, False),
    (1, 2, 300, 40, 300, 8, 3, True, False),  # 320 edges a row, 300 keys: partial blocks of both
    (2, 2, 40, 8, 8, 8, 0, False, True),  # first chunk: every key is an edge of the last query
    (2, 1, 64, 32, 64, 3, 1, True, True),
    (1, 2, 70, 10, 70, 64, 2, True, False),  # k above the keys of the first queries: invalid slots
]


@needs_compiler
@pytest.mark.parametrize("B, H, T, q, n_keys, topk, delay, stochastic, shared", CASES)
def test_c_release_is_the_torch_release_bit_for_bit(B, H, T, q, n_keys, topk, delay, stochastic, shared,
                                                    torch_threads):
    k = population_knobs(delay, stochastic)
    shape = (3, B, H, T)
    lib = native.library("release")
    torch_state = awkward_state(shape, k, seed=T + q)
    vals, idx, valid, uniforms = edges_and_draws(shape, q, n_keys, topk, T * 7 + q, stochastic, shared)
    c_state = copy.deepcopy(torch_state)
    torch_ema, c_ema = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([1.0, 0.5, 2.0])
    for step in range(3):  # the state feeds the next step's release
        torch_state.release(vals, idx, valid, n_keys, torch_ema, k, uniforms)
        release_kernel.native_release(lib, c_state, vals, idx, valid, n_keys, c_ema, k, uniforms)
        for name in STATE:
            assert same_bits(getattr(torch_state, name), getattr(c_state, name)), f"{name} differs after step {step}"
        assert same_bits(torch_ema, c_ema)
    assert torch_state.c.isnan().any() and not torch_state.c[0].isnan().any()  # the NaN stayed in its member


def test_release_uses_c_only_for_float32_cpu_states():
    k = population_knobs(2, False)
    state = PresynapticState((3, 1, 1, 8), k, torch.device("cpu"), torch.float32)
    assert release_kernel.usable(state, torch.zeros(3, 1, 1, 8, 8))
    assert not release_kernel.usable(state, torch.zeros(3, 1, 1, 8, 8, dtype=torch.float64))
    wide = PresynapticState((3, 1, 1, 8), k, torch.device("cpu"), torch.float64)
    assert not release_kernel.usable(wide, torch.zeros(3, 1, 1, 8, 8, dtype=torch.float64))
    state.c = torch.zeros(3, 1, 1, 16)[..., ::2]  # not laid out as created
    assert not release_kernel.usable(state, torch.zeros(3, 1, 1, 8, 8))


@needs_compiler
def test_bad_arguments_are_refused():
    lib = native.library("release")
    x = torch.zeros(64)
    # n_keys above the state's positions
    assert lib.key_update(*([x.data_ptr()] * 7), None, 8, 0, x.data_ptr(), x.data_ptr(), 1, 9, 1, x.data_ptr()) == -1
    # draws for the row choice without the Binomial's uniforms
    assert lib.edge_release(x.data_ptr(), x.data_ptr(), x.data_ptr(), 8, x.data_ptr(), x.data_ptr(), x.data_ptr(),
                            x.data_ptr(), x.data_ptr(), 0, None, 0, 1, 1, 1, 8, 1, x.data_ptr(), x.data_ptr(),
                            x.data_ptr()) == -1
