from __future__ import annotations

import pytest

from polars_embed import engine
from tests.providers import CountingProvider


@pytest.fixture
def counting() -> CountingProvider:
    return CountingProvider()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds, not seconds, in tests."""
    monkeypatch.setattr(engine, "BACKOFF_BASE", 0.001)
