"""No repeated set-up: a provider named by a string is built once per process, with its SDK
client, width probe and model, and nothing the process keeps grows with the calls it made."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest

import polars_embed
from polars_embed import Provider, cache, engine, metadata, option, registry
from polars_embed.namespaces import _column_jobs
from polars_embed.providers import openai as openai_provider
from polars_embed.providers.openai import OpenAIProvider
from tests.fake_servers import FakeOpenAI
from tests.providers import vector_for

pytest.importorskip("openai")

MODEL = "openai:nomic-embed-text"
SECRET = "sk-secret-0123456789"


@pytest.fixture(autouse=True)
def no_openai_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(key=None, widths={"nomic-embed-text": 12}) as fake:
        yield fake


@pytest.fixture
def cache_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_overrides", {})


class Counts:
    """Spies on the set-up a provider does: constructions, SDK clients, width probes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.built = self.clients = self.probes = 0
        post_init, connect = OpenAIProvider.__post_init__, OpenAIProvider._connect
        embed_batch = OpenAIProvider.embed_batch

        def counted_post_init(provider: OpenAIProvider) -> None:
            self.built += 1
            post_init(provider)

        def counted_connect(provider: OpenAIProvider, *args: Any) -> Any:
            self.clients += 1
            return connect(provider, *args)

        def counted_embed_batch(provider: OpenAIProvider, texts: list[str], *, kind: Any) -> Any:
            self.probes += texts == [openai_provider.PROBE_TEXT]
            return embed_batch(provider, texts, kind=kind)

        monkeypatch.setattr(OpenAIProvider, "__post_init__", counted_post_init)
        monkeypatch.setattr(OpenAIProvider, "_connect", counted_connect)
        monkeypatch.setattr(OpenAIProvider, "embed_batch", counted_embed_batch)


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    return Counts(monkeypatch)


def process_state() -> dict[str, int]:
    """The sizes of what the process keeps between calls."""
    gc.collect()
    return {
        "built providers": len(polars_embed.get_registry()._providers),
        "concurrency limits": len(engine._limits),
        "remembered providers": metadata._remembered.provider_count,
        "remembered chunks": metadata._remembered.chunk_count,
        "open column jobs": len(_column_jobs._open),
        "caches": len(cache._caches),
    }


