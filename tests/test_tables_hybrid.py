"""Hybrid search and reranking on embedding tables: BM25 by DuckDB's fts extension over the records
that pass the filters, fused with the vector ranking by the rule every front end shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import duckdb
import numpy as np
import polars as pl
import pytest

import polars_embed as pe
from duckdb_ext import fts
from duckdb_ext._extensions import packaged_extension
from polars_embed.engine import rerank_scores
from polars_embed.providers.hashing import HashingProvider
from tests.fake_servers import FakeCohereRerank, Plan
from tests.test_hybrid import CORPUS, QUERY, TARGET
from tests.test_rerank import cross_encoder_dir  # noqa: F401  (a fixture: the tiny cross-encoder)

needs_fts = pytest.mark.skipif(
    packaged_extension("fts") is None,
    reason=f"duckdb-extension-fts has no fts extension for duckdb {duckdb.__version__}",
)


@dataclass(frozen=True, kw_only=True, repr=False)
class WordOverlap(pe.Reranker):
    """Scores a text by how many of the query's words it has."""

    name: ClassVar[str] = "word-overlap-tables"
    model: str = "v1"

    def score_batch(self, query: str, documents: list[str]) -> np.ndarray:
        words = set(query.lower().split())
        return np.array([len(words & set(text.lower().split())) for text in documents], dtype=np.float32)


WORDS = WordOverlap()


def tickets_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"t{i:02d}" for i in range(len(CORPUS))],
            "body": CORPUS,
            "team": [["web", "app", "ops"][i % 3] for i in range(len(CORPUS))],
        }
    )


def tickets_table(db: pe.Database, provider: str = "hashing", **options: object) -> pe.Table:
    table = db.create_table(
        "tickets",
        {"id": pl.String, "body": pl.String, "team": pl.String},
        vectors={"vec": pe.VectorOf("body", provider=provider, **options)},
    )
    table.add(tickets_frame())
    return table


@pytest.fixture
def db() -> Iterator[pe.Database]:
    with pe.connect() as database:
        yield database


