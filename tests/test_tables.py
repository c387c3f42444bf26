"""Embedding tables in one process: declarations, writes, validation, reads, search, changing the model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from unittest import mock

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import duckdb_ext
import polars_embed as pe
from polars_embed import cache
from tests.providers import CountingProvider, vector_for


@pytest.fixture(scope="module", autouse=True)
def counting_is_registered() -> None:
    with contextlib.suppress(pe.DuplicateProviderError):
        pe.get_registry().register(CountingProvider, origin="tests")


@pytest.fixture
def db() -> pe.Database:
    with pe.connect() as database:
        yield database


class Doc(pe.Model):
    id: str = pe.Id()
    title: str
    body: str | None = pe.Source()
    body_vec: pe.Vector = pe.VectorOf("body", provider="hashing", dims=32)
    meta: dict | None = None
    year: int | None = None


SCHEMA = {
    "type": "object",
    "properties": {
        "year": {"type": "integer"},
        "author": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["author"],
}


def docs_frame(n: int, *, seed: int = 0) -> pl.DataFrame:
    generator = np.random.default_rng(seed)
    words = np.array(["cat", "dog", "car", "boat", "red", "blue", "black", "small", "tree", "river"])
    return pl.DataFrame(
        {
            "id": [f"doc-{i}" for i in range(n)],
            "title": [f"title {i}" for i in range(n)],
            "body": [" ".join(generator.choice(words, size=5)) for i in range(n)],
            "meta": [
                json.dumps({"author": ["Alice", "Bob", "Carol"][i % 3], "year": 2000 + i % 7})
                for i in range(n)
            ],
            "year": [2000 + i % 7 for i in range(n)],
        }
    )


def counting_table(db: pe.Database, name: str = "docs", **options: object) -> pe.Table:
    return db.create_table(
        name,
        {"id": pl.String, "body": pl.String},
        vectors={"vec": pe.VectorOf("body", provider=CountingProvider(**options))},
    )


def exact_top(
    table: pe.Table, query: np.ndarray, keep: pl.Expr, k: int, column: str = "body_vec"
) -> list[str]:
    """The brute-force reference: cosine over every row that passes ``keep``, by numpy."""
    rows = table.to_polars().filter(keep & pl.col(column).is_not_null())
    matrix = rows[column].to_numpy()
    scores = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return rows["id"].gather(order).to_list()


class TestDeclaration:
    def test_a_class_declares_types_nullability_and_width_without_a_model_call(self, db: pe.Database) -> None:
        provider = CountingProvider(dims=12)

        class Note(pe.Model):
            id: str = pe.Id()
            title: str
            body: str | None = pe.Source()
            vec: pe.Vector = pe.VectorOf("body", provider=provider)
            stars: int | None = None
            meta: dict | None = None

        notes = db.create_table("notes", Note)
        assert provider.recorder.batches == []
        assert notes.schema == pl.Schema(
            {
                "id": pl.String,
                "title": pl.String,
                "body": pl.String,
                "stars": pl.Int64,
                "meta": pl.String,
                "vec": pl.Array(pl.Float32, 12),
            }
        )
        described = dict(
            (name, (kind, null)) for name, kind, null, *_ in db.connection.sql("DESCRIBE notes").fetchall()
        )
        assert described["vec"] == ("FLOAT[12]", "YES")
        assert described["meta"][0] == "JSON"
        assert described["id"][1] == described["title"][1] == "NO"
        assert described["body"][1] == "YES"

    def test_a_plain_polars_schema_declares_the_same_table(self, db: pe.Database) -> None:
        by_class = db.create_table("by_class", Doc)
        by_schema = db.create_table(
            "by_schema",
            {"id": pl.String, "title": pl.String, "body": pl.String, "year": pl.Int64},
            vectors={"body_vec": pe.VectorOf("body", provider="hashing", dims=32)},
            metadata="meta",
        )
        assert set(by_class.schema.items()) == set(by_schema.schema.items())
        assert by_schema.provider("body_vec") == by_class.provider()

    def test_two_vector_columns_from_two_providers(self, db: pe.Database) -> None:
        titles, bodies = CountingProvider(dims=8), CountingProvider(dims=16, model="other")
        table = db.create_table(
            "two",
            {"id": pl.String, "title": pl.String, "body": pl.String},
            vectors={
                "title_vec": pe.VectorOf("title", provider=titles),
                "body_vec": pe.VectorOf("body", provider=bodies),
            },
        )
        table.add([{"id": "a", "title": "cats", "body": "a cat sat on a mat"}])
        assert titles.recorder.texts == ["cats"] and bodies.recorder.texts == ["a cat sat on a mat"]
        stored = table.get("a")
        assert stored["title_vec"].shape == (8,) and stored["body_vec"].shape == (16,)
        np.testing.assert_allclose(
            stored["body_vec"], vector_for("document:a cat sat on a mat", 16), rtol=1e-6
        )
        table.search("cat", on="body_vec", k=1).to_polars()
        assert bodies.recorder.batches[-1] == ["cat"] and titles.recorder.texts == ["cats"]
        with pytest.raises(pe.ConfigError, match=r"2 vector columns \['title_vec', 'body_vec'\]: say which"):
            table.search("cat")

    @pytest.mark.parametrize(
        ("schema", "options", "message"),
        [
            ({"id": str, "score": float, "body": str}, {}, "'score' is reserved"),
            ({"key": str, "body": str}, {}, "no id column 'id'"),
            ({"id": str, "body": int}, {}, "embeds 'body', which is not a text column"),
            ({"id": str, "body": str}, {"metadata_schema": {"type": "object"}}, "needs a metadata column"),
            ({"id": int, "body": str}, {}, "holds text ids"),
        ],
    )
    def test_bad_declarations_are_refused(
        self, db: pe.Database, schema: dict, options: dict, message: str
    ) -> None:
        with pytest.raises(pe.ConfigError, match=message):
            db.create_table(
                "bad", schema, vectors={"vec": pe.VectorOf("body", provider="hashing")}, **options
            )
        assert db.table_names() == []

    def test_a_model_needs_an_id_and_vector_fields_need_vector_of(self) -> None:
        with pytest.raises(pe.ConfigError, match=r"annotated pe\.Vector and set to pe\.VectorOf"):

            class Broken(pe.Model):
                id: str = pe.Id()
                vec: pe.Vector

        class NoId(pe.Model):
            body: str
            vec: pe.Vector = pe.VectorOf("body", provider="hashing")

        with pytest.raises(pe.ConfigError, match="no id field"), pe.connect() as database:
            database.create_table("t", NoId)

    def test_create_twice_is_an_error_unless_the_declaration_is_the_same(self, db: pe.Database) -> None:
        db.create_table("docs", Doc)
        with pytest.raises(pe.TableExistsError, match=r"open it with db\.open_table\('docs'\)"):
            db.create_table("docs", Doc)
        assert db.create_table("docs", Doc, exist_ok=True).name == "docs"
        with pytest.raises(pe.TableExistsError, match="with another declaration"):
            db.create_table("docs", Doc, exist_ok=True, id_max_length=10)
        db.connection.sql("CREATE TABLE plain (x INT)")
        with pytest.raises(pe.TableExistsError, match="not an embedding table"):
            db.create_table("plain", Doc)

    def test_the_table_is_plain_duckdb_for_sql_and_duckdb_ext(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(20))
        assert db.connection.sql("SELECT typeof(body_vec) FROM docs LIMIT 1").fetchall() == [("FLOAT[32]",)]
        # the column's comment describes the vectors, so duckdb_ext.search embeds a text query itself
        found = duckdb_ext.search(db.connection, "docs", "body_vec", "black cat", k=3).select("id").fetchall()
        assert [row[0] for row in found] == docs.search("black cat", k=3).to_polars()["id"].to_list()


class TestWrites:
    def test_add_refuses_ids_that_exist_and_writes_nothing(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(5))
        with pytest.raises(
            pe.ConflictError, match=r"ids 'doc-3', 'doc-4' are in table 'docs' already.*upsert"
        ):
            docs.add(docs_frame(8).slice(3))
        assert len(docs) == 5

    def test_upsert_of_1000_rows_with_10_changed_embeds_exactly_those_10(self, db: pe.Database) -> None:
        table = counting_table(db)
        rows = pl.DataFrame(
            {"id": [f"r{i}" for i in range(1000)], "body": [f"text {i}" for i in range(1000)]}
        )
        assert table.add(rows) == 1000
        changed = rows.with_columns(
            body=pl.when(pl.int_range(1000) % 100 == 7).then(pl.col("body") + " (new)").otherwise("body")
        )
        rerun = CountingProvider()
        reopened = db.open_table("docs", providers={"vec": rerun})
        assert reopened.upsert(changed) == 10
        assert sorted(rerun.recorder.texts) == sorted(f"text {i} (new)" for i in range(7, 1000, 100))
        stored = reopened.to_polars().sort("id")
        np.testing.assert_allclose(
            stored.filter(pl.col("id") == "r107")["vec"].to_numpy()[0],
            vector_for("document:text 107 (new)", 8),
        )
        np.testing.assert_allclose(
            stored.filter(pl.col("id") == "r108")["vec"].to_numpy()[0], vector_for("document:text 108", 8)
        )
        assert reopened.upsert(changed) == 0 and len(rerun.recorder.texts) == 10

    def test_upsert_of_metadata_only_rewrites_without_embedding(self, db: pe.Database) -> None:
        provider = CountingProvider(dims=32)
        docs = db.create_table(
            "docs",
            {"id": pl.String, "title": pl.String, "body": pl.String},
            vectors={"body_vec": pe.VectorOf("body", provider=provider)},
            metadata="meta",
        )
        docs.add(docs_frame(3).drop("year"))
        sent = len(provider.recorder.texts)
        assert docs.upsert(docs_frame(3).drop("year").with_columns(meta=pl.lit('{"author": "Dan"}'))) == 3
        assert len(provider.recorder.texts) == sent
        assert docs.get("doc-1")["meta"] == {"author": "Dan"}
        assert docs.get("doc-1")["body_vec"] is not None

    def test_upsert_adds_new_records_and_a_blank_text_clears_the_vector(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(2))
        assert (
            docs.upsert(
                [{"id": "doc-0", "title": "t", "body": "  "}, {"id": "doc-9", "title": "t", "body": "new"}]
            )
            == 2
        )
        assert docs.get("doc-0")["body_vec"] is None and docs.get("doc-0")["meta"] is None
        assert docs.get("doc-9")["body_vec"] is not None and len(docs) == 3

    def test_upsert_refuses_ids_that_plain_sql_stored_twice(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(3))
        db.connection.execute("INSERT INTO docs SELECT * FROM docs WHERE id = 'doc-1'")
        with pytest.raises(pe.ConfigError, match="holds ids 'doc-1' more than once"):
            docs.upsert(docs_frame(3).with_columns(title=pl.lit("new")))
        assert docs.count("title = 'new'") == 0

    def test_delete_by_ids_by_a_polars_filter_and_by_sql(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(30))
        assert docs.delete(["doc-0", "doc-1", "no such id"]) == 2
        assert docs.delete("doc-2") == 1
        assert docs.delete(where=pl.col("year") == 2003) == 4
        assert docs.delete(where="meta->>'author' = 'Alice'") == 7
        assert len(docs) == 16
        assert docs.count(pl.col("year") == 2003) == 0
        with pytest.raises(pe.ConfigError, match="ids or where="):
            docs.delete()

    def test_bring_your_own_vectors_are_checked_and_not_embedded(self, db: pe.Database) -> None:
        table = counting_table(db)
        own = np.stack([vector_for("mine", 8), vector_for("yours", 8)])
        table.add(pl.DataFrame({"id": ["a", "b"], "body": ["x", "y"], "vec": own}))
        table.add([{"id": "c", "body": "z", "vec": own[0].tolist()}, {"id": "d", "body": "w"}])
        assert table.provider().recorder.texts == ["w"]
        np.testing.assert_array_equal(table.get("b")["vec"], own[1])
        np.testing.assert_array_equal(table.get("c")["vec"], own[0])

    def test_a_vector_of_another_width_names_both_widths_and_models(self, db: pe.Database) -> None:
        table = counting_table(db)
        made = pe.embed(["x"], "hashing", dims=4)
        with pytest.raises(pe.DimensionMismatchError) as raised:
            table.add(pl.DataFrame({"id": ["it's"], "body": ["x"], "vec": made}))
        message = str(raised.value)
        assert message.startswith('record "it\'s": vec has width 4 (made by hashing:words+chars)')
        assert "holds vectors of width 8 made by counting:counting-v1" in message
        with pytest.raises(pe.DimensionMismatchError, match="record 'a': vec has width 3"):
            table.add(pl.DataFrame({"id": ["b", "a"], "body": ["x", "y"], "vec": [[1.0] * 8, [1.0] * 3]}))
        assert len(table) == 0

    def test_a_vector_of_another_model_names_both(self, db: pe.Database) -> None:
        table = counting_table(db)
        made = pe.embed(["x"], "hashing", dims=8)
        with pytest.raises(
            pe.ValidationError,
            match=r"record 'a': vec was made by hashing:words\+chars .* of counting:counting-v1",
        ):
            table.add(pl.DataFrame({"id": ["a"], "body": ["x"], "vec": made}))

    def test_non_finite_vectors_are_refused(self, db: pe.Database) -> None:
        table = counting_table(db)
        bad = np.ones((2, 8), dtype=np.float32)
        bad[1, 3] = np.inf
        with pytest.raises(pe.ValidationError, match="record 'b': vec holds NaN or infinite values"):
            table.add(pl.DataFrame({"id": ["a", "b"], "body": ["x", "y"], "vec": bad}))

    def test_a_failure_half_way_leaves_the_table_as_it_was_and_the_retry_pays_for_the_rest(
        self, db: pe.Database, tmp_path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(cache, "_overrides", {})
        pe.configure_cache(enabled=True, path=tmp_path / "cache.sqlite3")
        table = counting_table(db, batch_size=10, fail_on=3)
        table.add(pl.DataFrame({"id": ["first"], "body": ["already here"]}))  # request 1
        before = table.to_polars()
        rows = pl.DataFrame({"id": [f"r{i}" for i in range(40)], "body": [f"text {i}" for i in range(40)]})
        with pytest.raises(pe.EmbeddingIncompleteError, match="10 of 40 distinct texts"):
            table.add(rows)  # request 2 lands in the cache, request 3 fails
        assert table.to_polars().equals(before)
        retry = CountingProvider(batch_size=10)
        db.open_table("docs", providers={"vec": retry}).add(rows)
        assert len(retry.recorder.texts) == 30 and len(table) == 41

    def test_a_write_duckdb_refuses_is_rolled_back_and_named(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(3))
        db.connection.execute("CREATE UNIQUE INDEX one_title ON docs (title)")  # a rule made in plain SQL
        twice = [{"id": "x", "title": "same", "body": "b"}, {"id": "y", "title": "same", "body": "c"}]
        with pytest.raises(
            pe.WriteError, match=r"refused a write to table 'docs' \(.*\), so nothing of it was kept"
        ) as raised:
            docs.add(twice)
        assert isinstance(raised.value, RuntimeError) and len(docs) == 3

    def test_a_failure_while_writing_rolls_the_whole_write_back(
        self, db: pe.Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(10))
        before = docs.to_polars().sort("id")
        store = pe.Table._store

        def store_then_fail(self: pe.Table, *args: object) -> int:
            store(self, *args)  # the inserts and updates have run inside the transaction
            raise RuntimeError("the disk is full")

        monkeypatch.setattr(pe.Table, "_store", store_then_fail)
        changed = docs_frame(15).with_columns(title=pl.col("title") + " v2")
        with pytest.raises(RuntimeError, match="the disk is full"):
            docs.upsert(changed)
        assert docs.to_polars().sort("id").equals(before)


class TestValidation:
    @pytest.fixture
    def docs(self, db: pe.Database) -> pe.Table:
        return db.create_table("docs", Doc, metadata_schema=SCHEMA)

    @pytest.mark.parametrize(
        ("meta", "message"),
        [
            ({"author": "A", "year": "1999"}, "record 'doc1': meta.year must be integer"),
            ({"year": 1999}, "record 'doc1': meta.author is required"),
            ({"author": "A", "tags": ["x", 3]}, r"record 'doc1': meta.tags\[1\] must be string"),
            ([1, 2], "record 'doc1': meta must be object"),
            ("{not json", "record 'doc1': meta is not valid JSON"),
        ],
    )
    def test_json_schema_errors_name_the_record_and_the_field(
        self, docs: pe.Table, meta: object, message: str
    ) -> None:
        rows = [
            {"id": "doc0", "title": "t", "body": "b", "meta": {"author": "A"}},
            {"id": "doc1", "title": "t", "body": "b", "meta": meta},
        ]
        with pytest.raises(pe.ValidationError, match=message):
            docs.add(rows)
        assert len(docs) == 0

    def test_a_struct_column_is_metadata_without_its_null_fields(self, docs: pe.Table) -> None:
        frame = pl.DataFrame(
            {
                "id": ["a", "b"],
                "title": ["t", "t"],
                "body": ["x", "y"],
                "meta": [{"author": "A"}, {"author": "B", "year": 2}],
            }
        )
        assert docs.add(frame) == 2
        assert docs.get("a")["meta"] == {"author": "A"}

    @pytest.mark.parametrize(
        "identifier", ['it\'s "quoted"', "ünï-cødé ✓ 文档", "x" * 300, "'; DROP TABLE docs; --"]
    )
    def test_ids_of_any_text_up_to_300_characters(self, db: pe.Database, identifier: str) -> None:
        docs = db.create_table("docs", Doc)
        docs.add([{"id": identifier, "title": "t", "body": "a cat"}])
        assert docs.get(identifier)["id"] == identifier
        assert docs.similar(identifier, k=1).to_polars().height == 0
        assert docs.delete(identifier) == 1

    def test_an_id_of_301_characters_is_refused(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        with pytest.raises(
            pe.ValidationError, match="its id is 301 characters long, over the table's limit of 300"
        ):
            docs.add([{"id": "x" * 301, "title": "t", "body": "b"}])

    def test_the_id_limit_is_configurable(self, db: pe.Database) -> None:
        class Short(pe.Model):
            id: str = pe.Id(max_length=5)
            body: str
            vec: pe.Vector = pe.VectorOf("body", provider="hashing", dims=8)

        short = db.create_table("short", Short)
        short.add([{"id": "12345", "body": "b"}])
        with pytest.raises(pe.ValidationError, match="record '123456': its id is 6 characters long"):
            short.add([{"id": "123456", "body": "b"}])
        longer = db.create_table("longer", Short, id_max_length=1000)
        longer.add([{"id": "x" * 1000, "body": "b"}])

    @pytest.mark.parametrize(
        ("rows", "message"),
        [
            ([{"id": "", "title": "t"}], "the record at row 0 has no id"),
            ([{"id": None, "title": "t"}], "the record at row 0 has no id"),
            ([{"id": "a", "title": "t"}, {"id": "a", "title": "u"}], "ids 'a' appear more than once"),
            ([{"id": "a", "title": None}], "record 'a': title is null, but table 'docs' requires it"),
            ([{"id": "a"}], "no column 'title', which table 'docs' requires"),
            ([{"id": "a", "title": "t", "year": "soon"}], "record 'a': year is 'soon'"),
            (
                [{"id": "a", "title": "t", "colour": "red"}],
                r"columns \['colour'\] that table 'docs' does not declare",
            ),
        ],
    )
    def test_records_that_break_the_declaration(self, db: pe.Database, rows: list, message: str) -> None:
        docs = db.create_table("docs", Doc)
        with pytest.raises(pe.ValidationError, match=message):
            docs.add(rows)
        assert len(docs) == 0

    def test_bad_metadata_schemas_are_refused(self, db: pe.Database) -> None:
        for schema, message in (
            ({"$ref": "https://example.com/schema.json"}, "only refer inside itself"),
            ({"properties": {"a": {"$ref": "file:///etc/passwd"}}}, "only refer inside itself"),
            ({"type": "nonsense"}, "not a valid JSON Schema"),
            ({"$schema": "https://example.com/my-draft"}, "is not a known draft"),
            ({"description": "x" * 70_000}, "over 65536 bytes"),
            (json.loads("[" * 40 + "]" * 40), "a JSON Schema object"),
        ):
            with pytest.raises(pe.ConfigError, match=message):
                db.create_table("docs", Doc, metadata_schema=schema)
        deep: dict = {}
        node = deep
        for _ in range(40):
            node["not"] = {}
            node = node["not"]
        with pytest.raises(pe.ConfigError, match="nests deeper than 32"):
            db.create_table("docs", Doc, metadata_schema=deep)


class TestReads:
    @pytest.fixture
    def docs(self, db: pe.Database) -> pe.Table:
        table = db.create_table("docs", Doc)
        table.add(docs_frame(1000))
        return table

    def test_paging_returns_every_row_exactly_once(self, docs: pe.Table) -> None:
        seen = []
        for offset in range(0, 1100, 64):
            page = docs.list(limit=64, offset=offset)
            assert page.height == max(0, min(64, 1000 - offset))
            seen += page["id"].to_list()
        assert sorted(seen) == sorted(f"doc-{i}" for i in range(1000)) and len(seen) == 1000
        assert seen == sorted(seen)

    def test_get_count_len(self, docs: pe.Table) -> None:
        record = docs.get("doc-7")
        assert record["title"] == "title 7" and record["meta"] == {"author": "Bob", "year": 2000}
        assert record["body_vec"].dtype == np.float32 and record["body_vec"].shape == (32,)
        assert docs.get("doc-1000") is None
        assert len(docs) == docs.count() == 1000
        assert docs.count(pl.col("year") == 2000) == docs.count("year = 2000") == 143

    def test_scan_is_lazy_and_typed(self, docs: pe.Table) -> None:
        lazy = docs.scan()
        assert lazy.collect_schema()["body_vec"] == pl.Array(pl.Float32, 32)
        picked = lazy.filter(pl.col("year") == 2001).select("id", "body_vec").head(5).collect()
        assert picked.schema == pl.Schema({"id": pl.String, "body_vec": pl.Array(pl.Float32, 32)})
        assert picked.height == 5
        assert lazy.select(pl.len()).collect().item() == 1000

    def test_to_polars_and_to_arrow(self, docs: pe.Table) -> None:
        frame = docs.to_polars()
        assert frame.schema == docs.schema and frame.height == 1000
        arrow = docs.to_arrow()
        assert arrow.schema.field("body_vec").type == pa.list_(pa.field("", pa.float32()), 32) or (
            pa.types.is_fixed_size_list(arrow.schema.field("body_vec").type)
            and arrow.schema.field("body_vec").type.list_size == 32
        )


class TestSearch:
    @pytest.fixture
    def docs(self, db: pe.Database) -> pe.Table:
        table = db.create_table("docs", Doc)
        table.add(
            docs_frame(500).vstack(
                pl.DataFrame(
                    {"id": ["empty"], "title": ["t"], "body": [None], "meta": [None], "year": [None]},
                    schema=docs_frame(1).schema,
                )
            )
        )
        return table

    @pytest.mark.parametrize(
        "condition",
        [pl.col("year") == 2003, "year = 2003", pl.col("meta").str.json_path_match("$.author") == "Carol"],
    )
    def test_a_filtered_search_returns_exactly_k_as_brute_force_does(self, docs: pe.Table, condition) -> None:
        query = docs.provider().embed_batch(["black cat near the river"], kind="query")[0]
        found = docs.search("black cat near the river", k=25).where(condition).to_polars()
        keep = condition if isinstance(condition, pl.Expr) else pl.col("year") == 2003
        assert found.height == 25
        assert found["id"].to_list() == exact_top(docs, query, keep, 25)
        assert found["score"].dtype == pl.Float32 and found["score"].is_sorted(descending=True)

    def test_a_filter_matching_fewer_than_k_returns_them_all(self, docs: pe.Table) -> None:
        found = docs.search("cat", k=50, where=pl.col("id").is_in(["doc-1", "doc-2", "empty"])).to_polars()
        assert sorted(found["id"]) == ["doc-1", "doc-2"]

    def test_similar_leaves_the_record_out_and_excludes_metadata_values(self, docs: pe.Table) -> None:
        own = docs.get("doc-10")["body_vec"]
        found = docs.similar("doc-10", k=20, exclude={"author": "Alice"}).to_polars()
        not_alice = pl.col("meta").str.json_path_match("$.author") != "Alice"
        assert found.height == 20
        assert found["id"].to_list() == [i for i in exact_top(docs, own, not_alice, 22) if i != "doc-10"][:20]
        assert "doc-10" not in found["id"].to_list()

    def test_include_takes_a_value_or_a_list(self, docs: pe.Table) -> None:
        found = docs.search("cat", k=500).include({"author": ["Bob", "Carol"], "year": 2001}).to_polars()
        metadata = [json.loads(text) for text in found["meta"]]
        assert found.height == docs.count("meta->>'author' IN ('Bob', 'Carol') AND year = 2001")
        assert all(m["author"] in ("Bob", "Carol") and m["year"] == 2001 for m in metadata)

    def test_batch_and_vector_queries(self, docs: pe.Table) -> None:
        batch = docs.search(["black cat", "red car"], k=3).to_polars()
        assert batch.columns[0] == "query_index" and batch["query_index"].to_list() == [0, 0, 0, 1, 1, 1]
        first = docs.search("black cat", k=3).to_polars()
        assert batch.filter(pl.col("query_index") == 0)["id"].to_list() == first["id"].to_list()
        vector = docs.provider().embed_batch(["red car"], kind="query")
        by_vector = docs.search(vector[0], k=3).to_polars()
        assert by_vector["id"].to_list() == batch.filter(pl.col("query_index") == 1)["id"].to_list()
        assert docs.search(np.vstack([vector, vector]), k=2).to_polars().height == 4
        with pytest.raises(
            pe.DimensionMismatchError, match=r"width 3, but column 'body_vec' .* width 32 made by hashing"
        ):
            docs.search([0.1, 0.2, 0.3])

    def test_searches_see_writes_through_the_table_and_plain_sql(
        self, docs: pe.Table, db: pe.Database
    ) -> None:
        docs.search("cat").to_polars()
        docs.add([{"id": "new", "title": "t", "body": "zebra zebra zebra"}])
        assert docs.search("zebra zebra zebra", k=1).to_polars()["id"].to_list() == ["new"]
        db.connection.execute("DELETE FROM docs WHERE id = 'new'")
        assert "new" not in docs.search("zebra zebra zebra", k=5).to_polars()["id"].to_list()

    def test_records_added_while_the_vectors_are_read_are_read_too(self, docs: pe.Table) -> None:
        # The vectors are read into a matrix as large as the record count said just before;
        # records that landed in between make it grow.
        generation, _ = docs._state()
        with mock.patch.object(pe.Table, "_state", return_value=(generation, 1)):
            kept = docs._vectors_for_search(docs._declaration.vector(None))
        stored = docs.to_polars().filter(pl.col("body_vec").is_not_null())
        assert kept.matrix.shape == (stored.height, 32) and sorted(kept.ids) == sorted(stored["id"])
        by_id = dict(zip(stored["id"], stored["body_vec"].to_numpy(), strict=True))
        np.testing.assert_array_equal(kept.matrix, np.stack([by_id[id] for id in kept.ids]))
        assert kept.matrix.base.flags["OWNDATA"]  # numpy's memory, not Arrow's

    def test_rows_that_moved_since_their_vectors_were_read_are_found_by_id(self, docs: pe.Table) -> None:
        column = docs._declaration.vector(None)
        kept = docs._vectors_for_search(column)
        # what a checkpoint that drops deleted rows does: records move to other row ids
        docs._vectors[column.name] = dataclasses.replace(kept, row_ids=np.roll(kept.row_ids, 3))
        query = docs.provider().embed_batch(["black cat near the river"], kind="query")[0]
        found = docs.search(query, k=8).to_polars()
        assert found["id"].to_list() == exact_top(docs, query, pl.lit(True), 8)
        assert found["title"].to_list() == [f"title {i.removeprefix('doc-')}" for i in found["id"]]
        assert docs._vectors == {}  # read again at the next search

    @pytest.mark.parametrize("kind", ["int8", "binary"])
    def test_a_quantized_search_ranks_the_filtered_records_and_keeps_its_twin(
        self, docs: pe.Table, kind: str
    ) -> None:
        query = docs.provider().embed_batch(["black cat near the river"], kind="query")[0]
        keep = pl.col("year") == 2003
        found = docs.search("black cat near the river", k=10, where=keep, quantized=kind).to_polars()
        assert found["id"].to_list() == exact_top(docs, query, keep, 10)
        exact = docs.search("black cat near the river", k=10, where=keep).to_polars()
        np.testing.assert_allclose(found["score"], exact["score"], rtol=1e-5)  # exact cosines
        column = docs._declaration.vector(None).name
        twin = docs._vectors[column].twins[kind]
        docs.search("red car", quantized=kind, oversample=2).to_polars()
        assert docs._vectors[column].twins[kind] is twin  # kept while the table is unchanged
        # Writes that change nothing keep it too: re-making a twin reads every vector again.
        assert docs.upsert(docs.list(limit=5)) == 0 and docs.delete(["no-such-id"]) == 0 and docs.fill() == 0
        docs.search("red car", quantized=kind).to_polars()
        assert docs._vectors[column].twins[kind] is twin
        docs.add([{"id": "new", "title": "t", "body": "zebra zebra zebra"}])
        assert docs.search("zebra zebra zebra", k=1, quantized=kind).to_polars()["id"].to_list() == ["new"]
        assert docs._vectors[column].twins[kind] is not twin
        similar = docs.similar("doc-10", k=5, quantized=kind).to_polars()["id"].to_list()
        assert similar == docs.similar("doc-10", k=5).to_polars()["id"].to_list() and "doc-10" not in similar

    def test_quantized_options_are_checked_when_the_search_is_made(self, docs: pe.Table) -> None:
        with pytest.raises(pe.ConfigError, match="quantized must be 'int8', 'binary' or None"):
            docs.search("cat", quantized="int4")
        with pytest.raises(pe.ConfigError, match="oversample= is for a quantized= search"):
            docs.search("cat", oversample=5)
        # exact=True asks for every record ranked by its float32 vector, which a twin cannot do.
        with pytest.raises(pe.ConfigError, match=r"exact=True ranks every row .* pass one of them"):
            docs.search("cat", exact=True, quantized="int8")
        with pytest.raises(pe.ConfigError, match=r"exact=True ranks every row .* pass one of them"):
            docs.similar("doc-10", exact=True, quantized="binary")

    def test_filters_that_refer_to_nothing_are_errors(self, docs: pe.Table) -> None:
        with pytest.raises(pe.ConfigError, match=r"uses columns \['colour'\]"):
            docs.search("cat", where=pl.col("colour") == "red").to_polars()
        with pytest.raises(pe.ConfigError, match=r"DuckDB refused a query on table 'docs' \(Binder Error"):
            docs.search("cat", where="colour = 'red'").to_polars()
        with pytest.raises(pe.ConfigError, match="a Polars filter failed on table 'docs'"):
            docs.search("cat", where=pl.col("title").str.len_chars() + pl.col("body")).to_polars()

    @pytest.mark.skipif(
        not duckdb.__version__.startswith("1.5"), reason="vss is packaged for duckdb 1.5.5 only"
    )
    def test_an_hnsw_index_is_used_with_over_fetch_for_filters(self, docs: pe.Table) -> None:
        pytest.importorskip("duckdb_extension_vss")
        docs.create_index()
        plain = docs.search("black cat", k=5).to_polars()
        exact = docs.search("black cat", k=5, exact=True).to_polars()
        assert len(set(plain["id"]) & set(exact["id"])) >= 3
        filtered = docs.search("black cat", k=10, where="year = 2003").to_polars()
        assert filtered.height == 10 and set(filtered["year"]) == {2003}
        similar = docs.similar("doc-3", k=10, exclude={"author": "Alice"}).to_polars()
        assert similar.height == 10 and "doc-3" not in similar["id"].to_list()


class TestChangingTheModel:
    def test_a_new_column_fills_resumably_and_reports_agreement(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(300))
        failing = CountingProvider(dims=32, fail_on=2, batch_size=1000)
        docs.add_vector_column("body_vec2", pe.VectorOf("body", provider=failing))
        assert docs.to_polars()["body_vec2"].null_count() == 300
        assert docs.search([0.1] * 32, on="body_vec2", k=5).to_polars().height == 0
        with pytest.raises(pe.EmbeddingIncompleteError):
            docs.fill("body_vec2", batch_rows=100)
        assert docs.to_polars()["body_vec2"].null_count() == 200  # the first batch was committed
        assert docs.search([0.1] * 32, on="body_vec2", k=150).to_polars().height == 100
        rerun = CountingProvider(dims=32)
        reopened = db.open_table("docs", providers={"body_vec2": rerun})
        assert reopened.fill("body_vec2", batch_rows=100) == 200
        assert len(rerun.recorder.texts) == len(set(docs.to_polars()["body"][100:]))
        assert reopened.to_polars()["body_vec2"].null_count() == 0
        same = reopened.agreement("body_vec", "body_vec", sample=20, k=5)
        assert same.mean_overlap == 1.0 and len(same.overlaps) == 20
        other = reopened.agreement("body_vec", "body_vec2", queries=["black cat", "red car"], k=5)
        assert (
            0 <= other.mean_overlap < 1
            and "top-5 overlap of 'body_vec' and 'body_vec2' on 2 queries" in str(other)
        )
        reopened.add([{"id": "new", "title": "t", "body": "river cloud"}])
        assert reopened.get("new")["body_vec2"] is not None  # new records get every column
        reopened.drop_vector_column("body_vec")
        assert (
            reopened.vector_columns == ["body_vec2"]
            and "body_vec" not in db.connection.sql("FROM docs").columns
        )
        with pytest.raises(pe.ConfigError, match="changed since it was opened"):
            docs.add([{"id": "late", "title": "t", "body": "x"}])

    def test_a_provider_given_when_opening_must_be_the_stored_one(self, db: pe.Database) -> None:
        counting_table(db)
        db.open_table("docs", providers={"vec": CountingProvider(batch_size=3)})  # a runtime option
        with pytest.raises(
            pe.ConfigError, match=r"embedded with counting:counting-v1 .* given for it is hashing"
        ):
            db.open_table("docs", providers={"vec": pe.resolve_provider("hashing", dims=8)})
        with pytest.raises(pe.DimensionMismatchError, match="holds vectors of width 8"):
            db.open_table("docs", providers={"vec": CountingProvider(dims=4)})

    def test_a_stored_spec_from_another_provider_version_says_so(self, db: pe.Database) -> None:
        docs = db.create_table("docs", Doc)
        docs.add(docs_frame(5))
        stored = json.loads(
            db.connection.sql("SELECT declaration FROM __polars_embed_tables").fetchall()[0][0]
        )
        stored["vectors"][0]["spec"]["version"] = 2
        db.connection.execute("UPDATE __polars_embed_tables SET declaration = ?", [json.dumps(stored)])
        reopened = db.open_table("docs")
        assert reopened.get("doc-1")["title"] == "title 1"  # reads need no provider
        assert reopened.search(docs.get("doc-1")["body_vec"], k=2).to_polars().height == 2
        with pytest.raises(
            pe.ConfigError, match=r"cannot embed into 'body_vec' .* version 2 of provider 'hashing'"
        ):
            reopened.search("cat")
        with pytest.raises(pe.ConfigError, match="version 2 of provider 'hashing'"):
            reopened.add([{"id": "x", "title": "t", "body": "b"}])
        assert len(reopened) == 5


def test_read_only_databases_refuse_writes(tmp_path) -> None:
    with pe.connect(tmp_path / "docs.duckdb") as database:
        database.create_table("docs", Doc).add(docs_frame(3))
    with pe.connect(tmp_path / "docs.duckdb", read_only=True) as database:
        docs = database.open_table("docs")
        assert docs.search("cat", k=2).to_polars().height == 2
        with pytest.raises(pe.ReadOnlyError, match=r"opened read-only; open it with pe\.connect\(path\)"):
            docs.add(docs_frame(1))
    with pytest.raises(pe.DatabaseNotFoundError, match="does not exist"):
        pe.connect(tmp_path / "missing.duckdb", read_only=True)


def test_every_error_is_a_polars_embed_error_rebuilt_from_its_message(db: pe.Database) -> None:
    docs = db.create_table("docs", Doc)
    docs.add(docs_frame(2))
    attempts = [
        lambda: docs.add(docs_frame(2)),
        lambda: docs.add([{"id": "x" * 301, "title": "t"}]),
        lambda: docs.similar("missing"),
        lambda: db.open_table("missing"),
        lambda: db.create_table("docs", Doc),
        lambda: docs.search([1.0, 2.0]),
    ]
    for attempt in attempts:
        with pytest.raises(pe.PolarsEmbedError) as raised:
            attempt()
        error = raised.value
        rebuilt = type(error)(str(error))
        assert str(rebuilt) == str(error) and str(error).count(". ") == 0, str(error)


def test_writes_give_refused_records_null_vectors_and_fill_retries_them(db: pe.Database) -> None:
    docs = counting_table(db, refuse_containing="BAD", batch_size=3)
    rows = [{"id": f"d{i}", "body": f"text {i}" + (" BAD" if i in (2, 5) else "")} for i in range(8)]
    with pytest.raises(pe.EmbeddingIncompleteError, match="a text contains 'BAD'"):
        docs.add(rows)  # the default writes nothing
    assert len(docs) == 0
    assert docs.add(rows, on_error="null") == 8
    stored = docs.to_polars().sort("id")
    assert stored.filter(pl.col("vec").is_null())["id"].to_list() == ["d2", "d5"]
    assert sorted(failure.text for failure in pe.last_stats().failures) == ["text 2 BAD", "text 5 BAD"]
    assert docs.upsert([{"id": "d9", "body": "more BAD"}], on_error="null") == 1
    assert docs.get("d9")["vec"] is None
    assert docs.fill(on_error="null") == 0  # still refused: still null, and reported
    assert pe.last_stats().failed == 3
