"""The serving side's runtime half (runtime/serve/service.py) without HTTP:
which nodes a request's settings reach, inside loops too."""

from __future__ import annotations

import pytest

from ttsc.compiler.pipeline import compile_source
from ttsc.runtime.engines.registry import make_engine
from ttsc.runtime.serve.service import Service, answer_text, sampling_nodes

GROW = '''model policy = "tiny-random"
prompt solve = """{question}"""
strategy grow(question) {
    beams = generate(policy, solve, n=2, max_tokens=3)
    repeat 2 {
        beams = extend(policy, beams, n=1, max_tokens=3)
    }
    return beams
}
'''


@pytest.fixture(scope="module")
def service():
    plan = compile_source(GROW, "grow.tts").plan
    engine = make_engine("tiny-random", engine="hf")
    yield Service({"grow": plan}, {"grow": {"policy": engine}})
    engine.close()


def test_sampling_nodes_reach_into_loops(service):
    nodes = sampling_nodes(service.plans["grow"].region)
    ops = sorted(op for _, op in nodes)
    assert ops == ["extend", "generate"]
    [loop_node] = [path for path, op in nodes if op == "extend"]
    assert "/" in loop_node  # STAGE/NODE: the executor's path for a loop body's node


def test_overrides_reach_every_sampling_node(service):
    plain = service.run("grow", {"question": "Count: 1 2 3"}, {}, seed=5)
    capped = service.run("grow", {"question": "Count: 1 2 3"}, {"max_tokens": 1, "n": 3}, seed=5)
    assert capped.ran["overrides"] == {"max_tokens": 1, "n": 3} and capped.ran["ignored"] == []
    # n=3 reaches the loop's extend too: more than the 3 first samples come out
    # (9 after one round, 27 after two, less what finished early)
    assert len(plain.result.output) == 2 and len(capped.result.output) > 3
    assert all(c.tokens <= 3 for c in capped.result.output)  # 1 + 1 + 1 tokens at most
    assert any(c.tokens > 3 for c in plain.result.output)  # what the plan alone does
    assert answer_text(capped.result.output) == "\n\n".join(c.text for c in capped.result.output)

