"""A Ray run's workers: how many, how big, and everything around them.

`ray_workers(...)` is what `ttsc eval --ray` and `ttsc search --ray` share:
connect to Ray, serve the call cache from one actor on the driver's machine,
start a `WorkerPool` of actors of one class (each loading its engines once),
and stop all of it at the end, however the run ends.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ttsc.common.errors import UserError
from ttsc.common.specs import spec_form
from ttsc.runtime.cache import CallCache
from ttsc.runtime.distributed.cache import start_cache_server
from ttsc.runtime.distributed.cluster import ClusterInfo, actor_env, import_ray, ray_session
from ttsc.runtime.distributed.pool import DEFAULT_MAX_RESTARTS, WorkerEvent, WorkerPool


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is."""

    address: str | None = None  # None: start or join a local instance
    actors: int | None = None  # None: as many as the cluster's CPUs (GPUs) allow
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 for a GPU engine (vLLM, --device cuda), else 0
    max_restarts: int = DEFAULT_MAX_RESTARTS  # replacements per actor slot

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise UserError(f"--ray-actors must be at least 1 (got {self.actors})")

    def shape(self, cluster: ClusterInfo, specs: Iterable[str], engine: str,
              device: str | None, most: int) -> tuple[int, float]:
        """(actors, GPUs per actor) for a run of `most` tasks at most on the
        models `specs`: never more actors than tasks."""
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if needs_gpu(specs, engine, device) else 0.0
        return max(1, min(most, self.actors or cluster.actors(self.cpus_per_actor, gpus))), gpus


def needs_gpu(specs: Iterable[str], engine: str, device: str | None) -> bool:
    """Whether each actor should hold a GPU: vLLM always runs on one, the
    torch engines when asked for CUDA."""
    vllm = engine == "vllm" or any(spec_form(s) == "vllm" for s in specs)
    return vllm or (device or "").startswith("cuda")


@contextlib.contextmanager
def ray_workers(worker: type, args: Callable[[Any], tuple[Any, ...]], *, options: RayOptions,
                specs: Iterable[str], engine: str, device: str | None, cache: CallCache | None,
                most: int, per_worker: int, log: Callable[[str], None] | None = None,
                on_event: Callable[[WorkerEvent], None] | None = None) -> Iterator[WorkerPool]:
    """A pool of `worker` actors for the block. Each is made as
    `worker(*args(cache_server))`: `cache_server` is the actor serving `cache`
    (the driver's open call cache, handed over), or None without a cache.
    Each actor serves `per_worker` tasks at once."""

    def event(e: WorkerEvent) -> None:
        if log:
            log(e.describe())
        if on_event:
            on_event(e)

    with ray_session(options.address, log=log) as cluster:
        ray = import_ray()
        size, gpus = options.shape(cluster, specs, engine, device, most)
        server = start_cache_server(cache) if cache is not None else None
        remote = ray.remote(worker).options(
            num_cpus=options.cpus_per_actor, num_gpus=gpus, max_concurrency=per_worker,
            max_restarts=0, runtime_env={"env_vars": actor_env()})
        built = args(server)
        pool = None
        try:
            pool = WorkerPool(lambda: remote.remote(*built), size, per_worker=per_worker,
                              max_restarts=options.max_restarts, on_event=event)
            yield pool
        finally:
            if pool is not None:
                pool.close()
            if server is not None:
                ray.kill(server, no_restart=True)
