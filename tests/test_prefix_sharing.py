"""The prefix-sharing pass: shared-part-first prompt layout, the token trie, facts."""

import pytest

from ttsc.compiler import model_facts
from ttsc.compiler.build import build
from ttsc.compiler.ir import Op
from ttsc.compiler.passes.inline import inline
from ttsc.compiler.passes.prefix_sharing import prefix_sharing
from ttsc.compiler.prefix.layout import node_layout
from ttsc.compiler.prefix.predict import analyze
from ttsc.compiler.prefix.rewrite import shared_first
from ttsc.compiler.prefix.trie import PrefixTrie, longest_prefix_first
from ttsc.compiler.pipeline import compile_source, program_for
from ttsc.dsl.parser import parse
from ttsc.runtime.engines.base import Prompt
from ttsc.runtime.executor import Executor

from scripted_engine import ScriptedEngine


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))


CANDIDATE_FIRST = '''model policy = "smollm2-135m"
prompt solve = """
{question}
Think step by step, then finish with "Answer: <number>".
"""
prompt check = """
Proposed solution: {candidate}
Problem: {question}
Is the proposed solution correct? Answer Yes or No.
"""
strategy s(question) {
    cands = generate(policy, solve, n=16, temperature=0.8, max_tokens=64)
    return best(cands, by=verify(policy, cands, check))
}
'''


def program_of(source: str):
    built = build(parse(source, "t.tts"))
    assert not built.diagnostics.errors
    prog = program_for(built, list(built.info.strategies)[-1])
    inline(prog)
    return prog


# ------------------------------------------------------------------ layout


def test_shared_first_moves_the_question_block_before_the_candidate():
    user = "Proposed solution: {candidate}\nProblem: {question}\nIs it correct? Answer Yes or No."
    assert shared_first(user, "verify") == \
        "Problem: {question}\nProposed solution: {candidate}\nIs it correct? Answer Yes or No."
    # Paragraph blocks move whole.
    para = "Answer:\n{candidate}\n\nQuestion:\n{question}\n\nIs the answer right?"
    assert shared_first(para, "verify") == "Question:\n{question}\n\nAnswer:\n{candidate}\n\nIs the answer right?"


def test_shared_first_leaves_meaningful_order_alone():
    # Already question first.
    assert shared_first("Problem: {question}\nAnswer: {candidate}\nOK?", "verify") is None
    # An instruction between the blocks: moving would change what is asked.
    assert shared_first("Answer: {candidate}\nCheck it carefully against\nProblem: {question}",
                        "verify") is None
    # Unlabeled text: no block structure to rely on.
    assert shared_first("Is {candidate} the answer to {question}?", "verify") is None
    # Ops without per-call holes are never rewritten.
    assert shared_first("Answer: {candidate}\nProblem: {question}", "generate") is None


def test_pass_rewrites_the_verifier_prompt_and_reports_it():
    prog = program_of(CANDIDATE_FIRST)
    before = analyze(prog).totals()
    result = prefix_sharing(prog)
    assert result.changed
    verify = next(n for n in prog.graph.nodes() if n.op is Op.VERIFY)
    assert verify.attrs["prompt"] == "check__shared_first"
    assert prog.prompts["check__shared_first"]["user"].lstrip().startswith("Problem: {question}")
    assert prog.prompts["check"]["user"].lstrip().startswith("Proposed solution")  # kept as written
    assert any("laid out question-first" in n for n in result.notes)
    after = analyze(prog).totals()
    assert after["with"] < before["with"]
    # Same text, reordered (pieces are estimated in 4-character chunks, so a few differ).
    assert after["without"] == pytest.approx(before["without"], rel=0.02)
    again = prefix_sharing(prog)
    assert not again.changed and not again.notes  # idempotent, reported once


def test_rewritten_prompt_reaches_the_engine():
    plan = compile_source(CANDIDATE_FIRST, "t.tts").plan
    seen: list[str] = []

    class Recording(ScriptedEngine):
        def score_next(self, requests):
            seen.extend(r.prompt.messages[-1][1] for r in requests)
            return super().score_next(requests)

    engine = Recording(answers={"What": ["Answer: 5"]})
    Executor(plan, {"policy": engine}).run([{"question": "What is 2+3?"}])
    assert len(seen) == 16
    assert all(t.lstrip().startswith("Problem: What is 2+3?\nProposed solution: Answer: 5") for t in seen)


# ------------------------------------------------------------------ trie and order


def test_trie_counts_new_tokens_and_orders_longest_prefix_first():
    trie = PrefixTrie()
    assert trie.insert([1, 2, 3, 4]) == 4
    assert trie.insert([1, 2, 3, 5]) == 1
    assert trie.insert([1, 2]) == 0
    assert trie.size == 5 and trie.common([1, 2, 9]) == 2
    seqs = [[1, 2, 9], [7], [1, 2, 3], [1, 5], [1, 2, 3, 4]]
    order = longest_prefix_first(seqs)
    assert [seqs[i] for i in order] == [[1, 2, 3], [1, 2, 3, 4], [1, 2, 9], [1, 5], [7]]


