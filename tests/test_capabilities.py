"""The capabilities pass: an op its model's engine cannot serve is a
compile-time error; a missing tokenizer only makes prompt counts estimates."""

from __future__ import annotations

import pytest

from ttsc.common.capabilities import Capabilities
from ttsc.common.errors import TTSError
from ttsc.compiler import model_facts
from ttsc.compiler.explain import explain
from ttsc.compiler.pipeline import compile_source

SOURCE = '''model policy = "tiny-random"
model judge = "hf:example/judge"
prompt solve = "{question} Answer:"
strategy s(question) {
    c = generate(policy, solve, n=4, max_tokens=8)
    c = extend(policy, c, n=1, max_tokens=8)
    return best(c, by=verify(judge, c))
}
'''
HTTP = Capabilities(next_token_scores=False, continuation_scores=False, assistant_prefix=False,
                    tokenizer=False, prefix_cache=False)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTSC_CACHE_DIR", str(tmp_path / "cache"))


def test_an_op_the_engine_cannot_serve_is_an_error_at_the_op():
    with pytest.raises(TTSError) as caught:
        compile_source(SOURCE, "t.tts", capabilities={"judge": HTTP})
    [diag] = caught.value.diagnostics
    assert diag.message.startswith("`verify` cannot run on model `judge` (hf:example/judge): its "
                                   "engine does not provide next_token_scores")
    assert (diag.span.line, diag.span.column) == (7, 23)
    assert "`t.tts:7:23: error:" in "`" + caught.value.render()


def test_every_unserved_op_is_reported():
    with pytest.raises(TTSError) as caught:
        compile_source(SOURCE, "t.tts", capabilities={"policy": HTTP, "judge": HTTP})
    messages = [d.message for d in caught.value.diagnostics]
    assert len(messages) == 2
    assert any(m.startswith("`extend` cannot run on model `policy`") and "assistant_prefix" in m
               for m in messages)


def test_no_capabilities_or_an_engine_that_serves_everything_compiles():
    compile_source(SOURCE, "t.tts")
    compile_source(SOURCE, "t.tts", capabilities={"policy": Capabilities(), "judge": Capabilities()})


def test_no_tokenizer_means_estimated_prompt_tokens_and_explain_says_why(tiny_model):
    model_facts.cache_model_facts("tiny-random", tiny_model)
    source = SOURCE.replace("hf:example/judge", "tiny-random")
    assert compile_source(source, "t.tts").plan.facts["token_counts"] == "exact"
    compiled = compile_source(source, "t.tts", capabilities={"policy": Capabilities(tokenizer=False)})
    assert compiled.plan.facts["token_counts"] == "estimated"
    text = explain(compiled)
    assert ("token counts tiny-random: estimated at 4 characters per token (the engine serving "
            "`policy` has no tokenizer)") in text
    assert "model `policy`: its engine has no tokenizer, so prompt tokens are estimated" in text


def test_capabilities_by_spec_are_asked_for_the_models_used_after_overrides():
    asked = []

    def by_spec(spec: str) -> Capabilities:
        asked.append(spec)
        return HTTP if spec.startswith("openai:") else Capabilities()

    unused = SOURCE.replace('model judge', 'model spare = "openai:http://127.0.0.1:9/v1#m"\nmodel judge')
    compile_source(unused, "t.tts", capabilities=by_spec)
    assert sorted(asked) == ["hf:example/judge", "tiny-random"]  # never `spare`
    with pytest.raises(TTSError) as caught:
        compile_source(SOURCE, "t.tts", models={"judge": "openai:http://127.0.0.1:9/v1#m"},
                       capabilities=by_spec)
    [diag] = caught.value.diagnostics
    assert diag.message.startswith("`verify` cannot run on model `judge` (openai:http://127.0.0.1:9/v1#m)")
