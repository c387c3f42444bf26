"""The embed namespace on expressions: eager, lazy, streaming; nulls; errors; vector arithmetic."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import polars_embed
from polars_embed import ConfigError, DimensionMismatchError, InvalidInputError, kernels
from polars_embed.engine import EmbedJob
from polars_embed.namespaces import _column_jobs
from polars_embed.namespaces import expr as expr_module
from tests.providers import CountingProvider, LongTextsProvider, RefusesFirstCall, vector_for

ENGINES = ["auto", "streaming", "in-memory"]


def texts_with_gaps(count: int) -> list[str | None]:
    """Texts with repeats, nulls and blanks spread through them."""
    texts: list[str | None] = []
    for i in range(count):
        if i % 11 == 0:
            texts.append(None)
        elif i % 13 == 0:
            texts.append("   ")
        else:
            texts.append(f"row {i % 97} about {('cats', 'dogs', 'stocks')[i % 3]}")
    return texts


def expected_vectors(texts: list[str | None], dims: int = 8, kind: str = "document") -> list:
    return [
        None if text is None or not text.strip() else vector_for(f"{kind}:{text}", dims).tolist()
        for text in texts
    ]


@pytest.fixture
def embed_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every batch Polars hands to the embedding expression (each goes to the engine)."""
    calls: list[int] = []
    embedded = EmbedJob.embed

    def counted(job: EmbedJob, texts: pl.Series) -> pl.Series:
        calls.append(len(texts))
        return embedded(job, texts)

    monkeypatch.setattr(EmbedJob, "embed", counted)
    return calls


@pytest.fixture
def parquet_of_texts(tmp_path: Path) -> tuple[Path, list[str | None]]:
    """A Parquet file of 2,000 texts in row groups of 150, so a scan reads many morsels."""
    texts = texts_with_gaps(2000)
    path = tmp_path / "texts.parquet"
    pl.DataFrame({"id": range(len(texts)), "text": texts}).write_parquet(path, row_group_size=150)
    return path, texts