def test_stage_prefill_with_and_without_sharing_by_hand():
    prog = program_of(CANDIDATE_FIRST.replace("Proposed solution: {candidate}\nProblem: {question}",
                                              "Problem: {question}\nProposed solution: {candidate}"))
    gen, ver = [n for n in prog.graph.nodes() if n.op in (Op.GENERATE, Op.VERIFY)]
    q = 32  # DEFAULT_INPUT_TOKENS stands for the question
    gen_len = node_layout(prog, gen, "smollm2-135m").counts(lambda h: q)[0]
    ver_full, ver_shared = node_layout(prog, ver, "smollm2-135m").counts(lambda h: q if h.kind == "input" else 0)
    s0, s1 = analyze(prog).stages
    assert s0.prefill_without == 16 * gen_len and s0.prefill_with == gen_len
    assert s0.generated == 16 * 64
    call = ver_full + 64  # each call: the prompt plus a 64-token candidate
    assert s1.prefill_without == 16 * call
    # The chat frame and question prefix are already cached by the generate call;
    # each call adds what follows its shared prefix.
    reused = s1.prefill_with - 16 * (call - ver_shared)
    assert 0 <= reused <= ver_shared


def test_plan_facts_report_predictions():
    plan = compile_source(CANDIDATE_FIRST, "t.tts").plan
    f = plan.facts
    assert f["prefill_tokens_saved"] == (f["prefill_tokens_per_input"]["without_sharing"]
                                         - f["prefill_tokens_per_input"]["with_sharing"]) > 0
    assert f["predicted_tokens_per_input"] > f["prefill_tokens_per_input"]["with_sharing"]
    assert f["kv_peak_bytes"] > 0 and f["predicted_latency_s"] > 0
    assert f["token_counts"] == "estimated"  # no tokenizer cached in this test's cache dir
    gen_stage, verify_stage = f["prefix_stages"]
    assert gen_stage["prefill_without_sharing"] == 16 * gen_stage["prefill_with_sharing"]
    assert verify_stage["order"] == verify_stage["nodes"]
    passes = {p["pass"]: p for p in plan.passes}
    assert any("estimated at 4 characters per token" in n for n in passes["prefix_sharing"]["notes"])


def test_loops_count_every_round():
    source = '''model policy = "smollm2-135m"
prompt solve = """{question}"""
prompt check = """Problem: {question}
Proposed solution: {candidate}
Correct?"""
strategy beam(question) {
    beams = generate(policy, solve, n=8, max_tokens=16)
    repeat 3 until all_done(beams) {
        beams = top(beams, by=verify(policy, beams, check), k=2)
        beams = extend(policy, beams, n=4, max_tokens=16)
    }
    return best(beams, by=verify(policy, beams, check))
}
'''
    stages = analyze(program_of(source)).stages
    loop = [s for s in stages if s.rounds == 3]
    assert {tuple(s.nodes) for s in loop} and all(s.prefill_with < s.prefill_without for s in loop)


def test_token_exact_with_a_cached_tokenizer(tiny_model):
    from ttsc.runtime.engines.hf import HFEngine

    model_facts.cache_model_facts("tiny-random", tiny_model)
    source = '''model policy = "tiny-random"
prompt hello = """Say Yes or No."""
strategy s(question) {
    return best(generate(policy, hello, n=2, max_tokens=4), by=verify(policy, generate(policy, hello, n=2, max_tokens=4)))
}
'''
    prog = program_of(source)
    gen = next(n for n in prog.graph.nodes() if n.op is Op.GENERATE)
    layout = node_layout(prog, gen, "tiny-random")
    ids = [t for piece in layout.pieces for t in piece]
    assert ids == HFEngine(tiny_model).tokenize(Prompt.user("Say Yes or No."))
    assert analyze(prog).exact


THREE_PROMPTS = '''model policy = "smollm2-135m"
prompt alpha = """
Solve this carefully and show your work step by step: {question}
Then give the answer.
"""
prompt other = """
Zebra crossing rules differ by country. {question}
"""
prompt beta = """
Solve this carefully and show your work step by step: {question}
Then check the answer.
"""
strategy s(question) {
    a = generate(policy, alpha, n=2, temperature=0.8, max_tokens=8)
    b = generate(policy, other, n=2, temperature=0.8, max_tokens=8)
    c = generate(policy, beta, n=2, temperature=0.8, max_tokens=8)
    return vote(extract(a + b + c, number))
}
'''


def test_executor_sends_requests_longest_prefix_first():
    plan = compile_source(THREE_PROMPTS, "t.tts").plan
    [stage] = [s for s in plan.region.stages if s.kind == "llm"]
    prompts = {nid: plan.region.nodes[nid].attrs["prompt"] for nid in stage.nodes}
    order = [prompts[nid] for nid in stage.nodes]
    # alpha and beta share their first line: they sit together, whatever the source order.
    assert abs(order.index("alpha") - order.index("beta")) == 1
    [facts] = [f for f in plan.facts["prefix_stages"] if f["nodes"] and set(f["nodes"]) == set(stage.nodes)]
    assert facts["order"] == stage.nodes
    seen: list[str] = []

    class Recording(ScriptedEngine):
        def sample(self, requests):
            seen.extend(r.prompt.messages[-1][1].split()[0] for r in requests)
            return super().sample(requests)

    Executor(plan, {"policy": Recording(answers={"": ["7"]})}).run([{"question": "What is 3+4?"}])
    first_words = {"alpha": "Solve", "beta": "Solve", "other": "Zebra"}
    assert seen == [first_words[p] for p in order]
