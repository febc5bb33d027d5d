"""The executor runs plans: every op, loops, batching and seeds."""

from __future__ import annotations

import threading

import pytest

from ttsc.compiler.pipeline import compile_source
from ttsc.common.errors import UserError
from ttsc.runtime.engines.hf import HFEngine
from ttsc.runtime.executor import Executor
from ttsc.runtime.ops import agreement, best, top, vote
from ttsc.common.prompts import fill
from ttsc.runtime.values import Candidate

from scripted_engine import ScriptedEngine

HEAD = '''model policy = "tiny-random"
model judge = policy
prompt solve = """{question}"""
prompt check = """Q: {question} A: {candidate} Correct?"""
'''


def plan_of(body: str, strategy: str | None = None):
    return compile_source(HEAD + body, "t.tts", strategy).plan


def run(body: str, inputs: list[dict], engine, seed: int = 0):
    plan = plan_of(body)
    return Executor(plan, {"policy": engine, "judge": engine}, seed=seed).run(inputs)


# ---------------------------------------------------------------- host ops

def test_vote_majority_ties_and_weights():
    assert vote(["3", "4", "4", None]) == "4"
    assert vote(["5", "6"]) == "5"  # tie: first seen wins
    assert vote(["5", "6", "6"], weights=[3.0, 1.0, 1.0]) == "5"
    assert vote([None, None]) == ""


def test_agreement_best_top():
    assert agreement(["1", "1", "2", None]) == 0.5
    assert agreement([]) == 0.0
    cands = [Candidate(t, None) for t in ("a", "b", "c")]
    assert best(cands, [0.1, 0.9, 0.9]) == "b"
    assert [c.text for c in top(cands, [0.2, 0.9, 0.5], 2)] == ["b", "c"]


def test_fill_is_single_pass_and_keeps_escaped_braces():
    assert fill("{a} {{x}} {b}", {"a": "{b}", "b": "B"}) == "{b} {x} B"


# ------------------------------------------------------------ whole plans

def test_self_consistency_votes_over_samples():
    engine = ScriptedEngine({"2 + 2": ["Answer: 4", "Answer: 4", "Answer: 5"]})
    result = run("strategy s(question) {\n return vote(extract(generate(policy, solve, n=6), number))\n}\n",
                 [{"question": "What is 2 + 2?"}], engine)
    assert result.outputs == ["4"]
    assert [sorted(a) for a in result.sample_answers] == [["4", "4", "4", "4", "5", "5"]]


def test_best_of_n_picks_highest_verifier_score():
    engine = ScriptedEngine({"capital": ["Paris", "Lyon"]}, yes={"A: Paris": 0.9, "A: Lyon": 0.2})
    result = run("strategy s(question) {\n c = generate(policy, solve, n=2)\n"
                 " return best(c, by=verify(judge, c, check))\n}\n",
                 [{"question": "capital of France?"}], engine)
    assert result.outputs == ["Paris"]


def test_inputs_run_at_once_each_making_its_own_calls():
    # Three inputs in flight at once: each sample() call waits until all three
    # have called, which only happens if the executor runs them concurrently
    # (the engine batches concurrent calls; the executor never waits for a batch).
    barrier = threading.Barrier(3, timeout=10)

    class Gathering(ScriptedEngine):
        def sample(self, requests):
            barrier.wait()
            return super().sample(requests)

    engine = Gathering({"1 + 1": ["2"], "2 + 2": ["4"], "3 + 3": ["6"]})
    plan = plan_of("strategy s(question) {\n return vote(extract(generate(policy, solve, n=4), number))\n}\n")
    result = Executor(plan, {"policy": engine, "judge": engine}).run(
        [{"question": f"{k} + {k}"} for k in (1, 2, 3)], concurrency=3)
    assert result.outputs == ["2", "4", "6"]
    assert engine.batches == [1, 1, 1]  # one request per input, each in its own call


def test_an_input_that_stops_early_does_not_wait_for_a_slow_one():
    # Two workers; "hard" loops, and its second round can only go ahead once
    # the third easy input has finished: the easy inputs must start and end
    # while "hard" is still running (lock step would deadlock here).
    easy_done = threading.Event()

    class Gated(ScriptedEngine):
        def sample(self, requests):
            if any("hard" in r.prompt.messages[-1][1] for r in requests) and self.hard_calls():
                assert easy_done.wait(timeout=10), "the easy inputs never got to run"
            return super().sample(requests)

        def hard_calls(self):
            return sum("hard" in r.prompt.messages[-1][1] for r in self.requests)

    engine = Gated({"easy": ["7"], "hard": ["1", "2", "3", "4"]})
    body = ("strategy s(question) {\n c = generate(policy, solve, n=4)\n"
            " repeat 3 until agreement(extract(c, number)) >= 0.75 {\n"
            "  c = c + generate(policy, solve, n=4)\n }\n return vote(extract(c, number))\n}\n")
    order = []

    def on_result(i, result):
        order.append(i)
        if i == 3:
            easy_done.set()

    inputs = [{"question": "hard"}] + [{"question": f"easy {k}"} for k in range(3)]
    result = Executor(plan_of(body), {"policy": engine, "judge": engine}).run(
        inputs, concurrency=2, on_result=on_result)
    assert order == [1, 2, 3, 0]
    assert result.outputs[1:] == ["7", "7", "7"]
    assert [len(a) for a in result.sample_answers] == [16, 4, 4, 4]