class TestBuiltOnce:
    def test_the_same_name_and_options_give_the_same_provider(self) -> None:
        first = polars_embed.resolve_provider("hashing", dims=16)
        assert polars_embed.resolve_provider("hashing", dims=16) is first
        assert polars_embed.resolve_provider("hashing", dims=32) is not first

    def test_ten_thousand_calls_build_one_provider_one_client_and_probe_once(
        self, server: FakeOpenAI, counts: Counts
    ) -> None:
        url = f"{server.url}/v1"
        for _ in range(10_000):
            provider = polars_embed.resolve_provider(MODEL, base_url=url)
            assert engine.width_of(provider) == 12
        connections = server.connections
        for i in range(20):  # calls that send requests, through one client
            polars_embed.embed([f"text {i}"], MODEL, base_url=url)
        assert (counts.built, counts.clients, counts.probes) == (1, 1, 1)
        # One kept-alive connection (a new one if the probe's idled out during the loop).
        assert len(server.requests) == 21 and server.connections - connections <= 1

    def test_searches_set_up_once_and_the_process_keeps_no_more_after_many(
        self, server: FakeOpenAI, counts: Counts, cache_on: None
    ) -> None:
        url = f"{server.url}/v1"
        frame = pl.DataFrame({"text": ["a cat", "a dog", None, "a bird"]}).with_columns(
            vec=pl.col("text").embed.with_provider(MODEL, base_url=url)
        )
        search = lambda i: frame.embed.search(f"query {i}", on="vec", k=2, provider=MODEL, base_url=url)  # noqa: E731
        for i in range(10):
            search(i)
        before = process_state()
        for i in range(10, 300):
            assert search(i).height == 2
        assert process_state() == before
        assert (counts.built, counts.clients, counts.probes) == (1, 1, 1)
        # One kept-alive connection, and a new one whenever it idled out (a loaded machine can
        # pause a process longer than the keep-alive): never one per search.
        assert server.connections <= 5

    def test_a_provider_unpickled_in_the_process_that_built_it_is_that_one(self, server: FakeOpenAI) -> None:
        import pickle

        provider = polars_embed.resolve_provider(MODEL, base_url=f"{server.url}/v1")
        assert pickle.loads(pickle.dumps(provider)) is provider

    def test_bounded_least_recently_used_first(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(registry, "MAX_BUILT_PROVIDERS", 4)
        kept = polars_embed.resolve_provider("hashing", dims=1)
        dropped = polars_embed.resolve_provider("hashing", dims=2)
        for dims in range(3, 10):
            polars_embed.resolve_provider("hashing", dims=dims)
            assert polars_embed.resolve_provider("hashing", dims=1) is kept  # used again: kept
        assert len(polars_embed.get_registry()._providers) == 4
        assert polars_embed.resolve_provider("hashing", dims=2) is not dropped

    def test_new_defaults_give_a_new_provider(self) -> None:
        registry_ = polars_embed.get_registry()
        try:
            registry_.configure("openai", base_url="http://first/v1")
            first = polars_embed.resolve_provider(MODEL)
            assert polars_embed.resolve_provider(MODEL) is first
            registry_.configure("openai", base_url="http://second/v1")
            assert polars_embed.resolve_provider(MODEL).base_url == "http://second/v1"
        finally:
            registry_.configure("openai")

    def test_a_value_of_another_type_is_still_checked(self) -> None:
        polars_embed.resolve_provider("hashing", batch_size=1)
        with pytest.raises(polars_embed.ConfigError, match="batch_size"):
            polars_embed.resolve_provider("hashing", batch_size=True)  # True == 1, but not a size

    def test_an_option_that_cannot_be_a_key_is_built_each_time(self) -> None:
        @dataclass(frozen=True, kw_only=True, repr=False)
        class WithAList(Provider):
            name: ClassVar[str] = "with-a-list"
            model: str = "m"
            stops: list[str] | None = option(None, runtime=True)

        registry_ = registry.Registry(entry_points=False)
        registry_.register(WithAList)
        assert registry_.create("with-a-list", stops=["a"]) is not registry_.create(
            "with-a-list", stops=["a"]
        )
        assert registry_.create("with-a-list") is registry_.create("with-a-list")


class TestSecrets:
    def test_a_secret_keys_a_provider_but_never_shows(
        self, server: FakeOpenAI, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        url = f"{server.url}/v1"
        provider = polars_embed.resolve_provider(MODEL, base_url=url, api_key=SECRET)
        polars_embed.embed(["a"], provider)
        assert polars_embed.resolve_provider(MODEL, base_url=url, api_key=SECRET) is provider
        assert polars_embed.resolve_provider(MODEL, base_url=url, api_key=SECRET + "x") is not provider
        built = polars_embed.get_registry()._providers
        assert SECRET not in repr(list(built)) and SECRET not in caplog.text
        assert SECRET not in repr(provider.__dict__.get("_sdk_client")[0])

    def test_a_key_that_changes_in_the_environment_gets_a_new_client(
        self, monkeypatch: pytest.MonkeyPatch, counts: Counts
    ) -> None:
        with FakeOpenAI(key="second-key", widths={"nomic-embed-text": 12}) as server:
            options = {"base_url": f"{server.url}/v1", "api_key": "$env:PE_REUSE_KEY", "dims": 12}
            monkeypatch.setenv("PE_REUSE_KEY", "first-key")
            with pytest.raises(polars_embed.EmbeddingIncompleteError, match="401"):
                polars_embed.embed(["a"], MODEL, **options)
            monkeypatch.setenv("PE_REUSE_KEY", "second-key")
            assert polars_embed.embed(["a"], MODEL, **options).to_list() == [vector_for("a", 12).tolist()]
            polars_embed.embed(["b"], MODEL, **options)
        assert (counts.built, counts.clients) == (1, 2)


class TestLimitsDoNotGrow:
    def test_a_callable_per_call_leaves_no_limit_behind(self) -> None:
        gc.collect()
        before = len(engine._limits)
        for i in range(200):  # queries: the store of document vectors keeps their providers
            polars_embed.embed(
                ["a"], lambda texts, i=i: np.full((len(texts), 4), i + 1.0, dtype=np.float32), kind="query"
            )
        gc.collect()
        assert len(engine._limits) - before < 10


class TestCompatibleServersKeepTheirOwnVectors:
    def test_two_servers_serving_one_model_name_do_not_share_cache_entries(self, cache_on: None) -> None:
        with (
            FakeOpenAI(key=None, widths={"nomic-embed-text": 12}) as first,
            FakeOpenAI(key=None, widths={"nomic-embed-text": 12}, salt="other model:") as second,
        ):
            at = lambda server: {"base_url": f"{server.url}/v1", "dims": 12}  # noqa: E731
            assert polars_embed.embed(["a"], MODEL, **at(first)).to_list() == [vector_for("a", 12).tolist()]
            from_second = polars_embed.embed(["a"], MODEL, **at(second))
            assert from_second.to_list() == [vector_for("other model:a", 12).tolist()]
            assert polars_embed.last_stats().cache_hits == 0 and second.texts == ["a"]
            polars_embed.embed(["a"], MODEL, **at(first))
            assert polars_embed.last_stats().cache_hits == 1 and first.texts == ["a"]

    def test_the_scope_is_the_endpoint_never_the_key(self) -> None:
        one = polars_embed.resolve_provider(MODEL, base_url="http://server/v1/", api_key=SECRET)
        other = polars_embed.resolve_provider(MODEL, base_url="http://server/v1", api_key="another key")
        assert one.cache_scope() == other.cache_scope() == "http://server/v1"
        assert cache.fingerprint(one) == cache.fingerprint(other)
        assert SECRET not in str(one.cache_scope())

    @pytest.mark.parametrize("base_url", [None, "https://api.openai.com/v1/"])
    def test_openais_own_service_keeps_the_keys_it_had(self, base_url: str | None) -> None:
        provider = polars_embed.resolve_provider("openai", base_url=base_url)
        assert provider.cache_scope() is None
        assert cache.fingerprint(provider) == cache.fingerprint(polars_embed.resolve_provider("openai"))
