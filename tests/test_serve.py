"""`ttsc serve` as a client sees it: the official `openai` client (and raw HTTP
for malformed requests) against a real `ttsc serve` process on loopback.

Most tests serve two strategies on the tiny random model. The fault tests
serve a strategy whose model is an OpenAI-compatible server of the test's own
(tests/fake_openai_server.py): an upstream that fails one request, or answers
slowly while the server is asked to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from fake_openai_server import FakeOpenAIServer
from ttsc.runtime.llama_server import free_port

TINY = '''model policy = "tiny-random"
prompt solve = """{question}"""
strategy vote_of_samples(question) {
    return vote(extract(generate(policy, solve, n=4, temperature=0.8, max_tokens=6), number))
}
strategy judged(question, context) {
    cands = generate(policy, solve, n=3, max_tokens=5)
    return best(cands, by=verify(policy, cands))
}
'''
UPSTREAM = '''model policy = "openai:http://127.0.0.1:1/v1#fake"
prompt solve = "{question}"
strategy relay(question) {
    return vote(extract(generate(policy, solve, n=2, temperature=0.0, max_tokens=16), number))
}
'''
KEY = "serve-test-key"


@contextmanager
def serving(source: str, *args: str) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """Run `ttsc serve` on a free port; yield (base URL, process, stderr log)."""
    folder = Path(tempfile.mkdtemp(prefix="ttsc-serve-test-"))
    tts = folder / "served.tts"
    tts.write_text(source)
    log = folder / "stderr.log"
    port = free_port()
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "ttsc.cli", "serve", str(tts),
                                 "--port", str(port), *args],
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"ttsc serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ttsc serve never got ready:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def server():
    with serving(TINY, "--api-key", KEY) as (url, proc, log):
        yield url, proc, log


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0)


def ask(client: openai.OpenAI, question: str = "What is 2 + 3?", **kw):
    return client.chat.completions.create(model="vote_of_samples",
                                          messages=[{"role": "user", "content": question}], **kw)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list()] == ["vote_of_samples", "judged"]
    assert client.models.retrieve("judged").owned_by == "ttsc"
    health = httpx.get(f"{server[0]}/health").json()
    assert health == {"status": "ok", "models": ["vote_of_samples", "judged"]}


def test_chat_answer_and_usage(client):
    r = ask(client, seed=7)
    ran = r.model_extra["ttsc"]
    assert r.model == "vote_of_samples" and r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "stop"
    assert ran["strategy"] == "vote_of_samples" and ran["seed"] == 7
    [used] = ran["usage_by_model"].values()
    assert r.usage.prompt_tokens == used["prompt_tokens"] > 0
    assert r.usage.completion_tokens == used["generated_tokens"] <= 4 * 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens == used["prompt_tokens_reused"]
    again = ask(client, seed=7)  # the same seed runs the same samples
    assert again.choices[0].message.content == r.choices[0].message.content
    assert again.usage.completion_tokens == r.usage.completion_tokens


def test_request_settings_override_the_plan(client):
    small = client.completions.create(model="vote_of_samples", prompt="What is 2 + 3?", n=2,
                                      max_tokens=3, temperature=0.5, seed=1)
    large = client.completions.create(model="vote_of_samples", prompt="What is 2 + 3?", n=6,
                                      max_tokens=3, seed=1)
    assert small.object == "text_completion" and isinstance(small.choices[0].text, str)
    assert small.model_extra["ttsc"]["overrides"] == {"n": 2, "max_tokens": 3, "temperature": 0.5}
    assert large.model_extra["ttsc"]["overrides"] == {"n": 6, "max_tokens": 3}
    assert large.usage.prompt_tokens == 3 * small.usage.prompt_tokens  # 6 samples' prompts vs 2
    assert small.usage.completion_tokens <= 2 * 3 and large.usage.completion_tokens <= 6 * 3


def test_named_inputs_and_a_judge(client):
    r = client.chat.completions.create(model="judged", messages=[{"role": "user", "content": "Q?"}],
                                       extra_body={"inputs": {"context": "some context"}}, n=5)
    ran = r.model_extra["ttsc"]
    assert ran["overrides"] == {"n": 5}
    # one request of 5 samples and 5 verifier calls; only the samples generate tokens
    [used] = ran["usage_by_model"].values()
    assert used["calls"] == 1 + 5 and r.usage.completion_tokens <= 5 * 5
    with pytest.raises(openai.BadRequestError, match="needs `context` too"):
        client.chat.completions.create(model="judged", messages=[{"role": "user", "content": "Q?"}])


def test_streaming_chat_matches_the_plain_answer(client):
    plain = ask(client, seed=3)
    chunks = list(ask(client, seed=3, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    without_usage = list(ask(client, seed=3, stream=True))
    assert all(c.usage is None for c in without_usage)


def test_streaming_completions(client):
    chunks = list(client.completions.create(model="vote_of_samples", prompt="What is 1 + 1?",
                                            stream=True, seed=4))
    plain = client.completions.create(model="vote_of_samples", prompt="What is 1 + 1?", seed=4)
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_each_get_their_own_usage(client):
    """Eight requests at once, each with its own n: each one's usage is what
    the same request costs alone."""
    def one(n: int):
        return client.completions.create(model="vote_of_samples", prompt=f"What is {n} + 1?",
                                         n=n, seed=n, max_tokens=4)

    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, one(n))) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in (1, 5, 8):
        alone = one(n)
        assert results[n].usage.prompt_tokens == alone.usage.prompt_tokens
        assert results[n].usage.completion_tokens == alone.usage.completion_tokens
        assert results[n].choices[0].text == alone.choices[0].text


def test_api_errors(server, client):
    url = server[0]
    headers = {"Authorization": f"Bearer {KEY}"}
    bad_json = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers=headers)
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in bad_json.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"
    missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "judged"}, headers=headers)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        ask(client, temperature=9)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{url}/v1/models").status_code == 401
    route = httpx.get(f"{url}/v1/nothing-here", headers=headers)
    assert route.status_code == 404 and "no route GET /v1/nothing-here" in route.json()["error"]["message"]
    assert ask(client).choices[0].finish_reason == "stop"  # still serving


def test_a_log_line_per_request(server, client):
    ask(client, question="Log me")
    time.sleep(0.2)
    lines = [l for l in server[2].read_text().splitlines() if "ttsc.serve POST" in l]
    assert any("strategy=vote_of_samples status=200 tokens=" in l and "seconds=" in l for l in lines)
    assert KEY not in server[2].read_text()


def test_engine_failure_is_a_5xx_for_that_request_only():
    """The upstream refuses one request: that request gets a 502 with the
    upstream named, the next one is answered."""
    # each request draws two samples, one upstream call each: calls 1-2, then 3-4
    with FakeOpenAIServer(lambda i: ("status", 400, None) if i in (1, 3) else None) as upstream:
        with serving(UPSTREAM, "--model", f"policy={upstream.spec()}") as (url, proc, log):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            question = [{"role": "user", "content": "2+5?"}]
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model="relay", messages=question)
            assert info.value.status_code == 502
            assert upstream.url in info.value.message
            # Streamed, the failure comes after the headers: an error event.
            with pytest.raises(openai.APIError, match="the upstream model server failed"):
                list(client.chat.completions.create(model="relay", messages=question, stream=True))
            ok = client.chat.completions.create(model="relay", messages=question)
            assert ok.choices[0].message.content == "7"  # the fake always answers "Answer: 7"
        assert "status=502" in log.read_text()


def test_concurrent_requests_run_together_through_the_runtime():
    """Eight clients at once against a slow upstream: their engine calls
    overlap there (the runtime does not serve requests one at a time)."""
    with FakeOpenAIServer(lambda i: ("hang", 0.5) if i >= 1 else None) as upstream:
        with serving(UPSTREAM, "--model", f"policy={upstream.spec()}") as (url, proc, log):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            answers: list[str] = []
            threads = [threading.Thread(target=lambda k=k: answers.append(
                client.completions.create(model="relay", prompt=f"{k}?").choices[0].text))
                for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert answers == ["7"] * 8
    assert upstream.most_in_flight >= 8  # 8 requests x 2 samples, all in flight together


def test_graceful_shutdown_finishes_in_flight_requests():
    with FakeOpenAIServer(lambda i: ("hang", 2.0) if i >= 1 else None) as upstream:
        with serving(UPSTREAM, "--model", f"policy={upstream.spec()}") as (url, proc, log):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            got: list = []
            t = threading.Thread(target=lambda: got.append(client.chat.completions.create(
                model="relay", messages=[{"role": "user", "content": "x"}], stream=True)))
            t.start()
            while upstream.in_flight == 0:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            t.join()
            chunks = list(got[0])
            assert proc.wait(timeout=30) == 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "7"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_serve_cli_errors(tmp_path):
    from ttsc.cli import main

    assert main(["serve", str(tmp_path / "missing.tts")]) == 2
    (tmp_path / "s.tts").write_text(TINY)
    assert main(["serve", str(tmp_path / "s.tts"), "--strategy", "nope"]) == 2
    assert main(["serve", str(tmp_path / "s.tts"), "--port", "70000"]) == 2


def test_an_op_the_upstream_cannot_serve_stops_the_start(tmp_path):
    """The upstream (a plain OpenAI-style server: no tokenizer route) cannot
    continue a candidate: `serve` says so at the op and exits 2, serving nothing."""
    tts = tmp_path / "ext.tts"
    tts.write_text('model policy = "openai:http://127.0.0.1:1/v1#fake"\nprompt solve = "{question}"\n'
                   "strategy relay(question) {\n"
                   "    return extend(policy, generate(policy, solve, n=1, max_tokens=4), max_tokens=4)\n}\n")
    with FakeOpenAIServer() as upstream:
        done = subprocess.run([sys.executable, "-P", "-m", "ttsc.cli", "serve", str(tts), "--model",
                               f"policy={upstream.spec()}", "--port", str(free_port())],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert f"{tts}:4:12: error: `extend` cannot run on model `policy`" in done.stderr
        assert upstream.completions == 1  # the probe
