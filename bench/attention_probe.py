"""Where one presynaptic attention layer spends its time, and what the alternatives tried for issue 12 cost.

    python bench/attention_probe.py --device cuda --population 128 --out probe.json
    python bench/attention_probe.py --device cpu --population 8 --threads 2

Timed on one layer of the baseline model (width 128, 4 heads, sequence 256, batch 8), medians of --repeats:

* the layer as built, forward and backward, with the eager and the torch.compile'd chains (`TrainConfig.compile`)
  and, where Triton runs (CUDA), the fused attention's kernels (`TrainConfig.fused_attention`), in turn;
* its presynaptic state loop alone (per chunk: top-k edges, release, the next chunk's logit scale; no grad), with
  the state step eager, on CUDA compiled, and where Triton runs as its Triton kernels (`release_triton.py`);
* on CUDA, `flex_attention` for all queries with the logits chain as a `score_mod` reading a per-chunk table of key
  scales: the FlexAttention route for the logits half (CPU has no FlexAttention backward);
* top-k of a last chunk's (P, B, H, Q, T) dots: torch.topk, the model's release edges (`edges.top_edges`, and
  the Triton kernel where it runs), a two-stage top-k (the max of 8 strided key groups, the top-8 groups, then the
  top-8 of their 64 candidates: exactly the same set), sorting whole rows, and 8 rounds of max.

Only timings: nothing here is used by the model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BASELINE_MODEL, sync  # noqa: E402

from nanochat.config import ConfigError, ModelConfig, SynapticConfig  # noqa: E402
from nanochat.edges import top_edges  # noqa: E402
from nanochat.population import Knobs  # noqa: E402
from nanochat.synaptic import (AttentionChains, PresynapticAttention, PresynapticState, ReleaseNoise,  # noqa: E402
                               fused_attention_kernels)


def median_s(fn, dev: torch.device, repeats: int) -> float:
    fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def two_stage_topk(x: torch.Tensor, k: int, groups: int = 8, sort: bool = False):
    """The top-k set of the last dim via group maxima: any element of the top k lies in one of the k groups with the
    largest maxima (else k larger elements exist), so the top k of those groups' members is the answer."""
    n = x.shape[-1] // groups
    g = x.view(*x.shape[:-1], groups, n)  # key = group * n + column
    _, col = g.amax(-2).topk(k, -1, sorted=False)
    cand = g.gather(-1, col.unsqueeze(-2).expand(*col.shape[:-1], groups, k))
    vals, j = cand.flatten(-2).topk(k, -1, sorted=False)
    idx = (j // k) * n + col.gather(-1, j % k)
    if sort:
        idx, order = idx.sort(-1)
        vals = vals.gather(-1, order)
    return vals, idx


def probe(dev: torch.device, P: int, repeats: int, model: ModelConfig, B: int = 8) -> dict:
    H, T, D = model.n_head, model.sequence_len, model.head_dim
    configs = [SynapticConfig()] * P
    knobs = Knobs(configs, dev)
    Q, K = knobs.structure.presyn_chunk, knobs.structure.attn_topk
    out: dict = {}
    gen = torch.Generator(device="cpu").manual_seed(0)

    # 1. the layer, eager chains vs compiled chains, alternating
    attn = PresynapticAttention(model, P).to(dev).train()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    x = torch.randn(P, B, T, model.n_embd, generator=gen).to(dev).requires_grad_()
    angles = torch.outer(torch.arange(T, dtype=torch.float32), 1.0 / (10000 ** (torch.arange(0, D, 2) / D))).to(dev)
    noise = ReleaseNoise([1] * P, [configs[0].stochastic_train_frac] * P, dev)
    chains = {"eager": AttentionChains(False, dev), "compiled": AttentionChains(True, dev)}
    try:  # the Triton kernels: CUDA, or Triton's interpreter (the tests' smoke run)
        chains["fused"] = AttentionChains(False, dev, fused_attention_kernels(dev))
    except ConfigError as e:
        out["fused_unavailable"] = str(e)

    def layer(name: str) -> tuple[float, float]:
        attn.chains = chains[name]
        sync(dev)
        t0 = time.perf_counter()
        y = attn(x, angles.cos(), angles.sin(), knobs, noise)
        sync(dev)
        t1 = time.perf_counter()
        y.sum().backward()
        sync(dev)
        return t1 - t0, time.perf_counter() - t1

    t0 = time.perf_counter()
    layer("compiled")
    out["compile_first_call_s"] = time.perf_counter() - t0
    layer("eager")
    if "fused" in chains:
        layer("fused")  # Triton compiles its kernels on their first call
    samples: dict[str, list] = {n: [] for n in chains}
    for r in range(repeats):
        for n in (list(chains) if r % 2 == 0 else list(chains)[::-1]):
            samples[n].append(layer(n))
    for n, s in samples.items():
        out[f"layer_{n}_fwd_s"] = statistics.median(a for a, _ in s)
        out[f"layer_{n}_bwd_s"] = statistics.median(b for _, b in s)

    # 2. the state loop alone
    with torch.no_grad():
        q = (torch.randn(P, B, H, T, D, generator=gen) / math.sqrt(D)).to(dev)
        k = torch.randn(P, B, H, T, D, generator=gen).to(dev)
        allowed = torch.ones(T, T, dtype=torch.bool, device=dev).tril()

        def state_loop(state_step) -> None:
            state = PresynapticState((P, B, H, T), knobs, dev, torch.float32)
            ema = torch.ones(P, device=dev)
            state.logit_scale(min(Q, T), ema, knobs)
            for start in range(0, T, Q):
                stop = min(start + Q, T)
                dots = q[..., start:stop, :] @ k[..., :stop, :].transpose(-1, -2)
                uniforms = noise.draw_edges((*dots.shape[:-1], min(K, stop)))
                state_step(state, dots, allowed[start:stop, start:stop], stop, min(stop + Q, T) if stop < T else 0,
                           ema, knobs, uniforms)

        out["state_loop_eager_s"] = median_s(lambda: state_loop(chains["eager"].state_step), dev, repeats)
        if "fused" in chains:
            state_loop(chains["fused"].state_step)  # Triton compiles its kernels on their first call
            out["state_loop_triton_s"] = median_s(lambda: state_loop(chains["fused"].state_step), dev, repeats)
        if dev.type == "cuda":
            compiled = chains["compiled"].state_step
            t0 = time.perf_counter()
            state_loop(compiled)
            sync(dev)
            out["state_loop_compiled_first_call_s"] = time.perf_counter() - t0
            out["state_loop_compiled_s"] = median_s(lambda: state_loop(compiled), dev, repeats)

    # 3. FlexAttention for the logits half (CUDA only: CPU has no FlexAttention backward)
    if dev.type == "cuda":
        out.update(flex_probe(dev, P, B, H, T, D, Q, repeats, gen))

    # 4. top-k variants on a last chunk's dots
    with torch.no_grad():
        dots = torch.randn(P, B, H, Q, T, generator=gen).to(dev)
        own = torch.ones(Q, Q, dtype=torch.bool, device=dev).tril()
        variants = {
            "topk": lambda: dots.topk(K, -1, sorted=False),
            "top_edges": lambda: top_edges(dots, own, K),  # masks the chunk's own keys in place: the same each time
            "two_stage": lambda: two_stage_topk(dots, K),
            "two_stage_sorted_by_key": lambda: two_stage_topk(dots, K, sort=True),
            "sort_rows": lambda: dots.sort(-1, descending=True),
        }

        def rounds_of_max():
            work = dots.clone()
            for _ in range(K):
                _, i = work.max(-1, keepdim=True)
                work.scatter_(-1, i, float("-inf"))

        variants["rounds_of_max"] = rounds_of_max
        if "fused" in chains:
            from nanochat.edges_triton import top_edges as triton_top_edges

            variants["triton_top_edges"] = lambda: triton_top_edges(dots, own, K)
        out["topk_shape"] = list(dots.shape)
        out["topk_s"] = {name: median_s(fn, dev, repeats) for name, fn in variants.items()}
        same = torch.equal(two_stage_topk(dots, K)[1].sort(-1)[0], dots.topk(K, -1)[1].sort(-1)[0])
        out["two_stage_same_set"] = bool(same)
    return out


def flex_probe(dev, P, B, H, T, D, Q, repeats, gen) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    PB = P * B
    q = (torch.randn(PB, H, T, D, generator=gen) / math.sqrt(D)).to(dev).requires_grad_()
    k = torch.randn(PB, H, T, D, generator=gen).to(dev).requires_grad_()
    v = torch.randn(PB, H, T, D, generator=gen).to(dev).requires_grad_()
    table = torch.rand(PB, H, T // Q, T, generator=gen).to(dev)  # per (row, head, chunk, key): the key's scale
    lam, eps, barrier = 1.0, 1e-4, 0.1

    def score_mod(score, b, h, qi, ki):
        u = torch.sigmoid(score) * table[b, h, qi // Q, ki]
        return score + lam * torch.log(u + eps) - barrier * (qi - ki).abs().to(score.dtype) / Q

    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device=dev)
    flex = torch.compile(flex_attention)

    def step():
        flex(q, k, v, score_mod=score_mod, block_mask=mask, scale=1.0).sum().backward()

    t0 = time.perf_counter()
    step()
    sync(dev)
    first = time.perf_counter() - t0
    return {"flex_first_call_s": first, "flex_fwd_bwd_s": median_s(step, dev, repeats)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--population", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny model, P = 2 and batch 2: checks the script, not a machine")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    population = 2 if args.smoke else args.population
    model = (ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=64) if args.smoke
             else BASELINE_MODEL)
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
              "population": population, "threads": torch.get_num_threads(), "model": model.to_dict(),
              **probe(dev, population, args.repeats, model, 2 if args.smoke else 8)}
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
