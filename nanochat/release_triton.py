"""A chunk's presynaptic state step as Triton kernels, for the GPU: its release edges, the release, and the next
chunk's logit scale in four launches, where the torch definition takes ~150 operators.

    scale = state_step(state, d, own, n_keys, next_keys, ema, knobs, uniforms)   # as synaptic._state_step

`PresynapticState.release` and `logit_scale` (synaptic.py) define the step. Run op by op on a GPU they were 60% and
12% of the kernels of a training step (bench/count_kernels.py): about 150 launches per chunk, each a multiply or an
add over a few MB, so a step at P = 1 was launch-bound. Here:

  edges_triton.top_edges   the chunk's release edges (one launch);
  _release_kernel          one program per (member, batch row, head) row: it gathers each edge's key state, computes
                           the edge's release probability and release (drawn for stochastic rows), sums release,
                           drive and valid edges per key, and advances every key's pools, calcium, SNAREs, clamp,
                           amplitude, energy and endocytosis queue in place, as release.c does on the CPU; it also
                           writes the row's share of the running mean's sums;
  _running_mean_kernel     each member's running mean `ema` from its rows' shares (a fixed-order sum);
  _logit_scale_kernel      p_j rrp_j amp_j / (ema + eps) for the next chunk's keys.

A program's sums run in a fixed order, and rows never mix (the running mean sums a member's own rows), so a run
repeats bit for bit and a member's numbers do not depend on the others. The numbers are the definition's to float
rounding, not bit for bit: the per-key sums add in another order than torch's, and the sigmoids and softplus are
Triton's (tests/test_release_triton.py checks them against the torch definition in Triton's interpreter).
The state is float32 (the fused attention's state; synaptic.py uses the torch definition otherwise).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .edges_triton import top_edges
from .release_kernel import KNOB_COLUMNS, knob_table, member_draws

# A row's key loop takes 4 keys at a time: each step compares every edge with each key (an (edges, 4) block, three
# sums), on one warp per 256 edges (at most 8), so that a step's sums stay inside a warp. Timed on an H200 at P = 128,
# 256 edges a row (bench/tune_kernels.py): of twelve settings this was the fastest, a training step of 76.1 ms
# against 93.5 ms with the former 8 keys on 8 warps (32 edges a warp). Compiled for sm_90 (ptxas), 256 edges on 1
# warp use 218 registers without stochastic draws and 255 with them, spilling 416 bytes (the timed build compared
# int64 keys under a mask: 251 and 255 registers, 1.1 KB spilled); rows of more edges get more warps (512 on 1 warp
# spill 2 KB with draws, on 2 warps 400 bytes), not timed on a GPU.
KEY_BLOCK = 4
EDGES_PER_WARP = 256
MAX_WARPS = 8
# With SUMS_FIRST the key loop only sums (KEY_BLOCK keys a step) into a scratch row of the program's own (3 x T
# floats); then the keys' state is read, updated and written UPDATE_BLOCK keys at a time (as KEY_SUMS "search"
# does). Without it, each of the loop's steps (64 for 256 keys) waits on the loads of its few keys' state before it
# can update them; with it, the loop has no load to wait on. The same sums and the same update, so the same numbers
# bit for bit. Off until a GPU times it (bench/tune_kernels.py).
SUMS_FIRST = False
UPDATE_BLOCK = 256
# How a key's sums find its edges. "match": each step of the key loop compares every edge of the row with its block
# of keys, (edges x keys) comparisons a row, summed across the warp's threads. "search": one thread per key (a block
# of UPDATE_BLOCK keys a step) looks its key up in each query's k edges, which are in ascending key order and
# distinct (top_edges' order), by binary search: Qc (log2 k + 1) probes a key instead of Qc k comparisons, nothing
# summed across threads, and a key's sum runs over the queries in order. The match sums in a tree, so the two round
# differently (tests/test_release_triton.py holds both to the torch definition). Compiled for sm_90 with stochastic
# rows (bench/tune_kernels.py --resources, Triton 3.9), a row of 256 keys and 32 queries costs the match's key loop
# 64 x 644 = 41k warp instructions on one warp (255 registers, 416 bytes spilled; 64 x 1,131 = 72k in the timed
# build, whose loop reloaded 157 spilled values a step), the search's on 4 warps (64 edges a warp) 4 x 32 x 133 =
# 17k (94 registers, none spilled); which is faster only a GPU says, so the match stays until one times it.
KEY_SUMS = "match"


def warps_for(edges: int) -> int:
    """Warps for a release program over a row of `edges` edges: one per EDGES_PER_WARP, 1 to MAX_WARPS."""
    return min(MAX_WARPS, max(1, edges // EDGES_PER_WARP))


@triton.jit
def _clamp(x, lo, hi):
    """ATen's clamp: NaN passes through, a value equal to a bound is kept."""
    x = tl.where(lo > x, lo, x)
    return tl.where(hi < x, hi, x)