def test_results_do_not_depend_on_how_many_inputs_run_at_once(tiny_model):
    engine = HFEngine(tiny_model)
    body = "strategy s(question) {\n return vote(extract(generate(policy, solve, n=3, max_tokens=6), number))\n}\n"
    inputs = [{"question": f"q{k}"} for k in range(5)]
    plan = plan_of(body)
    one = Executor(plan, {"policy": engine, "judge": engine}, seed=3).run(inputs, concurrency=1)
    many = Executor(plan, {"policy": engine, "judge": engine}, seed=3).run(inputs, concurrency=5)
    assert one.outputs == many.outputs
    assert [[c.text for c in r.samples] for r in one.results] == \
        [[c.text for c in r.samples] for r in many.results]


def test_per_input_settings_override_sampling():
    engine = ScriptedEngine({"2 + 2": ["Answer: 4"]})
    plan = plan_of("strategy s(question) {\n return vote(extract(generate(policy, solve, n=6), number))\n}\n")
    gen = next(n for n in plan.region.nodes.values() if n.op == "generate")
    executor = Executor(plan, {"policy": engine, "judge": engine})
    default = executor.run_one({"question": "2 + 2"})
    fewer = executor.run_one({"question": "2 + 2"}, settings={gen.id: {"n": 2, "max_tokens": 5}})
    assert len(default.sample_answers) == 6 and len(fewer.sample_answers) == 2
    assert engine.requests[-1].params.max_tokens == 5
    with pytest.raises(ValueError, match="not a sampling setting"):
        executor.run_one({"question": "2 + 2"}, settings={gen.id: {"prompt": "x"}})


def test_a_failing_input_reports_the_finished_ones_then_raises():
    class Failing(ScriptedEngine):
        def sample(self, requests):
            if any("bad" in r.prompt.messages[-1][1] for r in requests):
                raise UserError("this input cannot be served")
            return super().sample(requests)

    engine = Failing({"ok": ["1"]})
    plan = plan_of("strategy s(question) {\n return vote(extract(generate(policy, solve, n=2), number))\n}\n")
    seen = []
    with pytest.raises(UserError, match="cannot be served"):
        Executor(plan, {"policy": engine, "judge": engine}).run(
            [{"question": "ok 1"}, {"question": "bad"}, {"question": "ok 2"}], concurrency=1,
            on_result=lambda i, r: seen.append(i))
    assert seen == [0]


def test_adaptive_loop_stops_per_input():
    # "easy" agrees at once; "hard" never agrees, so it runs every round.
    engine = ScriptedEngine({"easy": ["7"], "hard": ["1", "2", "3", "4"]})
    body = ("strategy s(question) {\n c = generate(policy, solve, n=4)\n"
            " repeat 3 until agreement(extract(c, number)) >= 0.75 {\n"
            "  c = c + generate(policy, solve, n=4)\n }\n return vote(extract(c, number))\n}\n")
    result = run(body, [{"question": "easy"}, {"question": "hard"}], engine)
    assert result.outputs[0] == "7"
    assert [len(a) for a in result.sample_answers] == [4, 16]
    rounds = [t.round for t in result.trace if t.kind == "llm" and t.round is not None]
    assert rounds == [0, 1, 2]


def test_beam_search_extends_unfinished_candidates():
    engine = ScriptedEngine({"solve": ["step"]}, finish="stop")
    body = ("strategy s(question) {\n b = generate(policy, solve, n=4, stop=\"\\n\")\n"
            " repeat 2 until all_done(b) {\n  b = top(b, by=verify(judge, b, check), k=2)\n"
            "  b = extend(policy, b, n=3, stop=\"\\n\")\n }\n return best(b, by=verify(judge, b, check))\n}\n")
    result = run(body, [{"question": "solve it"}], engine)
    # Two extensions of a first step, each after the separator that cut the step before
    # (this asserted "stepstepstep" while extend dropped the separators).
    assert result.outputs == ["step\nstep\nstep"]


