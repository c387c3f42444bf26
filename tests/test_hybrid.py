"""Hybrid search: BM25 keyword ranking fused with the vector ranking, on frames and DuckDB tables."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import duckdb_ext
import polars_embed
from duckdb_ext import fts
from duckdb_ext._extensions import packaged_extension
from polars_embed import (
    ColumnNotFoundError,
    ConfigError,
    DuplicateColumnError,
    InputTypeError,
    MissingDependencyError,
)
from polars_embed.keywords import KeywordIndex, check_fusion, fuse
from tests.fake_servers import FakeCohereRerank

pytest.importorskip("bm25s")

LOGIN = [
    "Login fails with an error after the password is entered",
    "Error on login: the page reloads and nothing happens",
    "Users report a login error when the session expires",
    "The login form shows a generic error message",
    "Login error for accounts with two-factor authentication",
    "An error appears on login from the mobile app",
    "Login is refused with an unknown error",
    "Error messages during login are not translated",
    "After the update every login ends in an error",
    "Login error when the username contains spaces",
    "The error on login disappears after clearing cookies",
    "Single sign-on login returns an error page",
]
OTHER = [
    "Refund not received after cancelling the order",
    "How do I change my delivery address",
    None,
    "The invoice total is wrong",
    "Shipping takes longer than promised",
    "Discount code is not accepted at checkout",
    "The app crashes when uploading a photo",
]
#: The one text that names the identifier the query asks about, in other words than the query's.
TARGET = "Firmware 2.3 writes code E1234 to the terminal log when the card reader times out"
CORPUS = [*LOGIN, *OTHER, TARGET]
QUERY = "error E1234 on login"


class TestFusion:
    VECTOR = (np.array([3, 1, 2]), np.array([0.9, 0.8, 0.1], dtype=np.float32))
    KEYWORD = (np.array([2, 5]), np.array([7.5, 2.5], dtype=np.float32))

    def test_reciprocal_rank_fusion_by_hand(self) -> None:
        fused = fuse(self.VECTOR, self.KEYWORD)
        by_hand = {3: 1 / 61, 1: 1 / 62, 2: 1 / 63 + 1 / 61, 5: 1 / 62}
        assert fused.rows.tolist() == [2, 3, 1, 5]  # 1 and 5 tie: the lower row first
        np.testing.assert_allclose(fused.scores, [by_hand[row] for row in fused.rows.tolist()], rtol=1e-6)
        assert fused.vector_ranks.tolist() == [3, 1, 2, 0]
        assert fused.keyword_ranks.tolist() == [1, 0, 0, 2]

    def test_weighted_fusion_by_hand(self) -> None:
        fused = fuse(self.VECTOR, self.KEYWORD, fusion="weighted", weight=0.7)
        # vector scores scaled over (0.1, 0.9), keyword scores over (2.5, 7.5)
        by_hand = {3: 0.7 * 1.0, 1: 0.7 * 0.875, 2: 0.3 * 1.0, 5: 0.0}
        assert fused.rows.tolist() == [3, 1, 2, 5]
        np.testing.assert_allclose(fused.scores, [by_hand[row] for row in fused.rows.tolist()], atol=1e-6)

    def test_weighted_fusion_of_distances_puts_the_nearest_first(self) -> None:
        distances = (np.array([3, 1, 2]), np.array([0.1, 0.2, 0.9], dtype=np.float32))
        fused = fuse(
            distances,
            (np.array([], dtype=np.int64), np.array([], dtype=np.float32)),
            fusion="weighted",
            weight=1.0,
            higher_is_better=False,
        )
        assert fused.rows.tolist() == [3, 1, 2]
        np.testing.assert_allclose(fused.scores, [1.0, 0.875, 0.0], atol=1e-6)

    def test_rank_columns_are_null_where_a_row_is_not_ranked(self) -> None:
        vector_rank, keyword_rank = fuse(self.VECTOR, self.KEYWORD).rank_columns("v", "kw")
        assert vector_rank.to_list() == [3, 1, 2, None]
        assert keyword_rank.to_list() == [1, None, None, 2]

    @pytest.mark.parametrize(
        ("fusion", "weight", "message"),
        [("mean", 0.5, "fusion must be one of"), ("weighted", 1.5, r"must be in \[0, 1\]")],
    )
    def test_bad_options_are_refused(self, fusion: str, weight: float, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            check_fusion(fusion, weight)


class TestKeywordIndex:
    def test_an_identifier_ranks_first_and_nulls_never_match(self) -> None:
        index = KeywordIndex(CORPUS)
        rows, scores = index.ranking(QUERY, depth=100)
        assert rows[0] == CORPUS.index(TARGET)
        assert CORPUS.index(None) not in rows.tolist()
        assert set(rows.tolist()) == {
            i
            for i, text in enumerate(CORPUS)
            if text and ("login" in text.lower() or "error" in text.lower() or "E1234" in text)
        }
        assert (np.diff(scores) <= 0).all()

    def test_a_query_of_unknown_words_matches_nothing(self) -> None:
        rows, scores = KeywordIndex(CORPUS).ranking("zzz qqq", depth=10)
        assert rows.tolist() == [] and scores.tolist() == []


@pytest.fixture(scope="module")
def tickets() -> pl.DataFrame:
    """The identifier corpus, embedded by the real default model."""
    pytest.importorskip("sentence_transformers")
    frame = pl.DataFrame({"body": CORPUS})
    return frame.with_columns(vec=pl.col("body").embed.with_provider("sentence-transformers"))


def rank_of(hits: pl.DataFrame, text: str) -> int | None:
    found = hits.with_row_index("rank", offset=1).filter(pl.col("body") == text)
    return found["rank"].item() if found.height else None


class TestFrames:
    def test_hybrid_finds_the_identifier_that_vectors_rank_below_k(self, tickets: pl.DataFrame) -> None:
        by_vectors = tickets.embed.search(QUERY, k=len(CORPUS))
        assert rank_of(by_vectors, TARGET) > 10  # all the login errors look closer to the query
        hybrid = tickets.embed.search(QUERY, text="body", k=10, hybrid=True)
        assert rank_of(hybrid, TARGET) is not None
        assert hybrid.filter(pl.col("body") == TARGET)["keyword_rank"].item() == 1
        assert hybrid.columns == ["body", "vec", "score", "vector_rank", "keyword_rank"]

    @pytest.mark.parametrize("fusion", ["rrf", "weighted"])
    def test_the_fusion_equals_one_computed_by_hand(self, tickets: pl.DataFrame, fusion: str) -> None:
        import bm25s

        hits = tickets.embed.search(QUERY, text="body", k=8, hybrid=True, fusion=fusion, weight=0.7)
        # the vector ranking: cosine over every row, by numpy
        vectors = tickets["vec"].to_numpy()
        query = polars_embed.embed([QUERY], "sentence-transformers", kind="query").to_numpy()[0]
        with np.errstate(invalid="ignore"):
            cosine = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
        vector_order = [
            int(i)
            for i in np.argsort(-np.nan_to_num(cosine, nan=-2), kind="stable")
            if not np.isnan(cosine[i])
        ]
        # the keyword ranking: bm25s on its own
        tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
        retriever = bm25s.BM25()
        retriever.index(
            (tokenizer.tokenize([t or "" for t in CORPUS], show_progress=False), tokenizer.get_vocab_dict()),
            show_progress=False,
        )
        (ids,) = tokenizer.tokenize([QUERY], update_vocab=False, show_progress=False)
        bm25 = retriever.get_scores_from_ids([i for i in ids if i != tokenizer.get_vocab_dict()[""]])
        keyword_order = sorted(np.flatnonzero(bm25 > 0).tolist(), key=lambda i: (-bm25[i], i))
        expected: dict[int, float] = {}
        for ranking, share, scores in ((vector_order, 0.7, cosine), (keyword_order, 0.3, bm25)):
            values = [scores[i] for i in ranking]
            for rank, row in enumerate(ranking, start=1):
                if fusion == "rrf":
                    part = 1 / (60 + rank)
                else:
                    part = share * (scores[row] - min(values)) / (max(values) - min(values))
                expected[row] = expected.get(row, 0.0) + part
        best = sorted(expected, key=lambda row: (-expected[row], row))[:8]
        assert hits["body"].to_list() == [CORPUS[row] for row in best]
        np.testing.assert_allclose(hits["score"].to_numpy(), [expected[row] for row in best], rtol=1e-5)
        assert hits["vector_rank"].to_list() == [vector_order.index(row) + 1 for row in best]
        assert hits["keyword_rank"].to_list() == [
            keyword_order.index(row) + 1 if row in keyword_order else None for row in best
        ]

    def test_the_keyword_index_is_built_once_per_column_data(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import bm25s

        builds = []
        index = bm25s.BM25.index
        monkeypatch.setattr(
            bm25s.BM25, "index", lambda self, *a, **kw: builds.append(1) or index(self, *a, **kw)
        )
        frame = pl.DataFrame({"body": CORPUS}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=64)
        )
        for query in (QUERY, "refund", "login"):
            frame.embed.search(query, text="body", k=3, hybrid=True)
        assert len(builds) == 1
        frame.embed.search(QUERY, text="body", k=3, hybrid=True, fusion="weighted")
        assert len(builds) == 1  # the same index, whatever the fusion
        changed = frame.with_columns(pl.col("body").str.to_uppercase())
        hits = changed.embed.search("REFUND", text="body", k=1, hybrid=True)
        assert len(builds) == 2  # other texts: another index
        assert hits["body"].item() == "REFUND NOT RECEIVED AFTER CANCELLING THE ORDER"
        frame.embed.search(QUERY, text="body", k=3, hybrid=True)
        assert len(builds) == 2  # the first frame's index is still kept

    def test_a_lazy_frame_and_a_batch_of_queries(self) -> None:
        frame = pl.DataFrame({"body": CORPUS}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=64)
        )
        lazy = frame.lazy().embed.search([QUERY, "refund"], text="body", k=2, hybrid=True)
        assert lazy.collect_schema()["keyword_rank"] == pl.UInt32
        hits = lazy.collect()
        assert hits["query_index"].to_list() == [0, 0, 1, 1]
        assert (
            hits.filter(pl.col("query_index") == 0)["body"].to_list()
            == frame.embed.search(QUERY, text="body", k=2, hybrid=True)["body"].to_list()
        )

    @pytest.mark.parametrize(
        ("options", "error", "message"),
        [
            ({"hybrid": True}, ConfigError, "needs text="),
            ({"text": "body"}, ConfigError, "text= is for hybrid=True or rerank="),
            ({"hybrid": True, "text": "nope"}, ColumnNotFoundError, "no text column 'nope'"),
            ({"hybrid": True, "text": "n"}, InputTypeError, "not text"),
            ({"hybrid": True, "text": "body", "fusion": "max"}, ConfigError, "fusion must be one of"),
            ({"hybrid": True, "text": "body", "rerank_top": 0}, ConfigError, "k must be"),
        ],
    )
    def test_bad_options_are_clear_errors(self, options: dict, error: type, message: str) -> None:
        frame = pl.DataFrame({"body": ["a cat"], "n": [1]}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=8)
        )
        with pytest.raises(error, match=message):
            frame.embed.search("cat", **options)

    def test_a_vector_query_cannot_be_hybrid(self) -> None:
        frame = pl.DataFrame({"body": ["a cat"]}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=8)
        )
        with pytest.raises(ConfigError, match="need text queries"):
            frame.embed.search(np.ones(8, dtype=np.float32), text="body", hybrid=True)

    def test_an_output_name_taken_is_refused(self) -> None:
        frame = pl.DataFrame({"body": ["a cat"], "vector_rank": [1]}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=8)
        )
        with pytest.raises(DuplicateColumnError, match="'vector_rank'"):
            frame.embed.search("cat", text="body", hybrid=True)


class TestReranking:
    def test_the_reranker_puts_the_best_candidates_in_its_order(self) -> None:
        pytest.importorskip("cohere")
        with FakeCohereRerank(key="test-key") as server:
            reranker = polars_embed.resolve_reranker("cohere", base_url=server.url, api_key="test-key")
            frame = pl.DataFrame({"body": CORPUS}).with_columns(
                vec=pl.col("body").embed.with_provider("hashing", dims=64)
            )
            by_vectors = frame.embed.search(QUERY, k=6)
            hits = frame.embed.search(QUERY, text="body", k=3, rerank=reranker, rerank_top=6)
            candidates = by_vectors["body"].to_list()
            relevance = {text: FakeCohereRerank.relevance(QUERY, text) for text in candidates}
            expected = sorted(candidates, key=lambda text: (-relevance[text], candidates.index(text)))[:3]
            assert hits["body"].to_list() == expected
            np.testing.assert_allclose(hits["score"].to_numpy(), [relevance[t] for t in expected], rtol=1e-6)
            assert hits["vector_rank"].to_list() == [candidates.index(t) + 1 for t in expected]
            assert "keyword_rank" not in hits.columns
            (request,) = server.requests
            assert sorted(request.body["documents"]) == sorted(candidates)  # only the top 6 were sent

    def test_a_hybrid_search_reranked_by_name_with_the_registrys_endpoint(self) -> None:
        pytest.importorskip("cohere")
        frame = pl.DataFrame({"body": CORPUS}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=64)
        )
        with FakeCohereRerank(key="test-key") as server:
            polars_embed.get_registry().configure("cohere", base_url=server.url, api_key="test-key")
            try:
                hits = frame.embed.search(QUERY, text="body", k=2, hybrid=True, rerank="cohere:rerank-v3.5")
            finally:
                polars_embed.get_registry().configure("cohere")
        texts = [text for text in CORPUS if text]  # fewer than rerank_top: every row is a candidate
        (request,) = server.requests
        assert sorted(request.body["documents"]) == sorted(texts)
        best = max(texts, key=lambda text: FakeCohereRerank.relevance(QUERY, text))
        assert hits["body"].to_list()[0] == best
        assert hits.columns[-3:] == ["score", "vector_rank", "keyword_rank"]


needs_fts = pytest.mark.skipif(
    packaged_extension("fts") is None,
    reason=f"duckdb-extension-fts has no fts extension for duckdb {duckdb.__version__}",
)


def ticket_table(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, name: str = "tickets") -> None:
    con.register("frame_view", frame)
    con.sql(f"CREATE TABLE {name} AS SELECT * FROM frame_view")
    con.unregister("frame_view")


@needs_fts
class TestDuckDB:
    def test_hybrid_finds_the_identifier_that_vectors_rank_below_k(self, tickets: pl.DataFrame) -> None:
        con = duckdb.connect()
        ticket_table(con, tickets)
        search = partial(duckdb_ext.search, con, "tickets", "vec", QUERY, provider="sentence-transformers")
        by_vectors = [body for (body,) in search(k=len(CORPUS)).select("body").fetchall()]
        assert by_vectors.index(TARGET) + 1 > 10
        hybrid = search(k=10, text="body", hybrid=True).select("body, score, vector_rank, keyword_rank")
        rows = {body: ranks for body, *ranks in hybrid.fetchall()}
        assert TARGET in rows
        assert rows[TARGET][2] == 1  # first by keywords
        assert hybrid.types[2:] == ["UINTEGER", "UINTEGER"]

    def test_the_fusion_of_duckdbs_own_rankings(self) -> None:
        con = duckdb.connect()
        frame = pl.DataFrame({"body": CORPUS}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=64)
        )
        ticket_table(con, frame)
        hits = duckdb_ext.search(
            con, "tickets", "vec", QUERY, k=5, text="body", hybrid=True, fusion="weighted", weight=0.25
        ).fetchall()
        # the same fusion, of the vector ranking by exact search and the keyword ranking by fts
        vector = duckdb_ext.search(con, "tickets", "vec", QUERY, k=50, exact=True).select("body, score")
        keyword = con.sql(
            "SELECT body, fts_main_tickets.match_bm25(rowid, ?) AS s FROM tickets WHERE s > 0", params=[QUERY]
        ).fetchall()
        keyword.sort(key=lambda row: (-row[1], CORPUS.index(row[0])))

        def ranking(rows: list[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
            return np.array([CORPUS.index(body) for body, _ in rows]), np.array([s for _, s in rows])

        fused = fuse(ranking(vector.fetchall()), ranking(keyword), fusion="weighted", weight=0.25)
        assert [row[0] for row in hits] == [CORPUS[row] for row in fused.rows[:5]]
        np.testing.assert_allclose([row[2] for row in hits], fused.scores[:5], rtol=1e-5)
        assert [row[3] for row in hits] == [int(rank) or None for rank in fused.vector_ranks[:5]]

    def test_the_vectors_can_be_ranked_on_a_twin(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="duckdb_ext._twins")
        con = duckdb.connect()
        frame = pl.DataFrame({"body": CORPUS}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=64)
        )
        ticket_table(con, frame)
        search = partial(
            duckdb_ext.search, con, "tickets", "vec", QUERY, k=len(CORPUS), text="body", hybrid=True
        )
        exact = search().select("body, keyword_rank").fetchall()
        # Every row rescored: the same rows, and the keyword ranking is untouched.
        assert sorted(
            search(quantized="int8", oversample=len(CORPUS)).select("body, keyword_rank").fetchall(), key=str
        ) == sorted(exact, key=str)
        assert any("int8 twin" in record.getMessage() for record in caplog.records)

    def test_the_index_is_built_once_and_again_when_rows_are_added(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        builds = []
        build = fts._build
        monkeypatch.setattr(fts, "_build", lambda *args, **kwargs: builds.append(1) or build(*args, **kwargs))
        con = duckdb.connect()
        _ = duckdb_ext.register(con, "hashing", dims=64)
        con.sql(
            "CREATE TABLE docs AS SELECT body, embed(body) AS vec FROM (VALUES ('a black cat'), "
            "('a small dog'), (NULL)) t(body)"
        )
        search = partial(duckdb_ext.search, con, "docs", "vec", k=2, text="body", hybrid=True)
        for query in ("black cat", "dog", "cat"):
            search(query).fetchall()
        assert len(builds) == 1
        con.sql("INSERT INTO docs SELECT 'code E1234', embed('code E1234')")
        assert search("E1234").select("body, keyword_rank").fetchall()[0] == ("code E1234", 1)
        assert len(builds) == 2
        search("E1234", where="body LIKE '%dog%'").fetchall()
        assert len(builds) == 2

    def test_an_index_built_on_request_serves_the_searches(self, monkeypatch: pytest.MonkeyPatch) -> None:
        con = duckdb.connect()
        _ = duckdb_ext.register(con, "hashing", dims=8)
        con.sql(
            "CREATE TABLE docs AS SELECT body, embed(body) AS vec "
            "FROM (VALUES ('a cat'), ('code E1234')) t(body)"
        )
        duckdb_ext.create_fts_index(con, "docs", "body")
        monkeypatch.setattr(fts, "_build", lambda *args, **kwargs: pytest.fail("the index was rebuilt"))
        hits = duckdb_ext.search(con, "docs", "vec", "E1234", k=1, text="body", hybrid=True)
        assert hits.select("body, keyword_rank").fetchall() == [("code E1234", 1)]

    def test_the_index_follows_rows_a_checkpoint_renumbers(self, tmp_path: Path) -> None:
        # The index names documents by row id; a checkpoint after deletes renumbers the rows
        # (in a table of more than one row group, 122,880 rows) and keeps their count.
        con = duckdb.connect(str(tmp_path / "docs.duckdb"))
        _ = duckdb_ext.register(con, "hashing", dims=8)
        con.sql(
            "CREATE TABLE docs AS SELECT id, body, embed(body) AS vec FROM (SELECT range AS id, "
            "CASE WHEN range = 129999 THEN 'code E1234' ELSE 'a black cat' END AS body FROM range(130000))"
        )
        con.sql("CHECKPOINT")
        con.sql("DELETE FROM docs WHERE id < 125000")
        search = partial(duckdb_ext.search, con, "docs", "vec", "E1234", k=1, text="body", hybrid=True)
        assert search().select("id, keyword_rank").fetchall() == [(129999, 1)]
        con.sql("CHECKPOINT")
        assert search().select("id, keyword_rank").fetchall() == [(129999, 1)]
        con.close()

    def test_an_index_over_another_column_is_not_overwritten(self) -> None:
        con = duckdb.connect()
        _ = duckdb_ext.register(con, "hashing", dims=8)
        con.sql(
            "CREATE TABLE docs AS SELECT body, 'x' AS title, embed(body) AS vec "
            "FROM (VALUES ('a cat')) t(body)"
        )
        duckdb_ext.create_fts_index(con, "docs", "title")
        with pytest.raises(ConfigError, match=r"full-text index over \['title'\]"):
            duckdb_ext.search(con, "docs", "vec", "cat", text="body", hybrid=True)

    def test_reranked_by_a_fake_cohere(self) -> None:
        pytest.importorskip("cohere")
        con = duckdb.connect()
        frame = pl.DataFrame({"body": CORPUS}).with_columns(
            vec=pl.col("body").embed.with_provider("hashing", dims=64)
        )
        ticket_table(con, frame)
        with FakeCohereRerank(key="test-key") as server:
            reranker = polars_embed.resolve_reranker("cohere", base_url=server.url, api_key="test-key")
            hits = (
                duckdb_ext.search(
                    con, "tickets", "vec", QUERY, k=3, text="body", rerank=reranker, rerank_top=6
                )
                .select("body, score, vector_rank")
                .fetchall()
            )
        candidates = [
            b for (b,) in duckdb_ext.search(con, "tickets", "vec", QUERY, k=6).select("body").fetchall()
        ]
        relevance = {text: FakeCohereRerank.relevance(QUERY, text) for text in candidates}
        expected = sorted(candidates, key=lambda text: (-relevance[text], candidates.index(text)))[:3]
        assert [row[0] for row in hits] == expected
        assert [row[2] for row in hits] == [candidates.index(text) + 1 for text in expected]

    def test_bad_queries_and_columns_are_clear_errors(self) -> None:
        con = duckdb.connect()
        _ = duckdb_ext.register(con, "hashing", dims=8)
        con.sql(
            "CREATE TABLE docs AS SELECT body, 1 AS n, embed(body) AS vec FROM (VALUES ('a cat')) t(body)"
        )
        with pytest.raises(ConfigError, match="need a text query"):
            duckdb_ext.search(con, "docs", "vec", [1.0] * 8, text="body", hybrid=True)
        with pytest.raises(ConfigError, match="not text"):
            duckdb_ext.search(con, "docs", "vec", "cat", text="n", hybrid=True)
        with pytest.raises(ConfigError, match="needs text="):
            duckdb_ext.search(con, "docs", "vec", "cat", hybrid=True)


def test_without_the_fts_extension_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fts, "packaged_extension", lambda name: None)
    con = duckdb.connect(
        config={
            "extension_directory": "/nonexistent/extensions",
            "custom_extension_repository": "/nonexistent",
        }
    )
    _ = duckdb_ext.register(con, "hashing", dims=8)
    con.sql("CREATE TABLE docs AS SELECT body, embed(body) AS vec FROM (VALUES ('a cat')) t(body)")
    with pytest.raises(MissingDependencyError, match=r"pip install 'polars-embed\[fts\]'"):
        duckdb_ext.search(con, "docs", "vec", "cat", text="body", hybrid=True)
    # a search by vectors alone needs no fts
    assert duckdb_ext.search(con, "docs", "vec", "cat").select("body").fetchall() == [("a cat",)]
