"""Hybrid search against vector search alone, over 100,000 texts.

- ``df.embed.search(..., text=, hybrid=True)`` (BM25 by bm25s, fused by reciprocal rank
  fusion) against ``df.embed.search(...)`` on the same frame and query, interleaved round by
  round. The keyword index is built in the warm-up round and kept with the frame, as it is
  for a user's second and later searches; its build is timed on its own, for reference.
- The same on a DuckDB table, where BM25 is the fts extension's (when it is installed).
- The same on an embedding table (``table.search(..., hybrid=True)``: the vectors ranked by
  the table's in-memory path, BM25 by the fts extension over its records), against
  ``table.search(...)``; the table's keyword index is built in the warm-up round.

Texts are sentences of real English words (``benchmarks.corpus``), each with a ticket
number, and the vectors the ``hashing`` provider's at width 384: a search's time does not
depend on the model that made the vectors, and hashing embeds 100,000 texts in seconds.

Run: ``python -m pytest benchmarks/test_bench_hybrid.py``; ``POLARS_EMBED_BENCH_HYBRID_ROWS``
shrinks the corpus.
"""

from __future__ import annotations

import os
from typing import Any

import duckdb
import polars as pl
import pytest

import duckdb_ext
import polars_embed
from benchmarks.corpus import sentences
from benchmarks.ratios import interleaved
from duckdb_ext._extensions import packaged_extension
from polars_embed.keywords import KeywordIndex

pytest.importorskip("bm25s")

ROWS = int(os.environ.get("POLARS_EMBED_BENCH_HYBRID_ROWS", "100_000").replace("_", ""))
K = 10
QUERY = "ticket E4242 payment refused"
GROUP = f"hybrid search over {ROWS:,} texts x 384, k={K}, one query"
DUCKDB_GROUP = f"DuckDB hybrid search over {ROWS:,} texts x 384, k={K}, one query"
TABLE_GROUP = f"embedding table hybrid search over {ROWS:,} texts x 384, k={K}, one query"


@pytest.fixture(scope="module")
def corpus() -> pl.DataFrame:
    texts = [f"{sentence} Ticket E{row:04d}." for row, sentence in enumerate(sentences(ROWS, max_words=30))]
    return pl.DataFrame({"body": texts}).with_columns(
        vec=pl.col("body").embed.with_provider("hashing", dims=384)
    )


def test_vector_search(benchmark: Any, corpus: pl.DataFrame) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["reference"] = True
    hits = benchmark.pedantic(lambda: corpus.embed.search(QUERY, k=K), rounds=5, warmup_rounds=1)
    assert hits.height == K


def test_hybrid_search(benchmark: Any, corpus: pl.DataFrame) -> None:
    """The index is built in the warm-up round, then kept with the frame."""
    benchmark.group = GROUP
    hits = interleaved(
        benchmark,
        lambda: corpus.embed.search(QUERY, text="body", k=K, hybrid=True),
        lambda: corpus.embed.search(QUERY, k=K),
        rounds=5,
    )
    assert hits.height == K
    assert hits["keyword_rank"].null_count() < K  # the keywords took part


def test_keyword_index_build(benchmark: Any, corpus: pl.DataFrame) -> None:
    """Once per column: what the first hybrid search of a frame costs on top."""
    benchmark.group = GROUP
    index = benchmark.pedantic(KeywordIndex, args=(corpus["body"],), rounds=1, warmup_rounds=0)
    assert len(index) == ROWS


@pytest.fixture(scope="module")
def table(corpus: pl.DataFrame) -> duckdb.DuckDBPyConnection:
    if packaged_extension("fts") is None:
        pytest.skip(f"no packaged fts extension for duckdb {duckdb.__version__}")
    con = duckdb.connect()
    con.register("corpus_view", corpus)
    con.sql("CREATE TABLE tickets AS SELECT * FROM corpus_view")
    duckdb_ext.record_provider(con, "tickets", "vec", polars_embed.resolve_provider("hashing", dims=384))
    duckdb_ext.create_fts_index(con, "tickets", "body")
    return con


def test_duckdb_vector_search(benchmark: Any, table: duckdb.DuckDBPyConnection) -> None:
    benchmark.group = DUCKDB_GROUP
    benchmark.extra_info["reference"] = True
    hits = benchmark.pedantic(
        lambda: duckdb_ext.search(table, "tickets", "vec", QUERY, k=K).fetchall(), rounds=5, warmup_rounds=1
    )
    assert len(hits) == K


def test_duckdb_hybrid_search(benchmark: Any, table: duckdb.DuckDBPyConnection) -> None:
    benchmark.group = DUCKDB_GROUP
    hits = interleaved(
        benchmark,
        lambda: duckdb_ext.search(table, "tickets", "vec", QUERY, k=K, text="body", hybrid=True).fetchall(),
        lambda: duckdb_ext.search(table, "tickets", "vec", QUERY, k=K).fetchall(),
        rounds=5,
    )
    assert len(hits) == K


@pytest.fixture(scope="module")
def embedding_table(corpus: pl.DataFrame) -> polars_embed.Table:
    if packaged_extension("fts") is None:
        pytest.skip(f"no packaged fts extension for duckdb {duckdb.__version__}")
    tickets = polars_embed.connect().create_table(
        "tickets",
        {"id": pl.String, "body": pl.String},
        vectors={"vec": polars_embed.VectorOf("body", provider="hashing", dims=384)},
    )
    tickets.add(corpus.select(pl.format("t{}", pl.int_range(pl.len())).alias("id"), "body", "vec"))
    return tickets


def test_table_vector_search(benchmark: Any, embedding_table: polars_embed.Table) -> None:
    benchmark.group = TABLE_GROUP
    benchmark.extra_info["reference"] = True
    hits = benchmark.pedantic(
        lambda: embedding_table.search(QUERY, k=K).to_polars(), rounds=5, warmup_rounds=1
    )
    assert hits.height == K


def test_table_hybrid_search(benchmark: Any, embedding_table: polars_embed.Table) -> None:
    """The keyword index is built in the warm-up round, then reused while the table is unchanged."""
    benchmark.group = TABLE_GROUP
    hits = interleaved(
        benchmark,
        lambda: embedding_table.search(QUERY, k=K, hybrid=True).to_polars(),
        lambda: embedding_table.search(QUERY, k=K).to_polars(),
        rounds=5,
    )
    assert hits.height == K
    assert hits["keyword_rank"].null_count() < K  # the keywords took part
