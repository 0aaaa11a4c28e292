"""Lazy package exports (PEP 562): a package's public names are imported on first use, not with the package.

Both packages use it so that their command lines can install Ctrl-C / SIGTERM handling before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for `package`, whose name `n` lives in its submodule `exports[n]`."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value  # the next lookup finds it directly
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
