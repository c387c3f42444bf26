"""polars_embed.ray on a local two-CPU Ray cluster against the same work in one process.

- embedding 2,000 real texts with MiniLM on two actors of one thread each, against
  ``polars_embed.embed`` in this process (two threads), with the pool's start-up (two
  processes, each loading the model) timed on its own;
- exact ``search`` over 1,000,000 x 384 in blocks, one Ray task per block, against
  ``polars_embed.topk`` over the whole array in this process, for 1 and 100 queries.

Each Ray entry runs its reference just before each of its rounds (``interleaved``), so its
round-by-round ratios hold on a busy machine. Every Ray round starts its actors afresh, so
no round is a warm-up.

Sizes: ``POLARS_EMBED_BENCH_TEXTS`` (texts, 2,000) and ``POLARS_EMBED_BENCH_SEARCH_ROWS``
(rows searched, 1,000,000), as in the other suites. The load average of the machine is kept
in each result's ``extra_info``.

Run: ``python -m pytest benchmarks/test_bench_ray.py``
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import polars_embed
from benchmarks.corpus import sentences
from benchmarks.ratios import interleaved
from polars_embed import cache

ray = pytest.importorskip("ray")
import polars_embed.ray as per  # noqa: E402  (only once Ray is known to be installed)

# Each Ray round starts two actors that each load the model: minutes on a loaded machine.
pytestmark = pytest.mark.timeout(1800)

TEXTS = int(os.environ.get("POLARS_EMBED_BENCH_TEXTS", "2000"))
ROWS = int(os.environ.get("POLARS_EMBED_BENCH_SEARCH_ROWS", "1000000").replace("_", ""))
WIDTH = 384
BLOCK_ROWS = 65_536
K = 10
EMBED_GROUP = f"embed {TEXTS:,} texts (MiniLM, CPU): 2 Ray actors x 1 thread vs 1 process"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """Two CPUs, an object store that holds the corpus twice over, no dashboard."""
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=max(512 * 2**20, 3 * ROWS * WIDTH * 4),
            log_to_driver=False,
        )
    except Exception as error:
        pytest.skip(f"Ray cannot start here: {type(error).__name__}: {error}")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def timed(benchmark: Any, function: Any, *, rounds: int, reference: bool = False, **kwargs: Any) -> Any:
    benchmark.extra_info["reference"] = reference
    return loaded(
        benchmark,
        lambda: benchmark.pedantic(function, kwargs=kwargs, rounds=rounds, warmup_rounds=1, iterations=1),
    )


def paired(benchmark: Any, candidate: Callable[[], Any], reference: Callable[[], Any], **rounds: int) -> Any:
    """:func:`interleaved`, with the load average kept."""
    return loaded(benchmark, lambda: interleaved(benchmark, candidate, reference, **rounds))


def loaded(benchmark: Any, run: Callable[[], Any]) -> Any:
    """``run()``, with the machine's load average before and after it in ``extra_info``."""
    benchmark.extra_info["load_before"] = os.getloadavg()[0]
    result = run()
    benchmark.extra_info["load_after"] = os.getloadavg()[0]
    return result


# --- embedding -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sentences(TEXTS, seed=2)


