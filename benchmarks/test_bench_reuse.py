"""A search after 10,000 earlier calls against one after none: nothing the process keeps
may make later calls slower, and a provider named by a string is set up once.

Each round searches a 2,000-row column for a new text query, with the provider named by
a string (``"openai:bench-model"`` and ``base_url=``) at a fake OpenAI-compatible server
on 127.0.0.1 whose model's width is probed, and the embedding cache on, as by default:
each query is one request and one new cache entry. Compared:

- ``search_with_none_before`` (reference): the first searches of the process's state;
- ``search_after_many_earlier_calls``: after ``POLARS_EMBED_BENCH_EARLIER_CALLS``
  (10,000) other searches, each with a query of its own (100 when benchmarks are
  disabled, as in CI's smoke run);
- ``search_building_the_provider_each_call``: as before providers were kept, a new
  provider each call, with a new client (a new connection) and a width probe.

Run: ``python -m pytest benchmarks/test_bench_reuse.py``
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest

import polars_embed
from benchmarks.corpus import sentences
from polars_embed import cache
from tests.fake_servers import FakeOpenAI

pytest.importorskip("openai")

EARLIER_CALLS = int(os.environ.get("POLARS_EMBED_BENCH_EARLIER_CALLS", "10000"))
ROWS = 2_000
ROUNDS = 100
MODEL = "openai:bench-model"
GROUP = f"search of {ROWS:,} rows for a text query (compatible server, cache on), after earlier calls"

_queries = (f"query number {n}" for n in itertools.count())


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(key=None, widths={"bench-model": 64}) as fake:
        yield fake


@pytest.fixture(scope="module")
def search(server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One search for a new query, and the column it searches, embedded with the cache on."""
    url = f"{server.url}/v1"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "_overrides", {})
        polars_embed.configure_cache(enabled=True, path=tmp_path_factory.mktemp("cache") / "bench.sqlite3")
        frame = pl.DataFrame({"text": sentences(ROWS, seed=3)}).with_columns(
            vec=pl.col("text").embed.with_provider(MODEL, base_url=url)
        )

        def one() -> pl.DataFrame:
            return frame.embed.search(next(_queries), on="vec", k=10, provider=MODEL, base_url=url)

        one()  # warm-up: the client, the probe, the cache file
        yield one


def test_search_with_none_before(benchmark: Any, search: Any) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["reference"] = True
    hits = benchmark.pedantic(search, rounds=ROUNDS)
    assert hits.height == 10


def test_search_building_the_provider_each_call(benchmark: Any, search: Any, server: FakeOpenAI) -> None:
    benchmark.group = GROUP
    connections = server.connections

    def as_if_nothing_was_kept() -> tuple[tuple, dict]:
        polars_embed.get_registry()._providers.clear()
        return (), {}

    hits = benchmark.pedantic(search, setup=as_if_nothing_was_kept, rounds=ROUNDS)
    assert hits.height == 10 and server.connections > connections


def test_search_after_many_earlier_calls(benchmark: Any, search: Any, server: FakeOpenAI) -> None:
    benchmark.group = GROUP
    for _ in range(100 if benchmark.disabled else EARLIER_CALLS):
        search()
    connections = server.connections
    hits = benchmark.pedantic(search, rounds=ROUNDS)
    assert hits.height == 10 and server.connections == connections  # the same kept-alive connection
    benchmark.extra_info["earlier calls"] = EARLIER_CALLS
