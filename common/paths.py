"""The ttsc cache directory: one root, one folder per kind of thing kept there.

    $TTSC_CACHE_DIR            (default $XDG_CACHE_HOME/ttsc or ~/.cache/ttsc)
        calls.db               the call cache (SQLite)
        calibrations/          `ttsc calibrate` fits, one per strategy file and content
        gguf/                  GGUF models converted for transformers
        weights/               safetensors of loaded models, keyed by the model file's hash
        kernels/               generated Triton sources and the C++ CPU kernels
        models/                tokenizers and configs the compiler counts tokens with
        profiles/              measured engine profiles (`ttsc profile`)

`TTSC_CACHE_DIR=off` keeps nothing: `cache_root()` is None, what is only
worth keeping is not made (`cache_dir` is None), and what must live somewhere
while the process runs goes to one temporary folder removed at exit
(`room`).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

ENV = "TTSC_CACHE_DIR"
CALL_CACHE_ENV = "TTSC_CALL_CACHE"
OFF = "off"


def cache_root() -> Path | None:
    """The cache root, or None when caching is off."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() == OFF:
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "ttsc"


def cache_dir(room: str) -> Path | None:
    """`<root>/<room>`, or None when caching is off (not created here)."""
    root = cache_root()
    return None if root is None else root / room


def room(name: str) -> Path:
    """`<root>/<name>`, or the same room in this process's scratch folder when
    caching is off (not created here)."""
    root = cache_root()
    return (root if root is not None else _scratch()) / name


@functools.cache
def _scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="ttsc-scratch-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def default_call_cache() -> Path | None:
    """Where `ttsc run` and `ttsc eval` keep the call cache by default:
    $TTSC_CALL_CACHE if set (`off`: none), else calls.db under the root."""
    env = os.environ.get(CALL_CACHE_ENV, "").strip()
    if env:
        return None if env.lower() == OFF else Path(env).expanduser()
    root = cache_root()
    return None if root is None else root / "calls.db"
