"""Keep large freed CPU blocks in the process heap so that training steps stop paying for fresh pages.

glibc serves every allocation above 32 MB with its own mmap() and unmaps it on free. A population's activations
((P, B*T, 4C) floats: 32 MB at P = 8 for the baseline model) are allocated and freed every step, so each step
page-faults and zero-fills them anew: a fresh 32 MB multiply took 16 ms where a reused buffer took 2.4 ms on the
2-core CI machine, and a P = 8 training step was 10-25% slower. `keep_freed_memory()` sets mallopt(M_MMAP_MAX, 0)
and a high M_TRIM_THRESHOLD (the same effect as the MALLOC_MMAP_MAX_=0 / MALLOC_TRIM_THRESHOLD_ environment
variables, which only work when set before the process starts): freed blocks stay in the heap and the next step
reuses them. The price is that the process keeps its peak heap (it does not hand memory back between evaluations).

It is a process-wide allocator setting, so it is applied only where CPU training runs (`train_population` on a
CPU device), is idempotent, and is a no-op where the C library has no mallopt (macOS, musl returns failure).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int; 2 GiB of free heap top before glibc gives any back


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed large blocks instead of unmapping them. True if the C library accepted it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