class TestWithProvider:
    def test_eager_matches_the_engine_and_keeps_nulls_and_blanks_null(
        self, counting: CountingProvider
    ) -> None:
        texts = ["a cat", None, "", "  ", "a dog", "a cat"]
        frame = pl.DataFrame({"text": texts}).with_columns(vec=pl.col("text").embed.with_provider(counting))
        assert frame.schema["vec"] == pl.Array(pl.Float32, 8)
        assert frame["vec"].to_list() == expected_vectors(texts)
        assert frame["vec"].is_null().to_list() == [False, True, True, True, False, False]
        assert sorted(counting.recorder.texts) == ["a cat", "a dog"]

    def test_the_output_is_named_like_the_input(self) -> None:
        frame = pl.DataFrame({"text": ["x"]}).select(pl.col("text").embed.with_provider("hashing", dims=4))
        assert frame.columns == ["text"]

    @pytest.mark.parametrize("engine", ENGINES)
    def test_lazy_over_a_parquet_scan_with_many_row_groups(
        self, engine: str, counting: CountingProvider, parquet_of_texts: tuple[Path, list[str | None]]
    ) -> None:
        path, texts = parquet_of_texts
        query = pl.scan_parquet(path).with_columns(vec=pl.col("text").embed.with_provider(counting))
        frame = query.collect(engine=engine)
        assert frame["id"].to_list() == list(range(len(texts)))
        assert frame["vec"].to_list() == expected_vectors(texts)
        sent = counting.recorder.texts
        assert set(sent) == {text for text in texts if text and text.strip()}
        # Batches follow the provider's batch size within each morsel, whatever the morsel size.
        assert max(len(batch) for batch in counting.recorder.batches) <= counting.batch_size

    def test_the_streaming_engine_calls_it_once_per_morsel(
        self, embed_calls: list[int], parquet_of_texts: tuple[Path, list[str | None]]
    ) -> None:
        path, _ = parquet_of_texts
        expression = pl.col("text").embed.with_provider("hashing", dims=8)
        pl.scan_parquet(path).select(expression).collect(engine="streaming")
        assert len(embed_calls) > 1 and sum(embed_calls) == 2000

    def test_over_a_csv_scan(self, tmp_path: Path, counting: CountingProvider) -> None:
        texts = ["alpha", None, "beta"]
        pl.DataFrame({"text": texts}).write_csv(tmp_path / "texts.csv")
        frame = (
            pl.scan_csv(tmp_path / "texts.csv").select(pl.col("text").embed.with_provider(counting)).collect()
        )
        assert frame["text"].to_list() == expected_vectors(texts)

    def test_the_schema_costs_no_call_at_all(
        self, counting: CountingProvider, embed_calls: list[int]
    ) -> None:
        query = (
            pl.LazyFrame({"text": ["a", "b"]})
            .with_columns(vec=pl.col("text").embed.with_provider(counting, dims=16))
            .with_columns(similarity=pl.col("vec").embed.cosine_similarity(np.ones(16)))
        )
        assert query.collect_schema() == pl.Schema(
            {"text": pl.String, "vec": pl.Array(pl.Float32, 16), "similarity": pl.Float32}
        )
        # Not even on dummy input (Polars' way to learn a dtype it was not given).
        assert counting.recorder.batches == [] and embed_calls == []
        query.collect()
        assert sorted(counting.recorder.texts) == ["a", "b"]

    @pytest.mark.parametrize("lazy", [False, True])
    def test_a_column_that_is_not_text_fails_before_any_provider_call(
        self, lazy: bool, counting: CountingProvider
    ) -> None:
        frame = pl.DataFrame({"n": [1, 2, 3]})
        with pytest.raises(TypeError, match=r"needs a String column, but 'n' is Int64"):
            if lazy:
                frame.lazy().select(pl.col("n").embed.with_provider(counting)).collect()
            else:
                frame.select(pl.col("n").embed.with_provider(counting))
        assert counting.recorder.batches == []

    def test_categorical_and_all_null_columns(self, counting: CountingProvider) -> None:
        frame = pl.DataFrame(
            {"kind": pl.Series(["x", None, "y"], dtype=pl.Categorical), "empty": [None, None, None]}
        )
        out = frame.select(pl.all().embed.with_provider(counting))
        assert out["kind"].to_list() == expected_vectors(["x", None, "y"])
        assert out["empty"].dtype == pl.Array(pl.Float32, 8) and out["empty"].null_count() == 3

    def test_query_kind(self, counting: CountingProvider) -> None:
        frame = pl.DataFrame({"text": ["find cats"]}).select(
            pl.col("text").embed.with_provider(counting, kind="query")
        )
        assert frame["text"].to_list() == expected_vectors(["find cats"], kind="query")

    def test_an_unknown_kind_fails_at_construction(self, counting: CountingProvider) -> None:
        with pytest.raises(ConfigError, match="kind must be one of"):
            pl.col("text").embed.with_provider(counting, kind="passage")

    @pytest.mark.parametrize(
        "provider",
        [
            pytest.param(("hashing", {"dims": 16}), id="name"),
            pytest.param(("hashing:words", {"dims": 16}), id="name:model"),
            pytest.param((lambda batch: np.ones((len(batch), 16)), {"dims": 16}), id="callable"),
        ],
    )
    def test_any_provider_form(self, provider: tuple[object, dict]) -> None:
        given, options = provider
        frame = pl.DataFrame({"text": ["a", None]}).select(
            pl.col("text").embed.with_provider(given, **options)
        )
        assert frame.schema["text"] == pl.Array(pl.Float32, 16) and frame["text"].null_count() == 1

    def test_columns_of_different_widths_side_by_side(self) -> None:
        frame = pl.LazyFrame({"text": ["a cat", None]}).select(
            narrow=pl.col("text").embed.with_provider("hashing", dims=8),
            wide=pl.col("text").embed.with_provider("hashing", dims=32),
        )
        assert frame.collect_schema() == pl.Schema(
            {"narrow": pl.Array(pl.Float32, 8), "wide": pl.Array(pl.Float32, 32)}
        )
        collected = frame.collect(engine="streaming")
        assert collected["narrow"].to_list()[0] == pytest.approx(
            polars_embed.embed(["a cat"], "hashing", dims=8).to_list()[0]
        )
        assert collected["wide"].null_count() == 1

    def test_the_default_local_model(self) -> None:
        texts = ["A kitten sleeps on the sofa.", None, "The central bank raised interest rates."]
        frame = pl.DataFrame({"text": texts}).with_columns(vec=pl.col("text").embed.with_provider())
        assert frame.schema["vec"] == pl.Array(pl.Float32, 384)
        assert frame["vec"].to_list()[0] == pytest.approx(
            polars_embed.embed(texts[:1]).to_list()[0], abs=1e-5
        )
        assert frame.embed.search("a cat napping", k=1)["text"].to_list() == [texts[0]]


