"""Compile nanochat's C kernels into shared libraries once per machine, and load them with ctypes.

    lib = library("topk")      # topk.c, loaded; None (with one warning) where no C compiler works: callers use torch

The kernels are topk.c (each query's release edges), release.c (the release step's arithmetic) and abs_sums.c (the
Hebbian statistic's row sums); each has a torch path that gives the same bits where it cannot be built. A library
is cached under $XDG_CACHE_HOME/cmaes-inproc (~/.cache/cmaes-inproc), named by a hash of the source and the flags,
so an edited source is rebuilt and every process after the first (subprocess evaluations, Ray actors) only loads
it. A build writes a temporary file and renames it into place, so processes building at the same time cannot leave
half a library. The compiler is $CC, else cc, gcc or clang from PATH; building takes well under a second. No Python
or torch headers are involved: the kernels read and write raw buffers passed by address.

The flags keep torch's arithmetic: -ffp-contract=off keeps every multiply and add a separate IEEE operation (no
fused multiply-add), and no -ffast-math option that reorders or approximates is used. -fno-trapping-math only
declares that floating-point exception flags are not read, which lets the compiler vectorise selects; no value
changes. A source with an OpenMP pragma (all three share their rows out over threads) is built with -fopenmp where
torch runs on GNU OpenMP (its Linux wheels) and the compiler links that: the library then asks for libgomp.so.1,
which resolves to the runtime torch has already loaded, so the kernels run on torch's own CPU threads, which spin
between torch ops waiting for work, rather than on more threads competing with them for the cores (topk.c's
header). Elsewhere the build goes on without the flag: topk.c then starts threads of its own, and the others run on
the calling thread.
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

_HERE = Path(__file__).parent
_I64, _PTR, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
# Each kernel: its functions' argument types (every function returns an int status, 0 for success).
SIGNATURES: dict[str, dict[str, list]] = {
    "topk": {"top_edges": [_PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _INT]},
    "release": {
        "sensor_args": [_PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _PTR, _PTR],
        "edge_release": [_PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64,
                         _I64, _I64, _PTR, _PTR, _PTR],
        "key_update": [_PTR] * 8 + [_I64, _I64, _PTR, _PTR, _I64, _I64, _I64, _PTR],
    },
    "abs_sums": {"abs_row_sums": [_PTR, _I64, _I64, _PTR]},
}
FLAGS = ("-O3", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC", "-pthread")
# Added for a source with an OpenMP pragma when torch runs on GNU OpenMP here and the build links that runtime.
OPENMP = "-fopenmp"
_GNU_OPENMP = b"libgomp.so.1"


class BuildError(RuntimeError):
    """The C source could not be compiled here (no compiler, or the compiler failed)."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "cmaes-inproc"


def find_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def torch_uses_gnu_openmp() -> bool:
    """Whether GNU OpenMP (libgomp) is loaded in this process, as torch's Linux wheels load it for their CPU threads
    (read from /proc/self/maps; False where there is none to read)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


def build(source: Path, out_dir: Path, compiler: str | None = None) -> Path:
    """The shared library of `source` in out_dir, compiled now unless a library of the same source and flags is
    already there. Raises BuildError when it cannot be compiled.

    A source with an OpenMP pragma is built with OPENMP when torch runs on GNU OpenMP here, and kept only if the
    library asks for libgomp.so.1 (then it shares torch's threads); otherwise (no OpenMP in the compiler, or another
    runtime such as clang's libomp, whose threads would spin beside torch's) it is built without."""
    compiler = compiler or find_compiler()
    if not compiler:
        raise BuildError("no C compiler found (set CC, or install cc/gcc/clang)")
    code = source.read_bytes()
    openmp = b"#pragma omp" in code and torch_uses_gnu_openmp()
    digest = hashlib.sha256(code + repr((FLAGS, openmp and OPENMP, platform.machine(), sys.platform)).encode())
    target = out_dir / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        for flags in [(*FLAGS, OPENMP), FLAGS] if openmp else [FLAGS]:  # the first that builds what it should
            try:
                proc = subprocess.run([compiler, *flags, str(source), "-o", tmp], capture_output=True, text=True,
                                      timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                raise BuildError(f"{compiler}: {exc}") from None
            if proc.returncode == 0 and (OPENMP not in flags or _GNU_OPENMP in Path(tmp).read_bytes()):
                break
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
            raise BuildError(f"{compiler} failed on {source.name}: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def source(name: str) -> Path:
    return _HERE / f"{name}.c"


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The kernel `name` (a key of SIGNATURES), built and loaded once per process; None, with one RuntimeWarning,
    when it cannot be (the caller then computes the same numbers with torch)."""
    try:
        lib = ctypes.CDLL(str(build(source(name), cache_dir())))
    except (BuildError, OSError) as exc:
        warnings.warn(f"nanochat: the C kernel {name}.c is not available ({exc}); its CPU work is done with torch "
                      "instead (the same numbers, slower)", RuntimeWarning, stacklevel=2)
        return None
    for fn, argtypes in SIGNATURES[name].items():
        getattr(lib, fn).argtypes = argtypes
        getattr(lib, fn).restype = ctypes.c_int
    return lib
