"""Atomic file writes shared by every artifact writer (nanochat summaries and the pilot's run directory).

A write goes to a temporary sibling, is fsynced, then renamed over the target: a reader (or a killed run) sees the
old file or the new one, never half of one. JSON has no NaN/Inf, so non-finite floats are written as null.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """The temp file is opened with mode 0o666 minus the umask (like any new file) rather than through mkstemp,
    whose 0o600 would leave artifacts unreadable to the rest of a team."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats (anywhere in nested dicts/lists) by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
