"""Code generation for aggregate kernels, without torch: the compiler's kernel
pass renders and caches the source at compile time; `ttsc.kernels.aggregate`
loads and runs it."""

from __future__ import annotations

import hashlib
import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ttsc.common import paths
from ttsc.common.errors import UserError
from ttsc.kernels.aggregate_template import TEMPLATE, UNWEIGHTED_LINE, WEIGHTED_LINE

_MAX_UNROLLED_SAMPLES = 64  # beyond this the sample loop stays a runtime loop


@dataclass(frozen=True)
class AggregateSpec:
    """What the compiler knows about one aggregate chain.

    weighted:    vote(..., weights=scores) rather than a plain count.
    num_samples: answers per input when the IR fixes it (generate n=16), which
                 the kernel bakes in; None when it is only known at run time.
    """

    weighted: bool = False
    num_samples: int | None = None

    def __post_init__(self) -> None:
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")

    @property
    def chain(self) -> str:
        return f"extract -> {'weighted vote' if self.weighted else 'vote'} -> argmax"


def render_source(spec: AggregateSpec) -> str:
    """Triton source of the vote kernel for `spec` (a template filled from the IR facts)."""
    n = spec.num_samples
    if n is None:
        num_samples, loop = "num_samples", "range(0, num_samples)"
    elif n <= _MAX_UNROLLED_SAMPLES:
        num_samples, loop = str(n), f"tl.static_range({n})"
    else:
        num_samples, loop = str(n), f"range(0, {n})"
    return string.Template(TEMPLATE).substitute(
        chain=spec.chain, spec=repr(spec), num_samples=num_samples, sample_loop=loop,
        weight_of_sample=WEIGHTED_LINE if spec.weighted else UNWEIGHTED_LINE)


def default_cache_dir() -> Path:
    return paths.room("kernels")


def write_source(spec: AggregateSpec, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Render the kernel for `spec` into `<cache>/<content-hash>.py`; (path, hash)."""
    source = render_source(spec)
    content_hash = hashlib.sha256(source.encode()).hexdigest()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{content_hash[:32]}.py"
    _write_if_changed(path, source)
    return path, content_hash


def _write_if_changed(path: Path, source: str) -> None:
    try:
        if path.is_file() and path.read_text() == source:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent process never imports half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write the generated kernel to {path}: {e.strerror or e}",
                        hint="set TTSC_CACHE_DIR to a writable directory") from e
