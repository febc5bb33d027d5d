"""The `openai` engine when the server misbehaves: a small local fake server
(tests/fake_openai_server.py) returns errors, hangs, answers garbage, cuts a
reply short, or dies mid-run. Retried, reported with the endpoint, and
nothing finished is lost."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest

from fake_openai_server import REPLY, FakeOpenAIServer
from ttsc.cli import main
from ttsc.common.errors import UserError
from ttsc.common.prompts import Prompt
from ttsc.runtime.cache import CachedEngine, CallCache
from ttsc.runtime.engines.base import NextTokenRequest, SampleRequest, SamplingParams
from ttsc.runtime.engines.http_pool import ServerError, backoff_delay, retry_after
from ttsc.runtime.engines.openai import OpenAIEngine

ROOT = Path(__file__).resolve().parent.parent
QUESTION = Prompt.user("What is 3 + 4?")
KEY = "sk-test-secret-0123456789"


def engine_for(*servers: FakeOpenAIServer, **options) -> OpenAIEngine:
    options = {"retries": 3, "backoff": 0.01, **options}
    return OpenAIEngine([s.url for s in servers], "fake", **options)


def seeded(n: int = 1, seed: int = 1) -> SampleRequest:
    return SampleRequest(QUESTION, SamplingParams(n=n, max_tokens=32, seed=seed))


def test_errors_then_success_are_retried(caplog):
    script = {0: ("status", 503, None), 1: ("status", 429, 0), 2: ("status", 502, None)}
    with FakeOpenAIServer(lambda i: script.get(i)) as fake:
        engine = engine_for(fake)
        try:
            with caplog.at_level(logging.WARNING, logger="ttsc.openai"):
                [out] = engine.sample([seeded()])
        finally:
            engine.close()
    assert [c.text for c in out.completions] == [REPLY]
    assert out.completions[0].finish_reason == "eos"
    assert engine.pool.stats.retries == 3
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 3 and all(fake.url in m for m in retries)
    assert "HTTP 503: scripted 503; retry 1/3" in retries[0]
    assert out.usage.calls == 1 and out.usage.generated_tokens == len(REPLY)


def test_retry_after_is_honoured():
    with FakeOpenAIServer(lambda i: ("status", 429, 1) if i == 1 else None) as fake:
        engine = engine_for(fake, backoff=0.0)
        try:
            engine.capabilities  # the probe is request 0
            start = time.monotonic()
            engine.sample([seeded()])
            waited = time.monotonic() - start
        finally:
            engine.close()
    assert waited >= 1.0  # Retry-After: 1, though the backoff alone would not wait


def test_last_retry_fails_naming_the_endpoint():
    with FakeOpenAIServer(lambda i: ("status", 500, None) if i >= 1 else None) as fake:
        engine = engine_for(fake, retries=2)
        try:
            with pytest.raises(ServerError) as info:
                engine.sample([seeded()])
        finally:
            engine.close()
    assert info.value.message.startswith(f"{fake.url}: POST /chat/completions failed after 3 "
                                         "attempt(s): HTTP 500: scripted 500")
    assert fake.completions == 4  # the probe, then three attempts


def test_a_client_error_is_not_retried():
    with FakeOpenAIServer(lambda i: ("status", 400, None) if i >= 1 else None) as fake:
        engine = engine_for(fake)
        try:
            with pytest.raises(ServerError, match="was refused: HTTP 400: scripted 400"):
                engine.sample([seeded()])
        finally:
            engine.close()
    assert fake.completions == 2


def test_a_hang_times_out_and_is_retried():
    with FakeOpenAIServer(lambda i: ("hang", 3) if i >= 1 else None) as fake:
        engine = engine_for(fake, timeout=0.3, retries=1)
        try:
            start = time.monotonic()
            with pytest.raises(ServerError, match=r"failed after 2 attempt\(s\): no answer within "
                                                  r"0.3 s \(timeout\)"):
                engine.sample([seeded()])
            assert time.monotonic() - start < 2.5  # did not wait for the hung replies
        finally:
            engine.close()


def test_garbage_and_a_cut_reply_are_clear_errors():
    with FakeOpenAIServer(lambda i: ("garbage",) if i == 1 else ("truncate",) if i >= 2 else None) as fake:
        engine = engine_for(fake, retries=1)
        try:
            with pytest.raises(ServerError, match="answered with something that is not JSON"):
                engine.sample([seeded()])
            with pytest.raises(ServerError, match=r"failed after 2 attempt\(s\): connection failed "
                                                  r"\(RemoteProtocolError"):
                engine.sample([seeded()])
        finally:
            engine.close()


def test_a_pool_fails_over_to_the_live_endpoint():
    dead = FakeOpenAIServer().start()
    dead.stop()  # its port now refuses connections
    with FakeOpenAIServer() as live:
        engine = engine_for(dead, live, backoff=0.01)
        try:
            outs = engine.sample([seeded(n=4, seed=s) for s in range(3)])
        finally:
            engine.close()
    assert [len(o.completions) for o in outs] == [4, 4, 4]
    assert all(c.text == REPLY for o in outs for c in o.completions)
    assert live.completions == 1 + 12  # the probe, then every sample
    assert engine.capabilities.max_concurrency == 2 * 16


def test_a_server_dying_mid_run_loses_nothing_finished(tmp_path):
    """The server serves the probe and three requests, then dies. The batch
    fails with the endpoint named; the three finished requests are in the
    call cache, and a rerun against the restarted server asks only for the rest."""
    cache = CallCache(tmp_path / "calls.db")
    with FakeOpenAIServer(lambda i: ("die",) if i == 4 else None) as fake:
        engine = engine_for(fake, retries=1, max_concurrency=1)
        cached = CachedEngine(engine, cache, engine.spec)
        requests = [seeded(seed=s) for s in range(6)]
        with pytest.raises(ServerError) as info:
            cached.sample(requests)
        engine.close()
        port = fake.port
    assert fake.url in info.value.message
    assert sorted(info.value.finished) == [0, 1, 2]
    with FakeOpenAIServer(port=port) as again:
        engine = engine_for(again)
        try:
            outs = CachedEngine(engine, cache, engine.spec).sample(requests)
        finally:
            engine.close()
    assert [o.completions[0].text for o in outs] == [REPLY] * 6
    assert [o.usage.cache_hits for o in outs] == [1, 1, 1, 0, 0, 0]
    assert again.completions == 1 + 3  # the probe and the three that were lost
    cache.close()


def test_refused_connection_on_the_cli_exits_2(capsys, monkeypatch):
    server = FakeOpenAIServer().start()
    server.stop()
    monkeypatch.setenv("TTSC_OPENAI_RETRIES", "1")
    code = main(["run", str(ROOT / "examples/self_consistency.tts"), "--input", "question=1+1?",
                 "--model", f"policy={server.spec()}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {server.url}: GET /models failed after 2 attempt(s): connection failed" in err
    assert "Traceback" not in err


def test_unknown_model_on_the_cli_exits_2(capsys):
    with FakeOpenAIServer(models=("served-a", "served-b")) as fake:
        code = main(["run", str(ROOT / "examples/self_consistency.tts"), "--input", "question=1+1?",
                     "--model", f"policy={fake.spec('nope')}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {fake.url}: serves no model `nope`\nhint: it serves: served-a, served-b" in err


def test_api_key_is_sent_and_never_shown(caplog, tmp_path):
    script = {1: ("status", 503, 0)}
    with FakeOpenAIServer(lambda i: script.get(i, ("status", 401, None) if i > 2 else None)) as fake:
        engine = engine_for(fake, api_key=KEY)
        try:
            with caplog.at_level(logging.DEBUG):
                engine.sample([seeded()])  # one 503 (logged), then an answer
                with pytest.raises(ServerError) as info:
                    engine.sample([seeded(seed=9)])  # 401
        finally:
            engine.close()
    assert all(headers.get("Authorization") == f"Bearer {KEY}" for _, headers, _ in fake.seen)
    shown = [repr(engine), repr(engine.pool), engine.spec, info.value.render(), caplog.text]
    assert caplog.text and not any(KEY in text for text in shown)


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAIServer() as fake:
        engine = engine_for(fake)
        try:
            engine.sample([seeded()])
        finally:
            engine.close()
    assert fake.seen[-1][1].get("Authorization") == f"Bearer {KEY}"


def test_a_plain_server_declares_what_it_lacks():
    """No tokenizer route and no token ids: the capabilities say so, tokenize
    and continuation scores are clear errors, and choices are matched by text."""
    with FakeOpenAIServer() as fake:
        engine = engine_for(fake)
        try:
            caps = engine.capabilities
            assert (caps.tokenizer, caps.token_ids, caps.continuation_scores,
                    caps.assistant_prefix) == (False, False, False, False)
            assert caps.logprobs and caps.next_token_scores
            with pytest.raises(UserError, match="no tokenizer route"):
                engine.tokenize(QUESTION)
            [out] = engine.sample([seeded()])
            assert out.completions[0].token_ids == [] and len(out.completions[0].logprobs) == len(REPLY)
            [score] = engine.score_next([NextTokenRequest(QUESTION, ("Answer", "Zebra"))])
            assert score.logprobs[0] == -0.25  # "A", the first character, is the only top token
            # missing: bounded by the mass outside the top tokens
            assert score.logprobs[1] == pytest.approx(math.log(1 - math.exp(-0.25)))
            with pytest.raises(UserError, match="cannot continue an assistant reply"):
                engine.sample([SampleRequest(QUESTION.continued("So"), SamplingParams(max_tokens=4))])
        finally:
            engine.close()


def test_backoff_and_retry_after_parsing():
    delays = [backoff_delay(a, 0.5, 4.0) for a in range(6) for _ in range(20)]
    assert all(0.25 <= d <= 0.5 for d in delays[:20])  # half fixed, half jitter
    assert all(2.0 <= d <= 4.0 for d in delays[-20:])  # capped
    assert len(set(delays[:20])) > 1  # jittered
    import httpx

    assert retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert retry_after(httpx.Headers({})) is None
    assert retry_after(httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0


def test_an_op_the_server_cannot_serve_is_a_compile_error_before_any_work(tmp_path, capsys):
    """A plain OpenAI-style server has no tokenizer route, so it cannot continue
    a candidate (`extend`): `run` and `eval` ask the server what it serves and
    stop at the op, after one probe request, with exit status 2."""
    source = tmp_path / "ext.tts"
    source.write_text('model policy = "tiny-random"\nprompt solve = "{question}"\n'
                      "strategy s(question) {\n"
                      "    c = extend(policy, generate(policy, solve, n=2, max_tokens=4), max_tokens=4)\n"
                      "    return vote(extract(c, number))\n}\n")
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "What is 3 + 4?", "answer": "7"}\n')
    with FakeOpenAIServer() as fake:
        model = f"policy={fake.spec()}"
        assert main(["run", str(source), "--input", "question=x", "--model", model]) == 2
        err = capsys.readouterr().err
        assert f"{source}:4:9: error: `extend` cannot run on model `policy`" in err
        assert "assistant_prefix" in err
        assert main(["eval", str(source), "--data", str(data), "--model", model, "--no-cache"]) == 2
        assert "`extend` cannot run on model `policy`" in capsys.readouterr().err
        assert fake.completions == 2  # the two probes, nothing else
        # Compiling alone asks no server: the declaration of a capable one.
        assert main(["compile", str(source), "--model", model]) == 0
        assert fake.completions == 2
