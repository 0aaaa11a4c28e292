"""Training text as byte tokens: the embedded default corpus, user corpora, and the shared batch stream.

The default corpus needs no download: it is the running Python's standard-library source (top-level `*.py` files of
the stdlib directory, in sorted order, up to `DEFAULT_CORPUS_BYTES`). User corpora are a text file, a directory of
`.txt` files, or a directory of `.parquet` shards with a `text` column. Documents are joined with a blank line and
encoded as UTF-8 bytes (vocab 256). The last `VAL_FRACTION` of the bytes is the validation split.

Batches depend only on `data_seed` and the step, never on the eval seed or the population, so every member of a
population (and every candidate of a pilot) sees exactly the same data.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

DEFAULT_CORPUS_BYTES = 2_000_000
VAL_FRACTION = 0.1
_DOC_SEPARATOR = b"\n\n"


@dataclass(frozen=True)
class Corpus:
    """Byte tokens split into train/val, with where they came from and a content hash."""

    name: str  # "stdlib:<dir>" or the user path
    kind: str  # "stdlib" | "text" | "txt-dir" | "parquet-dir"
    train: torch.Tensor  # uint8 tokens
    val: torch.Tensor
    sha256: str  # hash of all bytes (train + val), the corpus identity recorded in every summary
    n_documents: int

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "sha256": self.sha256,
            "n_documents": self.n_documents,
            "train_tokens": int(self.train.numel()),
            "val_tokens": int(self.val.numel()),
            "tokenizer": "bytes (utf-8), vocab 256",
        }


def load_corpus(path: str | Path | None = None, max_bytes: int | None = None) -> Corpus:
    """Load the default corpus (path None) or a user corpus; raise ConfigError (field "data") naming any problem."""
    if path is None:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
        docs = _read_until(files, max_bytes or DEFAULT_CORPUS_BYTES)
        return _make_corpus(f"stdlib:{stdlib}", "stdlib", docs)
    path = Path(path)
    try:
        return _load_user_corpus(path, max_bytes)
    except ConfigError:
        raise
    except OSError as exc:  # unreadable file, a directory named *.txt, a name too long, ...
        where = f"{exc.filename}: " if exc.filename else ""
        raise ConfigError.about("data", f"cannot be read: {where}{exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ConfigError.about("data", f"is not a usable path: {path!r} ({exc})") from None


def _load_user_corpus(path: Path, max_bytes: int | None) -> Corpus:
    if not path.exists():
        raise ConfigError.about("data", f"path does not exist: {path}")
    if path.is_file():
        if path.suffix == ".parquet":
            return _make_corpus(str(path), "parquet-dir", _read_parquet([path]), max_bytes)
        return _make_corpus(str(path), "text", [path.read_bytes()], max_bytes)
    if not path.is_dir():
        raise ConfigError.about("data", f"is neither a file nor a directory: {path}")
    parquet = sorted(path.glob("*.parquet"))
    if parquet:
        return _make_corpus(str(path), "parquet-dir", _read_parquet(parquet), max_bytes)
    texts = sorted(path.glob("*.txt"))
    if texts:
        return _make_corpus(str(path), "txt-dir", [p.read_bytes() for p in texts], max_bytes)
    raise ConfigError.about("data", f"directory {path} has no .parquet or .txt files")


def _read_until(files: list[Path], max_bytes: int) -> list[bytes]:
    docs, total = [], 0
    for p in files:
        if total >= max_bytes:
            break
        data = p.read_bytes()
        docs.append(data)
        total += len(data) + len(_DOC_SEPARATOR)
    return docs


def _read_parquet(shards: list[Path]) -> list[bytes]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("reading parquet shards needs pyarrow: pip install 'cmaes-inproc[parquet]'") from None
    docs: list[bytes] = []
    for shard in shards:
        try:
            table = pq.read_table(shard, columns=["text"])
        except Exception as exc:  # pyarrow raises several types; all mean "not a usable shard"
            raise ConfigError.about("data", f"cannot read text column of parquet shard {shard}: {exc}".splitlines()[0]) from None
        for value in table.column("text").to_pylist():
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise ConfigError.about("data", f"parquet shard {shard}: the text column must hold strings, found "
                                                f"{type(value).__name__} {value!r:.40}")
            docs.append(value.encode("utf-8"))
    return docs


def _make_corpus(name: str, kind: str, docs: list[bytes], max_bytes: int | None = None) -> Corpus:
    blob = _DOC_SEPARATOR.join(docs)
    if max_bytes is not None:
        blob = blob[:max_bytes]
    if not blob.strip():
        raise ConfigError(f"corpus {name} is empty")
    tokens = torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy())
    n_val = max(1, int(len(tokens) * VAL_FRACTION))
    return Corpus(
        name=name,
        kind=kind,
        train=tokens[:-n_val],
        val=tokens[-n_val:],
        sha256=hashlib.sha256(blob).hexdigest(),
        n_documents=len(docs),
    )


def check_corpus_fits(corpus: Corpus, sequence_len: int) -> None:
    """Both splits must hold at least one window of `sequence_len + 1` tokens (inputs plus the shifted targets);
    otherwise a ConfigError about "sequence_len" saying how many tokens the split has and how many are needed.
    Cheap: call it before writing anything."""
    need = sequence_len + 1
    for split, tokens in (("training corpus", corpus.train), ("validation split", corpus.val)):
        n = int(tokens.numel())
        if n < need:
            raise ConfigError.about(
                "sequence_len",
                f"{sequence_len} is longer than the {split} ({n} tokens) of {corpus.name} allows: one window needs "
                f"{need} tokens; use a shorter sequence or a larger corpus",
            )


class BatchStream:
    """Deterministic random windows of one split (train, or val for the held-out loss): batch k depends only on
    (data_seed, k), so every member and every candidate sees the same batches."""

    def __init__(self, corpus: Corpus, batch_size: int, sequence_len: int, data_seed: int, device: torch.device,
                 split: str = "train"):
        check_corpus_fits(corpus, sequence_len)
        tokens = corpus.val if split == "val" else corpus.train
        n = tokens.numel()
        self.tokens = tokens.to(torch.long)
        self.batch_size = batch_size
        self.sequence_len = sequence_len
        self.device = device
        self._generator = torch.Generator().manual_seed(data_seed)
        self._span = n - sequence_len  # valid window starts: 0 .. n - T - 1

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (batch_size, sequence_len) on the device."""
        starts = torch.randint(0, self._span, (self.batch_size,), generator=self._generator)
        offsets = starts[:, None] + torch.arange(self.sequence_len + 1)[None, :]
        window = self.tokens[offsets]
        return window[:, :-1].to(self.device), window[:, 1:].to(self.device)