@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every round computes its vectors, here and on the workers."""
    monkeypatch.setitem(cache._overrides, "enabled", False)
    return {"env_vars": {"POLARS_EMBED_CACHE": "0"}}


def test_embed_in_one_process(
    benchmark: Any, minilm: polars_embed.Provider, texts: list[str], no_cache: dict[str, Any]
) -> None:
    benchmark.group = EMBED_GROUP
    vectors = timed(benchmark, polars_embed.embed, rounds=3, reference=True, texts=texts, provider=minilm)
    assert vectors.null_count() == 0


def _ray_embed(texts: list[str], provider: polars_embed.Provider, workers: dict[str, Any]) -> pa.Table:
    # Eight blocks of the same size, so both actors get work (Ray gives each task whole blocks).
    table = pa.table({"text": texts})
    parts = [table.slice(start, len(texts) // 8 + 1) for start in range(0, len(texts), len(texts) // 8 + 1)]
    embedded = per.embed(
        ray.data.from_arrow(parts),
        "text",
        provider,
        concurrency=2,
        num_cpus=1,
        batch_size=len(texts) // 8 + 1,
        runtime_env=workers,
    )
    return pa.concat_tables(ray.get(embedded.to_arrow_refs()))


def _against_one_process(
    benchmark: Any,
    on_ray: list[str],
    texts: list[str],
    provider: polars_embed.Provider,
    workers: dict[str, Any],
) -> pa.Table:
    """:func:`_ray_embed` of ``on_ray``, each round just after ``polars_embed.embed(texts)`` here."""
    benchmark.group = EMBED_GROUP
    return paired(
        benchmark,
        lambda: _ray_embed(on_ray, provider, workers),
        lambda: polars_embed.embed(texts, provider),
        rounds=3,
        warmup_rounds=0,  # every round starts its actors afresh
    )


def test_embed_on_two_actors(
    benchmark: Any, cluster: None, minilm: polars_embed.Provider, texts: list[str], no_cache: dict[str, Any]
) -> None:
    """End to end: start two actors (each loads the model), embed, gather the blocks."""
    table = _against_one_process(benchmark, texts, texts, minilm, no_cache)
    assert table.num_rows == len(texts) and table.column("vec").null_count == 0


def test_actor_pool_start_alone(
    benchmark: Any, cluster: None, minilm: polars_embed.Provider, texts: list[str], no_cache: dict[str, Any]
) -> None:
    """The fixed cost inside the end-to-end time: the same job on two texts."""
    table = _against_one_process(benchmark, ["one text", "another"], texts, minilm, no_cache)
    assert table.num_rows == 2


# --- search --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    rng = np.random.default_rng(0)
    return polars_embed.l2_normalize(rng.standard_normal((ROWS, WIDTH), dtype=np.float32))


@pytest.fixture(scope="module")
def blocks(cluster: None, corpus: np.ndarray) -> ray.data.Dataset:
    """The corpus in blocks of 65,536 rows, in the object store."""
    tables = [
        pa.table({"vec": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), WIDTH)})
        for part in np.array_split(corpus, max(1, -(-ROWS // BLOCK_ROWS)))
    ]
    return ray.data.from_arrow(tables).materialize()


@pytest.mark.parametrize("n_queries", [1, 100])
def test_topk_in_one_process(benchmark: Any, corpus: np.ndarray, n_queries: int) -> None:
    benchmark.group = f"search {ROWS:,} x {WIDTH}, k={K}, {n_queries} queries: Ray blocks vs one process"
    queries = np.random.default_rng(1).standard_normal((n_queries, WIDTH), dtype=np.float32)
    indices, _ = timed(
        benchmark, polars_embed.topk, rounds=5, reference=True, queries=queries, corpus=corpus, k=K
    )
    assert indices.shape == (n_queries, K)


@pytest.mark.parametrize("n_queries", [1, 100])
def test_search_ray_blocks(
    benchmark: Any, blocks: ray.data.Dataset, corpus: np.ndarray, n_queries: int
) -> None:
    benchmark.group = f"search {ROWS:,} x {WIDTH}, k={K}, {n_queries} queries: Ray blocks vs one process"
    queries = np.random.default_rng(1).standard_normal((n_queries, WIDTH), dtype=np.float32)
    hits = paired(
        benchmark,
        lambda: per.search(blocks, "vec", queries, k=K),
        lambda: polars_embed.topk(queries, corpus, K),
        rounds=5,
    )
    expected, scores = polars_embed.topk(queries, corpus, K)
    np.testing.assert_array_equal(hits["vec"].to_numpy(), corpus[expected.ravel()])
    np.testing.assert_allclose(hits["score"].to_numpy(), scores.ravel(), rtol=1e-5)
