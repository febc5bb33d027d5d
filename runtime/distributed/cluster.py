"""Connecting to Ray, and what every actor of ours is given.

`ray_session(address)`: no address starts a local Ray instance, or joins the
one `ray start --head` left running on this machine (or RAY_ADDRESS names);
an address ("HOST:PORT", "ray://HOST:PORT") joins that cluster. A local
instance is kept small: this machine's CPUs, no dashboard, a 128 MiB object
store (our results are small; Ray keeps them in the driver's memory anyway).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ttsc.common.errors import UserError

OBJECT_STORE_BYTES = 128 * 1024 * 1024  # Ray's minimum is 75 MiB
# Environment an actor needs to find what the driver finds: ttsc's cache
# directory and call cache, the Hugging Face cache, vLLM's settings.
FORWARDED_ENV = ("TTSC_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "VLLM_", "CUDA_VISIBLE_DEVICES")
INSTALL_HINT = 'pip install "ttsc[ray]" (bash scripts/install.sh installs it)'


def import_ray() -> Any:
    try:
        import ray  # noqa: PLC0415 - optional extra, imported only for --ray
    except ImportError:
        raise UserError("--ray needs the `ray` package, which is not installed",
                        hint=INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    started_here: bool  # a local instance this process started (and stops)
    cpus: float
    gpus: float
    nodes: int

    def actors(self, cpus_per_actor: float, gpus_per_actor: float) -> int:
        """How many actors of this size the cluster holds at once (at least one);
        a UserError when it has no GPU for a GPU actor."""
        if gpus_per_actor > 0:
            if self.gpus < gpus_per_actor:
                raise UserError("this run puts each Ray worker on a GPU, and the Ray cluster "
                                "has none", hint="join a cluster with GPUs (--ray HOST:PORT)")
            return max(1, int(self.gpus // gpus_per_actor))
        return max(1, int(self.cpus // max(cpus_per_actor, 1e-9)))

    def describe(self) -> str:
        how = "started a local Ray instance" if self.started_here else f"joined Ray at {self.address}"
        return (f"ray: {how} ({self.nodes} node(s), {self.cpus:g} CPUs"
                + (f", {self.gpus:g} GPUs" if self.gpus else "") + ")")


def connect(address: str | None = None) -> ClusterInfo:
    """Connect this process to Ray (see the module docstring); a process
    already connected stays on its cluster."""
    ray = import_ray()
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = False
    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"cannot reach the Ray cluster at {address}: {e}",
                                hint="start one with `ray start --head`, or drop the address to "
                                     "start a local instance") from None
        else:
            left = ray_start_address()
            try:  # an instance `ray start` left on this machine
                if left is None:
                    raise ConnectionError("no `ray start` instance")
                ray.init(address=left, **quiet)
            except ConnectionError:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         object_store_memory=OBJECT_STORE_BYTES, **quiet)
                started = True
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    context = ray.get_runtime_context()
    where = getattr(context, "gcs_address", None) or address or "local"
    return ClusterInfo(str(where), started, float(resources.get("CPU", 0)),
                       float(resources.get("GPU", 0)), nodes)


def ray_start_address() -> str | None:
    """The address of the instance the last `ray start` on this machine left
    (Ray's own record of it), or None. Not Ray's "auto", which also joins any
    instance another process started for itself with `ray.init()` (another
    user's test run, say): its workers run that process's Python environment,
    not ours."""
    try:
        from ray._private.utils import read_ray_address  # noqa: PLC0415 - Ray's record of `ray start`
    except ImportError:
        return None
    return read_ray_address() or None


@contextlib.contextmanager
def ray_session(address: str | None = None,
                log: Callable[[str], None] | None = None) -> Iterator[ClusterInfo]:
    """Connected for the block; disconnects at the end (stopping a local
    instance it started) unless this process was connected before."""
    ray = import_ray()
    was_connected = ray.is_initialized()
    info = connect(address)
    if log:
        log(info.describe())
    try:
        yield info
    finally:
        if not was_connected:
            ray.shutdown()


def actor_env() -> dict[str, str]:
    """The driver's settings an actor must see (forwarded as Ray's runtime_env)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def drop_driver_paths() -> None:
    """Called first in every actor: Ray puts the driver's working directory on
    an actor's sys.path (as a bare `python` would), and from the repository
    root a local folder such as `kernels` would shadow an installed package
    (transformers probes for one by that name). Actors import ttsc as installed."""
    here = os.path.realpath(os.getcwd())
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != here]


# ------------------------------------------------------------------ Ray's errors


def lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the worker (its process or node) is gone, not that our
    code failed: what it had in flight is run again elsewhere."""
    import ray.exceptions as rex

    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError",
             "ObjectLostError", "ActorUnschedulableError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def task_failure(error: BaseException) -> BaseException:
    """The exception a failed task raised in its worker, as the driver should
    raise it: a UserError as itself (the CLI prints it), anything else with
    the worker's traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, UserError):
        return cause
    as_cause = getattr(error, "as_instanceof_cause", None)
    return as_cause() if as_cause else error
