"""Join concurrent calls into one batch for an engine that runs one batch at a time.

The executor calls an engine from many threads, each with the few requests of
one input's stage. An engine whose backend takes a whole batch per call and is
not thread-safe (`vllm.LLM.generate`) would otherwise serve those calls one by
one. A `Coalescer` runs one batch at a time; callers that arrive while a batch
runs wait, and the next batch serves all of them together.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, Sequence, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class _Job(Generic[In, Out]):
    def __init__(self, items: Sequence[In]):
        self.items = list(items)
        self.results: list[Out] | None = None
        self.error: BaseException | None = None


class Coalescer(Generic[In, Out]):
    """`submit(items)` returns `run(items)`'s results for those items, where
    `run` may have been called on them together with other callers' items.

    `run` must return one result per item, in order. If it raises, every
    caller whose items were in that batch gets the error.
    """

    def __init__(self, run: Callable[[list[In]], Sequence[Out]]):
        self._run = run
        self._pending: list[_Job[In, Out]] = []
        self._pending_lock = threading.Lock()
        self._running = threading.Lock()  # one batch at a time
        self.batches: list[int] = []  # items per batch run, for tests and tracing

    def submit(self, items: Sequence[In]) -> list[Out]:
        job: _Job[In, Out] = _Job(items)
        if not job.items:
            return []
        with self._pending_lock:
            self._pending.append(job)
        with self._running:
            # Whoever holds the lock serves every job waiting, its own included
            # unless an earlier holder already did.
            if job.results is None and job.error is None:
                with self._pending_lock:
                    jobs, self._pending = self._pending, []
                self._serve(jobs)
        if job.error is not None:
            raise job.error
        assert job.results is not None
        return job.results

    def _serve(self, jobs: list[_Job[In, Out]]) -> None:
        batch = [item for job in jobs for item in job.items]
        try:
            results = list(self._run(batch))
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} items returned {len(results)} results")
        except BaseException as exc:  # handed to every caller in the batch
            for job in jobs:
                job.error = exc
            return
        self.batches.append(len(batch))
        start = 0
        for job in jobs:
            job.results = results[start:start + len(job.items)]
            start += len(job.items)
