"""The call cache, shared by every Ray worker through one actor.

Workers do not open the SQLite file themselves. The file lives on the
driver's machine, so workers on other nodes could not reach it, and SQLite
over a network file system is how caches get corrupted. Even on one machine,
SQLite lets one process write at a time, so workers sharing the file would
queue on its lock and fail with "database is locked" past the busy timeout.
So one `CacheServer` actor, pinned to the driver's node, holds the only
connection; every worker's `CachedEngine` reads and writes through a
`RemoteCallCache` that forwards `get_many`/`put_many` to it. One writer,
reachable from every node; the server handles one call at a time, and a
worker makes one read and at most one write per engine call (not per token
or per sample). Killed, Ray restarts it and it
reopens the file (SQLite is crash-safe; a write it had not committed is
simply computed again).
"""

from __future__ import annotations

from typing import Any, Iterable

from ttsc.runtime.cache import MEMORY, CallCache
from ttsc.runtime.distributed.cluster import drop_driver_paths, import_ray


class CacheServer:
    """A Ray actor holding the run's one CallCache connection."""

    def __init__(self, path: str):
        drop_driver_paths()
        self.cache = CallCache(path)

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return self.cache.get_many(keys)

    def put_many(self, items: dict[str, Any]) -> None:
        self.cache.put_many(items)

    def size(self) -> int:
        return len(self.cache)


class RemoteCallCache:
    """What a worker's CachedEngine uses in place of a CallCache: the same
    calls, answered by the CacheServer. `put_many` waits for the write, so a
    result a worker reports has its calls in the cache."""

    def __init__(self, server: Any):
        self.server = server

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return import_ray().get(self.server.get_many.remote(list(keys)))

    def put_many(self, items: dict[str, Any]) -> None:
        import_ray().get(self.server.put_many.remote(items))

    def __len__(self) -> int:
        return import_ray().get(self.server.size.remote())

    def close(self) -> None:
        """The server owns the connection; the driver stops it."""


def start_cache_server(cache: CallCache) -> Any:
    """The CacheServer actor for the file `cache` has open (the driver's copy is
    closed: the server holds the only connection). On the driver's node, so
    the path means the same file; restarted by Ray if it dies."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = str(cache.path) if cache.path is not None else MEMORY
    cache.close()
    here = ray.get_runtime_context().get_node_id()
    server = ray.remote(CacheServer).options(
        num_cpus=0, max_restarts=-1, max_task_retries=-1,  # get/put are idempotent
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(path)
    ray.get(server.size.remote())  # opened (errors surface here, before any model loads)
    return server
