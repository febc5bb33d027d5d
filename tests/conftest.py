"""Shared fixtures: the tiny random model is built once per test session,
llama.cpp's server (for the `openai` engine) and a local Ray instance (for the
`--ray` tests) are started once when a test asks."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from ttsc.runtime.models import LoadedModel, tiny_random_model


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    return tiny_random_model()


@pytest.fixture
def tiny_paged(tiny_model: LoadedModel) -> Iterator:
    """A paged engine on the tiny model: fp32 (exact) and a 16 MiB KV pool."""
    import torch

    from ttsc.runtime.engines.paged.engine import PagedEngine

    engine = PagedEngine(tiny_model, dtype=torch.float32, kv_memory_bytes=16 << 20)
    yield engine
    engine.close()


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


@pytest.fixture(scope="session")
def local_ray() -> Iterator["ClusterInfo"]:  # noqa: F821 - imported below
    """One private local Ray instance for every Ray test of the session
    (starting one takes seconds on two cores). Private: "local" never joins an
    instance someone's `ray start` left on this machine."""
    import logging

    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ttsc[ray]'; "
                                            "scripts/install.sh installs it)")
    from ttsc.runtime.distributed.cluster import OBJECT_STORE_BYTES, connect

    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
             object_store_memory=OBJECT_STORE_BYTES, logging_level=logging.WARNING,
             log_to_driver=False)
    yield connect(None)  # already connected: describes the instance
    ray.shutdown()
