"""The process's one torch thread (runtime/torch_thread.py), and the engines on it."""

from __future__ import annotations

import threading

import pytest
import torch

from ttsc.runtime import torch_thread
from ttsc.runtime.engines.base import Prompt, SampleRequest, SamplingParams
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.engines.paged.engine import PagedEngine
from ttsc.runtime.models import LoadedModel, load_model


def test_call_runs_there_returns_and_raises() -> None:
    assert not torch_thread.is_current()
    assert torch_thread.call(lambda x: (threading.current_thread().name, x * 2), 21) == ("ttsc-torch", 42)
    with pytest.raises(ValueError, match="bad input"):
        torch_thread.call(lambda: int("bad input"))
    # On the thread itself a call runs inline (queued, it would wait for itself).
    assert torch_thread.call(lambda: torch_thread.call(lambda: torch_thread.is_current())) is True


def test_jobs_run_one_at_a_time_in_order() -> None:
    seen: list[int] = []
    futures = [torch_thread.submit(seen.append, i) for i in range(50)]
    for f in futures:
        f.result()
    assert seen == list(range(50))


def test_decorated_function_runs_there() -> None:
    @torch_thread.on_torch_thread
    def where(a: int, *, b: int) -> tuple[str, int]:
        """Doc kept."""
        return threading.current_thread().name, a + b

    assert where(1, b=2) == ("ttsc-torch", 3)
    assert where.__doc__ == "Doc kept."


def test_models_load_there() -> None:
    names: list[str] = []
    real = torch.nn.Module.to

    def to(self, *args, **kwargs):
        names.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    torch.nn.Module.to = to
    try:
        load_model("tiny-random", device="cpu", dtype=torch.float16)  # not loaded yet in this dtype
    finally:
        torch.nn.Module.to = real
    assert names and set(names) == {"ttsc-torch"}


def _requests(tag: str) -> list[SampleRequest]:
    return [SampleRequest(Prompt(raw=f"{tag} {i}: the quick brown fox"),
                          SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=i, ignore_eos=True))
            for i in range(4)]


def test_paged_engine_is_built_and_steps_there(tiny_model: LoadedModel, monkeypatch) -> None:
    """Whatever thread calls, the engine's steps run on the torch thread; a call
    made on the torch thread itself steps inline and gets the same tokens."""
    engine = PagedEngine(tiny_model, dtype=torch.float32, kv_memory_bytes=16 << 20)
    step = engine._step
    stepped_on: set[str] = set()

    def recording_step() -> None:
        stepped_on.add(threading.current_thread().name)
        step()

    monkeypatch.setattr(engine, "_step", recording_step)
    from_main = engine.sample(_requests("a"))
    callers = [threading.Thread(target=engine.sample, args=(_requests(t),), name=f"caller-{t}")
               for t in "bc"]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    from_torch_thread = torch_thread.call(engine.sample, _requests("a"))
    assert stepped_on == {"ttsc-torch"}
    assert ([c.token_ids for o in from_torch_thread for c in o.completions]
            == [c.token_ids for o in from_main for c in o.completions])
    assert engine.blocks.num_live == 0


def test_hf_engine_runs_there(tiny_model: LoadedModel, monkeypatch) -> None:
    engine = HFEngine(tiny_model)
    generate = engine._generate
    ran_on: set[str] = set()

    def recording(rows) -> None:
        ran_on.add(threading.current_thread().name)
        generate(rows)

    monkeypatch.setattr(engine, "_generate", recording)
    outs = engine.sample(_requests("hf"))
    assert ran_on == {"ttsc-torch"} and all(len(o.completions) == 2 for o in outs)
