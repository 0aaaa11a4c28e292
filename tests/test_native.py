"""The C kernels (nanochat/native.py): every kernel builds and exposes its functions; a build is cached, atomic and
keyed by its source; a failed build is one line and leaves nothing; without a compiler each kernel is None with a
warning, and training gives the same losses, bit for bit, with all kernels, with none, or with any one missing."""

import ctypes
import shutil
import subprocess

import pytest
import torch

from nanochat import native
from nanochat.trainer import train_population
from tiny import mixed_population

needs_compiler = pytest.mark.skipif(native.find_compiler() is None, reason="no C compiler on this machine")

# Where each kernel is used: the module that calls native.library for it.
USERS = {"topk": "nanochat.edges", "release": "nanochat.synaptic", "abs_sums": "nanochat.abs_sums"}


@needs_compiler
@pytest.mark.parametrize("name", sorted(native.SIGNATURES))
def test_every_kernel_builds_with_its_functions(name):
    lib = native.library(name)
    assert lib is not None
    for fn in native.SIGNATURES[name]:
        assert getattr(lib, fn).restype is ctypes.c_int


def test_every_c_file_is_a_kernel_and_is_packaged():
    c_files = sorted(p.stem for p in native.source("topk").parent.glob("*.c"))
    assert c_files == sorted(native.SIGNATURES) == sorted(USERS)
    pyproject = (native.source("topk").parents[1] / "pyproject.toml").read_text()
    assert 'nanochat = ["*.c"]' in pyproject


@needs_compiler
def test_build_is_cached_atomic_and_keyed_by_the_source(tmp_path):
    src = tmp_path / "topk.c"
    shutil.copy(native.source("topk"), src)
    out = tmp_path / "cache"
    first = native.build(src, out)
    stamp = first.stat().st_mtime_ns
    assert native.build(src, out) == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in out.iterdir()] == [first.name]  # no temporary file left behind
    src.write_text(src.read_text() + "\n/* edited */\n")
    second = native.build(src, out)
    assert second != first and second.is_file()
    lib = ctypes.CDLL(str(second))
    assert hasattr(lib, "top_edges")


def test_a_failed_build_raises_one_line_and_leaves_nothing(tmp_path):
    src = tmp_path / "broken.c"
    src.write_text("int f( {\n")
    out = tmp_path / "cache"
    if native.find_compiler() is not None:
        with pytest.raises(native.BuildError, match="failed on broken.c") as err:
            native.build(src, out)
        assert "\n" not in str(err.value)
        assert not any(out.iterdir())


def test_no_compiler_is_a_build_error(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    with pytest.raises(native.BuildError, match="no C compiler"):
        native.build(native.source("release"), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", sorted(native.SIGNATURES))
def test_without_a_compiler_the_library_is_none_with_a_warning(monkeypatch, name):
    def no_compiler(*args, **kwargs):
        raise native.BuildError("no C compiler found")

    monkeypatch.setattr(native, "build", no_compiler)
    with pytest.warns(RuntimeWarning, match=f"C kernel {name}.c is not available .*no C compiler found"):
        assert native.library.__wrapped__(name) is None


def gnu_openmp_here(tmp_path) -> bool:
    """torch runs on GNU OpenMP in this process, and the compiler builds a library that links it."""
    src, out = tmp_path / "omp.c", tmp_path / "omp.so"
    src.write_text("int f(void) { int s = 0;\n#pragma omp parallel reduction(+:s)\ns += 1;\nreturn s; }\n")
    cmd = [native.find_compiler(), *native.FLAGS, native.OPENMP, str(src), "-o", str(out)]
    return (native.torch_uses_gnu_openmp() and subprocess.run(cmd, capture_output=True).returncode == 0
            and b"libgomp.so.1" in out.read_bytes())


def top_edges_of(lib, dots: torch.Tensor, threads: int):
    rows, n = dots.numel() // dots.shape[-1], dots.shape[-1]
    out = (torch.empty(rows, 8), torch.empty(rows, 8, dtype=torch.int64), torch.empty(rows, 8, dtype=torch.bool))
    assert lib.top_edges(dots.data_ptr(), rows, n, 8, 32, *(t.data_ptr() for t in out), threads) == 0
    return out


def load_topk(path):
    lib = ctypes.CDLL(str(path))
    lib.top_edges.argtypes = native.SIGNATURES["topk"]["top_edges"]
    return lib


@needs_compiler
@pytest.mark.parametrize("name", sorted(native.SIGNATURES))
def test_every_kernel_is_built_on_torchs_openmp_where_it_can_be(tmp_path, name):
    if not gnu_openmp_here(tmp_path):
        pytest.skip("torch does not run on GNU OpenMP here, or the compiler does not link it")
    assert b"libgomp.so.1" in native.build(native.source(name), tmp_path / "cache").read_bytes()


@needs_compiler
def test_topk_runs_on_torchs_openmp_threads_and_gives_the_same_edges_without(tmp_path, monkeypatch):
    """Built with -fopenmp, topk.c needs libgomp.so.1, and loaded after torch that is the runtime torch already
    uses, not a second one. Where -fopenmp fails, where it links another runtime, or where torch has no GNU OpenMP,
    the build goes on without it (threads of its own). The edges are the same bits every way, with any threads."""
    if not gnu_openmp_here(tmp_path):
        pytest.skip("torch does not run on GNU OpenMP here, or the compiler does not link it")
    src = tmp_path / "topk.c"
    shutil.copy(native.source("topk"), src)
    kernels = [load_topk(native.build(src, tmp_path / "omp"))]
    gomp = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
    assert len(gomp) == 1, f"two OpenMP runtimes loaded: {gomp}"
    for name, value in [("OPENMP", "-fno-such-option-at-all"),  # a compiler without OpenMP rejects -fopenmp
                        ("_GNU_OPENMP", b"libomp-of-another-kind.so"),  # it links a runtime torch does not use
                        ("torch_uses_gnu_openmp", lambda: False)]:  # torch has no GNU OpenMP here
        with monkeypatch.context() as patch:
            patch.setattr(native, name, value)
            without = native.build(src, tmp_path / name)
        assert b"libgomp" not in without.read_bytes(), name
        kernels.append(load_topk(without))

    g = torch.Generator().manual_seed(3)
    dots = torch.randn(16 * 32, 160, generator=g).round(decimals=1)  # ties
    dots[5, 3] = float("nan")
    dots[40, :] = 0.0
    want = top_edges_of(kernels[0], dots, 1)
    for kernel in kernels:
        for threads in (1, 2, 3, 9):
            got = top_edges_of(kernel, dots, threads)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (kernel, threads)


@needs_compiler
def test_training_is_the_same_with_or_without_each_kernel(monkeypatch, corpus, tiny_model, tiny_train, tiny_synaptic):
    members = [m for i, m in enumerate(mixed_population(tiny_synaptic)) if i in (0, 1, 4)]  # two stochastic
    assert any(m.synaptic.stochastic_train_frac > 0 for m in members)
    with_kernels = [m.losses for m in train_population(members, tiny_model, tiny_train, corpus).members]
    for missing in [*sorted(USERS), "all"]:
        with monkeypatch.context() as patch:
            for name, module in USERS.items():
                if missing in (name, "all"):
                    real = native.library
                    patch.setattr(f"{module}.library", lambda n, skip=name, real=real: None if n == skip else real(n))
            without = [m.losses for m in train_population(members, tiny_model, tiny_train, corpus).members]
        assert without == with_kernels, f"losses differ without {missing}"