@triton.jit
def _clamp_min(x, lo):
    return tl.where(lo > x, lo, x)


@triton.jit
def _minimum(a, b):
    """ATen's minimum: NaN if either is NaN."""
    return tl.where(b != b, b, tl.where(b < a, b, a))


@triton.jit
def _softplus(x):
    """torch's softplus (beta 1, threshold 20): log1p(exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) with an
    accurate log1p (u = 1 + y; log(u) y / (u - 1))."""
    y = tl.exp(-tl.abs(x))
    u = 1.0 + y
    log1p = tl.where(u == 1.0, y, tl.log(u) * y / tl.where(u == 1.0, 1.0, u - 1.0))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p)


@triton.jit
def _knob(KNOBS, member, column: tl.constexpr, N_KNOBS: tl.constexpr):
    """A member's knob from the knob table; columns in release_kernel.KNOB_COLUMNS' order (0 tau_c, 1 alpha_c,
    2 syt1_slope, ..., 18 energy_use; a wrong column fails tests/test_release_triton.py)."""
    return tl.load(KNOBS + member * N_KNOBS + column)


@triton.jit
def _release_probability(c, cl, sn, KNOBS, member, N_KNOBS: tl.constexpr):
    """synaptic.release_probability for one member's keys or edges."""
    syt1 = _knob(KNOBS, member, 2, N_KNOBS)
    syt7 = _knob(KNOBS, member, 3, N_KNOBS)
    doc2 = _knob(KNOBS, member, 4, N_KNOBS)
    cpx = _knob(KNOBS, member, 5, N_KNOBS)
    bias = _knob(KNOBS, member, 6, N_KNOBS)
    sensors = (0.8 * tl.sigmoid(syt1 * (c - 0.55)) + 0.2 * tl.sigmoid(syt7 * (c - 0.25))) + doc2 * tl.sigmoid(
        4.0 * (c - 0.12))
    unclamp = tl.sigmoid(8.0 * (c - cpx) - 2.0 * (cl + bias))
    return _clamp(sensors * unclamp * sn, 0.0, 0.999)


@triton.jit
def _round_half_even(x):
    """torch.round of x in [0, 8] or NaN."""
    f = tl.where(x != x, 0.0, x).to(tl.int32).to(tl.float32)  # NaN would make the cast undefined
    d = x - f
    odd = (f.to(tl.int32) % 2) == 1
    f = tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)
    return tl.where(x != x, x, f)


@triton.jit
def _key_sums(edge_key, r_e, vals, valid, key):
    """Each of a block of keys' release, drive and valid edges: sums over the row's edges that point to it
    (`edge_key`: each edge's key as an int32, -1 for the slots past the row's edges)."""
    match = edge_key[:, None] == key[None, :]
    released = tl.sum(tl.where(match, r_e[:, None], 0.0), 0)
    drive = tl.sum(tl.where(match, vals[:, None], 0.0), 0)
    count = tl.sum(tl.where(match, valid[:, None], 0.0), 0)
    return released, drive, count


