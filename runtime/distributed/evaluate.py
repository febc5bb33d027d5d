"""`ttsc eval --ray`: the inputs of a data set spread over Ray actors.

Each actor (`EvalWorker`) makes its engines once (runtime/engines/setup.py,
one model load per actor) and runs inputs with the executor's `run_one`,
`batch_size` of them at once so its engine batches their calls. The driver
does everything else exactly as `runtime/eval.py` does, with its `Ledger`:
it resumes from the results file, hands out the inputs still to run, turns
each result into its line and appends it as it arrives, feeds the one
progress bar, and adds up the summary. Seeds come from (run seed, node,
input), never from which actor ran an input, so a seed gives the same
predictions with or without Ray. An actor that dies has its inputs run again on the others
(runtime/distributed/pool.py); the call cache is served by one actor on the
driver's machine (runtime/distributed/cache.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ttsc.common.errors import UserError
from ttsc.compiler.plan import Plan
from ttsc.runtime.cache import CallCache
from ttsc.runtime.distributed.cache import RemoteCallCache
from ttsc.runtime.distributed.cluster import drop_driver_paths
from ttsc.runtime.distributed.pool import WorkerEvent
from ttsc.runtime.distributed.workers import RayOptions, ray_workers
from ttsc.runtime.engines.setup import make_engines
from ttsc.runtime.eval import EvalSummary, Ledger
from ttsc.runtime.executor import Executor, InputResult

__all__ = ["EvalWorker", "RayOptions", "evaluate_on_ray"]  # RayOptions: where callers always found it


class EvalWorker:
    """A Ray actor that runs inputs of one plan on its own engines."""

    def __init__(self, plan: Plan, engine: str, device: str | None, cache_server: Any,
                 seed: int):
        drop_driver_paths()
        self.plan, self.engine, self.device = plan, engine, device
        self.cache_server, self.seed = cache_server, seed
        self.executor: Executor | None = None

    def load(self) -> int:
        """Make the engines (the one model load of this actor); returns the process id."""
        cache = RemoteCallCache(self.cache_server) if self.cache_server is not None else None
        engines = make_engines(self.plan, self.engine, self.device, cache=cache)  # type: ignore[arg-type]
        self.executor = Executor(self.plan, engines, seed=self.seed)
        return os.getpid()

    def run_one(self, inputs: dict[str, Any]) -> InputResult:
        assert self.executor is not None, "load() runs first"
        return self.executor.run_one(inputs)


def evaluate_on_ray(plan: Plan, rows: Sequence[dict[str, Any]], *,
                    options: RayOptions = RayOptions(), engine: str = "auto",
                    device: str | None = None, cache: CallCache | None = None,
                    scorer: str = "number", answer_field: str = "answer", seed: int = 0,
                    batch_size: int = 8, out: str | Path | None = None, force: bool = False,
                    on_item: Callable[[int, int], None] | None = None,
                    on_event: Callable[[WorkerEvent], None] | None = None,
                    log: Callable[[str], None] | None = None,
                    data: str | None = None) -> EvalSummary:
    """`runtime.eval.evaluate` with the inputs run on Ray actors (a process
    already connected to Ray stays on its cluster). `batch_size` inputs run at
    once on each actor. `cache` (the driver's open call cache) is handed to a
    cache server; None computes every call. `log` gets a line per event
    (connected, worker ready, worker lost), `on_event` the events themselves."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    with Ledger(plan, rows, scorer=scorer, answer_field=answer_field, seed=seed, out=out,
                force=force, on_item=on_item, data=data) as ledger:
        if not ledger.todo:
            return ledger.summary()
        inputs = ledger.inputs
        with ray_workers(EvalWorker, lambda server: (plan, engine, device, server, seed),
                         options=options, specs=plan.models.values(), engine=engine,
                         device=device, cache=cache, most=len(inputs), per_worker=batch_size,
                         log=log, on_event=on_event) as pool:
            for j, result in pool.run(range(len(inputs)),
                                      lambda actor, j: actor.run_one.remote(inputs[j])):
                ledger.record(j, result)
                ledger.progress()
    return ledger.summary()