def test_every_llm_op_runs_on_a_real_tiny_model(tiny_model):
    engine = HFEngine(tiny_model)
    body = """strategy s(question) {
    c = generate(policy, solve, n=3, max_tokens=4)
    e = extend(policy, c, n=1, max_tokens=3)
    crit = critique(judge, e, max_tokens=3)
    r = refine(policy, e, critiques=crit, max_tokens=3)
    ranked = rank(judge, r, k=2)
    f = fuse(policy, ranked, critiques=crit, n=2, max_tokens=3)
    t = unit_tests(policy, n=1, max_tokens=3)
    scores = score(judge, f, agg=prod) + run_tests(f, t)
    pool = f + f
    return best(pool, by=scores)
}
"""
    result = run(body, [{"question": "What is 1 + 1?"}], engine)
    assert isinstance(result.outputs[0], str)
    ops = [op for t in result.trace for op in t.ops]
    for op in ("generate", "extend", "critique", "refine", "rank", "fuse", "unit_tests", "score",
               "run_tests", "best"):
        assert op in ops
    assert result.total_usage.generated_tokens > 0


def test_same_seed_same_answers_regardless_of_batch(tiny_model):
    engine = HFEngine(tiny_model)
    body = "strategy s(question) {\n return best(generate(policy, solve, n=2, max_tokens=5), by=verify(judge, generate(policy, solve, n=2, max_tokens=5), check))\n}\n"
    alone = run(body, [{"question": "q1"}], engine, seed=7).outputs
    batched = run(body, [{"question": "q0"}, {"question": "q1"}], engine, seed=7).outputs
    assert alone[0] == batched[1]
    other = run(body, [{"question": "q1"}], engine, seed=8).outputs
    assert isinstance(other[0], str)


def test_missing_input_is_a_user_error():
    engine = ScriptedEngine()
    plan = plan_of("strategy s(question) {\n return vote(extract(generate(policy, solve), number))\n}\n")
    with pytest.raises(UserError, match="lacks `question`"):
        Executor(plan, {"policy": engine, "judge": engine}).run([{"q": "x"}])


def test_generated_vote_kernel_matches_host_vote():
    import random

    from ttsc.runtime.aggregate import run_vote_kernel

    rng = random.Random(0)
    answers = [[rng.choice(["1", "2", "3", None]) for _ in range(rng.randint(1, 9))] for _ in range(40)]
    answers += [[None, None], ["7", "8"], ["8", "7", "7", "8"]]  # no answer, ties
    weights = [[rng.random() for _ in row] for row in answers]
    info = {"num_samples": None}
    assert run_vote_kernel(info, answers, None) == [vote(a) for a in answers]
    assert run_vote_kernel(info, answers, weights) == [vote(a, w) for a, w in zip(answers, weights)]


def test_vote_after_extract_runs_as_a_kernel_stage():
    engine = ScriptedEngine({"2 + 2": ["Answer: 4", "Answer: 4", "Answer: 5"]})
    plan = plan_of("strategy s(question) {\n return vote(extract(generate(policy, solve, n=6), number))\n}\n")
    kernel_stages = [s for s in plan.region.stages if s.kind == "kernel"]
    assert len(kernel_stages) == 1 and plan.kernels[0]["chain"] == "extract -> vote -> argmax"
    assert plan.kernels[0]["num_samples"] == 6
    result = Executor(plan, {"policy": engine, "judge": engine}).run([{"question": "What is 2 + 2?"}])
    assert result.outputs == ["4"]
    assert [t.kind for t in result.trace] == ["llm", "host", "kernel"]


def test_program_extractor_votes_over_what_the_programs_compute():
    # PAL: three programs, two of them different texts computing 29, one failing.
    engine = ScriptedEngine({"What is 46 - 17?": [" 46 - 17", " 1 / 0", "-17 + 46"]})
    body = ("strategy s(question) {\n"
            " return vote(extract(generate(policy, solve, n=3), program))\n}\n")
    result = run(body, [{"question": "What is 46 - 17?"}], engine)
    assert result.outputs == ["29"]
    assert sorted(result.results[0].sample_answers, key=str) == ["29", "29", None]


def test_unit_tests_and_run_tests_pick_the_passing_program():
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    engine = ScriptedEngine({"Write Python assert": ["Tests:\nassert add(1, 2) == 3\nassert add(2, 2) == 4"],
                             "Write add": [wrong, right]})
    body = ("strategy s(question) {\n c = generate(policy, solve, n=2)\n"
            " return best(c, by=run_tests(c, unit_tests(policy, n=1)))\n}\n")
    result = run(body, [{"question": "Write add(a, b)."}], engine)
    assert result.outputs == [right]
