"""Engine profiles: how fast one engine runs one model on one device.

A profile is an effective roofline: a forward pass takes
flops / peak_flops + bytes / bandwidth + overhead_s. `ttsc profile MODEL`
fits one from measured prefill and decode times (`new_profile`,
`fit_roofline`) and stores it as JSON under the cache's profiles/ folder;
`load_profile` returns the newest matching one, or the documented defaults
of the device (`DEFAULT_DEVICES`) when none was measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ttsc.common.specs import spec_slug
from ttsc.compiler.model_facts import cache_dir, canonical_spec

if TYPE_CHECKING:
    from ttsc.compiler.cost import CallCost


@dataclass(frozen=True)
class DeviceDefaults:
    peak_flops: float  # effective FLOP/s a forward pass reaches
    bandwidth: float  # effective bytes/s
    overhead_s: float  # fixed time per forward pass (launches, Python, sampling)
    dtype_bytes: int


# Documented defaults when no profile was measured. CPU: fp32 weights, a few
# cores (a 2-core laptop VM measures about this). CUDA: bf16 on a
# datacenter GPU, well below peak, as small batches reach.
DEFAULT_DEVICES: dict[str, DeviceDefaults] = {
    "cpu": DeviceDefaults(peak_flops=5e10, bandwidth=1e10, overhead_s=0.02, dtype_bytes=4),
    "cuda": DeviceDefaults(peak_flops=2e14, bandwidth=1.5e12, overhead_s=0.01, dtype_bytes=2),
}
DEFAULT_DEVICE = "cpu"


@dataclass
class EngineProfile:
    """How fast one engine runs one model on one device.

    `peak_flops`, `bandwidth` and `overhead_s` are an effective roofline:
    a forward pass takes flops/peak_flops + bytes/bandwidth + overhead_s.
    `measurements` are the timings they were fitted from (empty for defaults).
    """

    model: str
    engine: str
    device: str
    dtype_bytes: int
    peak_flops: float
    bandwidth: float
    overhead_s: float
    measured: bool = False
    created: float = 0.0
    measurements: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None

    @property
    def intensity(self) -> float:
        """FLOPs per byte at which compute and traffic cost the same time."""
        return self.peak_flops / self.bandwidth

    def pass_seconds(self, flops: float, bytes_moved: float, passes: int = 1) -> float:
        return flops / self.peak_flops + bytes_moved / self.bandwidth + passes * self.overhead_s

    def call_seconds(self, cost: CallCost) -> float:
        """Wall time of one call alone on the engine (prefill pass + decode steps)."""
        passes = (1 if cost.prefill_tokens else 0) + cost.decode_steps
        return self.pass_seconds(cost.flops, cost.bytes, passes)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path")
        return json.dumps(d, indent=2)


def default_profile(model: str, device: str = DEFAULT_DEVICE, engine: str = "default") -> EngineProfile:
    d = DEFAULT_DEVICES[device if device in DEFAULT_DEVICES else DEFAULT_DEVICE]
    return EngineProfile(canonical_spec(model), engine, device, d.dtype_bytes, d.peak_flops,
                         d.bandwidth, d.overhead_s)


def profile_dir() -> Path:
    return cache_dir() / "profiles"


def profile_path(model: str, engine: str, device: str) -> Path:
    return profile_dir() / f"{spec_slug(model)}--{engine}--{device}.json"


def save_profile(profile: EngineProfile) -> Path:
    path = profile_path(profile.model, profile.engine, profile.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(profile.to_json())
    tmp.replace(path)
    profile.path = str(path)
    return path


_profile_memo: dict[tuple, EngineProfile] = {}


def load_profile(model: str, engine: str | None = None, device: str | None = None) -> EngineProfile:
    """The newest measured profile for `model` (matching engine/device when
    given), else the documented default for the device."""
    directory = profile_dir()
    try:
        stamp = directory.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (canonical_spec(model), engine, device, str(directory), stamp)
    if key not in _profile_memo:
        _profile_memo[key] = _find_profile(model, engine, device, directory)
    return _profile_memo[key]


def _find_profile(model: str, engine: str | None, device: str | None,
                  directory: Path) -> EngineProfile:
    found: list[EngineProfile] = []
    if directory.is_dir():
        for path in directory.glob(f"{spec_slug(model)}--*.json"):
            try:
                d = json.loads(path.read_text())
                prof = EngineProfile(**{k: v for k, v in d.items() if k != "path"}, path=str(path))
            except (ValueError, TypeError, OSError):
                continue
            if (engine is None or prof.engine == engine) and (device is None or prof.device == device):
                found.append(prof)
    if found:
        return max(found, key=lambda p: p.created)
    return default_profile(model, device or DEFAULT_DEVICE)


def fit_roofline(points: Iterable[tuple[float, float, int, float]]) -> tuple[float, float, float]:
    """(peak_flops, bandwidth, overhead_s) fitted to (flops, bytes, passes, seconds)
    points by non-negative least squares on seconds = f/P + b/B + passes*o."""
    import numpy as np

    rows = list(points)
    if len(rows) < 3:
        raise ValueError("need at least 3 timings to fit a roofline")
    a = np.array([[f, b, p] for f, b, p, _ in rows], dtype=float)
    y = np.array([s for *_, s in rows], dtype=float)
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    a_scaled = a / scale
    # Relative error matters (timings span orders of magnitude): weight by 1/seconds.
    w = 1.0 / np.maximum(y, 1e-9)
    best: tuple[float, np.ndarray] | None = None
    for mask in range(1, 8):  # every non-empty set of active coefficients
        cols = [j for j in range(3) if mask >> j & 1]
        coef, *_ = np.linalg.lstsq(a_scaled[:, cols] * w[:, None], y * w, rcond=None)
        if (coef < 0).any():
            continue
        full = np.zeros(3)
        full[cols] = coef
        err = float((((a_scaled @ full) - y) * w) ** 2 @ np.ones(len(y)))
        if best is None or err < best[0]:
            best = (err, full)
    assert best is not None
    inv_peak, inv_bw, overhead = best[1] / scale
    # A coefficient fitted to zero means that term never showed: take it as free.
    peak = 1.0 / inv_peak if inv_peak > 0 else 1e18
    bandwidth = 1.0 / inv_bw if inv_bw > 0 else 1e18
    return float(peak), float(bandwidth), float(overhead)


def new_profile(model: str, engine: str, device: str, dtype_bytes: int,
                measurements: list[dict[str, Any]]) -> EngineProfile:
    """A measured profile: the roofline fitted to `measurements`, each a dict
    with flops, bytes, passes and seconds."""
    peak, bw, overhead = fit_roofline(
        (m["flops"], m["bytes"], m["passes"], m["seconds"]) for m in measurements)
    return EngineProfile(canonical_spec(model), engine, device, dtype_bytes, peak, bw, overhead,
                         measured=True, created=time.time(), measurements=list(measurements))
