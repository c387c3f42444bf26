"""The embed namespace on DataFrames and LazyFrames: search, knn_join, Parquet round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import polars_embed
from polars_embed import (
    ColumnNotFoundError,
    ConfigError,
    DimensionMismatchError,
    DuplicateColumnError,
    InputTypeError,
    InvalidInputError,
)
from tests.providers import CountingProvider
from tests.test_kernels import peak_bytes

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ["auto", "streaming", "in-memory"]
ANIMALS = ["a cat on a mat", "a dog in the fog", None, "stocks fell sharply", "the cat sat", "  "]


@pytest.fixture
def animals() -> pl.DataFrame:
    """Six rows of hashed text, a null and a blank among them."""
    frame = pl.DataFrame({"id": range(len(ANIMALS)), "text": ANIMALS})
    return frame.with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=64))


def random_vectors(rows: int, dims: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dims)).astype(np.float32)


def reference_scores(queries: np.ndarray, corpus: np.ndarray, metric: str) -> np.ndarray:
    """Brute force in float64: a (q, n) matrix of scores, NaN where a row cannot match."""
    q, c = queries.astype(np.float64), corpus.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "dot":
            return q @ c.T
        if metric == "l2":
            return np.sqrt(((q[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1))
        norms = np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(c, axis=1)[None, :]
        return np.where(norms > 0, (q @ c.T) / np.where(norms > 0, norms, 1.0), np.nan)


def check_hits(
    hit_rows: np.ndarray, hit_scores: np.ndarray, reference: np.ndarray, k: int, metric: str
) -> None:
    """One query's hits are its k best rows by the reference, best first, with their scores.

    Compared by score rather than by row, so that near-ties may come in either order.
    """
    usable = np.flatnonzero(~np.isnan(reference))
    best = np.sort(reference[usable])
    best = best[:k] if metric == "l2" else best[::-1][:k]
    assert len(hit_rows) == len(best)
    np.testing.assert_allclose(hit_scores, best, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reference[hit_rows], hit_scores, rtol=1e-4, atol=1e-4)


vector_rows = st.integers(min_value=0, max_value=30)
widths = st.integers(min_value=1, max_value=5)
metrics = st.sampled_from(["cosine", "dot", "l2"])


@st.composite
def corpora(draw: st.DrawFn, dims: int) -> tuple[pl.DataFrame, np.ndarray]:
    """A frame of small-integer vectors (ties and zero vectors are common) with null rows,
    and the same vectors as an array with NaN rows for the nulls."""
    rows = draw(vector_rows)
    values = draw(st.lists(st.integers(-2, 2), min_size=rows * dims, max_size=rows * dims))
    matrix = np.array(values, dtype=np.float32).reshape(rows, dims)
    nulls = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
    frame = pl.DataFrame(
        {"id": np.arange(rows), "vec": matrix}, schema_overrides={"vec": pl.Array(pl.Float32, dims)}
    )
    frame = frame.with_columns(vec=pl.when(~pl.Series(nulls, dtype=pl.Boolean)).then("vec"))
    return frame, np.where(np.array(nulls, dtype=bool)[:, None], np.nan, matrix)


same_width_corpora = widths.flatmap(lambda dims: st.tuples(corpora(dims), corpora(dims)))


class TestSearch:
    def test_a_text_query_uses_the_columns_own_provider(self, animals: pl.DataFrame) -> None:
        hits = animals.embed.search("cat", k=2)
        assert hits.columns == ["id", "text", "vec", "score"] and hits.schema["score"] == pl.Float32
        assert hits["text"].to_list() == ["the cat sat", "a cat on a mat"]
        query = polars_embed.embed(["cat"], "hashing", dims=64, kind="query").to_numpy()
        reference = reference_scores(query, animals["vec"].to_numpy(), "cosine")[0]
        np.testing.assert_allclose(hits["score"].to_numpy(), reference[hits["id"].to_numpy()], rtol=1e-5)

    def test_null_vectors_never_match_and_k_beyond_the_rows_returns_them_all(
        self, animals: pl.DataFrame
    ) -> None:
        hits = animals.embed.search("cat", k=100)
        assert sorted(hits["id"].to_list()) == [0, 1, 3, 4]
        assert hits["score"].is_sorted(descending=True)

    @pytest.mark.parametrize("k", [0, -1])
    @pytest.mark.parametrize("lazy", [False, True])
    def test_k_must_be_positive(self, animals: pl.DataFrame, k: int, lazy: bool) -> None:
        frame = animals.lazy() if lazy else animals
        with pytest.raises(
            ConfigError, match=rf"k must be a positive integer \(results per query, e.g. k=10\), got {k}"
        ):
            frame.embed.search("cat", k=k)

    @settings(max_examples=60, deadline=None)
    @given(corpus=same_width_corpora, k=st.integers(1, 8), metric=metrics)
    def test_matches_a_brute_force_reference(
        self,
        corpus: tuple[tuple[pl.DataFrame, np.ndarray], tuple[pl.DataFrame, np.ndarray]],
        k: int,
        metric: str,
    ) -> None:
        (frame, matrix), (_, queries) = corpus
        queries = np.nan_to_num(queries)[:4]  # up to 4 queries, some of them zero vectors
        if len(queries) == 0:
            return
        hits = frame.embed.search(queries, k=k, metric=metric)
        reference = reference_scores(queries, matrix, metric)
        for number in range(len(queries)):
            query_hits = hits.filter(pl.col("query_index") == number)
            check_hits(
                query_hits["id"].to_numpy(), query_hits["score"].to_numpy(), reference[number], k, metric
            )
        if metric == "dot":  # exact integer scores: ties go to the earlier row
            assert hits.sort("query_index", "score", "id", descending=[False, True, False]).equals(hits)

    @pytest.mark.parametrize(
        "query",
        [
            pytest.param([1.0, 0.0, 0.0, 0.0], id="list"),
            pytest.param(np.array([1, 0, 0, 0], dtype=np.float64), id="float64"),
            pytest.param(pl.Series([1.0, 0.0, 0.0, 0.0]), id="series"),
        ],
    )
    def test_a_single_vector_query(self, query: object) -> None:
        frame = pl.DataFrame({"vec": [[0.0, 1.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]})
        frame = frame.with_columns(pl.col("vec").cast(pl.Array(pl.Float32, 4)))
        hits = frame.embed.search(query, k=2)
        assert hits.columns == ["vec", "score"]
        assert hits["score"].to_list() == pytest.approx([1.0, 0.6])

    def test_a_batch_of_texts_and_a_batch_of_vectors(self, animals: pl.DataFrame) -> None:
        by_text = animals.embed.search(["cat", "stocks"], k=1)
        assert by_text.select("query_index", "text").rows() == [
            (0, "the cat sat"),
            (1, "stocks fell sharply"),
        ]
        queries = polars_embed.embed(["cat", "stocks"], "hashing", dims=64, kind="query")
        for batch in (queries, queries.to_numpy(), queries.to_list()):
            assert animals.embed.search(batch, k=1).equals(by_text)

    def test_a_query_that_cannot_match_gets_no_rows(self, animals: pl.DataFrame) -> None:
        hits = animals.embed.search(np.zeros((2, 64)), k=3)
        assert hits.height == 0 and hits.columns == ["query_index", "id", "text", "vec", "score"]

    def test_a_column_of_unknown_origin_needs_a_provider(self) -> None:
        frame = pl.DataFrame({"vec": random_vectors(5, 64)})
        with pytest.raises(ConfigError, match=r"which model made column 'vec' is not known.*pass provider="):
            frame.embed.search("cat")
        assert frame.embed.search("cat", provider="hashing", dims=64, k=2).height == 2

    def test_a_provider_that_is_not_the_columns_own(self, animals: pl.DataFrame) -> None:
        with pytest.raises(
            ConfigError, match=r"embedded with hashing:words\+chars.*would be embedded with hashing:chars"
        ):
            animals.embed.search("cat", provider="hashing:chars", dims=64)
        assert animals.embed.search("cat", provider="hashing", dims=64).equals(animals.embed.search("cat"))

    def test_a_query_of_another_width_names_both_widths_and_models(self, animals: pl.DataFrame) -> None:
        with pytest.raises(
            DimensionMismatchError,
            match=r"column 'vec' holds vectors of width 64 \(made by hashing:words\+chars\), "
            r"but hashing:words\+chars makes vectors of width 32",
        ):
            animals.embed.search("cat", provider="hashing", dims=32)
        with pytest.raises(DimensionMismatchError, match=r"'vec' \(vectors of width 64, made by .*width 3\)"):
            animals.embed.search([1.0, 2.0, 3.0])

    def test_several_vector_columns_of_different_widths(self, animals: pl.DataFrame) -> None:
        both = animals.with_columns(narrow=pl.col("text").embed.with_provider("hashing", dims=16))
        narrow_query = polars_embed.embed(["cat"], "hashing", dims=16, kind="query").to_numpy()[0]
        narrow_hits = both.embed.search("cat", on="narrow", k=2)
        assert narrow_hits.equals(both.embed.search(narrow_query, on="narrow", k=2))
        assert both.embed.search("cat", k=2).drop("narrow").equals(animals.embed.search("cat", k=2))

    def test_bad_arguments(self, animals: pl.DataFrame) -> None:
        with pytest.raises(ColumnNotFoundError, match="no vector column 'embedding': pass on= one of"):
            animals.embed.search("cat", on="embedding")
        with pytest.raises(InputTypeError, match="column 'text' is String, not a vector column"):
            animals.embed.search("cat", on="text")
        with pytest.raises(ConfigError, match="unknown metric 'manhattan'"):
            animals.embed.search("cat", metric="manhattan")
        with pytest.raises(DuplicateColumnError, match="two columns named 'text'"):
            animals.embed.search("cat", score="text")
        with pytest.raises(InvalidInputError, match="at least one query"):
            animals.embed.search([])
        with pytest.raises(InvalidInputError, match="query 1 is '  '"):
            animals.embed.search(["cat", "  "])
        with pytest.raises(InputTypeError, match="query vectors must be numbers"):
            animals.embed.search([[1.0, 2.0], [1.0]])
        with pytest.raises(ConfigError, match="these queries are vectors already"):
            animals.embed.search(np.ones(64), provider="hashing")
        with pytest.raises(ConfigError, match=r"options \['dims'\] are for provider="):
            animals.embed.search("cat", dims=64)

    def test_a_huge_k_returns_every_row_and_allocates_nothing_by_k(self, animals: pl.DataFrame) -> None:
        huge = 10**7  # a (2, k) pair of arrays alone would be 240 MB
        assert peak_bytes(lambda: animals.embed.search(["cat", "stocks"], k=huge)) < 2**20
        assert peak_bytes(lambda: animals.embed.knn_join(animals, on="vec", k=huge)) < 2**20
        hits = animals.embed.search(["cat", "stocks"], k=huge)
        joined = animals.embed.knn_join(animals, on="vec", k=huge)
        assert hits.equals(animals.embed.search(["cat", "stocks"], k=4))
        assert joined.equals(animals.embed.knn_join(animals, on="vec", k=4))

    def test_an_all_null_column_costs_no_provider_call(self, counting: CountingProvider) -> None:
        frame = pl.DataFrame({"vec": [None, None]}, schema={"vec": pl.Array(pl.Float32, 8)})
        assert frame.embed.search("cat", provider=counting).height == 0
        assert counting.recorder.batches == []


class TestLazySearch:
    def test_nothing_runs_until_collect(self, counting: CountingProvider) -> None:
        texts = ["a cat", None, "a dog", "stocks"]
        query = (
            pl.LazyFrame({"text": texts})
            .with_columns(vec=pl.col("text").embed.with_provider(counting))
            .embed.search("cat", k=2, provider=counting)
        )
        assert query.collect_schema() == pl.Schema(
            {"text": pl.String, "vec": pl.Array(pl.Float32, 8), "score": pl.Float32}
        )
        assert counting.recorder.batches == []
        hits = query.collect()
        assert sorted(counting.recorder.texts) == ["a cat", "a dog", "cat", "stocks"]
        frame = pl.DataFrame({"text": texts}).with_columns(vec=pl.col("text").embed.with_provider(counting))
        assert hits.equals(frame.embed.search("cat", k=2))

    @pytest.mark.parametrize("engine", ENGINES)
    def test_over_a_described_parquet_scan_with_many_row_groups(self, engine: str, tmp_path: Path) -> None:
        texts = [
            f"note {i} about {('cats', 'dogs', 'stocks')[i % 3]}" if i % 5 else None for i in range(1200)
        ]
        frame = pl.DataFrame({"id": range(1200), "text": texts}).with_columns(
            vec=pl.col("text").embed.with_provider("hashing", dims=32)
        )
        frame.embed.write_parquet(tmp_path / "notes.parquet", row_group_size=100)
        scan = polars_embed.scan_parquet(tmp_path / "notes.parquet")
        hits = scan.embed.search(["cats", "stocks"], k=5).collect(engine=engine)
        assert hits.equals(frame.embed.search(["cats", "stocks"], k=5))
        assert hits.height == 10

    @pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
    def test_chunked_lazy_and_scanned_frames_search_like_one_chunk(self, metric: str, tmp_path: Path) -> None:
        # Small integers: every score is exact, so ties must break alike (to the earlier row)
        # whatever the chunks; every fifth vector is null and some are zero.
        rng = np.random.default_rng(12)
        vectors = rng.integers(-1, 2, (3000, 6)).astype(np.float32)
        frame = pl.DataFrame({"id": range(3000), "vec": vectors}).with_columns(
            vec=pl.when(pl.col("id") % 5 != 0).then(pl.col("vec"))
        )
        pieces = [frame.slice(start, size) for start, size in ((0, 7), (7, 993), (1000, 1500), (2500, 500))]
        chunked = pl.concat(pieces, rechunk=False)
        assert chunked["vec"].n_chunks() == 4
        frame.write_parquet(tmp_path / "vectors.parquet", row_group_size=256)
        queries = rng.integers(-1, 2, (4, 6)).astype(np.float32)
        want = frame.embed.search(queries, k=25, metric=metric, normalized=False)
        for normalized in (False, None):
            assert chunked.embed.search(queries, k=25, metric=metric, normalized=normalized).equals(want)
        assert chunked.lazy().embed.search(queries, k=25, metric=metric).collect().equals(want)
        scanned = pl.scan_parquet(tmp_path / "vectors.parquet").embed.search(queries, k=25, metric=metric)
        assert scanned.collect(engine="streaming").equals(want)
        left = pl.DataFrame({"q": [*queries.tolist(), None]}, schema={"q": pl.Array(pl.Float32, 6)})
        joined = left.embed.knn_join(chunked, left_on="q", right_on="vec", k=3, metric=metric, how="left")
        assert joined.equals(
            left.embed.knn_join(frame, left_on="q", right_on="vec", k=3, metric=metric, how="left")
        )
        assert joined.filter(pl.col("q").is_null())["id"].to_list() == [None]

    def test_kept_norms_are_used_again_and_never_outlive_the_data(self) -> None:
        rng = np.random.default_rng(13)
        vectors = rng.standard_normal((500, 8)).astype(np.float32) * rng.uniform(0.1, 9, (500, 1))
        frame = pl.DataFrame({"id": range(500), "vec": vectors.astype(np.float32)})
        query = vectors[42]
        computed = polars_embed.namespaces._vectors.squared_norms
        with mock.patch.object(polars_embed.namespaces._vectors, "squared_norms", wraps=computed) as norms:
            assert frame.embed.search(query, k=1, normalized=False)["id"].to_list() == [42]
            assert frame.embed.search(-query, k=1, normalized=False)["id"].to_list() != [42]
            assert norms.call_count == 1
            # New values in the same frame: replaced in place, and rewritten with a copy.
            changed = vectors.copy()
            changed[42] = -changed[42]
            frame.replace_column(1, pl.Series("vec", changed))
            assert frame.embed.search(query, k=1, normalized=False)["id"].to_list() != [42]
            assert norms.call_count == 2
            frame = frame.with_columns(pl.col("vec").arr.eval(pl.element() * 0.5))
            hits = frame.embed.search(-query, k=1, normalized=False)
            assert hits["id"].to_list() == [42] and norms.call_count == 3
            another = pl.concat([frame.head(10), frame.tail(490)], rechunk=False)  # a frame of its own
            assert another.embed.search(-query, k=1, normalized=False)["id"].to_list() == [42]
            assert norms.call_count == 4

    def test_a_vector_query_looks_up_no_provider_it_does_not_need(self, animals: pl.DataFrame) -> None:
        # Looking up the column's provider reads some of its rows: a vector query with the
        # norms promised, or ranked on a twin (which keeps its own), has no use for it.
        query = animals["vec"][0].to_numpy()
        expected = animals.embed.search(query, k=2)["id"].to_list()
        frame_module = "polars_embed.namespaces.frame"
        with mock.patch(f"{frame_module}.provider_of", side_effect=AssertionError("looked up")) as lookup:
            assert animals.embed.search(query, k=2, normalized=True)["id"].to_list() == expected
            assert animals.embed.search(query, k=2, quantized="int8")["id"].to_list() == expected
            assert lookup.call_count == 0

    def test_a_filter_after_the_search_filters_its_results(self, animals: pl.DataFrame) -> None:
        hits = animals.lazy().embed.search("cat", k=2).filter(pl.col("id") != 4).collect()
        assert hits["text"].to_list() == ["a cat on a mat"]

    def test_errors_in_the_schema_come_at_construction(self, animals: pl.DataFrame) -> None:
        with pytest.raises(pl.exceptions.ColumnNotFoundError):
            animals.lazy().embed.search("cat", on="nope")


def knn_reference_check(
    left: pl.DataFrame, right: pl.DataFrame, joined: pl.DataFrame, k: int, metric: str
) -> None:
    reference = reference_scores(left["vec"].to_numpy(), right["vec"].to_numpy(), metric)
    for row in range(left.height):
        hits = joined.filter(pl.col("id") == left["id"][row])
        check_hits(hits["id_right"].to_numpy(), hits["score"].to_numpy(), reference[row], k, metric)


class TestKnnJoin:
    @settings(max_examples=40, deadline=None)
    @given(
        frames=same_width_corpora, k=st.integers(1, 6), metric=metrics, how=st.sampled_from(["inner", "left"])
    )
    def test_matches_a_brute_force_reference(
        self,
        frames: tuple[tuple[pl.DataFrame, np.ndarray], tuple[pl.DataFrame, np.ndarray]],
        k: int,
        metric: str,
        how: str,
    ) -> None:
        (left_frame, _), (right_frame, _) = frames
        joined = left_frame.embed.knn_join(right_frame, on="vec", k=k, metric=metric, how=how)
        assert joined.columns == ["id", "vec", "id_right", "vec_right", "score"]
        matched = joined.filter(pl.col("score").is_not_null() | pl.col("id_right").is_not_null())
        knn_reference_check(left_frame, right_frame, matched, k, metric)
        if how == "left":  # every left row appears; one with no match appears once, with nulls
            unmatched = set(left_frame["id"]) - set(matched["id"])
            assert set(joined["id"]) == set(left_frame["id"])
            assert joined.filter(pl.col("id").is_in(list(unmatched)))["id"].to_list() == sorted(unmatched)
        assert joined["id"].is_sorted()

    def test_left_rows_with_null_vectors(self, animals: pl.DataFrame) -> None:
        inner = animals.embed.knn_join(animals, on="vec", k=1)
        assert inner["id"].to_list() == [0, 1, 3, 4]
        assert inner["id"].to_list() == inner["id_right"].to_list()  # each row is its own best match
        left = animals.embed.knn_join(animals, on="vec", k=1, how="left")
        assert left["id"].to_list() == [0, 1, 2, 3, 4, 5]
        assert left.filter(pl.col("id").is_in([2, 5]))["id_right"].to_list() == [None, None]
        assert left.filter(pl.col("id").is_in([2, 5]))["score"].to_list() == [None, None]

    def test_column_names(self, animals: pl.DataFrame) -> None:
        right = animals.select(pl.col("id").alias("doc"), "text", pl.col("vec").alias("embedding"))
        joined = animals.embed.knn_join(right, left_on="vec", right_on="embedding", k=2, suffix="_doc")
        assert joined.columns == ["id", "text", "vec", "doc", "text_doc", "embedding", "score"]
        with pytest.raises(DuplicateColumnError, match="two columns named 'text'"):
            animals.embed.knn_join(right, left_on="vec", right_on="embedding", score="text")
        with pytest.raises(DuplicateColumnError, match="two columns named 'score': pass another name"):
            animals.embed.knn_join(right.rename({"doc": "score"}), left_on="vec", right_on="embedding")
        with pytest.raises(ConfigError, match="on=, or left_on= and right_on="):
            animals.embed.knn_join(right, left_on="vec")
        with pytest.raises(ConfigError, match="how must be 'inner' or 'left', got 'outer'"):
            animals.embed.knn_join(right, left_on="vec", right_on="embedding", how="outer")

    def test_an_empty_or_all_null_right_side(self, animals: pl.DataFrame) -> None:
        for right in (animals.clear(), animals.with_columns(vec=pl.lit(None, animals.schema["vec"]))):
            assert animals.embed.knn_join(right, on="vec").height == 0
            kept = animals.embed.knn_join(right, on="vec", how="left")
            assert kept["id"].to_list() == list(range(6)) and kept["score"].null_count() == 6

    def test_widths_and_models_must_agree(self, animals: pl.DataFrame) -> None:
        narrow = animals.with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=16))
        with pytest.raises(DimensionMismatchError, match=r"width 64.*width 16"):
            animals.embed.knn_join(narrow, on="vec")
        other_model = animals.with_columns(vec=pl.col("text").embed.with_provider("hashing:chars", dims=64))
        with pytest.raises(ConfigError, match=r"hashing:words\+chars and column 'vec' with hashing:chars"):
            animals.embed.knn_join(other_model, on="vec")

    @pytest.mark.parametrize("engine", ENGINES)
    @pytest.mark.parametrize("right_is_lazy", [False, True])
    def test_lazy(
        self, animals: pl.DataFrame, engine: str, right_is_lazy: bool, counting: CountingProvider
    ) -> None:
        left = pl.LazyFrame({"text": ["cat", "stocks", None]}).with_columns(
            vec=pl.col("text").embed.with_provider("hashing", dims=64, kind="query")
        )
        right = animals.lazy() if right_is_lazy else animals
        joined = left.embed.knn_join(right, on="vec", k=2)
        assert joined.collect_schema() == pl.Schema(
            {
                "text": pl.String,
                "vec": pl.Array(pl.Float32, 64),
                "id": pl.Int64,
                "text_right": pl.String,
                "vec_right": pl.Array(pl.Float32, 64),
                "score": pl.Float32,
            }
        )
        collected = joined.collect(engine=engine)
        assert collected.equals(left.collect().embed.knn_join(animals, on="vec", k=2))
        best = collected.group_by("text", maintain_order=True).first()
        assert best.select("text", "text_right").rows() == [
            ("cat", "the cat sat"),
            ("stocks", "stocks fell sharply"),
        ]

    def test_never_a_cross_join(self) -> None:
        """2,000 x 200,000 rows: 4 x 10^8 pairs, over 12 GB of vectors in an in-memory cross join."""
        script = textwrap.dedent(
            """
            import resource, numpy as np, polars as pl, polars_embed
            rng = np.random.default_rng(0)
            left = pl.DataFrame({"vec": rng.standard_normal((2_000, 4), dtype=np.float32)})
            right = pl.DataFrame({"vec": rng.standard_normal((200_000, 4), dtype=np.float32)})
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            joined = left.embed.knn_join(right, on="vec", k=3)
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            print(joined.height, grown // 1024)
            """
        )
        printed = run_python(script)
        rows, grown_mib = map(int, printed.split())
        assert rows == 6_000 and grown_mib < 500


def run_python(script: str, **environment: str) -> str:
    """Run a script in a fresh process, from the repository root, and return what it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **environment}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class TestAcrossProcesses:
    def test_a_written_file_is_searched_without_naming_its_provider(
        self, animals: pl.DataFrame, tmp_path: Path
    ) -> None:
        path = tmp_path / "animals.parquet"
        animals.embed.write_parquet(path)
        script = textwrap.dedent(
            f"""
            import json, polars_embed
            eager = polars_embed.read_parquet({str(path)!r}).embed.search("cat", on="vec", k=2)
            lazy = polars_embed.scan_parquet({str(path)!r}).embed.search("cat", on="vec", k=2).collect()
            print(json.dumps([eager["id"].to_list(), lazy["id"].to_list(), eager["score"].to_list()]))
            """
        )
        eager, lazy, scores = json.loads(run_python(script))
        expected = animals.embed.search("cat", k=2)
        assert eager == lazy == expected["id"].to_list()
        np.testing.assert_allclose(scores, expected["score"].to_numpy(), rtol=1e-6)

    def test_results_do_not_depend_on_the_thread_count(self, tmp_path: Path) -> None:
        texts = [
            f"line {i} on {('cats', 'dogs', 'markets', 'rain')[i % 4]}" if i % 9 else None
            for i in range(3000)
        ]
        pl.DataFrame({"id": range(3000), "text": texts}).write_parquet(
            tmp_path / "texts.parquet", row_group_size=250
        )
        script = textwrap.dedent(
            f"""
            import hashlib, polars as pl, polars_embed
            embedded = pl.scan_parquet({str(tmp_path / "texts.parquet")!r}).with_columns(
                vec=pl.col("text").embed.with_provider("hashing", dims=32)
            )
            vectors = embedded.collect()
            hits = embedded.embed.search(["cats", "rain on markets"], k=7).collect(engine="streaming")
            joined = embedded.head(50).embed.knn_join(embedded, on="vec", k=3).collect()
            digest = hashlib.sha256()
            for frame in (vectors, hits, joined):
                digest.update(frame.write_json().encode())  # content, not chunk layout
            print(pl.thread_pool_size(), digest.hexdigest())
            """
        )
        one = run_python(script, POLARS_MAX_THREADS="1").split()
        four = run_python(script, POLARS_MAX_THREADS="4").split()
        assert (one[0], four[0]) == ("1", "4")
        assert one[1] == four[1]
