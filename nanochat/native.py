"""Compile nanochat's one C file (topk.c) into a shared library once per machine, and load it with ctypes.

    lib = top_edges_library()      # None, with one warning, where no C compiler works; callers then use torch

The library is cached under $XDG_CACHE_HOME/cmaes-inproc (~/.cache/cmaes-inproc), named by a hash of the source
and the flags, so an edited source is rebuilt and every process after the first (subprocess evaluations, Ray
actors) only loads it. A build writes a temporary file and renames it into place, so processes building at the same
time cannot leave half a library. The compiler is $CC, else cc, gcc or clang from PATH; building takes well under
a second. No Python or torch headers are involved: the kernel reads and writes raw buffers passed by address.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("topk.c")
FLAGS = ("-O3", "-shared", "-fPIC", "-pthread")


class BuildError(RuntimeError):
    """The C source could not be compiled here (no compiler, or the compiler failed)."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "cmaes-inproc"


def find_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(source: Path, out_dir: Path, compiler: str | None = None) -> Path:
    """The shared library of `source` in out_dir, compiled now unless a library of the same source and flags is
    already there. Raises BuildError when it cannot be compiled."""
    compiler = compiler or find_compiler()
    if not compiler:
        raise BuildError("no C compiler found (set CC, or install cc/gcc/clang)")
    digest = hashlib.sha256(source.read_bytes() + repr((FLAGS, platform.machine(), sys.platform)).encode())
    target = out_dir / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        try:
            proc = subprocess.run([compiler, *FLAGS, str(source), "-o", tmp], capture_output=True, text=True,
                                  timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BuildError(f"{compiler}: {exc}") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
            raise BuildError(f"{compiler} failed on {source.name}: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def top_edges_library() -> ctypes.CDLL | None:
    """topk.c's `top_edges`, built and loaded once per process; None (and one RuntimeWarning) when it cannot be."""
    try:
        lib = ctypes.CDLL(str(build(SOURCE, cache_dir())))
    except (BuildError, OSError) as exc:
        warnings.warn(f"nanochat: the C top-k kernel is not available ({exc}); the CPU release edges are computed "
                      "with torch instead (the same edges, slower)", RuntimeWarning, stacklevel=2)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.top_edges.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, ctypes.c_int]
    lib.top_edges.restype = ctypes.c_int
    return lib
