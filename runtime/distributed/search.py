"""`ttsc search --ray`: a search's evaluations on Ray actors.

The driver alone talks to Optuna (it asks for each trial, compiles it,
writes its files and tells the result); actors only evaluate. Each actor
(`TrialWorker`) holds one engine per model spec for all the trials it runs
(runtime/search/engines.py: the model loads once per actor), behind the call
cache served by one actor on the driver's machine
(runtime/distributed/cache.py), and evaluates whole trials: the rows a trial
still needs, `batch_size` at once. An actor that dies has its trials run
again on the others (runtime/distributed/pool.py); the driver tells Optuna
about a trial only when its result has arrived, so nothing finished is lost
and no trial is told twice.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

from ttsc.compiler.plan import Plan
from ttsc.runtime.cache import CallCache
from ttsc.runtime.distributed.cache import RemoteCallCache
from ttsc.runtime.distributed.cluster import drop_driver_paths
from ttsc.runtime.distributed.pool import WorkerEvent, WorkerPool
from ttsc.runtime.distributed.workers import RayOptions, ray_workers
from ttsc.runtime.eval import EvalSummary, evaluate
from ttsc.runtime.search.engines import EnginePool
from ttsc.runtime.search.trial import EvalJob


class TrialWorker:
    """A Ray actor that evaluates plans of one search on its own engines."""

    def __init__(self, specs: list[str], engine: str, device: str | None, cache_server: Any,
                 scorer: str, answer_field: str, seed: int, batch_size: int):
        drop_driver_paths()
        self.specs, self.engine, self.device = specs, engine, device
        self.cache_server = cache_server
        self.settings = dict(scorer=scorer, answer_field=answer_field, seed=seed,
                             batch_size=batch_size)
        self.pool: EnginePool | None = None

    def load(self) -> int:
        """Make the engines of the space's models (the one model load of this
        actor); returns the process id."""
        self.pool = EnginePool(RemoteCallCache(self.cache_server), self.engine,  # type: ignore[arg-type]
                               self.device)
        self.pool.load(self.specs)
        return os.getpid()

    def evaluate(self, plan: Plan, rows: Sequence[dict[str, Any]]) -> EvalSummary:
        assert self.pool is not None, "load() runs first"
        return evaluate(plan, self.pool.engines_for(plan), rows, **self.settings)  # type: ignore[arg-type]


class RayTrials:
    """The search's `remote`: jobs handed to the actors as they free up."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool

    def run(self, jobs: Iterable[EvalJob]) -> Iterator[tuple[EvalJob, EvalSummary]]:
        """(job, summary) as each arrives; `jobs` is pulled only when an actor
        has room, so a trial is asked for when it can start."""
        return self.pool.run(jobs, lambda actor, job: actor.evaluate.remote(job.plan, job.rows))


@contextlib.contextmanager
def search_workers(options: RayOptions, specs: list[str], *, engine: str, device: str | None,
                   cache: CallCache, scorer: str, answer_field: str, seed: int, batch_size: int,
                   trials: int, per_worker: int = 1, log: Callable[[str], None] | None = None,
                   on_event: Callable[[WorkerEvent], None] | None = None) -> Iterator[RayTrials]:
    """Actors for a search of `trials` trials on the models `specs`, each
    running `per_worker` trials at once, for the block; `cache` (the driver's
    open call cache) is served to all of them."""
    with ray_workers(TrialWorker, lambda server: (specs, engine, device, server, scorer,
                                                  answer_field, seed, batch_size),
                     options=options, specs=specs, engine=engine, device=device, cache=cache,
                     most=trials, per_worker=per_worker, log=log, on_event=on_event) as pool:
        yield RayTrials(pool)
