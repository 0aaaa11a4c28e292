"""The state step's Triton kernels (nanochat/release_triton.py), run by Triton's interpreter on CPU tensors, against
the torch definition (PresynapticState.release and logit_scale, synaptic.py).

Chunk by chunk over a sequence, with and without the endocytosis queue and stochastic release, for a mixed population
of eight members: every state tensor, the running mean and the next chunk's logit scale within float rounding of
the definition's (the kernels sum in another order and use Triton's sigmoid). Then what the GPU path must keep: a
member alone gets its numbers in the population bit for bit, a member with a NaN knob leaves the others' bits alone,
and a repeat gives the same bits.
"""

import copy

import pytest
import torch

from nanochat import synaptic
from nanochat.config import SynapticConfig
from nanochat.edges import top_edges
from nanochat.population import Knobs

from helpers import fewer_key_loop_steps, triton_interpreter_missing
from tiny import mixed_population

if triton_interpreter_missing():
    pytest.skip(triton_interpreter_missing(), allow_module_level=True)

from nanochat import release_triton  # noqa: E402

STATE = ("c", "rrp", "res", "sn", "cl", "amp", "en", "queue")
CPU = torch.device("cpu")


def _population(delay: int, stochastic: bool, chunk: int, members: slice = slice(None)):
    chosen = mixed_population(SynapticConfig().replace(endo_delay=delay, presyn_chunk=chunk))[members]
    configs = [m.synaptic if stochastic else m.synaptic.replace(stochastic_train_frac=0.0) for m in chosen]
    noise = synaptic.ReleaseNoise([m.seed for m in chosen], [c.stochastic_train_frac for c in configs], CPU)
    return Knobs(configs, CPU), noise


def _dots(P: int, B: int, H: int, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, B, H, T, 8, generator=g), torch.randn(P, B, H, T, 8, generator=g)


def _chunks(T: int, Q: int):
    for start in range(0, T, Q):
        stop = min(start + Q, T)
        yield start, stop, (min(stop + Q, T) if stop < T else 0)


def _loop(state_step, knobs, noise, q, key, chunk):
    """The state loop of one layer (as _AttentionRun.scale_table runs it): the state, ema and every chunk's scale."""
    P, B, H, T, _ = q.shape
    state = synaptic.PresynapticState((P, B, H, T), knobs, CPU, torch.float32)
    ema, allowed, scales = torch.ones(P), torch.ones(T, T, dtype=torch.bool).tril(), []
    for start, stop, following in _chunks(T, chunk):
        d = q[..., start:stop, :] @ key[..., :stop, :].transpose(-1, -2)
        uniforms = noise.draw_edges((*d.shape[:-1], min(knobs.structure.attn_topk, stop)))
        scales.append(state_step(state, d, allowed[start:stop, start:stop], stop, following, ema, knobs, uniforms))
    return state, ema, scales


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    return ((a - b).abs() / (b.abs() + floor)).max().item() if a.numel() else 0.0


@pytest.mark.parametrize("delay, stochastic, T, chunk", [(0, False, 40, 8), (2, True, 40, 8), (2, False, 33, 16),
                                                       (0, True, 33, 16)])
def test_the_kernels_follow_the_torch_definition(delay, stochastic, T, chunk):
    """Each chunk starts both from the definition's state, so the comparison is one step's rounding, not a
    sequence's drift (stochastic counts read p < u, which one ulp can flip; that happened in none of these)."""
    knobs, noise = _population(delay, stochastic, chunk)
    q, key = _dots(8, 1, 2, T)
    ref = synaptic.PresynapticState((8, 1, 2, T), knobs, CPU, torch.float32)
    ref_ema, allowed = torch.ones(8), torch.ones(T, T, dtype=torch.bool).tril()
    for start, stop, following in _chunks(T, chunk):
        d = q[..., start:stop, :] @ key[..., :stop, :].transpose(-1, -2)
        uniforms = noise.draw_edges((*d.shape[:-1], min(8, stop)))
        own = allowed[start:stop, start:stop]
        got, got_ema = copy.deepcopy(ref), ref_ema.clone()
        scale = release_triton.state_step(got, d.clone(), own, stop, following, got_ema, knobs, uniforms)
        ref.release(*top_edges(d.clone(), own, 8), stop, ref_ema, knobs, uniforms)
        for name in STATE:
            assert _rel(getattr(got, name), getattr(ref, name), 1e-3) <= 1e-5, (start, name)
        assert _rel(got_ema, ref_ema, 0.0) <= 1e-5
        if following:
            assert _rel(scale, ref.logit_scale(following, ref_ema, knobs), 1e-6) <= 1e-5
        else:
            assert scale is None
    first = release_triton.logit_scale(ref, T, ref_ema, knobs)  # the whole sequence's keys, as the first call's
    assert _rel(first, ref.logit_scale(T, ref_ema, knobs), 1e-6) <= 1e-5
    assert ref.rrp[..., :chunk].ne(knobs.init_rrp.view(-1, 1, 1, 1)).any()  # the state moved


def test_the_logit_scale_writes_into_a_row_of_a_scale_table():
    """The fused attention's state loop has each step write the next chunk's scale into its row of the table (no
    copy): both definitions give there what they return fresh, the kernel its own bits, and the rest of the table
    stays as it was; a view the kernel cannot address is refused."""
    knobs, noise = _population(2, True, 8)
    state, ema, _ = _loop(release_triton.state_step, knobs, noise, *_dots(8, 2, 2, 24), 8)  # a state that moved
    for logit_scale in (release_triton.logit_scale, synaptic.PresynapticState.logit_scale):
        fresh = logit_scale(state, 16, ema, knobs)
        table = torch.full((8, 2, 2, 3, 24), -7.0)
        written = logit_scale(state, 16, ema, knobs, table[..., 1, None, :16])
        assert written.data_ptr() == table[..., 1, :16].data_ptr()
        assert torch.equal(table[..., 1, :16], fresh[..., 0, :])
        untouched = torch.ones_like(table, dtype=torch.bool)
        untouched[..., 1, :16] = False
        assert table[untouched].eq(-7.0).all()
    with pytest.raises(ValueError, match="out must be a float32"):
        release_triton.logit_scale(state, 16, ema, knobs, torch.empty(8, 2, 2, 16, 2)[..., 0].unsqueeze(-2))


