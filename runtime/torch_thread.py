"""The process's one thread for torch work: loading, building and stepping models.

Why one. torch's CPU backend parallelises with OpenMP (libgomp), and libgomp
gives every thread that opens a parallel region a pool of workers of its
own, kept for that thread's life. Once a process holds more pool threads
than CPUs, libgomp stops spinning its workers between regions and puts them
to sleep after each one, and a decode step opens about 150 regions. Measured
on smollm2-135m at 1-4 rows, 2 CPUs: steps run by the thread that had
loaded the model took 13-15 ms (33 context switches over 64 steps); the same
steps run by any other thread took 23-29 ms (15,364). So concurrent callers,
`ttsc eval`'s per-input workers and `ttsc serve`'s request threads did not
run torch themselves: they hand it here, and wait.

`call` runs a function here and returns what it returns (raises what it
raises); on this thread it simply calls it. `@on_torch_thread` does that for
every call of a function. Jobs run one at a time, in the order they came; a
long task that should let others in (an engine stepping while callers
queue requests) runs as a job per step that submits the next one.
"""

from __future__ import annotations

import atexit
import functools
import os
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_STOP = None  # the job that ends the thread (at exit)
_lock = threading.Lock()
_jobs: "queue.SimpleQueue[tuple[Future, Callable, tuple, dict] | None]" = queue.SimpleQueue()
_thread: threading.Thread | None = None


def is_current() -> bool:
    """Whether the caller is the torch thread."""
    return threading.current_thread() is _thread


def submit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
    """Queue `fn(*args, **kwargs)` to run on the torch thread; its future."""
    global _thread
    future: Future = Future()
    with _lock:
        if _thread is None:
            # A daemon: a caller interrupted by Ctrl-C must not leave the
            # process waiting on its queued steps (the exit hook stops it).
            _thread = threading.Thread(target=_serve, args=(_jobs,), name="ttsc-torch", daemon=True)
            _thread.start()
        _jobs.put((future, fn, args, kwargs))
    return future


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, run on the torch thread; what it returns or raises."""
    if is_current():
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()


def on_torch_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function so that every call of it runs on the torch thread."""

    @functools.wraps(fn)
    def run_there(*args: Any, **kwargs: Any) -> T:
        return call(fn, *args, **kwargs)

    return run_there


def _serve(jobs: "queue.SimpleQueue") -> None:
    while (job := jobs.get()) is not _STOP:
        future, fn, args, kwargs = job
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller re-raises it
                future.set_exception(exc)


@atexit.register
def _stop() -> None:
    """At exit, after the jobs already queued (an engine's next step, not the
    ones it would queue after it), so that torch is not mid-operation while
    the interpreter tears down."""
    with _lock:
        thread = _thread
        if thread is not None:
            _jobs.put(_STOP)
    if thread is not None:
        thread.join(timeout=60)


def _forget_in_child() -> None:
    """A forked child has no torch thread, whatever its parent had."""
    global _thread, _jobs, _lock
    _thread, _jobs, _lock = None, queue.SimpleQueue(), threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
