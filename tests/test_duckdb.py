"""DuckDB without vss: embed() in SQL, embed_table backfills, exact search, and quoting."""

from __future__ import annotations

import contextlib
import gc
import importlib
import itertools
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import duckdb_ext
import polars_embed
from duckdb_ext._catalog import vector_literal
from polars_embed import (
    ConfigError,
    DimensionMismatchError,
    DuplicateProviderError,
    EmbeddingIncompleteError,
    InputTypeError,
    InvalidInputError,
    UnknownProviderError,
)
from polars_embed.metadata import VectorSpec
from tests.providers import CountingProvider, LongTextsProvider, RefusesFirstCall
from tests.test_kernels import peak_bytes
from tests.test_quantize import clustered

HOSTILE_TABLE = 'we"ird; DROP TABLE victim; --'
HOSTILE_TEXT = "bo'dy\"; DELETE FROM victim; --"
HOSTILE_VECTOR = 'v"e;c'


@pytest.fixture(scope="module", autouse=True)
def counting_is_registered() -> None:
    """Specs stored in comments name their provider, which must be in the registry to be read back."""
    with contextlib.suppress(DuplicateProviderError):
        polars_embed.get_registry().register(CountingProvider, origin="tests")


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def texts_with_gaps(count: int) -> list[str | None]:
    """Distinct texts with NULLs and blanks scattered between them."""
    return [None if i % 7 == 3 else "  " if i % 11 == 5 else f"text number {i}" for i in range(count)]


def create_docs(con: duckdb.DuckDBPyConnection, texts: list[str | None], name: str = "docs") -> None:
    frame = pl.DataFrame({"id": range(len(texts)), "body": texts}, schema={"id": pl.Int64, "body": pl.String})
    con.register("docs_frame", frame)
    con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM docs_frame')
    con.unregister("docs_frame")


def vectors_by_id(con: duckdb.DuckDBPyConnection, sql: str) -> list[list[float] | None]:
    return con.sql(sql).pl()["vector"].to_list()