@triton.jit
def _update_keys(C, RRP, RES, SN, CL, AMP, EN, QUEUE, at_key, keys, released, drive, count, tau, rate, rec,
                 init_rrp, prime, unprime, nsf, init_clamp, amp_load, amp_leak, init_amp, fill, use,
                 DELAY: tl.constexpr):
    """A block of keys' pools, calcium, SNAREs, clamp, amplitude, energy and endocytosis queue, advanced in place
    from their edges' sums and the member's knobs (PresynapticState.release's update)."""
    rrp = tl.load(RRP + at_key, mask=keys, other=0.0)
    rel = _minimum(released, rrp)  # no more than the pool holds
    c = tl.load(C + at_key, mask=keys, other=0.0)
    tl.store(C + at_key, tau * c + rate * _softplus(drive) * (count > 0.0).to(tl.float32), mask=keys)
    pool = rrp - rel
    res = tl.load(RES + at_key, mask=keys, other=0.0)
    if DELAY > 0:  # the oldest endocytosed vesicles join the reserve; the queue moves up; this release enters
        slot = at_key.to(tl.int64) * DELAY
        reserve = res + tl.load(QUEUE + slot, mask=keys, other=0.0)
        for d in tl.static_range(DELAY - 1):
            tl.store(QUEUE + slot + d, tl.load(QUEUE + slot + d + 1, mask=keys, other=0.0), mask=keys)
        tl.store(QUEUE + slot + DELAY - 1, rec * rel, mask=keys)
    else:
        reserve = res + rec * rel
    room = _clamp_min(1.0 - pool / init_rrp, 0.0)
    energy = tl.load(EN + at_key, mask=keys, other=0.0)
    flux = _minimum(prime * reserve * room * energy, reserve)
    tl.store(RES + at_key, reserve - flux, mask=keys)
    tl.store(RRP + at_key, pool + flux, mask=keys)
    s = tl.load(SN + at_key, mask=keys, other=0.0)
    tl.store(SN + at_key, _clamp(s - unprime * rel + nsf * (1.0 - s), 0.0, 1.0), mask=keys)
    h = tl.load(CL + at_key, mask=keys, other=0.0)
    tl.store(CL + at_key, _clamp_min(h + nsf * (init_clamp - h) - unprime * rel * h, 0.0), mask=keys)
    a = tl.load(AMP + at_key, mask=keys, other=0.0)
    tl.store(AMP + at_key, _clamp_min(a + amp_load * rel - amp_leak * (a - init_amp), 0.0), mask=keys)
    tl.store(EN + at_key, _clamp(energy + fill * (1.0 - energy) - use * rel, 0.0, 1.0), mask=keys)


@triton.jit
def _searched_sums(IDX, VALS, VALID, EDGE_R, edges, key, Qc, K: tl.constexpr, K_BITS: tl.constexpr,
                   BL: tl.constexpr):
    """A block of keys' release, drive and valid edges, each key looked up in every query's k edges (ascending,
    distinct) by binary search; `edges` is the row's first edge. The sums run over the queries in order."""
    released = tl.zeros((BL,), tl.float32)
    drive = tl.zeros((BL,), tl.float32)
    count = tl.zeros((BL,), tl.float32)
    for q in range(0, Qc):
        first = edges + q * K
        below = tl.zeros((BL,), tl.int32)  # how many of the query's edges point before the key
        for s in tl.static_range(K_BITS):
            step = 1 << (K_BITS - 1 - s)
            probe = below + (step - 1)
            inside = probe < K
            before = tl.load(IDX + first + probe, mask=inside, other=0) < key
            below = tl.where(inside & before, below + step, below)
        at = first + below
        hit = (below < K) & (tl.load(IDX + at, mask=below < K, other=-1) == key)
        released += tl.load(EDGE_R + at, mask=hit, other=0.0)
        drive += tl.load(VALS + at, mask=hit, other=0.0)
        count += tl.load(VALID + at, mask=hit, other=0).to(tl.float32)
    return released, drive, count


