"""Where the C++ CPU kernels are built: one build per source content, shared by installs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ttsc.kernels import cpu_ops


@pytest.fixture()
def cache_root(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_build_is_keyed_by_content_not_path(tmp_path: Path, cache_root: Path) -> None:
    # Two installs of the same code: the same source at two paths.
    a = tmp_path / "install-a" / "cpu_ops.cpp"
    b = tmp_path / "install-b" / "cpu_ops.cpp"
    for copy in (a, b):
        copy.parent.mkdir()
        shutil.copyfile(cpu_ops.SOURCE, copy)
    assert cpu_ops.build_dir(a) == cpu_ops.build_dir(b)
    assert cpu_ops.build_dir(a).parent == cache_root / "kernels"
    # Another version of the source: another build, the first one left alone.
    b.write_text(b.read_text() + "\n// changed\n")
    assert cpu_ops.build_dir(a) != cpu_ops.build_dir(b)
    assert cpu_ops.build_key(a) == cpu_ops.build_key(cpu_ops.SOURCE)


TINY_SOURCE = """
#include <torch/extension.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""


@pytest.mark.slow
def test_one_build_serves_every_install_and_says_so_once(tmp_path: Path, cache_root: Path, capfd) -> None:
    """Compiles a tiny extension (about 20 s): the first load builds and says so on
    stderr; a second install of the same source loads that build, silently."""
    a = tmp_path / "install-a" / "ops.cpp"
    b = tmp_path / "install-b" / "ops.cpp"
    for copy in (a, b):
        copy.parent.mkdir()
        copy.write_text(TINY_SOURCE)
    first = cpu_ops._load_or_build(a)
    assert first.answer() == 42
    err = capfd.readouterr().err
    assert "building the C++ CPU kernels (once per machine" in err and "CPU kernels built in" in err
    built = sorted(p.name for p in cpu_ops.build_dir(a).iterdir())
    second = cpu_ops._load_or_build(b)
    assert second.answer() == 42 and capfd.readouterr().err == ""
    assert sorted(p.name for p in cpu_ops.build_dir(b).iterdir()) == built  # nothing rebuilt
