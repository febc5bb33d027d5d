"""Shared fixtures: the tiny random model is built once per test session, and
llama.cpp's server (for the `openai` engine) is started once when a test asks."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from ttsc.runtime.models import LoadedModel, tiny_random_model


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    return tiny_random_model()


@pytest.fixture(autouse=True)
def private_call_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test gets its own default call cache: answers never leak between
    tests or from the user's own runs."""
    monkeypatch.setenv("TTSC_CALL_CACHE", str(tmp_path_factory.mktemp("calls") / "calls.db"))


@pytest.fixture(scope="session")
def llama_server() -> Iterator["LlamaServer"]:  # noqa: F821 - imported below
    """llama.cpp's llama-server serving the embedded model on a free loopback port.

    Missing binary: the test skips on a developer's machine, and fails under CI
    (CI=true), where scripts/install.sh must have built it."""
    from ttsc.runtime.llama_server import LlamaServer, embedded_gguf, find_tool

    if find_tool("llama-server") is None:
        message = ("llama-server is not built: run scripts/install.sh "
                   "(scripts/build_llama_cpp.sh builds it into .venv/bin)")
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    # One thread: on a busy two-core machine llama.cpp's threads wait on each
    # other at every op; one thread is several times faster there.
    with LlamaServer(embedded_gguf(), threads=1, parallel=4) as server:
        yield server