@triton.jit
def _release_kernel(C, RRP, RES, SN, CL, AMP, EN, QUEUE, IDX, VALS, VALID, ROW_U, U, KNOBS, SHARES, SUMS, EDGE_R, T,
                    n_keys, Qc, rows_per_member, row_u_stride, u_stride, K: tl.constexpr, E: tl.constexpr,
                    DELAY: tl.constexpr, DRAWS: tl.constexpr, N_KNOBS: tl.constexpr, BK: tl.constexpr,
                    SUMS_FIRST: tl.constexpr, BL: tl.constexpr, SEARCH: tl.constexpr, K_BITS: tl.constexpr):
    row = tl.program_id(0)
    member, in_member = row // rows_per_member, row % rows_per_member
    state = row.to(tl.int64) * T
    # 1. Every edge of the row: its key's state, release probability and release.
    e = tl.arange(0, E)
    edges_here = Qc * K
    live = e < edges_here
    at = row.to(tl.int64) * edges_here + e
    idx = tl.load(IDX + at, mask=live, other=0)
    vals = tl.load(VALS + at, mask=live, other=0.0)
    valid = tl.load(VALID + at, mask=live, other=0).to(tl.float32)
    tau = _knob(KNOBS, member, 0, N_KNOBS)
    alpha = _knob(KNOBS, member, 1, N_KNOBS)
    c_e = tau * tl.load(C + state + idx, mask=live, other=0.0) + alpha * _softplus(vals)
    p_e = _release_probability(c_e, tl.load(CL + state + idx, mask=live, other=0.0),
                               tl.load(SN + state + idx, mask=live, other=0.0), KNOBS, member, N_KNOBS)
    rrp_e = tl.load(RRP + state + idx, mask=live, other=0.0)
    r_e = p_e * rrp_e
    if DRAWS:  # stochastic rows: Binomial(round(clamp(rrp, 0, 8)), p) as the count of 8 uniforms below p
        frac = _knob(KNOBS, member, 7, N_KNOBS)
        q = e // K
        row_u = tl.load(ROW_U + member.to(tl.int64) * row_u_stride + in_member * Qc + q, mask=live, other=1.0)
        b = tl.arange(0, 8)
        u = tl.load(U + member.to(tl.int64) * u_stride + (in_member.to(tl.int64) * edges_here + e)[:, None] * 8
                    + b[None, :], mask=live[:, None], other=1.0)
        trials = _round_half_even(_clamp(rrp_e, 0.0, 8.0))
        hits = (u < p_e[:, None]) & (b[None, :].to(tl.float32) < trials[:, None])
        r_e = tl.where(row_u < frac, tl.sum(hits.to(tl.float32), 1), r_e)
    r_e = r_e * valid
    amp_e = tl.load(AMP + state + idx, mask=live, other=0.0)  # before this step's update
    tl.store(SHARES + row * 2, tl.sum(tl.where(live, tl.abs(r_e * amp_e), 0.0), 0))
    tl.store(SHARES + row * 2 + 1, tl.sum(valid, 0))
    if SEARCH:  # each edge's release, for the threads of the keys that look it up
        tl.store(EDGE_R + at, r_e, mask=live)
    tl.debug_barrier()  # every edge has read its key's state before any key is written (and its release is stored)
    # Each edge's key for the key loop's comparisons: 32 bits (one compare, not two), -1 past the row's edges (so
    # that no key matches them and the loop needs no mask): the same sums, in half the registers.
    edge_key = tl.where(live, idx, -1).to(tl.int32)
    # 2. Every key: the sums of its edges, then its update in place.
    rate = (1.0 - tau) * alpha
    rec = _knob(KNOBS, member, 8, N_KNOBS)
    init_rrp = _knob(KNOBS, member, 9, N_KNOBS)
    prime = _knob(KNOBS, member, 10, N_KNOBS)
    unprime = _knob(KNOBS, member, 11, N_KNOBS)
    nsf = _knob(KNOBS, member, 12, N_KNOBS)
    init_clamp = _knob(KNOBS, member, 13, N_KNOBS)
    amp_load = _knob(KNOBS, member, 14, N_KNOBS)
    amp_leak = _knob(KNOBS, member, 15, N_KNOBS)
    init_amp = _knob(KNOBS, member, 16, N_KNOBS)
    fill = _knob(KNOBS, member, 17, N_KNOBS)
    use = _knob(KNOBS, member, 18, N_KNOBS)
    if SEARCH:  # one thread per key, BL keys a step
        for k0 in range(0, n_keys, BL):
            key = k0 + tl.arange(0, BL)
            keys = key < n_keys
            released, drive, count = _searched_sums(IDX, VALS, VALID, EDGE_R, row.to(tl.int64) * edges_here, key, Qc,
                                                    K, K_BITS, BL)
            _update_keys(C, RRP, RES, SN, CL, AMP, EN, QUEUE, state + key, keys, released, drive, count, tau, rate,
                         rec, init_rrp, prime, unprime, nsf, init_clamp, amp_load, amp_leak, init_amp, fill, use,
                         DELAY)
    elif SUMS_FIRST:  # all the sums into SUMS first, then the keys' update BL keys at a time (no load in the sum loop)
        sums = row.to(tl.int64) * 3 * T
        for k0 in range(0, n_keys, BK):
            key = k0 + tl.arange(0, BK)
            released, drive, count = _key_sums(edge_key, r_e, vals, valid, key)
            tl.store(SUMS + sums + key, released, mask=key < n_keys)
            tl.store(SUMS + sums + T + key, drive, mask=key < n_keys)
            tl.store(SUMS + sums + 2 * T + key, count, mask=key < n_keys)
        tl.debug_barrier()  # every sum is written before it is read
        for k0 in range(0, n_keys, BL):
            key = k0 + tl.arange(0, BL)
            keys = key < n_keys
            _update_keys(C, RRP, RES, SN, CL, AMP, EN, QUEUE, state + key, keys,
                         tl.load(SUMS + sums + key, mask=keys, other=0.0),
                         tl.load(SUMS + sums + T + key, mask=keys, other=0.0),
                         tl.load(SUMS + sums + 2 * T + key, mask=keys, other=0.0), tau, rate, rec, init_rrp, prime,
                         unprime, nsf, init_clamp, amp_load, amp_leak, init_amp, fill, use, DELAY)
    else:  # each step of the key loop sums BK keys' edges and updates those keys
        for k0 in range(0, n_keys, BK):
            key = k0 + tl.arange(0, BK)
            released, drive, count = _key_sums(edge_key, r_e, vals, valid, key)
            _update_keys(C, RRP, RES, SN, CL, AMP, EN, QUEUE, state + key, key < n_keys, released, drive, count, tau,
                         rate, rec, init_rrp, prime, unprime, nsf, init_clamp, amp_load, amp_leak, init_amp, fill,
                         use, DELAY)