@pytest.fixture
def vectors() -> pl.DataFrame:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    a[2] = 0.0  # a zero vector: cosine is NaN, not null
    frame = pl.DataFrame({"a": a, "b": b})
    return frame.with_columns(
        a=pl.when(pl.int_range(pl.len()) != 4).then("a"),  # row 4 of a is null
        b=pl.when(pl.int_range(pl.len()) != 5).then("b"),  # row 5 of b is null
    )


def reference_scores(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "dot":
        return (a * b).sum(axis=-1)
    if metric == "l2":
        return np.sqrt(((a - b) ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


METHODS = {"cosine": "cosine_similarity", "dot": "dot", "l2": "l2_distance"}


class TestVectorExpressions:
    @pytest.mark.parametrize("metric", METHODS)
    @pytest.mark.parametrize(
        "as_query",
        [
            list,
            np.asarray,
            lambda values: np.asarray(values, dtype=np.float64),
            pl.Series,
            lambda values: pl.Series([values], dtype=pl.Array(pl.Float32, 4)),
        ],
        ids=["list", "numpy", "float64", "series", "batch-of-one"],
    )
    def test_against_a_query_vector(self, vectors: pl.DataFrame, metric: str, as_query: object) -> None:
        query = [0.5, -1.0, 2.0, 0.25]
        out = vectors.select(getattr(pl.col("a").embed, METHODS[metric])(as_query(query)))
        assert out.schema == pl.Schema({"a": pl.Float32})
        a = vectors["a"].to_numpy()
        expected = reference_scores(a, np.array(query), metric)
        got = out["a"].to_numpy()
        assert out["a"].is_null().to_list() == [False] * 4 + [True, False]
        np.testing.assert_allclose(got[[0, 1, 3, 5]], expected[[0, 1, 3, 5]], rtol=1e-5, atol=1e-6)
        if metric == "cosine":
            assert np.isnan(got[2])

    @pytest.mark.parametrize("metric", METHODS)
    @pytest.mark.parametrize("other", [pl.col("b"), "b"], ids=["expression", "name"])
    def test_row_by_row_against_another_column(
        self, vectors: pl.DataFrame, metric: str, other: pl.Expr | str
    ) -> None:
        out = vectors.lazy().select(getattr(pl.col("a").embed, METHODS[metric])(other)).collect()
        expected = reference_scores(vectors["a"].to_numpy(), vectors["b"].to_numpy(), metric)
        assert out["a"].is_null().to_list() == [False] * 4 + [True, True]
        np.testing.assert_allclose(out["a"].to_numpy()[[0, 1, 3]], expected[[0, 1, 3]], rtol=1e-5)

    def test_queries_are_float32_once_and_the_column_is_never_upcast(
        self, monkeypatch: pytest.MonkeyPatch, vectors: pl.DataFrame
    ) -> None:
        seen: list[tuple[np.dtype, np.dtype]] = []
        real = kernels.pairwise_scores

        def spy(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
            seen.append((a.dtype, b.dtype))
            return real(a, b, metric)

        monkeypatch.setattr(expr_module, "pairwise_scores", spy)
        vectors.select(pl.col("a").embed.dot(np.ones(4, dtype=np.float64)))
        assert seen == [(np.float32, np.float32)]

    def test_a_width_mismatch_names_both_widths_and_the_model(self) -> None:
        frame = pl.DataFrame({"text": ["x"]}).with_columns(
            vec=pl.col("text").embed.with_provider("hashing", dims=8)
        )
        with pytest.raises(
            DimensionMismatchError,
            match=r"'vec' \(vectors of width 8, made by hashing:words\+chars\) "
            r"with 'query' \(vectors of width 3\)",
        ):
            frame.select(pl.col("vec").embed.cosine_similarity([1.0, 2.0, 3.0]))
        wide = frame.with_columns(wide=pl.col("text").embed.with_provider("hashing", dims=16))
        with pytest.raises(DimensionMismatchError, match=r"width 8.*width 16"):
            wide.lazy().select(pl.col("vec").embed.dot("wide")).collect()

    def test_a_batch_is_not_a_query_vector(self) -> None:
        with pytest.raises(
            InvalidInputError, match="got 2 vectors, but a column is compared with one vector"
        ):
            pl.col("vec").embed.dot(np.ones((2, 4)))

    def test_a_column_that_is_not_vectors(self) -> None:
        with pytest.raises(TypeError, match=r"column 'text' is String, not a vector column"):
            pl.DataFrame({"text": ["x"]}).select(pl.col("text").embed.dot([1.0]))

    @pytest.mark.parametrize("engine", ENGINES)
    def test_normalize(self, vectors: pl.DataFrame, engine: str) -> None:
        out = vectors.lazy().select(pl.col("a").embed.normalize()).collect(engine=engine)["a"]
        assert out.dtype == pl.Array(pl.Float32, 4) and out.is_null().to_list() == [False] * 4 + [True, False]
        norms = np.linalg.norm(out.to_numpy(), axis=1)
        np.testing.assert_allclose(norms[[0, 1, 3, 5]], 1.0, rtol=1e-6)
        assert norms[2] == 0.0  # the zero vector stays zero

    def test_scores_in_a_streaming_scan(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(3)
        frame = pl.DataFrame({"vec": rng.standard_normal((3000, 8)).astype(np.float32)})
        frame.write_parquet(tmp_path / "vectors.parquet", row_group_size=200)
        query = rng.standard_normal(8)
        out = (
            pl.scan_parquet(tmp_path / "vectors.parquet")
            .select(pl.col("vec").embed.cosine_similarity(query))
            .collect(engine="streaming")
        )
        expected = reference_scores(frame["vec"].to_numpy(), query, "cosine")
        np.testing.assert_allclose(out["vec"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every progress bar the engine makes, drawn at once (not after two seconds)."""
    from tqdm import tqdm

    made: list[tqdm] = []

    class Recorded(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["delay"] = 0
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr("polars_embed.engine.tqdm", Recorded)
    return made


def many_morsels(count: int = 3000) -> tuple[pl.LazyFrame, pl.Config]:
    """A frame of ``count`` distinct texts, and settings that stream it in morsels of 100 rows."""
    frame = pl.LazyFrame({"text": [f"text number {i}" for i in range(count)]})
    return frame, pl.Config(streaming_chunk_size=100)


class TestOneJobPerColumn:
    def test_a_streaming_collect_of_many_morsels_shows_one_bar_and_gives_one_record(
        self, bars: list, embed_calls: list[int], capsys: pytest.CaptureFixture[str]
    ) -> None:
        frame, small_morsels = many_morsels()
        provider = CountingProvider(delay=0.002)
        with small_morsels:
            started = time.perf_counter()
            frame.with_columns(vec=pl.col("text").embed.with_provider(provider, progress=True)).collect(
                engine="streaming"
            )
            wall = time.perf_counter() - started
        stats = polars_embed.last_stats()
        assert len(embed_calls) >= 30
        assert (stats.rows, stats.embedded, stats.requests) == (3000, 3000, len(provider.recorder.batches))
        assert 0 < stats.seconds <= wall  # the wall time of the column, not a sum over morsels
        assert len(bars) == 1
        assert bars[0].n == bars[0].total == 3000 and bars[0].disable  # closed with the query
        assert "3000/3000" in capsys.readouterr().err

    def test_two_collects_of_one_expression_give_two_records(
        self, bars: list, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="polars_embed")
        frame, small_morsels = many_morsels(1000)
        expression = pl.col("text").embed.with_provider("hashing", progress=True)
        records = []
        with small_morsels:
            for engine in ("streaming", "in-memory", "streaming"):
                frame.with_columns(vec=expression).collect(engine=engine)
                records.append(polars_embed.last_stats())
        assert [record.rows for record in records] == [1000, 1000, 1000]
        assert [bar.total for bar in bars] == [1000, 1000, 1000]
        lines = [record.getMessage() for record in caplog.records if record.message.startswith("embedded")]
        assert len(lines) == 3 and all("1000 rows" in line for line in lines)

    def test_two_columns_of_one_query_are_two_jobs(self, bars: list) -> None:
        frame, small_morsels = many_morsels(1000)
        with small_morsels:
            frame.select(
                pl.col("text").embed.with_provider("hashing", dims=8, progress=True),
                upper=pl.col("text").str.to_uppercase().embed.with_provider("hashing", dims=8, progress=True),
            ).collect(engine="streaming")
        polars_embed.last_stats()
        assert sorted(bar.total for bar in bars) == [1000, 1000]

    def test_track_stats_counts_overlapping_morsels_once(self) -> None:
        frame, small_morsels = many_morsels()
        provider = CountingProvider(delay=0.002)
        with polars_embed.track_stats() as totals, small_morsels:
            started = time.perf_counter()
            frame.with_columns(vec=pl.col("text").embed.with_provider(provider)).collect(engine="streaming")
            wall = time.perf_counter() - started
        assert totals.rows == 3000 and 0 < totals.seconds <= wall

    @pytest.mark.parametrize("progress", [False, True])
    def test_progress_can_be_set(
        self, progress: bool, bars: list, capsys: pytest.CaptureFixture[str]
    ) -> None:
        frame = pl.DataFrame({"text": ["a", "b", None]})
        frame.with_columns(vec=pl.col("text").embed.with_provider("hashing", progress=progress))
        polars_embed.last_stats()
        assert len(bars) == 1 and bars[0].disable
        assert ("embedding (hashing" in capsys.readouterr().err) is progress

    def test_long_texts_are_warned_about_once_per_column(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="polars_embed")
        texts = [f"text {i}" + (" and many more words" if i % 5 == 0 else "") for i in range(3000)]
        with pl.Config(streaming_chunk_size=100):
            pl.LazyFrame({"text": texts}).with_columns(
                vec=pl.col("text").embed.with_provider(LongTextsProvider())
            ).collect(engine="streaming")
        assert polars_embed.last_stats().truncated == 600
        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith(
            "600 texts were longer than the 3 tokens counting:counting-v1 reads"
        )

    def test_truncate_error_refuses_long_texts(self) -> None:
        provider = LongTextsProvider()
        frame = pl.DataFrame({"text": ["short", "one two three four"]})
        with pytest.raises(ConfigError, match=r"1 texts are over the 3 tokens counting:counting-v1 reads"):
            frame.with_columns(vec=pl.col("text").embed.with_provider(provider, truncate="error"))
        assert provider.recorder.batches == []
        with pytest.raises(ConfigError, match=r"truncate must be one of \('warn', 'error'\)"):
            pl.col("text").embed.with_provider(provider, truncate="ignore")

    @pytest.mark.parametrize("enabled", [True, False])
    def test_reading_the_threads_stacks_starts_no_garbage_collection(
        self, enabled: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A collection inside sys._current_frames() can hang Python 3.11 (python/cpython#106883).
        read_stacks, inside, collected = sys._current_frames, threading.Event(), []

        def watched() -> dict:
            inside.set()
            try:
                return read_stacks()
            finally:
                inside.clear()

        monkeypatch.setattr(sys, "_current_frames", watched)
        idle = threading.Event()
        threads = [threading.Thread(target=idle.wait) for _ in range(8)]
        for thread in threads:
            thread.start()
        threshold = gc.get_threshold()
        gc.callbacks.append(lambda phase, info: collected.append(phase) if inside.is_set() else None)
        (gc.enable if enabled else gc.disable)()
        gc.set_threshold(1)  # each new frame object would start a collection
        try:
            stacks = _column_jobs._thread_stacks()
            state = gc.isenabled()
        finally:
            gc.set_threshold(*threshold)
            gc.callbacks.pop()
            gc.enable()
            idle.set()
            for thread in threads:
                thread.join()
        assert all(thread.ident in stacks for thread in threads)
        assert state is enabled
        if sys.version_info < (3, 12):
            assert collected == []

    def test_a_stack_that_changes_while_it_is_walked_keeps_its_job_open(self) -> None:
        # CPython 3.11 can hand back freed memory (seen: a cell) as f_back of another thread's
        # frame that returned during the walk: the watcher must neither crash nor close early.
        def cell() -> object:
            value = 1
            return (lambda: value).__closure__[0]  # type: ignore[index]

        wanted = sys._getframe()
        changed = types.SimpleNamespace(f_back=cell(), f_code=None)
        assert _column_jobs._on_stack(wanted, changed)  # type: ignore[arg-type]
        with pytest.raises(_column_jobs._StackChanged):
            _column_jobs._back(changed)  # type: ignore[arg-type]
        assert not _column_jobs._on_stack(wanted, types.SimpleNamespace(f_back=None))  # type: ignore[arg-type]
        assert _column_jobs._back(wanted) is wanted.f_back

    def test_a_watcher_that_fails_leaves_the_next_job_to_start_another(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        failures: list[BaseException | None] = []

        def refuse() -> None:
            raise RuntimeError("the watcher fails")

        monkeypatch.setattr(_column_jobs, "close_finished", refuse)
        monkeypatch.setattr(threading, "excepthook", lambda hook: failures.append(hook.exc_value))
        watcher = threading.Thread(target=_column_jobs._watch)
        monkeypatch.setattr(_column_jobs, "_watcher", watcher)
        watcher.start()
        watcher.join()
        assert _column_jobs._watcher is None and isinstance(failures[0], RuntimeError)


class TestWidthProbes:
    def test_a_width_probe_at_expression_build_is_retried(self) -> None:
        function = RefusesFirstCall()
        expression = pl.col("text").embed.with_provider(function)
        assert function.calls == ["dimension probe", "dimension probe"]
        assert pl.LazyFrame({"text": ["a"]}).select(expression).collect_schema()["text"] == pl.Array(
            pl.Float32, 6
        )