class TestSqlFunctions:
    def test_nulls_and_blanks_between_texts_stay_aligned_across_chunks(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        # DuckDB 1.5's default NULL handling zeroes or shifts the vectors after a NULL row.
        texts = texts_with_gaps(5000)  # several 2,048-row chunks
        create_docs(con, texts)
        duckdb_ext.register(con, "hashing", dims=16)
        got = vectors_by_id(con, "SELECT embed(body) AS vector FROM docs ORDER BY id")
        assert got == polars_embed.embed(texts, "hashing", dims=16).to_list()

    def test_the_default_model_in_sql_gives_the_engines_vectors(self, con: duckdb.DuckDBPyConnection) -> None:
        texts = ["a cat sat on the mat", None, "quarterly revenue grew", "", "a cat sat on the mat", "rain"]
        create_docs(con, texts)
        provider = duckdb_ext.register(con)
        assert provider.label == "sentence-transformers:all-MiniLM-L6-v2"
        got = con.sql("SELECT embed(body) AS vector, typeof(embed(body)) AS type FROM docs ORDER BY id").pl()
        assert set(got["type"]) == {"FLOAT[384]"}
        expected = polars_embed.embed(texts)
        assert got["vector"].is_null().to_list() == expected.is_null().to_list()
        np.testing.assert_allclose(
            got["vector"].drop_nulls().to_numpy(), expected.drop_nulls().to_numpy(), atol=1e-6
        )

    def test_embed_query_of_a_constant_is_folded_into_a_constant(
        self, con: duckdb.DuckDBPyConnection, counting: CountingProvider
    ) -> None:
        duckdb_ext.register(con, counting)
        statement = "SELECT max(array_cosine_similarity(embed(body), embed_query('needle'))) FROM {}"
        calls = []
        for table, rows in (("one_row", 1), ("three_chunks", 5000)):
            create_docs(con, [f"text {i}" for i in range(rows)], name=table)
            assert "embed_query" not in con.sql(f"EXPLAIN {statement.format(table)}").fetchall()[0][1]
            before = counting.recorder.texts.count("needle")
            con.sql(statement.format(table)).fetchall()
            calls.append(counting.recorder.texts.count("needle") - before)
        # Planning folds it (a few times per statement), never once per row or per chunk.
        assert calls[0] == calls[1] <= 3

    def test_embed_query_embeds_as_a_query(
        self, con: duckdb.DuckDBPyConnection, counting: CountingProvider
    ) -> None:
        duckdb_ext.register(con, counting)
        query = con.sql("SELECT embed_query('x') AS vector").pl()["vector"].to_list()
        assert query == polars_embed.embed(["x"], counting, kind="query").to_list()
        assert query != polars_embed.embed(["x"], counting, kind="document").to_list()

    def test_several_providers_live_on_one_connection(
        self, con: duckdb.DuckDBPyConnection, counting: CountingProvider
    ) -> None:
        duckdb_ext.register(con, "hashing", name="narrow", dims=8)
        duckdb_ext.register(con, "hashing:chars", name="wide", dims=32)
        duckdb_ext.register(con, counting, name="counted")
        row = con.sql("SELECT narrow('x') AS a, wide('x') AS b, counted_query('x') AS c").pl().row(0)
        assert list(row[0]) == polars_embed.embed(["x"], "hashing", dims=8).to_list()[0]
        assert list(row[1]) == polars_embed.embed(["x"], "hashing:chars", dims=32).to_list()[0]
        assert list(row[2]) == polars_embed.embed(["x"], counting, kind="query").to_list()[0]

    def test_registering_a_name_again_replaces_its_functions(self, con: duckdb.DuckDBPyConnection) -> None:
        duckdb_ext.register(con, "hashing", dims=8)
        duckdb_ext.register(con, "hashing", dims=12)
        assert con.sql("SELECT typeof(embed('x')), typeof(embed_query('x'))").fetchall() == [
            ("FLOAT[12]",) * 2
        ]

    def test_create_table_as_and_insert_select(self, con: duckdb.DuckDBPyConnection) -> None:
        texts = texts_with_gaps(300)
        create_docs(con, texts)
        duckdb_ext.register(con, "hashing", dims=16)
        con.sql("CREATE TABLE made AS SELECT id, embed(body) AS vector FROM docs")
        con.sql("INSERT INTO made SELECT id + 1000, embed(body) FROM docs")
        expected = polars_embed.embed(texts, "hashing", dims=16).to_list()
        assert vectors_by_id(con, "SELECT vector FROM made ORDER BY id") == expected * 2
        assert con.sql("SELECT data_type FROM duckdb_columns() WHERE column_name = 'vector'").fetchall() == [
            ("FLOAT[16]",)
        ]

    def test_over_parquet(self, con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
        texts = texts_with_gaps(3000)
        pl.DataFrame({"id": range(len(texts)), "body": texts}).write_parquet(tmp_path / "docs.parquet")
        duckdb_ext.register(con, "hashing", dims=16)
        got = con.sql(
            "SELECT embed(body) AS vector FROM read_parquet(?) ORDER BY id",
            params=[str(tmp_path / "docs.parquet")],
        ).pl()
        assert got["vector"].to_list() == polars_embed.embed(texts, "hashing", dims=16).to_list()

    def test_over_a_polars_frame(self, con: duckdb.DuckDBPyConnection) -> None:
        texts = texts_with_gaps(3000)
        frame = pl.DataFrame({"id": range(len(texts)), "body": texts})  # found by DuckDB's replacement scan
        duckdb_ext.register(con, "hashing", dims=16)
        got = con.sql("SELECT embed(body) AS vector FROM frame ORDER BY id").pl()
        assert frame.height == len(got)
        assert got["vector"].to_list() == polars_embed.embed(texts, "hashing", dims=16).to_list()

    def test_a_provider_failure_is_a_duckdb_error_carrying_its_message(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        create_docs(con, ["alpha", "beta"])
        duckdb_ext.register(con, CountingProvider(fail_on=1, api_key="sk-secret-key"))
        with pytest.raises(duckdb.Error, match="400 bad request") as caught:
            con.sql("SELECT embed(body) FROM docs").fetchall()
        assert "sk-secret-key" not in str(caught.value)


class TestEmbedTable:
    def test_a_rerun_after_a_failure_embeds_only_the_rows_still_null(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        texts = texts_with_gaps(60)
        create_docs(con, texts)
        failing = CountingProvider(fail_on=2)
        with pytest.raises(EmbeddingIncompleteError, match="400 bad request"):
            duckdb_ext.embed_table(con, "docs", "body", into="vector", provider=failing, batch_rows=20)
        ((kept,),) = con.sql("SELECT count(vector) FROM docs").fetchall()
        assert 0 < kept < len([t for t in texts if t and t.strip()])

        resumed = CountingProvider()
        written = duckdb_ext.embed_table(con, "docs", "body", into="vector", provider=resumed, batch_rows=20)
        assert written == len(resumed.recorder.texts)
        first_run = [text for batch in failing.recorder.batches[:1] for text in batch]
        assert sorted(resumed.recorder.texts + first_run) == sorted(t for t in texts if t and t.strip())
        expected = polars_embed.embed(texts, resumed).to_list()
        assert vectors_by_id(con, "SELECT vector FROM docs ORDER BY id") == expected

    def test_the_provider_is_recorded_and_a_rerun_needs_none(self, con: duckdb.DuckDBPyConnection) -> None:
        create_docs(con, ["alpha", "beta", None])
        assert duckdb_ext.embed_table(con, "docs", "body", provider="hashing:words", dims=24) == 2
        ((comment,),) = con.sql(
            "SELECT comment FROM duckdb_columns() WHERE column_name = 'body_embedding'"
        ).fetchall()
        spec = VectorSpec.from_json(comment)
        assert (spec.provider, spec.options["model"], spec.dimension) == ("hashing", "words", 24)

        con.sql("INSERT INTO docs (id, body) VALUES (10, 'gamma')")
        assert duckdb_ext.embed_table(con, "docs", "body") == 1
        got = vectors_by_id(con, "SELECT body_embedding AS vector FROM docs ORDER BY id")
        assert got == polars_embed.embed(["alpha", "beta", None, "gamma"], "hashing:words", dims=24).to_list()

    def test_a_plain_function_fills_the_column_without_a_description(
        self, con: duckdb.DuckDBPyConnection, caplog: pytest.LogCaptureFixture
    ) -> None:
        create_docs(con, ["alpha", "beta"])
        written = duckdb_ext.embed_table(con, "docs", "body", provider=lambda texts: np.ones((len(texts), 4)))
        assert written == 2 and "without a description" in caplog.text
        assert con.sql(
            "SELECT comment FROM duckdb_columns() WHERE column_name = 'body_embedding'"
        ).fetchall() == [(None,)]

    def test_a_provider_other_than_the_recorded_one_is_refused(self, con: duckdb.DuckDBPyConnection) -> None:
        create_docs(con, ["alpha"])
        duckdb_ext.embed_table(con, "docs", "body", provider="hashing", dims=16)
        with pytest.raises(ConfigError, match="was embedded with hashing"):
            duckdb_ext.embed_table(con, "docs", "body", provider="hashing:chars", dims=16)

    def test_an_existing_column_of_another_width_is_refused(self, con: duckdb.DuckDBPyConnection) -> None:
        create_docs(con, ["alpha"])
        con.sql("ALTER TABLE docs ADD COLUMN vector FLOAT[8]")
        with pytest.raises(DimensionMismatchError, match=r"width 8.*width 16"):
            duckdb_ext.embed_table(con, "docs", "body", into="vector", provider="hashing", dims=16)

    def test_a_comment_that_is_not_a_description_is_not_overwritten(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        create_docs(con, ["alpha"])
        con.sql("ALTER TABLE docs ADD COLUMN vector FLOAT[8]")
        con.sql("COMMENT ON COLUMN docs.vector IS 'owned by the search team'")
        with pytest.raises(ConfigError, match="owned by the search team"):
            duckdb_ext.embed_table(con, "docs", "body", into="vector", provider="hashing", dims=8)

    def test_only_text_columns_are_embedded(self, con: duckdb.DuckDBPyConnection) -> None:
        create_docs(con, ["alpha"])
        with pytest.raises(ConfigError, match="BIGINT, not VARCHAR"):
            duckdb_ext.embed_table(con, "docs", "id", provider="hashing")
        with pytest.raises(ConfigError, match=r"no column 'nope'.*'id', 'body'"):
            duckdb_ext.embed_table(con, "docs", "nope", provider="hashing")


def hashed_docs(con: duckdb.DuckDBPyConnection, count: int = 500, dims: int = 32) -> np.ndarray:
    """A ``docs`` table with a hashing ``vector`` column (recorded); returns the vectors."""
    texts = [f"{['red', 'green', 'blue'][i % 3]} item {i} of kind {i % 13}" for i in range(count)]
    create_docs(con, texts)
    duckdb_ext.embed_table(con, "docs", "body", into="vector", provider="hashing", dims=dims)
    return polars_embed.embed(texts, "hashing", dims=dims).to_numpy()


class TestExactSearch:
    def test_results_are_the_kernels_best_rows_with_their_scores(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        vectors = hashed_docs(con)
        query = polars_embed.embed(["blue item 42"], "hashing", dims=32, kind="query").to_numpy()[0]
        indices, scores = polars_embed.topk(query, vectors, k=7)
        found = duckdb_ext.search(con, "docs", "vector", "blue item 42", k=7).pl()
        assert found["id"].to_list() == indices[0].tolist()
        np.testing.assert_allclose(found["score"].to_numpy(), scores[0], rtol=1e-6)
        assert found.columns == ["id", "body", "vector", "score"]

    def test_ties_go_to_the_lower_row_as_in_the_kernel(
        self, con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Small integers: exact scores and many ties, which must go to the lower row id in
        # DuckDB's own top k, and across the batches of the path that ranks the vectors
        # themselves (taken once a vector holds a NULL), as within one topk.
        monkeypatch.setattr(importlib.import_module("duckdb_ext.search"), "_BATCH_ROWS", 100)
        rng = np.random.default_rng(14)
        vectors = rng.integers(-1, 2, (1000, 5)).astype(np.float32)
        vectors[[3, 500]] = 0
        con.register("frame", pl.DataFrame({"id": range(1000), "vector": vectors}))
        con.sql("CREATE TABLE docs AS SELECT * FROM frame ORDER BY id")
        queries = [query for query in rng.integers(-1, 2, (5, 5)).astype(np.float32) if query.any()]
        for holding_null in (False, True):
            if holding_null:
                con.sql("INSERT INTO docs VALUES (1000, [1, NULL, 1, 1, 1])")
            for query, normalized in itertools.product(queries, (False, True)):
                indices, scores = polars_embed.topk(query, vectors, k=30, normalized=normalized)
                found = duckdb_ext.search(
                    con, "docs", "vector", query, k=30, exact=True, normalized=normalized
                ).pl()
                assert found["id"].to_list() == indices[0].tolist()
                np.testing.assert_allclose(found["score"].to_numpy(), scores[0], rtol=1e-6)

    def test_vectors_promised_unit_length_are_ranked_by_their_dot_products(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        rng = np.random.default_rng(3)
        vectors = rng.standard_normal((300, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        query = vectors[7].copy()
        vectors[7] *= 3  # a broken promise: this row's dot product is three times its cosine
        con.register("frame", pl.DataFrame({"id": range(300), "vector": vectors}))
        con.sql("CREATE TABLE docs AS SELECT * FROM frame ORDER BY id")
        for normalized in (False, True):
            indices, scores = polars_embed.topk(query, vectors, k=5, normalized=normalized)
            found = duckdb_ext.search(con, "docs", "vector", query, k=5, normalized=normalized).pl()
            assert found["id"].to_list() == indices[0].tolist()
            np.testing.assert_allclose(found["score"].to_numpy(), scores[0], rtol=1e-5)
        assert found["score"][0] == pytest.approx(3, rel=1e-5)  # the norms were skipped, as promised

    def test_the_recorded_provider_says_whether_the_norms_are_needed(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        vectors = hashed_docs(con)  # hashing's vectors have unit length
        con.sql("UPDATE docs SET vector = [x * 2 FOR x IN vector]::FLOAT[32] WHERE id = 9")
        ((row, score),) = (
            duckdb_ext.search(con, "docs", "vector", vectors[9], k=1).select("id", "score").fetchall()
        )
        assert (row, score) == (9, pytest.approx(2, rel=1e-5))
        con.sql("COMMENT ON COLUMN docs.vector IS NULL")  # no provider recorded: cosine, with the norms
        ((row, score),) = (
            duckdb_ext.search(con, "docs", "vector", vectors[9], k=1).select("id", "score").fetchall()
        )
        assert (row, score) == (9, pytest.approx(1, rel=1e-5))

    def test_a_vector_query_needs_no_provider(self, con: duckdb.DuckDBPyConnection) -> None:
        vectors = hashed_docs(con)
        for query in (vectors[5], vectors[5].tolist(), pl.Series(vectors[5]), vectors[5:6]):
            assert duckdb_ext.search(con, "docs", "vector", query, k=1).select("id").fetchall() == [(5,)]

    def test_the_hits_are_the_rows_as_they_were_when_searched(self, tmp_path: Path) -> None:
        # Row ids change when a checkpoint compacts deleted rows (here row 250,000 becomes
        # 50,000): hits found by row id are fetched in the snapshot that ranked them.
        con = duckdb.connect(str(tmp_path / "docs.duckdb"))
        con.sql(
            "CREATE TABLE docs AS SELECT range AS id, "
            "[cos(range % 1000 * pi() / 500), sin(range % 1000 * pi() / 500), "
            "cos(range // 1000 * pi() / 150), sin(range // 1000 * pi() / 150)]::FLOAT[4] AS vector "
            "FROM range(300000)"
        )
        (query,) = con.sql("SELECT vector FROM docs WHERE id = 250000").fetchnumpy()["vector"]
        found = duckdb_ext.search(con, "docs", "vector", query, k=1)
        con.sql("DELETE FROM docs WHERE id < 200000")
        con.sql("CHECKPOINT")
        assert found.select("id").fetchall() == [(250000,)]
        con.begin()  # inside a transaction of the caller's own, it is that snapshot
        assert duckdb_ext.search(con, "docs", "vector", query, k=1).select("id").fetchall() == [(250000,)]
        con.rollback()
        con.close()

    def test_where_filters_before_ranking(self, con: duckdb.DuckDBPyConnection) -> None:
        hashed_docs(con)
        found = duckdb_ext.search(con, "docs", "vector", "blue item 42", k=5, where="body LIKE 'red%'").pl()
        assert found.height == 5 and all(body.startswith("red") for body in found["body"])
        qualified = duckdb_ext.search(con, "docs", "vector", "blue item 42", k=5, where="docs.id < 3").pl()
        assert sorted(qualified["id"]) == [0, 1, 2]  # fewer than k rows match

    def test_null_and_zero_vectors_are_never_returned(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql("CREATE TABLE docs (id INTEGER, vector FLOAT[3])")
        con.sql("INSERT INTO docs VALUES (1, [1, 0, 0]), (2, NULL), (3, [0, 0, 0]), (4, [0, 1, 0])")
        assert duckdb_ext.search(con, "docs", "vector", [1, 1, 0], k=10).select("id").fetchall() == [
            (1,),
            (4,),
        ]

    def test_vectors_holding_null_or_overflowing_are_never_returned(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        con.sql("CREATE TABLE docs (id INTEGER, vector FLOAT[3])")
        con.sql(
            "INSERT INTO docs VALUES (1, [1, 0, 0]), (3, [3e38, 3e38, 0]), "
            "(4, ['nan'::FLOAT, 1, 0]), (5, ['inf'::FLOAT, 0, 0]), (6, [0, -1, 0])"
        )
        found = duckdb_ext.search(con, "docs", "vector", [1, 1, 0], k=10, exact=True)
        assert found.select("id").fetchall() == [(1,), (6,)]
        # DuckDB's array functions refuse a vector holding NULL: the search ranks the vectors.
        con.sql("INSERT INTO docs VALUES (2, [1, NULL, 0])")
        found = duckdb_ext.search(con, "docs", "vector", [1, 1, 0], k=10, exact=True)
        assert found.select("id").fetchall() == [(1,), (6,)]

    def test_an_empty_table_gives_an_empty_relation(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql("CREATE TABLE docs (id INTEGER, vector FLOAT[3])")
        assert duckdb_ext.search(con, "docs", "vector", [1, 0, 0]).fetchall() == []

    def test_vectors_made_in_this_process_are_recognised(self, con: duckdb.DuckDBPyConnection) -> None:
        create_docs(con, ["a black cat", "a small dog"])
        duckdb_ext.register(con, "hashing", dims=48, model="words")
        con.sql("CREATE TABLE pets AS SELECT id, body, embed(body) AS vector FROM docs")
        found = duckdb_ext.search(con, "pets", "vector", "black cat", k=1)
        assert found.select("body").fetchall() == [("a black cat",)]

    def test_a_list_column_is_refused_with_the_cast_that_makes_it_a_vector_column(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        con.sql("CREATE TABLE docs AS SELECT [0.5, 0.25]::FLOAT[] AS vector")
        with pytest.raises(ConfigError, match="is FLOAT\\[\\], not a FLOAT\\[d\\]") as caught:
            duckdb_ext.search(con, "docs", "vector", [1.0, 0.0])
        fix = 'ALTER TABLE "memory"."main"."docs" ALTER "vector" TYPE FLOAT[d]'
        assert fix in str(caught.value) and "duckdb_ext.load_parquet" in str(caught.value)
        con.sql(fix.replace("[d]", "[2]"))  # the cast the message gives, as written
        assert duckdb_ext.search(con, "docs", "vector", [1.0, 0.0]).select("score").fetchall() != []

    def test_vectors_of_unknown_origin_need_a_provider(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql("CREATE TABLE docs AS SELECT [0.5, 0.25]::FLOAT[2] AS vector")
        with pytest.raises(ConfigError, match="which model made column 'vector' is not known"):
            duckdb_ext.search(con, "docs", "vector", "a text")

    def test_a_provider_other_than_the_recorded_one_is_refused(self, con: duckdb.DuckDBPyConnection) -> None:
        hashed_docs(con)
        with pytest.raises(ConfigError, match="was embedded with hashing"):
            duckdb_ext.search(
                con,
                "docs",
                "vector",
                "blue",
                provider=polars_embed.resolve_provider("hashing:chars", dims=32),
            )

    def test_a_width_mismatch_names_both_widths_and_the_models(self, con: duckdb.DuckDBPyConnection) -> None:
        create_docs(con, ["alpha"])
        duckdb_ext.register(con, "hashing", dims=16)
        con.sql("CREATE TABLE made AS SELECT embed(body) AS vector FROM docs")
        wide = polars_embed.resolve_provider("hashing", dims=32)
        with pytest.raises(
            DimensionMismatchError, match=r"width 16.*hashing:words\+chars makes vectors of width 32"
        ):
            duckdb_ext.search(con, "made", "vector", "alpha", provider=wide)
        with pytest.raises(DimensionMismatchError, match=r"query vector has width 3.*width 16"):
            duckdb_ext.search(con, "made", "vector", [1.0, 2.0, 3.0])

    def test_a_huge_k_returns_every_row_and_allocates_nothing_by_k(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        vectors = hashed_docs(con, count=10)
        huge = 10**7  # a (1, k) pair of arrays alone would be 120 MB
        assert (
            peak_bytes(lambda: duckdb_ext.search(con, "docs", "vector", vectors[3], k=huge).fetchall())
            < 2**20
        )
        found = duckdb_ext.search(con, "docs", "vector", vectors[3], k=huge).fetchall()
        assert found == duckdb_ext.search(con, "docs", "vector", vectors[3], k=10).fetchall()
        assert len(found) == 10

    def test_bad_arguments(self, con: duckdb.DuckDBPyConnection) -> None:
        hashed_docs(con)
        with pytest.raises(ConfigError, match="k must be a positive"):
            duckdb_ext.search(con, "docs", "vector", "blue", k=0)
        with pytest.raises(InvalidInputError, match="not all zeros"):
            duckdb_ext.search(con, "docs", "vector", np.zeros(32))
        with pytest.raises(InputTypeError, match="a text or a vector of numbers"):
            duckdb_ext.search(con, "docs", "vector", ["not", "numbers"])
        with pytest.raises(ConfigError, match="not a FLOAT"):
            duckdb_ext.search(con, "docs", "body", "blue")
        with pytest.raises(ConfigError, match="no table 'nope'"):
            duckdb_ext.search(con, "nope", "vector", "blue")
        with pytest.raises(ConfigError, match="already a vector"):
            duckdb_ext.search(con, "docs", "vector", np.ones(32), provider="hashing")
        con.sql("ALTER TABLE docs ADD COLUMN RowId BIGINT")
        with pytest.raises(ConfigError, match="column named 'rowid'"):
            duckdb_ext.search(con, "docs", "vector", "blue")
        with pytest.raises(ConfigError, match="column named 'rowid'"):
            duckdb_ext.embed_table(con, "docs", "body")
        con.sql("ALTER TABLE docs ADD COLUMN score DOUBLE")
        with pytest.raises(ConfigError, match="column named 'score'"):
            duckdb_ext.search(con, "docs", "vector", "blue")

    def test_a_fresh_process_embeds_the_query_with_the_recorded_provider(self, tmp_path: Path) -> None:
        database = tmp_path / "docs.duckdb"
        with duckdb.connect(str(database)) as con:
            hashed_docs(con, dims=40)
        # Nothing in the new process has seen these vectors: only the comment can name the model.
        script = (
            "import duckdb, duckdb_ext\n"
            f"con = duckdb.connect({str(database)!r}, read_only=True)\n"
            "found = duckdb_ext.search(con, 'docs', 'vector', 'green item 7 of kind 7', k=1)\n"
            "print(found.fetchall()[0][0])\n"
        )
        printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert printed.stdout.split() == ["7"]


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float32, st.integers(1, 40), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)
    )
)
def test_query_vectors_reach_sql_exactly(vector: np.ndarray) -> None:
    with duckdb.connect() as con:
        ((back,),) = con.sql(f"SELECT {vector_literal(vector)}").fetchall()
    assert np.array_equal(np.array(back, dtype=np.float32), vector)


class TestQuoting:
    @pytest.fixture
    def hostile(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        con.sql("CREATE TABLE victim AS SELECT 1 AS x")
        table, text = (name.replace('"', '""') for name in (HOSTILE_TABLE, HOSTILE_TEXT))
        con.sql(f'CREATE TABLE "{table}" ("{text}" VARCHAR)')
        con.sql(f"INSERT INTO \"{table}\" VALUES ('alpha'), ('beta'), ('gamma'), (NULL)")
        return con

    def test_hostile_names_are_always_quoted(self, hostile: duckdb.DuckDBPyConnection) -> None:
        provider = duckdb_ext.register(hostile, "hashing", dims=16)
        assert (
            duckdb_ext.embed_table(
                hostile, HOSTILE_TABLE, HOSTILE_TEXT, into=HOSTILE_VECTOR, provider=provider
            )
            == 3
        )
        duckdb_ext.record_provider(hostile, HOSTILE_TABLE, HOSTILE_VECTOR, provider)
        found = duckdb_ext.search(hostile, HOSTILE_TABLE, HOSTILE_VECTOR, "beta", k=1)
        assert found.fetchall()[0][0] == "beta"
        assert hostile.sql("SELECT x FROM victim").fetchall() == [(1,)]

    def test_names_in_another_schema_and_in_any_case(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql('CREATE SCHEMA "sch;ema"')
        con.sql('CREATE TABLE "sch;ema"."Docs" (Body VARCHAR)')
        con.sql("INSERT INTO \"sch;ema\".\"Docs\" VALUES ('alpha'), ('beta')")
        duckdb_ext.embed_table(con, ("sch;ema", "docs"), "body", provider="hashing", dims=8)
        found = duckdb_ext.search(con, ("sch;ema", "DOCS"), "BODY_EMBEDDING", "alpha", k=1)
        assert found.select("body").fetchall() == [("alpha",)]
        with pytest.raises(ConfigError, match="no table 'docs'"):
            duckdb_ext.search(con, "docs", "body_embedding", "alpha")

    def test_a_temporary_table_comes_before_the_main_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql("CREATE TABLE docs (body VARCHAR)")
        con.sql("CREATE TEMP TABLE docs (body VARCHAR)")
        con.sql("INSERT INTO temp.docs VALUES ('alpha')")
        assert duckdb_ext.embed_table(con, "docs", "body", provider="hashing", dims=8) == 1

    @pytest.mark.parametrize("name", ["", "a\x00b", 3])
    def test_impossible_names_are_refused(self, con: duckdb.DuckDBPyConnection, name: object) -> None:
        with pytest.raises(ConfigError, match="non-empty string"):
            duckdb_ext.search(con, name, "vector", [1.0])  # type: ignore[arg-type]


class TestLoadParquet:
    """Parquet files from Polars, opened in DuckDB by duckdb_ext.load_parquet."""

    @staticmethod
    def write_pets(path: Path, **options: object) -> pl.DataFrame:
        texts = ["a black cat", None, "a small dog", "a black dog", "   "]
        frame = pl.DataFrame({"id": range(len(texts)), "body": texts}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=48, **options)
        )
        frame.embed.write_parquet(path)
        return frame

    def test_a_fresh_process_searches_a_polars_file_by_text_with_no_provider(self, tmp_path: Path) -> None:
        frame = self.write_pets(tmp_path / "pets.parquet", model="words")
        expected = frame.embed.search("black cat", on="vec", k=3)["id"].to_list()
        # Nothing in the new process has seen these vectors: only the file can name the model.
        script = (
            "import duckdb, duckdb_ext\n"
            "con = duckdb.connect()\n"
            f"print(duckdb_ext.load_parquet(con, {str(tmp_path / 'pets.parquet')!r}, table='pets'))\n"
            'print(con.sql("SELECT DISTINCT typeof(vec) FROM pets").fetchall()[0][0])\n'
            "found = duckdb_ext.search(con, 'pets', 'vec', 'black cat', k=3)\n"
            "print(*[row[0] for row in found.select('id').fetchall()])\n"
        )
        printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        assert printed.stdout.splitlines() == ["5", "FLOAT[48]", " ".join(map(str, expected))]
        assert expected[0] == 0  # "a black cat" itself

    def test_the_provider_is_recorded_as_the_column_comment(
        self, con: duckdb.DuckDBPyConnection, tmp_path: Path
    ) -> None:
        self.write_pets(tmp_path / "pets.parquet")
        duckdb_ext.load_parquet(con, tmp_path / "pets.parquet", table="pets")
        ((comment, data_type),) = con.sql(
            "SELECT comment, data_type FROM duckdb_columns() WHERE column_name = 'vec'"
        ).fetchall()
        assert VectorSpec.from_json(comment) == VectorSpec.of(
            polars_embed.resolve_provider("hashing", dims=48)
        )
        assert data_type == "FLOAT[48]"
        nulls = con.sql("SELECT id FROM pets WHERE vec IS NULL ORDER BY id").fetchall()
        assert nulls == [(1,), (4,)]  # null and blank texts stay null vectors

    def test_a_plain_parquet_file_gets_vector_columns_from_its_data(
        self, con: duckdb.DuckDBPyConnection, tmp_path: Path
    ) -> None:
        vectors = np.eye(3, 4, dtype=np.float32)
        pl.DataFrame(
            {"vec": vectors, "ragged": [[1.0], [1.0, 2.0], None], "doubles": vectors.astype(np.float64)},
            schema_overrides={"ragged": pl.List(pl.Float32)},
        ).write_parquet(tmp_path / "plain.parquet")
        assert duckdb_ext.load_parquet(con, tmp_path / "plain.parquet", table="plain") == 3
        types = con.sql("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'plain'")
        assert dict(types.fetchall()) == {"vec": "FLOAT[4]", "ragged": "FLOAT[]", "doubles": "DOUBLE[]"}
        assert con.sql("SELECT comment FROM duckdb_columns() WHERE column_name = 'vec'").fetchall() == [
            (None,)
        ]
        found = duckdb_ext.search(con, "plain", "vec", vectors[2], k=1)
        assert found.select("vec").fetchall() == [((0.0, 0.0, 1.0, 0.0),)]
        with pytest.raises(ConfigError, match="which model made column 'vec' is not known"):
            duckdb_ext.search(con, "plain", "vec", "a text")

    @pytest.mark.parametrize(
        ("spec", "error", "message"),
        [
            (
                {"provider": "hashing", "dimension": 8},
                ConfigError,
                "its metadata says 8",
            ),
            ({"provider": "not-installed", "dimension": 48}, UnknownProviderError, "not installed"),
            (
                {"provider": "sentence-transformers", "dimension": 48, "options": {"device": "cuda"}},
                ConfigError,
                "never a file",
            ),
        ],
    )
    def test_metadata_that_polars_would_refuse_creates_no_table(
        self,
        con: duckdb.DuckDBPyConnection,
        tmp_path: Path,
        spec: dict[str, object],
        error: type[Exception],
        message: str,
    ) -> None:
        frame = self.write_pets(tmp_path / "pets.parquet")
        frame.write_parquet(tmp_path / "forged.parquet", metadata={"polars_embed": json.dumps({"vec": spec})})
        with pytest.raises(error, match=message):
            polars_embed.read_parquet(tmp_path / "forged.parquet")
        with pytest.raises(error, match=message):
            duckdb_ext.load_parquet(con, tmp_path / "forged.parquet", table="pets")
        assert con.sql("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]

    def test_an_existing_table_is_replaced_only_when_asked(
        self, con: duckdb.DuckDBPyConnection, tmp_path: Path
    ) -> None:
        self.write_pets(tmp_path / "pets.parquet")
        con.sql("CREATE TABLE pets AS SELECT 1 AS x")
        with pytest.raises(ConfigError, match="replace=True"):
            duckdb_ext.load_parquet(con, tmp_path / "pets.parquet", table="pets")
        assert con.sql("SELECT * FROM pets").fetchall() == [(1,)]
        assert duckdb_ext.load_parquet(con, tmp_path / "pets.parquet", table="pets", replace=True) == 5
        assert duckdb_ext.search(con, "pets", "vec", "small dog", k=1).select("id").fetchall() == [(2,)]

    def test_hostile_names_and_paths_are_quoted(self, con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
        folder = tmp_path / "it's here"
        folder.mkdir()
        frame = self.write_pets(folder / "pets.parquet").rename({"vec": HOSTILE_VECTOR})
        frame.embed.write_parquet(folder / "pets.parquet")
        con.sql("CREATE TABLE victim AS SELECT 1 AS x")
        assert duckdb_ext.load_parquet(con, folder / "pets.parquet", table=HOSTILE_TABLE) == 5
        found = duckdb_ext.search(con, HOSTILE_TABLE, HOSTILE_VECTOR, "small dog", k=1)
        assert found.select("id").fetchall() == [(2,)]
        assert con.sql("SELECT x FROM victim").fetchall() == [(1,)]


class TestEngineRulesInDuckDB:
    def test_register_learns_a_width_through_the_engines_retries(
        self, con: duckdb.DuckDBPyConnection
    ) -> None:
        function = RefusesFirstCall()
        duckdb_ext.register(con, function)
        assert function.calls == ["dimension probe", "dimension probe"]
        assert con.sql("SELECT typeof(embed('a'))").fetchall() == [("FLOAT[6]",)]

    def test_embed_table_is_one_job_and_can_refuse_long_texts(
        self, con: duckdb.DuckDBPyConnection, caplog: pytest.LogCaptureFixture
    ) -> None:
        create_docs(con, [f"text {i}" + (" and many more" if i % 4 == 0 else "") for i in range(50)])
        provider = LongTextsProvider()
        with pytest.raises(ConfigError, match=r"over the 3 tokens counting:counting-v1 reads"):
            duckdb_ext.embed_table(
                con, "docs", "body", into="vector", provider=provider, batch_rows=10, truncate="error"
            )
        assert provider.recorder.batches == []
        assert con.sql("SELECT count(vector) FROM docs").fetchall() == [(0,)]

        caplog.set_level(logging.WARNING, logger="polars_embed")
        assert (
            duckdb_ext.embed_table(con, "docs", "body", into="vector", provider=provider, batch_rows=10) == 50
        )
        stats = polars_embed.last_stats()
        assert (stats.rows, stats.truncated) == (50, 13)  # one record for the five batches
        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith("13 texts were longer than the 3 tokens")


def test_refused_rows_stay_null_and_are_reported() -> None:
    con = duckdb.connect()
    texts = ["fine one", "bad BAD", None, "fine two", "also BAD"]
    con.sql("CREATE TABLE docs (body VARCHAR)")
    con.executemany("INSERT INTO docs VALUES (?)", [[text] for text in texts])
    refusing = CountingProvider(refuse_containing="BAD", batch_size=3)
    assert duckdb_ext.embed_table(con, "docs", "body", provider=refusing, on_error="null") == 2
    missing = dict(con.sql("SELECT body, body_embedding IS NULL FROM docs").fetchall())
    assert missing == {t: t is None or "BAD" in t for t in texts}
    failures = polars_embed.last_stats().failures
    assert sorted(failure.text for failure in failures) == ["also BAD", "bad BAD"]
    with pytest.raises(polars_embed.EmbeddingIncompleteError, match="a text contains 'BAD'"):
        duckdb_ext.embed_table(con, "docs", "body", provider=refusing)  # the default raises

    duckdb_ext.register(con, refusing, name="careful", on_error="null")
    assert dict(con.sql("SELECT body, careful(body) IS NULL FROM docs").fetchall()) == missing


def vector_table(con: duckdb.DuckDBPyConnection, vectors: np.ndarray, name: str = "docs") -> None:
    con.register("frame", pl.DataFrame({"id": range(len(vectors)), "vector": vectors}))
    con.sql(f"CREATE TABLE {name} AS SELECT * FROM frame ORDER BY id")
    con.unregister("frame")


# The searches that rank on something kept in memory: a quantised twin, or the vectors' copy.
IN_MEMORY = {"int8": {"quantized": "int8"}, "binary": {"quantized": "binary"}, "copy": {"in_memory": True}}


class TestSearchInMemory:
    KINDS = ("int8", "binary")

    @pytest.mark.parametrize(
        ("joins_by_row_id", "listed_at_most"),
        [(True, 50_000), (False, 50_000), (False, 10)],
        ids=["joined-ids", "listed-ids", "too-many-to-list"],
    )
    @pytest.mark.parametrize("kind", KINDS)
    def test_with_every_row_rescored_it_is_the_exact_search(
        self,
        con: duckdb.DuckDBPyConnection,
        kind: str,
        joins_by_row_id: bool,
        listed_at_most: int,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The candidates' vectors are read back any of the ways, whichever this duckdb is fast at.
        monkeypatch.setattr(duckdb_ext._catalog, "JOINS_BY_ROW_ID", joins_by_row_id)
        monkeypatch.setattr(duckdb_ext._twins, "_LISTED_ROWS_AT_MOST", listed_at_most)
        vectors = clustered(400, 24)
        vector_table(con, vectors)
        for query, where in itertools.product(clustered(3, 24, seed=9), (None, "id % 3 = 1")):
            exact = duckdb_ext.search(con, "docs", "vector", query, k=8, where=where, exact=True).pl()
            found = duckdb_ext.search(
                con, "docs", "vector", query, k=8, where=where, quantized=kind, oversample=60
            ).pl()
            assert found["id"].to_list() == exact["id"].to_list()
            np.testing.assert_allclose(found["score"].to_numpy(), exact["score"].to_numpy(), rtol=1e-5)
            assert found.columns == exact.columns

    def test_the_copy_in_memory_ranks_exactly_with_the_kernel(self, con: duckdb.DuckDBPyConnection) -> None:
        # Small integers: exact scores and many ties, which go to the lower row id.
        rng = np.random.default_rng(14)
        vectors = rng.integers(-1, 2, (3000, 5)).astype(np.float32)
        vector_table(con, vectors)
        for query, where in itertools.product(
            rng.integers(-1, 2, (4, 5)).astype(np.float32), (None, "id % 3 = 1")
        ):
            if not query.any():
                continue
            exact = duckdb_ext.search(con, "docs", "vector", query, k=30, where=where, exact=True).pl()
            found = duckdb_ext.search(con, "docs", "vector", query, k=30, where=where, in_memory=True).pl()
            assert found["id"].to_list() == exact["id"].to_list()
            np.testing.assert_allclose(found["score"].to_numpy(), exact["score"].to_numpy(), rtol=1e-6)

    @pytest.mark.parametrize(("kind", "least"), [("int8", 0.99), ("binary", 0.95)])
    def test_with_the_default_oversampling_it_finds_the_exact_rows(
        self, con: duckdb.DuckDBPyConnection, kind: str, least: float
    ) -> None:
        vector_table(con, clustered(8000, 64))
        queries = clustered(20, 64, seed=4)
        hits = total = 0
        for query in queries:
            exact = duckdb_ext.search(con, "docs", "vector", query, k=10, exact=True).pl()["id"]
            found = duckdb_ext.search(con, "docs", "vector", query, k=10, quantized=kind).pl()["id"]
            hits += len(set(exact) & set(found))
            total += len(exact)
        assert hits / total >= least

    @pytest.mark.parametrize(
        "options", [{"quantized": "int8", "oversample": 1}, {"in_memory": True}], ids=["int8", "copy"]
    )
    def test_the_twin_is_kept_and_made_again_after_every_kind_of_write(
        self, con: duckdb.DuckDBPyConnection, caplog: pytest.LogCaptureFixture, options: dict
    ) -> None:
        vectors = clustered(3000, 16)
        vector_table(con, vectors)
        far = np.full(16, -40.0, dtype=np.float32)  # unlike every row: the search must see it at once

        def best(k: int = 1) -> list[int]:
            found = duckdb_ext.search(con, "docs", "vector", far, k=k, **options)
            return [row for (row,) in found.select("id").fetchall()]

        def twins_made() -> int:
            made = sum("twin of" in record.getMessage() for record in caplog.records)
            caplog.clear()
            return made

        caplog.set_level(logging.INFO, logger="duckdb_ext._twins")
        exact_best = duckdb_ext.search(con, "docs", "vector", far, k=1, exact=True).select("id").fetchall()
        assert best() == [exact_best[0][0]] and twins_made() == 1
        assert best() == [exact_best[0][0]] and twins_made() == 0  # kept
        con.sql("UPDATE docs SET id = id + 0")  # other columns: the vectors are as they were
        best()
        assert twins_made() == 0
        con.sql("DROP TABLE docs")
        vectors[1] = far  # a row no check compares, under the same row count and last row id
        vector_table(con, vectors)
        assert best() == [1] and twins_made() == 1
        con.sql("DELETE FROM docs WHERE id = 1")
        assert best() == [exact_best[0][0]] and twins_made() == 1
        con.execute("INSERT INTO docs VALUES (5000, ?)", [far.tolist()])
        assert best() == [5000] and twins_made() == 1
        con.sql("UPDATE docs SET vector = vector WHERE id = 5000")  # a vector update: a new row id
        assert best() == [5000] and twins_made() == 1
        con.sql("DELETE FROM docs WHERE id = 5000")
        assert best() != [5000] and twins_made() == 1
        con.execute("UPDATE docs SET vector = ? WHERE id = 7", [far.tolist()])
        assert best() == [7] and twins_made() == 1
        # In place, under the same row ids and count: caught by the rows compared.
        con.sql(
            "ALTER TABLE docs ALTER vector SET DATA TYPE FLOAT[16] USING list_transform(vector, lambda x: -x)"
        )
        flipped = duckdb_ext.search(con, "docs", "vector", far, k=3, exact=True).select("id").fetchall()
        assert best(3) == [row for (row,) in flipped] and twins_made() == 1

    @pytest.mark.parametrize(
        "options", [{"quantized": "int8", "oversample": 50}, {"in_memory": True}], ids=["int8", "copy"]
    )
    def test_a_checkpoint_that_moves_rows_is_caught(self, tmp_path: Path, options: dict) -> None:
        con = duckdb.connect(str(tmp_path / "docs.duckdb"))
        vector_table(con, clustered(300000, 8))
        (query,) = con.sql("SELECT vector FROM docs WHERE id = 250000").fetchnumpy()["vector"]
        search = partial(duckdb_ext.search, con, "docs", "vector", query, k=1, **options)
        assert search().select("id").fetchall() == [(250000,)]
        con.sql("DELETE FROM docs WHERE id < 200000")
        con.sql("CHECKPOINT")  # on duckdb 1.5, row 250,000 becomes row 50,000
        assert search().select("id").fetchall() == [(250000,)]
        con.begin()  # a search inside the caller's transaction sees what it wrote
        con.execute("INSERT INTO docs VALUES (-1, ?)", [query.tolist()])
        assert sorted(search(k=2).select("id").fetchall()) == [(-1,), (250000,)]
        con.rollback()
        assert search(k=2).select("id").fetchall()[0] == (250000,)
        con.close()

    def test_null_zero_and_unusable_vectors_are_never_returned(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql("CREATE TABLE docs (id INTEGER, vector FLOAT[3])")
        con.sql(
            "INSERT INTO docs VALUES (1, [1, 0, 0]), (2, NULL), (3, [0, 0, 0]), (4, [0, -1, 0]), "
            "(5, [1, NULL, 0]), (6, ['nan'::FLOAT, 1, 0]), (7, ['inf'::FLOAT, 0, 0])"
        )
        for options in IN_MEMORY.values():
            found = duckdb_ext.search(con, "docs", "vector", [1, 1, 0], k=10, **options)
            assert found.select("id").fetchall() == [(1,), (4,)]
            assert (
                duckdb_ext.search(con, "docs", "vector", [1, 1, 0], where="id > 4", **options).fetchall()
                == []
            )
            con.sql("CREATE OR REPLACE TABLE empty (id INTEGER, vector FLOAT[3])")
            assert duckdb_ext.search(con, "empty", "vector", [1, 0, 0], **options).fetchall() == []

    @pytest.mark.parametrize("kind", KINDS)
    def test_recall_is_the_share_of_exact_results_the_searches_find(
        self, con: duckdb.DuckDBPyConnection, kind: str
    ) -> None:
        vectors = clustered(150, 12)
        vector_table(con, vectors)
        hits = 0
        for row, query in enumerate(vectors):  # every row a query: the draw holds them all
            exact = duckdb_ext.search(con, "docs", "vector", query, k=6, in_memory=True).pl()["id"]
            found = duckdb_ext.search(con, "docs", "vector", query, k=6, quantized=kind, oversample=1).pl()[
                "id"
            ]
            expected_rows = [other for other in exact if other != row][:5]
            found_rows = [other for other in found if other != row][:5]
            hits += len(set(expected_rows) & set(found_rows))
        expected = hits / (5 * len(vectors))
        assert expected < 1  # oversample=1 misses some
        recall = duckdb_ext.recall_at_k(con, "docs", "vector", kind, k=5, sample=150, oversample=1)
        assert recall == pytest.approx(expected)
        assert duckdb_ext.recall_at_k(con, "docs", "vector", kind, k=5, sample=50, oversample=100) == 1.0
        twins = importlib.import_module("duckdb_ext._twins")._twins[con]
        assert [key[-1] for key in twins] == ["float32", kind]  # the search's copy; recall keeps none

    def test_recall_needs_a_quantized_kind_and_a_sample(self, con: duckdb.DuckDBPyConnection) -> None:
        con.sql("CREATE TABLE empty (id INTEGER, vector FLOAT[3])")
        assert duckdb_ext.recall_at_k(con, "empty", "vector", "int8") == 1.0
        with pytest.raises(ConfigError, match="pass quantized='int8' or 'binary'"):
            duckdb_ext.recall_at_k(con, "empty", "vector", None)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="sample must be a positive number"):
            duckdb_ext.recall_at_k(con, "empty", "vector", "binary", sample=0)
        con.sql("CREATE TABLE texts (body VARCHAR)")
        with pytest.raises(ConfigError, match="not a FLOAT"):
            duckdb_ext.recall_at_k(con, "texts", "body", "binary")

    def test_the_twin_goes_with_its_connection(self) -> None:
        con = duckdb.connect()
        vector_table(con, clustered(100, 8))
        duckdb_ext.search(con, "docs", "vector", np.ones(8), quantized="binary").fetchall()
        twins = importlib.import_module("duckdb_ext._twins")._twins
        assert con in twins
        con.close()
        del con
        gc.collect()
        assert len(twins) == 0

    def test_bad_options(self, con: duckdb.DuckDBPyConnection) -> None:
        vector_table(con, clustered(50, 8))
        search = partial(duckdb_ext.search, con, "docs", "vector", np.ones(8))
        with pytest.raises(ConfigError, match=r"exact=True ranks every row .* pass one of them"):
            search(exact=True, quantized="int8")
        with pytest.raises(ConfigError, match=r"in_memory=True ranks every row .* pass one of them"):
            search(in_memory=True, quantized="binary")
        with pytest.raises(ConfigError, match="quantized must be 'int8', 'binary' or None"):
            search(quantized="int4")
        with pytest.raises(ConfigError, match="oversample= is for a quantized= search"):
            search(oversample=3)
        with pytest.raises(ConfigError, match="must be a positive"):
            search(quantized="int8", oversample=0)
        with pytest.raises(DimensionMismatchError, match="width 3"):
            duckdb_ext.search(con, "docs", "vector", np.ones(3), quantized="int8")