def test_a_member_alone_and_a_nan_member_and_a_repeat(monkeypatch):
    """Rows never mix: a member alone gets its numbers in the population bit for bit, a member with a NaN knob
    leaves the others' bits alone, and a second run repeats the first (a row's 40 keys in two steps of the key
    loop: the same sums)."""
    fewer_key_loop_steps(monkeypatch)
    knobs, noise = _population(2, True, 8)
    q, key = _dots(8, 1, 2, 40)
    state, ema, scales = _loop(release_triton.state_step, knobs, noise, q, key, 8)
    again = _loop(release_triton.state_step, *_population(2, True, 8), q, key, 8)
    assert all(torch.equal(getattr(state, n), getattr(again[0], n)) for n in STATE)
    assert torch.equal(ema, again[1]) and all(torch.equal(a, b) for a, b in zip(scales[:-1], again[2][:-1]))

    alone = _loop(release_triton.state_step, *_population(2, True, 8, slice(1, 2)), q[1:2], key[1:2], 8)
    assert all(torch.equal(getattr(state, n)[1:2], getattr(alone[0], n)) for n in STATE)
    assert torch.equal(ema[1:2], alone[1])

    knobs_nan, noise = _population(2, True, 8)
    knobs_nan.tau_c[3] = float("nan")  # member 3's calcium, and from it everything of member 3, goes NaN
    broken = _loop(release_triton.state_step, knobs_nan, noise, q, key, 8)
    assert broken[0].c[3].isnan().any() and broken[1][3].isnan()
    others = [m for m in range(8) if m != 3]
    assert all(torch.equal(getattr(state, n)[others], getattr(broken[0], n)[others]) for n in STATE)
    assert torch.equal(ema[others], broken[1][others])


def test_summing_every_key_first_gives_the_same_bits(monkeypatch):
    """release_triton.SUMS_FIRST (a launch choice bench/tune_kernels.py times on a GPU) writes every key's sums
    before any key's update: the same sums and the same update, so the loop's numbers bit for bit, with a key loop
    of 8 keys a step and the update taking a row's keys in blocks of 16 (the last block partial)."""
    knobs, noise = _population(2, True, 8)
    q, key = _dots(8, 1, 2, 40)
    monkeypatch.setattr(release_triton, "KEY_BLOCK", 8)
    state, ema, scales = _loop(release_triton.state_step, knobs, noise, q, key, 8)
    monkeypatch.setattr(release_triton, "SUMS_FIRST", True)
    monkeypatch.setattr(release_triton, "UPDATE_BLOCK", 16)
    first = _loop(release_triton.state_step, *_population(2, True, 8), q, key, 8)
    assert all(torch.equal(getattr(state, n), getattr(first[0], n)) for n in STATE)
    assert torch.equal(ema, first[1]) and all(torch.equal(a, b) for a, b in zip(scales[:-1], first[2][:-1]))
    assert state.rrp.ne(knobs.init_rrp.view(-1, 1, 1, 1)).any()  # the state moved


def test_searching_each_querys_edges_follows_the_definition_and_keeps_rows_apart(monkeypatch):
    """release_triton.KEY_SUMS = "search" (a launch choice bench/tune_kernels.py times on a GPU): each key's sums
    found by binary search in every query's edges, in blocks of 32 keys (the last partial), sum in another order
    than the match, so they are held to the definition (one step's rounding, with the queue and the draws), and
    rows still never mix: a member alone and beside a NaN member keeps its bits."""
    monkeypatch.setattr(release_triton, "KEY_SUMS", "search")
    monkeypatch.setattr(release_triton, "UPDATE_BLOCK", 32)
    test_the_kernels_follow_the_torch_definition(2, True, 40, 8)
    knobs, noise = _population(2, True, 8)
    q, key = _dots(8, 1, 2, 24)
    state, ema, _ = _loop(release_triton.state_step, knobs, noise, q, key, 8)
    alone = _loop(release_triton.state_step, *_population(2, True, 8, slice(1, 2)), q[1:2], key[1:2], 8)
    assert all(torch.equal(getattr(state, n)[1:2], getattr(alone[0], n)) for n in STATE)
    knobs_nan, noise = _population(2, True, 8)
    knobs_nan.tau_c[3] = float("nan")
    broken = _loop(release_triton.state_step, knobs_nan, noise, q, key, 8)
    others = [m for m in range(8) if m != 3]
    assert broken[0].c[3].isnan().any()
    assert all(torch.equal(getattr(state, n)[others], getattr(broken[0], n)[others]) for n in STATE)
    assert torch.equal(ema[others], broken[1][others])


def test_the_kernels_refuse_a_state_they_cannot_read():
    knobs, _ = _population(0, False, 8)
    state = synaptic.PresynapticState((8, 1, 1, 16), knobs, CPU, torch.float64)
    edges = top_edges(torch.randn(8, 1, 1, 8, 16), torch.ones(8, 8, dtype=torch.bool).tril(), 8)
    with pytest.raises(ValueError, match="contiguous float32"):
        release_triton.release(state, *(e.float() if e.is_floating_point() else e for e in edges), 16,
                               torch.ones(8), knobs, None)
