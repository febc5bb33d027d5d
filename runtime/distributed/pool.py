"""A pool of Ray actors that survives losing some of them.

Each actor loads what it needs once (`load()`, which returns its process id),
then serves up to `per_worker` tasks at once (a threaded actor: its engine
batches their calls together). The driver keeps every task it handed out
until its result arrives, so when an actor dies (its process killed, its node
gone) the tasks it had in flight go back to the front of the queue, run on
the other actors, and a replacement actor is started in its place. A result
is yielded once, when it arrives: nothing finished is lost, nothing is
reported twice. A task that fails in our own code (an exception, not a lost
worker) stops the run: no new tasks start, the running ones finish and are
yielded, then that exception is raised.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Literal, TypeVar

from ttsc.common.errors import UserError
from ttsc.runtime.distributed.cluster import import_ray, lost_worker_errors, task_failure

T = TypeVar("T")

DEFAULT_MAX_RESTARTS = 3  # replacements per worker slot before the run gives up on it


@dataclass(frozen=True)
class WorkerEvent:
    """Something that happened to a worker, for the log and for tests."""

    kind: Literal["ready", "lost"]
    slot: int
    pid: int | None
    requeued: int = 0  # tasks it had in flight, run again elsewhere ("lost")
    reason: str = ""

    def describe(self) -> str:
        if self.kind == "ready":
            return f"ray: worker {self.slot} ready (pid {self.pid})"
        return (f"ray: worker {self.slot} lost (pid {self.pid}): {self.reason}; "
                f"{self.requeued} task(s) run again elsewhere")


@dataclass
class _Slot:
    index: int
    actor: Any
    loading: Any  # the load() call in flight, None once loaded
    pid: int | None = None
    restarts: int = 0
    in_flight: dict[Any, Any] = field(default_factory=dict)  # ObjectRef -> task


class WorkerPool(Generic[T]):
    """`run(tasks, call)` yields (task, result) as results arrive, in any order.

    `start()` makes one actor (with its Ray options); `call(actor, task)`
    submits one task and returns its ObjectRef.
    """

    def __init__(self, start: Callable[[], Any], size: int, per_worker: int = 1,
                 max_restarts: int = DEFAULT_MAX_RESTARTS,
                 on_event: Callable[[WorkerEvent], None] | None = None):
        if size < 1 or per_worker < 1:
            raise UserError("a Ray run needs at least one worker and one task per worker")
        self.ray = import_ray()
        self._lost = lost_worker_errors()
        self._start = start
        self.per_worker = per_worker
        self.max_restarts = max_restarts
        self.on_event = on_event
        self.slots = [self._new_slot(i) for i in range(size)]

    # ------------------------------------------------------------ running

    def run(self, tasks: Iterable[T], call: Callable[[Any, T], Any]) -> Iterator[tuple[T, Any]]:
        source = iter(tasks)
        retry: collections.deque[T] = collections.deque()
        error: BaseException | None = None
        exhausted = False

        def next_task() -> tuple[bool, T | None]:
            nonlocal exhausted
            if error is not None:
                return False, None
            if retry:
                return True, retry.popleft()
            if exhausted:
                return False, None
            try:
                return True, next(source)  # pulled only when a worker is free (lazy sources)
            except StopIteration:
                exhausted = True
                return False, None

        while True:
            for slot in self.slots:
                while (slot.actor is not None and slot.loading is None
                       and len(slot.in_flight) < self.per_worker):
                    more, task = next_task()
                    if not more:
                        break
                    slot.in_flight[call(slot.actor, task)] = task
            waiting = {ref: slot for slot in self.slots for ref in slot.in_flight}
            loads = {slot.loading: slot for slot in self.slots if slot.loading is not None}
            if not waiting:
                if error is not None:
                    raise error
                if exhausted and not retry:
                    return
                if not loads:
                    raise UserError("every Ray worker was lost and none could be replaced",
                                    hint="see the lines above for why; the results file keeps "
                                         "every finished item, so a rerun resumes")
            ready, _ = self.ray.wait([*waiting, *loads], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in loads:
                    self._loaded(loads[ref], ref)
                    continue
                slot = waiting[ref]
                if ref not in slot.in_flight:
                    continue  # its worker was lost while this batch was read
                try:
                    result = self.ray.get(ref)
                except self._lost as e:
                    retry.extendleft(reversed(self._lose(slot, e)))
                    continue
                except self.ray.exceptions.RayTaskError as e:
                    task = slot.in_flight.pop(ref)
                    error = error or task_failure(e)
                    continue
                task = slot.in_flight.pop(ref)
                yield task, result

    def close(self) -> None:
        """Stop every actor of the pool."""
        for slot in self.slots:
            if slot.actor is not None:
                self.ray.kill(slot.actor, no_restart=True)
                slot.actor = None

    # ------------------------------------------------------------ workers

    def _new_slot(self, index: int, restarts: int = 0) -> _Slot:
        actor = self._start()
        return _Slot(index, actor, actor.load.remote(), restarts=restarts)

    def _loaded(self, slot: _Slot, ref: Any) -> None:
        try:
            slot.pid = int(self.ray.get(ref))
        except self._lost as e:
            self._lose(slot, e)
            return
        except self.ray.exceptions.RayTaskError as e:
            self.close()
            raise task_failure(e) from None  # e.g. the model cannot load: no use retrying
        slot.loading = None
        self._emit(WorkerEvent("ready", slot.index, slot.pid))

    def _lose(self, slot: _Slot, error: BaseException) -> list[Any]:
        """Forget a dead worker, start its replacement; returns the tasks it had in flight."""
        tasks = list(slot.in_flight.values())
        slot.in_flight.clear()
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self._emit(WorkerEvent("lost", slot.index, slot.pid, len(tasks), reason))
        if slot.actor is not None:
            self.ray.kill(slot.actor, no_restart=True)
        if slot.restarts < self.max_restarts:
            self.slots[slot.index] = self._new_slot(slot.index, slot.restarts + 1)
        else:
            slot.actor, slot.loading = None, None
        return tasks

    def _emit(self, event: WorkerEvent) -> None:
        if self.on_event:
            self.on_event(event)
