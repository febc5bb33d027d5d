"""Shared fixtures: the tiny random model is built once per test session."""

from __future__ import annotations

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
