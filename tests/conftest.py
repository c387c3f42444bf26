from __future__ import annotations

import pytest

from polars_embed import engine, registry
from tests.providers import CountingProvider


@pytest.fixture
def counting() -> CountingProvider:
    return CountingProvider()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds, not seconds, in tests."""
    monkeypatch.setattr(engine, "BACKOFF_BASE", 0.001)


@pytest.fixture(autouse=True)
def no_providers_built_before() -> None:
    """Each test starts as a fresh process would: the default registry has built no
    provider yet (a fake server's port may be one an earlier test's server had)."""
    if registry._default_registry is not None:
        registry._default_registry._providers.clear()
