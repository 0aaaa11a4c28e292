"""The C kernels (nanochat/native.py): every kernel builds and exposes its functions; a build is cached, atomic and
keyed by its source; a failed build is one line and leaves nothing; without a compiler each kernel is None with a
warning, and training gives the same losses, bit for bit, with all kernels, with none, or with any one missing."""

import ctypes
import shutil

import pytest

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