@pytest.fixture
def tickets(db: pe.Database) -> pe.Table:
    return tickets_table(db, dims=64)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The columns each full-text index build covered, in order."""
    built: list[str] = []
    build = fts._build
    monkeypatch.setattr(
        fts,
        "_build",
        lambda con, table, text, *rest, **options: (
            built.append(text.name) or build(con, table, text, *rest, **options)
        ),
    )
    return built


def vector_ranking(table: pe.Table, query: str, keep: pl.Expr) -> tuple[list[str], dict[str, float]]:
    """Every record that passes ``keep`` and has a vector, by cosine to the query (numpy), ties to
    the record stored first: ids best first, and their scores."""
    rows = table.to_polars().filter(keep & pl.col("vec").is_not_null())
    matrix = rows["vec"].to_numpy()
    vector = table.provider().embed_batch([query], kind="query")[0]
    scores = matrix @ vector / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(vector))
    order = np.lexsort((np.arange(len(scores)), -scores))
    ids = rows["id"].gather(order).to_list()
    return ids, dict(zip(ids, scores[order].tolist(), strict=True))


def keyword_ranking(table: pe.Table, query: str, keep: pl.Expr) -> tuple[list[str], dict[str, float]]:
    """The records that pass ``keep`` by the fts extension's own ``match_bm25`` macro, ties to the
    lower id: ids best first, and their scores."""
    found = table._database.connection.sql(
        "SELECT id, fts_main_tickets.match_bm25(id, ?) AS s FROM tickets", params=[query]
    ).pl()
    allowed = set(table.to_polars().filter(keep)["id"])
    found = found.filter(pl.col("s") > 0, pl.col("id").is_in(allowed)).sort(
        ["s", "id"], descending=[True, False]
    )
    return found["id"].to_list(), dict(zip(found["id"], found["s"], strict=True))


def fused_by_hand(
    table: pe.Table, query: str, keep: pl.Expr, fusion: str, weight: float, depth: int = 50
) -> list[tuple[str, float, int | None, int | None]]:
    """The fusion of the two rankings' first ``depth``, computed here: (id, score, vector rank,
    keyword rank), best first, ties to the record stored first."""
    stored = table.to_polars()["id"].to_list()
    rankings = [vector_ranking(table, query, keep), keyword_ranking(table, query, keep)]
    fused: dict[str, float] = {}
    ranks: dict[str, list[int | None]] = {}
    for which, ((ids, scores), share) in enumerate(zip(rankings, (weight, 1 - weight), strict=True)):
        ids = ids[:depth]
        values = [scores[i] for i in ids]
        for rank, record in enumerate(ids, start=1):
            if fusion == "rrf":
                part = 1 / (60 + rank)
            else:
                part = share * (scores[record] - min(values)) / (max(values) - min(values))
            fused[record] = fused.get(record, 0.0) + part
            ranks.setdefault(record, [None, None])[which] = rank
    best = sorted(fused, key=lambda record: (-fused[record], stored.index(record)))
    return [(record, fused[record], *ranks[record]) for record in best]


def assert_fused(hits: pl.DataFrame, expected: list[tuple[str, float, int | None, int | None]]) -> None:
    assert hits["id"].to_list() == [record for record, *_ in expected]
    np.testing.assert_allclose(hits["score"].to_numpy(), [score for _, score, *_ in expected], rtol=1e-5)
    assert hits["vector_rank"].to_list() == [rank for *_, rank, _ in expected]
    assert hits["keyword_rank"].to_list() == [rank for *_, rank in expected]


@needs_fts
class TestHybrid:
    def test_hybrid_finds_the_identifier_that_vectors_rank_below_k(self, db: pe.Database) -> None:
        pytest.importorskip("sentence_transformers")
        tickets = tickets_table(db, "sentence-transformers")
        by_vectors = tickets.search(QUERY, k=len(CORPUS)).to_polars()
        assert by_vectors["body"].to_list().index(TARGET) + 1 > 10  # the login errors look closer
        assert TARGET not in tickets.search(QUERY, k=10).to_polars()["body"].to_list()
        hybrid = tickets.search(QUERY, k=10, hybrid=True).to_polars()  # text: the column's own source
        assert hybrid.columns == ["id", "body", "team", "vec", "score", "vector_rank", "keyword_rank"]
        assert hybrid.filter(pl.col("body") == TARGET)["keyword_rank"].item() == 1
        assert hybrid.schema["vector_rank"] == hybrid.schema["keyword_rank"] == pl.UInt32
        assert hybrid.schema["score"] == pl.Float32

    @pytest.mark.parametrize(("fusion", "weight"), [("rrf", 0.5), ("weighted", 0.7), ("weighted", 0.2)])
    def test_the_fusion_equals_one_computed_by_hand(
        self, tickets: pe.Table, fusion: str, weight: float
    ) -> None:
        hits = tickets.search(QUERY, k=8, hybrid=True, fusion=fusion, weight=weight).to_polars()
        assert_fused(hits, fused_by_hand(tickets, QUERY, pl.lit(True), fusion, weight)[:8])

    @pytest.mark.parametrize("condition", [pl.col("team") != "app", "team <> 'app'"], ids=["polars", "sql"])
    def test_filters_apply_to_both_rankings(self, tickets: pe.Table, condition: pl.Expr | str) -> None:
        keep = pl.col("team") != "app"
        hits = tickets.search(QUERY, k=6, hybrid=True).where(condition).to_polars()
        assert set(hits["team"]) <= {"web", "ops"}
        assert_fused(hits, fused_by_hand(tickets, QUERY, keep, "rrf", 0.5)[:6])
        # a filter that leaves the identifier out leaves it out of the keyword ranking too
        without = tickets.search(QUERY, k=30, hybrid=True, where=pl.col("body") != TARGET).to_polars()
        assert TARGET not in without["body"].to_list() and without["keyword_rank"].min() == 1

    def test_limit_pages_the_same_fused_ranking(self, tickets: pe.Table) -> None:
        search = tickets.search(QUERY, hybrid=True, where="team <> 'ops'")
        longer = search.limit(9).to_polars()
        shorter = search.limit(4).to_polars()
        assert longer.height == 9 and shorter.equals(longer.head(4))

    def test_a_batch_of_queries_is_each_query_on_its_own(self, tickets: pe.Table) -> None:
        batch = tickets.search([QUERY, "refund order"], k=3, hybrid=True).to_polars()
        assert batch["query_index"].to_list() == [0, 0, 0, 1, 1, 1]
        for number, query in enumerate([QUERY, "refund order"]):
            alone = tickets.search(query, k=3, hybrid=True).to_polars()
            assert batch.filter(pl.col("query_index") == number).drop("query_index").equals(alone)

    def test_records_without_a_vector_yet_are_found_by_their_words(self, tickets: pe.Table) -> None:
        tickets.add_vector_column("vec2", pe.VectorOf("body", provider="hashing", dims=16))
        hits = tickets.search("E1234 firmware", on="vec2", k=3, hybrid=True).to_polars()
        assert hits["body"].to_list()[0] == TARGET  # vec2 is empty until fill(): keywords alone
        assert hits["vector_rank"].null_count() == hits.height and hits["vec2"].null_count() == hits.height

    def test_the_index_is_built_once_per_table_state(
        self, tickets: pe.Table, db: pe.Database, builds: list
    ) -> None:
        def top(query: str) -> str:
            return (
                tickets.search(query, k=1, hybrid=True, fusion="weighted", weight=0.0)
                .to_polars()["id"]
                .item()
            )

        for query in (QUERY, "refund", "login"):
            tickets.search(query, k=3, hybrid=True).to_polars()
        tickets.search(QUERY, k=3, hybrid=True, fusion="weighted", where="team = 'web'").to_polars()
        assert builds == ["body"]
        assert db.open_table("tickets").search(QUERY, hybrid=True).to_polars().height == 10
        assert builds == ["body"]  # another handle on the same state: the index is labelled with it
        # writes that change nothing: the index stands
        assert tickets.upsert(tickets.list(limit=3)) == 0 and tickets.delete(where="team = 'none'") == 0
        assert tickets.fill() == 0 and top(QUERY) and len(builds) == 1
        tickets.add([{"id": "new", "body": "a zebra crossing", "team": "web"}])
        assert top("zebra") == "new" and len(builds) == 2
        # an update that keeps the record count: the old words are gone, the new ones found
        tickets.upsert([{"id": "t15", "body": "the giraffe ate the receipt", "team": "ops"}])
        assert top("giraffe") == "t15" and len(builds) == 3
        invoice = tickets.search("invoice", k=30, hybrid=True).to_polars()
        assert invoice.filter(pl.col("id") == "t15")["keyword_rank"].to_list() == [None]
        tickets.delete(["new"])
        assert top("zebra") != "new" and len(builds) == 4
        # plain SQL that keeps the count, then refresh(): rebuilt too
        db.connection.execute("UPDATE tickets SET body = 'an okapi' WHERE id = 't14'")
        tickets.refresh()
        assert top("okapi") == "t14" and len(builds) == 5
        tickets.search("okapi", hybrid=True).to_polars()
        assert len(builds) == 5

    def test_two_text_sources_share_the_tables_index_in_turn(self, db: pe.Database, builds: list) -> None:
        table = db.create_table(
            "tickets",
            {"id": pl.String, "title": pl.String, "body": pl.String},
            vectors={
                "title_vec": pe.VectorOf("title", provider="hashing", dims=16),
                "body_vec": pe.VectorOf("body", provider="hashing", dims=16),
            },
        )
        table.add(
            [{"id": "a", "title": "zebra", "body": "giraffe"}, {"id": "b", "title": "okapi", "body": "zebra"}]
        )
        assert table.search("zebra", on="title_vec", hybrid=True).to_polars()["id"].to_list()[0] == "a"
        assert table.search("zebra", on="body_vec", hybrid=True).to_polars()["id"].to_list()[0] == "b"
        assert table.search("zebra", on="body_vec", text="title", hybrid=True).to_polars()["id"][0] == "a"
        assert builds == ["title", "body", "title"]

    def test_a_checkpoint_that_moves_records_leaves_the_index_right(
        self, tmp_path: Path, builds: list
    ) -> None:
        with pe.connect(tmp_path / "docs.duckdb") as db:
            table = db.create_table(
                "tickets",
                {"id": pl.String, "body": pl.String},
                vectors={"vec": pe.VectorOf("body", provider="hashing", dims=8)},
            )
            rows = 250_000  # row groups that a checkpoint merges once the deletes leave them small
            vectors = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
            table.add(
                pl.DataFrame(
                    {
                        "id": [f"r{i:06d}" for i in range(rows)],
                        "body": [f"word{i % 997} filler" for i in range(rows)],
                        "vec": pl.Series(vectors, dtype=pl.Array(pl.Float32, 8)),
                    }
                )
            )
            table.add([{"id": "zz", "body": "the unique aardvark"}])
            table.delete(where="id < 'r200000'")
            assert table.search("aardvark", k=1, hybrid=True).to_polars()["id"].item() == "zz"
            (before,) = db.connection.sql("SELECT rowid FROM tickets WHERE id = 'zz'").fetchone()
            db.connection.execute("CHECKPOINT")
            (after,) = db.connection.sql("SELECT rowid FROM tickets WHERE id = 'zz'").fetchone()
            assert after != before  # DuckDB renumbered the rows
            hits = table.search("aardvark", k=1, hybrid=True).to_polars()
            assert hits["id"].item() == "zz" and hits["keyword_rank"].item() == 1
            assert len(builds) == 1

    def test_a_read_only_reader_uses_the_writers_index_and_says_when_there_is_none(
        self, tmp_path: Path, builds: list
    ) -> None:
        path = tmp_path / "docs.duckdb"
        with pe.connect(path) as db:
            tickets_table(db, dims=16)
        with pe.connect(path, read_only=True) as reader:
            with pytest.raises(pe.ReadOnlyError, match=r"no keyword index of 'body'.*open read-only"):
                reader.open_table("tickets").search(QUERY, hybrid=True).to_polars()
            assert reader.open_table("tickets").search(QUERY).to_polars().height == 10  # vectors: fine
        with pe.connect(path) as db:
            written = db.open_table("tickets").search(QUERY, hybrid=True).to_polars()
        with pe.connect(path, read_only=True) as reader:
            assert reader.open_table("tickets").search(QUERY, hybrid=True).to_polars().equals(written)
        assert len(builds) == 1

    def test_bad_hybrid_searches_are_clear_errors(self, tickets: pe.Table, db: pe.Database) -> None:
        vector = tickets.provider().embed_batch([QUERY], kind="query")[0]
        with pytest.raises(pe.ConfigError, match="need text queries"):
            tickets.search(vector, hybrid=True)
        with pytest.raises(
            pe.ConfigError, match=r"'vec', which is not a text column .* \['id', 'body', 'team'\]"
        ):
            tickets.search(QUERY, text="vec", hybrid=True)
        with pytest.raises(pe.ConfigError, match="text= is for hybrid=True or rerank="):
            tickets.search(QUERY, text="body")
        with pytest.raises(pe.ConfigError, match="fusion must be one of"):
            tickets.search(QUERY, hybrid=True, fusion="max")
        ranked = db.create_table(
            "ranked",
            {"id": pl.String, "body": pl.String, "keyword_rank": pl.Int64},
            vectors={"vec": pe.VectorOf("body", provider="hashing", dims=8)},
        )
        with pytest.raises(pe.ConfigError, match="has a column named 'keyword_rank'"):
            ranked.search(QUERY, hybrid=True)
        ranked.search(QUERY, rerank=WORDS)  # a reranked search adds vector_rank only


@dataclass(frozen=True, kw_only=True, repr=False)
class PicturesProvider(HashingProvider):
    """Says it embeds images too (none are embedded here): what an image column needs to be declared."""

    name: ClassVar[str] = "hashing-pictures"

    @property
    def input_kinds(self) -> tuple[str, ...]:
        return ("text", "image")


def test_an_image_column_needs_text_named(db: pe.Database) -> None:
    with contextlib.suppress(pe.DuplicateProviderError):
        pe.get_registry().register(PicturesProvider, origin="tests")
    pictures = db.create_table(
        "pictures",
        {"id": pl.String, "image": pl.Binary, "caption": pl.String},
        vectors={"vec": pe.VectorOf("image", provider="hashing-pictures", dims=8)},
    )
    with pytest.raises(pe.ConfigError, match=r"embedded from images in 'image'.*pass text= a text column"):
        pictures.search("a cat", hybrid=True)
    pictures.search("a cat", text="caption", rerank=WORDS)  # a text column named: accepted


class TestReranking:
    def test_a_fake_cohere_reranks_the_best_filtered_candidates_after_a_rate_limit(
        self, tickets: pe.Table
    ) -> None:
        pytest.importorskip("cohere")
        with FakeCohereRerank(key="test-key") as server:
            server.then(Plan(status=429, headers={"Retry-After": "0"}))
            reranker = pe.resolve_reranker("cohere", base_url=server.url, api_key="test-key")
            hits = (
                tickets.search(QUERY, k=3, rerank=reranker, rerank_top=6).where("team <> 'ops'").to_polars()
            )
            _refused, request = server.requests
            assert pe.last_stats().retries == 1
        candidates = tickets.search(QUERY, k=6, where="team <> 'ops'").to_polars()["body"].to_list()
        relevance = {text: FakeCohereRerank.relevance(QUERY, text) for text in candidates}
        expected = sorted(candidates, key=lambda text: (-relevance[text], candidates.index(text)))[:3]
        assert hits["body"].to_list() == expected
        np.testing.assert_allclose(hits["score"].to_numpy(), [relevance[t] for t in expected], rtol=1e-6)
        assert hits["vector_rank"].to_list() == [candidates.index(text) + 1 for text in expected]
        assert hits.columns[-2:] == ["score", "vector_rank"]  # no keywords, no keyword_rank
        assert sorted(request.body["documents"]) == sorted(candidates)  # only the top 6 were sent

    @needs_fts
    def test_a_hybrid_search_reranked_by_name_with_the_registrys_endpoint(self, tickets: pe.Table) -> None:
        pytest.importorskip("cohere")
        with FakeCohereRerank(key="test-key") as server:
            pe.get_registry().configure("cohere", base_url=server.url, api_key="test-key")
            try:
                hits = tickets.search(QUERY, k=2, hybrid=True, rerank="cohere:rerank-v3.5").to_polars()
            finally:
                pe.get_registry().configure("cohere")
        texts = [text for text in CORPUS if text]  # fewer than rerank_top: every record is a candidate
        (request,) = server.requests
        assert sorted(request.body["documents"]) == sorted(texts)
        assert hits["body"].to_list()[0] == max(
            texts, key=lambda text: FakeCohereRerank.relevance(QUERY, text)
        )
        assert hits.columns[-3:] == ["score", "vector_rank", "keyword_rank"]

    def test_a_cross_encoder_made_here_reranks(self, tickets: pe.Table, cross_encoder_dir: Path) -> None:  # noqa: F811
        reranker = pe.resolve_reranker("sentence-transformers", model=str(cross_encoder_dir), device="cpu")
        hits = tickets.search("login error", k=4, rerank=reranker, rerank_top=8).to_polars()
        candidates = tickets.search("login error", k=8).to_polars()["body"].to_list()
        scores = rerank_scores("login error", candidates, reranker)
        order = np.lexsort((np.arange(len(scores)), -scores))[:4]
        assert hits["body"].to_list() == [candidates[i] for i in order]
        np.testing.assert_allclose(hits["score"].to_numpy(), scores[order], rtol=1e-5)


def test_without_fts_a_hybrid_search_is_refused_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fts, "packaged_extension", lambda name: None)
    offline = duckdb.connect(
        config={
            "extension_directory": "/nonexistent/extensions",
            "custom_extension_repository": "/nonexistent",
        }
    )
    with pe.connect(offline) as db:
        tickets = tickets_table(db, dims=16)
        with pytest.raises(pe.MissingDependencyError) as refused:
            tickets.search(QUERY, hybrid=True)
        message = str(refused.value)
        assert "fts extension, which is not available for duckdb" in message
        assert "install polars-embed[fts]" in message and ". " not in message and "\n" not in message
        assert str(type(refused.value)(message)) == message
        # everything else works without it
        assert tickets.search(QUERY, k=3).to_polars().height == 3
        assert tickets.search(QUERY, k=3, rerank=WORDS).to_polars().height == 3