@triton.jit
def _running_mean_kernel(SHARES, EMA, rows_per_member, BR: tl.constexpr):
    """One member's running mean release magnitude: ema = 0.99 ema + 0.01 sum |r amp| / max(edges, 1), from its
    rows' shares summed in a fixed order."""
    member = tl.program_id(0)
    first = member.to(tl.int64) * rows_per_member
    magnitude = tl.zeros((BR,), tl.float32)
    edges = tl.zeros((BR,), tl.float32)
    for r0 in range(0, rows_per_member, BR):
        r = r0 + tl.arange(0, BR)
        at = (first + r) * 2
        magnitude += tl.load(SHARES + at, mask=r < rows_per_member, other=0.0)
        edges += tl.load(SHARES + at + 1, mask=r < rows_per_member, other=0.0)
    mean = tl.sum(magnitude, 0) / _clamp_min(tl.sum(edges, 0), 1.0)
    tl.store(EMA + member, tl.load(EMA + member) * 0.99 + 0.01 * mean)


@triton.jit
def _logit_scale_kernel(C, RRP, SN, CL, AMP, KNOBS, EMA, EPS, OUT, T, n, out_row, rows_per_member,
                        N_KNOBS: tl.constexpr, BL: tl.constexpr):
    """Row `row`'s scale of its first n keys, stored out_row apart (n for a fresh tensor, a table's row stride)."""
    row = tl.program_id(0)
    member = row // rows_per_member
    key = tl.program_id(1) * BL + tl.arange(0, BL)
    keys = key < n
    at = row.to(tl.int64) * T + key
    p = _release_probability(tl.load(C + at, mask=keys, other=0.0), tl.load(CL + at, mask=keys, other=0.0),
                             tl.load(SN + at, mask=keys, other=0.0), KNOBS, member, N_KNOBS)
    scale = p * tl.load(RRP + at, mask=keys, other=0.0) * tl.load(AMP + at, mask=keys, other=0.0)
    tl.store(OUT + row.to(tl.int64) * out_row + key, scale / (tl.load(EMA + member) + tl.load(EPS + member)),
             mask=keys)


