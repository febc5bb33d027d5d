"""Shared fixtures: the tiny random model is built once per test session."""

from __future__ import annotations

import pytest

from ttsc.runtime.models import LoadedModel, tiny_random_model


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    return tiny_random_model()
