"""`ttsc eval --ray` on a real local Ray instance: the same answers and results
file as without Ray, the call cache shared through its server, resuming, an
actor killed mid-run (kill -9), and errors from the workers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ttsc[ray]'; "
                                        "scripts/install.sh installs it)")

from ttsc.cli import main  # noqa: E402
from ttsc.common.errors import UserError  # noqa: E402
from ttsc.compiler.pipeline import compile_source  # noqa: E402
from ttsc.runtime.cache import CallCache  # noqa: E402
from ttsc.runtime.distributed.evaluate import RayOptions, evaluate_on_ray  # noqa: E402
from ttsc.runtime.engines.setup import make_engines  # noqa: E402
from ttsc.runtime.eval import evaluate, load_dataset  # noqa: E402

TINY = '''model policy = "tiny-random"
prompt solve = """{question}"""
strategy sc(question) {
    return vote(extract(generate(policy, solve, n=3, max_tokens=8), number))
}
'''
# Slower per input, so that an input is surely in flight when its actor is killed.
SLOW = '''model policy = "tiny-random"
prompt solve = """{question}"""
strategy sc(question) {
    return vote(extract(generate(policy, solve, n=4, max_tokens=48, temperature=1.0), number))
}
'''


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py: one instance per session


def plan_of(source: str, tmp_path: Path):
    path = tmp_path / "s.tts"
    path.write_text(source)
    return compile_source(source, str(path)).plan


def data(tmp_path: Path, n: int, long_one: int | None = None) -> Path:
    path = tmp_path / "d.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i % 3}?", "answer": str(i + i % 3)}
            for i in range(n)]
    if long_one is not None:
        rows[long_one]["question"] = "count " * 3000  # past the tiny model's 1024 positions
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"}


def same_work(record: dict) -> dict:
    """A line but for its time and prompt tokens computed: those depend on what
    the engine's prefix cache already held (one engine without Ray, one per
    actor with it), not on what was asked or drawn."""
    tokens = {k: v for k, v in record["tokens"].items() if k != "computed"}
    return {**without_time(record), "tokens": tokens}


def test_same_answers_and_results_file_as_without_ray(tmp_path):
    plan = plan_of(TINY, tmp_path)
    rows = load_dataset(data(tmp_path, 8), plan.params)
    local = evaluate(plan, make_engines(plan), rows, seed=5, out=tmp_path / "local.jsonl")
    events = []
    summary = evaluate_on_ray(plan, rows, options=RayOptions(actors=2), seed=5, batch_size=2,
                              out=tmp_path / "ray.jsonl", on_event=events.append)
    ray_lines = sorted(lines(tmp_path / "ray.jsonl"), key=lambda r: r["id"])
    local_lines = sorted(lines(tmp_path / "local.jsonl"), key=lambda r: r["id"])
    assert [same_work(r) for r in ray_lines] == [same_work(r) for r in local_lines]
    for figure in ("requested_tokens_per_input", "generated_tokens_per_input"):
        assert summary.as_dict()[figure] == local.as_dict()[figure]
    assert summary.accuracy == local.accuracy and summary.run_items == 8
    # One model load per actor: each actor loads once, before its first input.
    ready = [e for e in events if e.kind == "ready"]
    assert 1 <= len(ready) <= 2 and not [e for e in events if e.kind == "lost"]


def test_call_cache_is_shared_through_its_server(tmp_path):
    plan = plan_of(TINY, tmp_path)
    rows = load_dataset(data(tmp_path, 6), plan.params)
    db = tmp_path / "calls.db"
    first = evaluate_on_ray(plan, rows, options=RayOptions(actors=2), seed=1, batch_size=2,
                            cache=CallCache(db))
    assert first.usage.cache_misses == 6 * 3 and first.usage.cache_hits == 0
    assert len(CallCache(db)) == 6 * 3  # one entry per sample, written by the server
    again = evaluate_on_ray(plan, rows, options=RayOptions(actors=2), seed=1, batch_size=2,
                            cache=CallCache(db))
    assert again.usage.cache_hits == 6 * 3 and again.usage.cache_misses == 0
    assert [r["prediction"] for r in again.per_item] == [r["prediction"] for r in first.per_item]
    # And the same cache serves a run without Ray: same keys, same answers.
    plain = evaluate(plan, make_engines(plan, cache=CallCache(db)), rows, seed=1)
    assert plain.usage.cache_misses == 0
    assert [r["prediction"] for r in plain.per_item] == [r["prediction"] for r in first.per_item]


def test_resumes_from_the_results_file(tmp_path):
    plan = plan_of(TINY, tmp_path)
    rows = load_dataset(data(tmp_path, 6), plan.params)
    out = tmp_path / "r.jsonl"
    evaluate(plan, make_engines(plan), rows[:2], seed=0, out=out)
    summary = evaluate_on_ray(plan, rows, options=RayOptions(actors=1), seed=0, out=out)
    assert summary.run_items == 4 and summary.items == 6
    assert sorted(r["id"] for r in lines(out)) == [f"q{i}" for i in range(6)]
    # Nothing left: no actor starts, nothing is written.
    done = evaluate_on_ray(plan, rows, options=RayOptions(actors=1), seed=0, out=out)
    assert done.run_items == 0 and len(lines(out)) == 6


def test_an_actor_killed_mid_run_loses_nothing_and_repeats_nothing(tmp_path):
    plan = plan_of(SLOW, tmp_path)
    rows = load_dataset(data(tmp_path, 12), plan.params)
    reference = evaluate(plan, make_engines(plan), rows, seed=2)
    ready: list[int] = []
    events = []
    killed: list[int] = []

    def on_event(e):
        events.append(e)
        if e.kind == "ready":
            ready.append(e.pid)

    def on_item(done, total):
        if done >= 1 and not killed and ready:
            killed.append(ready[0])
            os.kill(ready[0], signal.SIGKILL)  # the worker that loaded first, mid-run

    out = tmp_path / "r.jsonl"
    summary = evaluate_on_ray(plan, rows, options=RayOptions(actors=2), seed=2, batch_size=3,
                              out=out, on_item=on_item, on_event=on_event)
    assert killed
    lost = [e for e in events if e.kind == "lost"]
    assert len(lost) == 1 and lost[0].pid == killed[0]
    assert lost[0].requeued >= 1  # it had inputs in flight; they ran elsewhere
    assert len([e for e in events if e.kind == "ready"]) >= 2  # its replacement loaded too
    ids = [r["id"] for r in lines(out)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12))  # every item once
    assert summary.items == 12 and summary.run_items == 12
    got = {r["id"]: r["prediction"] for r in summary.per_item}
    assert got == {r["id"]: r["prediction"] for r in reference.per_item}


def test_an_error_in_a_worker_is_the_users_error_and_keeps_finished_items(tmp_path):
    plan = plan_of(TINY, tmp_path)
    rows = load_dataset(data(tmp_path, 6, long_one=5), plan.params)
    out = tmp_path / "r.jsonl"
    with pytest.raises(UserError, match="accepts at most 1024"):
        evaluate_on_ray(plan, rows, options=RayOptions(actors=1), batch_size=1, out=out)
    assert {r["id"] for r in lines(out)} <= {f"q{i}" for i in range(5)}
    assert lines(out)  # what finished before the failure stays


def test_a_model_that_cannot_load_is_reported_not_retried(tmp_path):
    plan = plan_of(TINY, tmp_path)
    plan.models["policy"] = "hf:nobody/no-such-model"
    rows = load_dataset(data(tmp_path, 2), plan.params)
    events = []
    with pytest.raises(UserError, match="not available locally"):
        evaluate_on_ray(plan, rows, options=RayOptions(actors=2), on_event=events.append)
    assert not [e for e in events if e.kind == "lost"]


def test_cli_eval_ray_matches_eval(tmp_path, capsys):
    path = tmp_path / "s.tts"
    path.write_text(TINY)
    d = data(tmp_path, 5)
    assert main(["eval", str(path), "--data", str(d), "--json", "--quiet", "--seed", "4",
                 "--out", str(tmp_path / "a.jsonl")]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", str(path), "--data", str(d), "--json", "--quiet", "--seed", "4",
                 "--out", str(tmp_path / "b.jsonl"), "--ray", "--ray-actors", "2"]) == 0
    on_ray = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keep = ("items", "accuracy", "sample_accuracy", "tokens", "run_items")
    assert {k: on_ray[k] for k in keep} == {k: plain[k] for k in keep}
    preds = {r["id"]: r["prediction"] for r in lines(tmp_path / "a.jsonl")}
    assert {r["id"]: r["prediction"] for r in lines(tmp_path / "b.jsonl")} == preds


def test_cli_ray_mistakes(tmp_path, capsys):
    path = tmp_path / "s.tts"
    path.write_text(TINY)
    d = data(tmp_path, 2)
    assert main(["eval", str(path), "--data", str(d), "--ray-actors", "2"]) == 2
    assert "needs --ray" in capsys.readouterr().err
    assert main(["eval", str(path), "--data", str(d), "--ray", "--ray-actors", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    budget = tmp_path / "b.tts"
    budget.write_text(TINY.replace("n=3", "n=auto") + "budget { tokens <= 500 total }\n")
    assert main(["eval", str(budget), "--data", str(d), "--ray"]) == 2
    assert "total token budget" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["paged", "hf"])
def test_embedded_model_on_ray_matches_without(tmp_path, engine):
    """The same predictions on 2 actors as in one process. The hf engine (fp32,
    each row its own sampling) gives the same samples too; the paged engine's
    bf16 CPU kernels may round a few logits differently under another batch
    mix or thread count (also without Ray), so only its predictions are compared."""
    source = '''model policy = "smollm2-135m"
prompt solve = "{question} Give the final answer as 'Answer: <number>'."
strategy sc(question) {
    return vote(extract(generate(policy, solve, n=4, temperature=0.7, max_tokens=24), number))
}
'''
    plan = plan_of(source, tmp_path)
    rows = load_dataset(Path(__file__).resolve().parent.parent / "examples/data/addition.jsonl",
                        plan.params, limit=6)
    local = evaluate(plan, make_engines(plan, engine), rows, seed=0)
    on_ray = evaluate_on_ray(plan, rows, options=RayOptions(actors=2), engine=engine, seed=0,
                             batch_size=3)
    assert [r["prediction"] for r in on_ray.per_item] == [r["prediction"] for r in local.per_item]
    if engine == "hf":
        assert [r["samples"] for r in on_ray.per_item] == [r["samples"] for r in local.per_item]
        assert on_ray.usage.generated_tokens == local.usage.generated_tokens
