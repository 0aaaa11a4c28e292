"""What runs inside a Ray actor: one warm process that trains shards of a generation, and writes nothing.

The actor is built once per run from what the driver ships it (model and train configs, scoring, and the corpus
as bytes: the embedded corpus is the local Python's standard library, which differs between machines, so a worker
must never load its own). It trains each shard through `BatchedEvaluator` (the same code, the same out-of-memory
split as `--batched`) but keeps every summary in memory and returns it: the driver writes the files, so no shared
filesystem is needed and a dead worker never leaves half a file.

`fingerprint()` is what the handshake compares between the driver and every actor: what could make the same
member train differently on another machine (corpus, package sources, torch, device kind).

This module does not import Ray at import time; the driver (`ray_evaluator.py`) wraps `ShardWorker` with
`ray.remote` when a Ray run starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nanochat.config import ModelConfig, TrainConfig
from nanochat.data import Corpus

from .evaluators import BatchedEvaluator, EvalOutcome, EvalRequest, Scoring


@dataclass(frozen=True)
class CorpusPayload:
    """A corpus as plain bytes (train then validation split) plus how the driver described it."""

    name: str
    kind: str
    train: bytes
    val: bytes
    sha256: str  # the driver's hash; the actor recomputes its own from the bytes it received
    n_documents: int

    @classmethod
    def of(cls, corpus: Corpus) -> "CorpusPayload":
        return cls(corpus.name, corpus.kind, corpus.train.numpy().tobytes(), corpus.val.numpy().tobytes(),
                   corpus.sha256, corpus.n_documents)

    def to_corpus(self) -> Corpus:
        """The corpus, with its hash computed from the received bytes (so a corrupted or different corpus shows)."""
        def tokens(data: bytes) -> torch.Tensor:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)

        sha = hashlib.sha256(self.train + self.val).hexdigest()
        return Corpus(self.name, self.kind, tokens(self.train), tokens(self.val), sha, self.n_documents)


def source_hash() -> str:
    """sha256 over the .py files of cmaes_inproc/ and nanochat/ (relative path and bytes, in sorted order)."""
    import nanochat

    root = Path(nanochat.__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("cmaes_inproc", "nanochat"):
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cmaes-inproc")
    except PackageNotFoundError:  # run from a checkout without installing: the sources hash still pins it
        return "not installed"


def device_kind(device: str) -> str:
    """'cpu', or the CUDA device's name: members must train on the same kind of device to give the same scores."""
    from nanochat.trainer import resolve_device

    dev = resolve_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type


def fingerprint(corpus_sha256: str, device: str) -> dict[str, str]:
    """What the handshake compares; see the module docstring."""
    return {"corpus sha256": corpus_sha256, "package version": package_version(), "package sources": source_hash(),
            "torch": torch.__version__, "device": device_kind(device)}


class _InMemoryBatched(BatchedEvaluator):
    """`BatchedEvaluator` whose summaries stay in memory, keyed by request key, instead of being written."""

    name = "ray"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.summaries: dict[str, dict] = {}

    def _summarize(self, request, member, result, population, meta):
        from nanochat.summary import build_summary

        self.summaries[request.key] = build_summary(member, result, population, self.model_cfg, self.train_cfg,
                                                    self.corpus, meta)
        return request.out_dir / "summary.json"  # the path the driver will write it to


@dataclass(frozen=True)
class ShardResult:
    """What an actor sends back for one member: its outcome and its summary (None when training never ran)."""

    outcome: EvalOutcome
    summary: dict | None


class ShardWorker:
    """The body of a Ray actor (see the module docstring). Its methods run in the actor's process."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, corpus: CorpusPayload, device: str,
                 scoring: Scoring, max_batch: int, run_meta: dict):
        import ray

        context = ray.get_runtime_context()
        self.where = {"ray_node": context.get_node_id(), "ray_actor": context.get_actor_id()}
        self.device = device
        self.corpus = corpus.to_corpus()
        self.batched = _InMemoryBatched(model_cfg, train_cfg, self.corpus, device, scoring, max_batch,
                                        run_meta={**run_meta, **self.where})

    def handshake(self) -> dict[str, str]:
        """This actor's fingerprint plus where it runs (node and actor id)."""
        return {**fingerprint(self.corpus.sha256, self.device), **self.where}

    def train(self, shard: Sequence[EvalRequest]) -> list[ShardResult]:
        """Train one shard as batched populations; per member its outcome and in-memory summary."""
        self.batched.summaries.clear()
        outcomes = self.batched.evaluate(list(shard))
        return [ShardResult(o, self.batched.summaries.get(o.request.key)) for o in outcomes]
