"""Atomic file writes shared by every artifact writer (nanochat summaries and the pilot's run directory).

A write goes to a temporary sibling, is fsynced, then renamed over the target: a reader (or a killed run) sees the
old file or the new one, never half of one. JSON has no NaN/Inf, so non-finite floats are written as null.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
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


def check_dir_name(field: str, name: Any) -> str:
    """`name` if it is a plain directory name (one path component: not empty, not "." or "..", no "/" or "\\",
    no NUL, no surrounding spaces); else a ConfigError about `field`."""
    from .config import ConfigError

    if (not isinstance(name, str) or not name or name in (".", "..") or name != name.strip()
            or any(c in name for c in "/\\\0")):
        raise ConfigError.about(field, f"must be a plain directory name, got {name!r}")
    return name


def check_writable_dir(field: str, path: str | Path) -> None:
    """Refuse (ConfigError about `field`) a directory that is not one, cannot be created, or cannot be written, by
    trying a real write in it or in its nearest existing ancestor (os.access says yes to root on read-only mounts).
    Leaves nothing behind and creates no directory."""
    from .config import ConfigError

    path = Path(path)
    if "\0" in str(path):
        raise ConfigError.about(field, f"{str(path)!r} is not a usable path: it contains a NUL byte")
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError.about(field, f"{path} exists and is not a directory")
        existing = path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError.about(field, f"{path} cannot be created: {existing} is not a directory")
        fd, tmp = tempfile.mkstemp(prefix=".write_test.", dir=existing)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError.about(field, f"{path} is not writable: {exc.strerror or exc}") from None
