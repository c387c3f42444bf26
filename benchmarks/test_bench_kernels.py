"""Benchmarks for the top-k kernels against the obvious alternatives.

Run (full size, about ten minutes and 10 GiB of memory)::

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-json=bench.json
    python benchmarks/ratios.py bench.json

Every group holds one reference (``extra_info["reference"]``); ratios.py
divides each entry's time by it. Shrink the data for a smoke run with
``POLARS_EMBED_BENCH_N=20000`` (also ``..._D``, ``..._Q`` and ``..._ROUNDS``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from polars_embed.kernels import l2_normalize, topk

N_ROWS = int(os.environ.get("POLARS_EMBED_BENCH_N", "1000000"))
WIDTH = int(os.environ.get("POLARS_EMBED_BENCH_D", "384"))
N_QUERIES = int(os.environ.get("POLARS_EMBED_BENCH_Q", "100"))
K = 10
ROUNDS = int(os.environ.get("POLARS_EMBED_BENCH_ROUNDS", "5"))


@pytest.fixture(scope="module")
def corpus():
    """Unit-length float32 rows, so every method ranks by cosine on the same data."""
    rng = np.random.default_rng(0)
    return l2_normalize(rng.standard_normal((N_ROWS, WIDTH), dtype=np.float32))


@pytest.fixture(scope="module")
def queries():
    rng = np.random.default_rng(1)
    return rng.standard_normal((N_QUERIES, WIDTH), dtype=np.float32)


def run(benchmark, function, *args, reference=False, **kwargs):
    benchmark.extra_info["reference"] = reference
    return benchmark.pedantic(
        function, args=args, kwargs=kwargs, rounds=ROUNDS, iterations=1, warmup_rounds=1
    )


def numpy_topk(scores):
    """The obvious numpy top-k: argpartition the full score matrix, sort the k."""
    part = np.argpartition(-scores, K - 1, axis=-1)[..., :K]
    order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def assert_same_hits(got, want):
    # Random data has no exact ties at the top, so the row sets must agree.
    assert all(set(g) == set(w) for g, w in zip(got.tolist(), want.tolist(), strict=True))


# ---- many queries: compute bound -------------------------------------------------

BATCH = pytest.mark.benchmark(group=f"batch: {N_QUERIES} queries x {N_ROWS} x {WIDTH}")


@BATCH
def test_batch_bare_matmul(benchmark, queries, corpus):
    run(benchmark, lambda: queries @ corpus.T, reference=True)


@BATCH
def test_batch_numpy_full_matrix_argpartition(benchmark, queries, corpus):
    run(benchmark, lambda: numpy_topk(queries @ corpus.T))


@BATCH
@pytest.mark.parametrize(
    ("metric", "normalized"), [("cosine", False), ("cosine", True), ("dot", False), ("l2", False)]
)
def test_batch_topk(benchmark, queries, corpus, metric, normalized):
    indices, _ = run(benchmark, topk, queries, corpus, K, metric=metric, normalized=normalized)
    # On unit-length rows every metric ranks like the dot product.
    assert_same_hits(indices, numpy_topk(queries @ corpus.T))


@BATCH
def test_batch_faiss_index_flat_ip(benchmark, queries, corpus):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatIP(WIDTH)
    index.add(corpus)
    _, indices = run(benchmark, index.search, queries, K)
    assert_same_hits(indices, numpy_topk(queries @ corpus.T))


# ---- one query: memory bound -----------------------------------------------------

SINGLE = pytest.mark.benchmark(group=f"single query x {N_ROWS} x {WIDTH}")


@SINGLE
def test_single_numpy_matvec_argpartition(benchmark, queries, corpus):
    run(benchmark, lambda: numpy_topk(corpus @ queries[0]), reference=True)


@SINGLE
def test_single_numpy_cosine_with_norms(benchmark, queries, corpus):
    # What cosine costs in plain numpy when the rows are not known to be unit length.
    def cosine():
        norms = np.sqrt(np.vecdot(corpus, corpus))
        return numpy_topk(corpus @ queries[0] / norms)

    run(benchmark, cosine)


@SINGLE
@pytest.mark.parametrize(
    ("metric", "normalized"), [("cosine", False), ("cosine", True), ("dot", False), ("l2", False)]
)
def test_single_topk(benchmark, queries, corpus, metric, normalized):
    indices, _ = run(benchmark, topk, queries[0], corpus, K, metric=metric, normalized=normalized)
    assert_same_hits(indices, numpy_topk(corpus @ queries[0])[None, :])


@SINGLE
def test_single_duckdb_array_cosine_distance(benchmark, queries, corpus):
    duckdb = pytest.importorskip("duckdb")
    pa = pytest.importorskip("pyarrow")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(corpus.reshape(-1)), WIDTH)
    arrow_items = pa.table({"id": pa.array(np.arange(N_ROWS)), "vec": vectors})  # noqa: F841
    con = duckdb.connect()
    con.execute("CREATE TABLE items AS SELECT * FROM arrow_items")
    sql = f"SELECT id FROM items ORDER BY array_cosine_distance(vec, $q::FLOAT[{WIDTH}]) LIMIT {K}"
    query = {"q": queries[0].tolist()}
    rows = run(benchmark, lambda: con.execute(sql, query).fetchall())
    assert_same_hits(np.array([[row[0] for row in rows]]), numpy_topk(corpus @ queries[0])[None, :])