def _check_ema(ema: torch.Tensor) -> None:
    if not (ema.is_contiguous() and ema.dtype == torch.float32):
        raise ValueError(f"ema must be contiguous float32, got {ema.dtype} with strides {ema.stride()}")


def _state(state) -> tuple[torch.Tensor, ...]:
    tensors = (state.c, state.rrp, state.res, state.sn, state.cl, state.amp, state.en, state.queue)
    if not all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        raise ValueError("the presynaptic state must be contiguous float32 for the Triton state step")
    return tensors


def release(state, vals: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, n_keys: int, ema: torch.Tensor, k,
            uniforms: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """PresynapticState.release (same arguments), advancing `state` and `ema` in place. Each query's edges are in
    ascending key order, as top_edges gives them (KEY_SUMS "search" relies on it)."""
    P, B, H, Qc, K = vals.shape
    T, delay = state.c.shape[-1], k.structure.endo_delay
    tensors = _state(state)
    _check_ema(ema)
    shares = vals.new_empty(P, B * H, 2)
    search = KEY_SUMS == "search"
    sums = vals.new_empty(P * B * H, 3, T) if SUMS_FIRST and not search else shares  # shares: not read
    edge_r = vals.new_empty(P, B, H, Qc, K) if search else shares
    row_u, u = member_draws(uniforms)
    strides = (0, 0) if u is None else (row_u.stride(0), u.stride(0))
    edges = triton.next_power_of_2(Qc * K)
    _release_kernel[(P * B * H,)](*tensors, idx.contiguous(), vals.contiguous(), valid.contiguous(),
                                  vals if u is None else row_u, vals if u is None else u,  # vals: not read
                                  knob_table(k), shares, sums, edge_r, T, n_keys, Qc, B * H, *strides,
                                  K=K, E=edges, DELAY=delay, DRAWS=u is not None, N_KNOBS=len(KNOB_COLUMNS),
                                  BK=KEY_BLOCK, SUMS_FIRST=SUMS_FIRST, BL=UPDATE_BLOCK, SEARCH=search,
                                  K_BITS=K.bit_length(), num_warps=warps_for(edges))
    _running_mean_kernel[(P,)](shares, ema, B * H, BR=min(1024, triton.next_power_of_2(B * H)))


def logit_scale(state, n_keys: int, ema: torch.Tensor, k, out: torch.Tensor | None = None) -> torch.Tensor:
    """PresynapticState.logit_scale: p_j rrp_j amp_j / (ema + eps) for the first n_keys keys, (P, B, H, 1, n_keys),
    written into `out` when given: a float32 view of that shape whose keys are contiguous and whose (P, B, H) rows
    are evenly spaced, as a row of a contiguous scale table is."""
    P, B, H, T = state.c.shape
    _check_ema(ema)
    if out is None:
        out = state.c.new_empty(P, B, H, 1, n_keys)
    row = out.stride(2)
    if (out.shape != (P, B, H, 1, n_keys) or out.dtype != torch.float32 or out.stride(-1) != 1
            or out.stride(1) != H * row or out.stride(0) != B * H * row):
        raise ValueError(f"out must be a float32 {(P, B, H, 1, n_keys)} view with contiguous keys and evenly spaced "
                         f"rows, got {out.dtype} {tuple(out.shape)} with strides {out.stride()}")
    block = min(256, triton.next_power_of_2(n_keys))
    _logit_scale_kernel[(P * B * H, triton.cdiv(n_keys, block))](
        state.c, state.rrp, state.sn, state.cl, state.amp, knob_table(k), ema, k.release_eps, out, T, n_keys, row,
        B * H, N_KNOBS=len(KNOB_COLUMNS), BL=block)
    return out


def state_step(state, d: torch.Tensor, own: torch.Tensor, n_keys: int, next_keys: int, ema: torch.Tensor, k,
               uniforms: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor | None = None
               ) -> torch.Tensor | None:
    """synaptic._state_step on these kernels: the chunk's edges (from its raw dots d), their release, then the
    logit scale of the next chunk's first `next_keys` keys (None for 0), written into `out` when given."""
    vals, idx, valid = top_edges(d, own, k.structure.attn_topk)
    release(state, vals, idx, valid, n_keys, ema, k, uniforms)
    return logit_scale(state, next_keys, ema, k, out) if next_keys else None
