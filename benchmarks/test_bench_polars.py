"""The Polars namespaces against what a user would write without them.

- ``with_columns(embed)`` over 2,000 texts against raw ``SentenceTransformer.encode``;
- ``search`` over 1,000,000 x 384 against numpy (one matmul and an argpartition), and each
  front end (one chunk, ten chunks, lazy, unknown column, quantised) against the kernel it
  calls, interleaved round by round;
- ``knn_join`` 1,000 x 100,000 x 384 against numpy in blocks and a Polars cross join
  (the streaming engine streams it; the in-memory engine cannot hold 10^8 pairs of
  vectors, so it is compared at 100 x 10,000, the size this machine can spare).

Run: ``python -m pytest benchmarks/test_bench_polars.py``. For a quick smoke run,
shrink the sizes, e.g. ``POLARS_EMBED_BENCH_TEXTS=200 POLARS_EMBED_BENCH_SEARCH_ROWS=20000
POLARS_EMBED_BENCH_JOIN=100x5000 POLARS_EMBED_BENCH_CROSS=20x1000``.

On a machine others are using, set ``OMP_WAIT_POLICY=PASSIVE``: otherwise torch's
OpenMP threads spin while they wait, and the MiniLM figures swing threefold from run
to run under load.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import polars as pl
import pytest

import polars_embed
from benchmarks.corpus import raw_encode_reference, sentences
from benchmarks.ratios import interleaved

WIDTH = 384
K_SEARCH = 10
K_JOIN = 5


def _size(name: str, default: str) -> list[int]:
    return [int(part.replace("_", "")) for part in os.environ.get(name, default).split("x")]


[TEXTS] = _size("POLARS_EMBED_BENCH_TEXTS", "2_000")
[SEARCH_ROWS] = _size("POLARS_EMBED_BENCH_SEARCH_ROWS", "1_000_000")
JOIN_LEFT, JOIN_RIGHT = _size("POLARS_EMBED_BENCH_JOIN", "1_000x100_000")
CROSS_LEFT, CROSS_RIGHT = _size("POLARS_EMBED_BENCH_CROSS", "100x10_000")

EMBED_GROUP = f"with_columns(embed) over {TEXTS:,} texts (MiniLM, CPU)"
SEARCH_GROUP = f"search {SEARCH_ROWS:,} x {WIDTH}, k={K_SEARCH}, one query"
JOIN_GROUP = f"knn_join {JOIN_LEFT:,} x {JOIN_RIGHT:,} x {WIDTH}, k={K_JOIN}"
CROSS_GROUP = f"knn_join vs in-memory cross join, {CROSS_LEFT:,} x {CROSS_RIGHT:,} x {WIDTH}, k={K_JOIN}"


def unit_vectors(rows: int, seed: int) -> pl.DataFrame:
    vectors = np.random.default_rng(seed).standard_normal((rows, WIDTH), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pl.DataFrame({"vec": vectors}).with_row_index("id")


# --- embedding -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts() -> pl.DataFrame:
    return pl.DataFrame({"text": sentences(TEXTS)})


def test_raw_sentence_transformer_encode(
    benchmark: Any, minilm: polars_embed.Provider, texts: pl.DataFrame
) -> None:
    raw_encode_reference(benchmark, minilm, texts["text"].to_list(), group=EMBED_GROUP)


def test_with_columns_eager(benchmark: Any, minilm: polars_embed.Provider, texts: pl.DataFrame) -> None:
    benchmark.group = EMBED_GROUP
    expression = pl.col("text").embed.with_provider(minilm).alias("vec")
    frame = benchmark.pedantic(texts.with_columns, args=(expression,), rounds=3, warmup_rounds=1)
    assert frame["vec"].null_count() == 0


def test_with_columns_lazy_default_engine(
    benchmark: Any, minilm: polars_embed.Provider, texts: pl.DataFrame
) -> None:
    """The streaming engine: morsels embedded from several threads, the model serialising them."""
    benchmark.group = EMBED_GROUP
    query = texts.lazy().with_columns(vec=pl.col("text").embed.with_provider(minilm))
    frame = benchmark.pedantic(query.collect, rounds=3, warmup_rounds=1)
    assert frame["vec"].null_count() == 0


# --- search --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> pl.DataFrame:
    return unit_vectors(SEARCH_ROWS, seed=0)


@pytest.fixture(scope="module")
def query() -> np.ndarray:
    vector = np.random.default_rng(1).standard_normal(WIDTH, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def numpy_search(corpus: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """What one writes with numpy alone: scores by one matmul, then the best k, sorted."""
    scores = corpus @ query
    best = np.argpartition(-scores, k)[:k]
    return best[np.argsort(-scores[best], kind="stable")]


def test_search_numpy(benchmark: Any, corpus: pl.DataFrame, query: np.ndarray) -> None:
    benchmark.group = SEARCH_GROUP
    benchmark.extra_info["reference"] = True
    matrix = corpus["vec"].to_numpy()  # a view of the frame's buffer, not a copy
    rows = benchmark.pedantic(numpy_search, args=(matrix, query, K_SEARCH), rounds=5, warmup_rounds=1)
    assert len(rows) == K_SEARCH


def kernel_search(corpus: pl.DataFrame, query: np.ndarray) -> Any:
    """The kernel every search calls, on the column's buffer: what a front end is compared with."""
    matrix = corpus["vec"].to_numpy()
    return lambda: polars_embed.topk(query, matrix, K_SEARCH, normalized=True)


@pytest.fixture(scope="module")
def chunked(corpus: pl.DataFrame) -> pl.DataFrame:
    """The same rows in ten chunks, as ``pl.concat(..., rechunk=False)`` leaves them."""
    step = -(-SEARCH_ROWS // 10)
    return pl.concat([corpus.slice(start, step) for start in range(0, SEARCH_ROWS, step)], rechunk=False)


@pytest.mark.parametrize(
    ("normalized", "layout"),
    [(True, "one-chunk"), (True, "ten-chunks"), (None, "one-chunk"), (None, "ten-chunks")],
    ids=["unit-vectors-promised", "ten-chunks", "unknown-column-norms-kept", "unknown-column-ten-chunks"],
)
def test_search(
    benchmark: Any,
    corpus: pl.DataFrame,
    chunked: pl.DataFrame,
    query: np.ndarray,
    normalized: bool | None,
    layout: str,
) -> None:
    """``normalized=None`` on a frame of unknown origin: cosine needs the norms, kept after the
    first search of the frame (the warm-up round)."""
    benchmark.group = SEARCH_GROUP
    frame = corpus if layout == "one-chunk" else chunked
    hits = interleaved(
        benchmark,
        lambda: frame.embed.search(query, k=K_SEARCH, normalized=normalized),
        kernel_search(corpus, query),
        rounds=5,
    )
    expected = numpy_search(corpus["vec"].to_numpy(), query, K_SEARCH)
    assert hits["id"].to_list() == expected.tolist()


@pytest.mark.parametrize("layout", ["one-chunk", "ten-chunks"])
def test_search_lazy(
    benchmark: Any, corpus: pl.DataFrame, chunked: pl.DataFrame, query: np.ndarray, layout: str
) -> None:
    benchmark.group = SEARCH_GROUP
    frame = corpus if layout == "one-chunk" else chunked
    plan = frame.lazy().embed.search(query, k=K_SEARCH, normalized=True)
    hits = interleaved(benchmark, plan.collect, kernel_search(corpus, query), rounds=5)
    assert hits["id"].to_list() == numpy_search(corpus["vec"].to_numpy(), query, K_SEARCH).tolist()


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_search_quantized(benchmark: Any, corpus: pl.DataFrame, query: np.ndarray, kind: str) -> None:
    """The twin is made in the warm-up round and kept with the frame."""
    benchmark.group = SEARCH_GROUP
    hits = interleaved(
        benchmark,
        lambda: corpus.embed.search(query, k=K_SEARCH, quantized=kind),
        kernel_search(corpus, query),
        rounds=5,
    )
    assert hits.height == K_SEARCH


# --- knn_join ------------------------------------------------------------------------------


def numpy_knn(left: np.ndarray, right: np.ndarray, k: int, block: int = 16_384) -> np.ndarray:
    """What one writes with numpy alone: a matmul per block of right rows, the best k kept."""
    best_scores = np.full((len(left), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(left), k), -1, dtype=np.int64)
    for start in range(0, len(right), block):
        scores = left @ right[start : start + block].T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_rows = np.take_along_axis(rows, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, axis=1)


def polars_cross_join(left: pl.DataFrame, right: pl.DataFrame, k: int) -> pl.LazyFrame:
    """What one writes with Polars alone: score every pair, keep each left row's best k."""
    return (
        left.lazy()
        .join(right.lazy(), how="cross")
        .with_columns(score=(pl.col("vec") * pl.col("vec_right")).arr.sum())
        .group_by("id")
        .agg(pl.col("id_right").top_k_by("score", k), pl.col("score").top_k(k))
    )


@pytest.fixture(scope="module")
def join_sides() -> tuple[pl.DataFrame, pl.DataFrame]:
    return unit_vectors(JOIN_LEFT, seed=2), unit_vectors(JOIN_RIGHT, seed=3)


def test_knn_join_numpy_blocked(benchmark: Any, join_sides: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    benchmark.group = JOIN_GROUP
    benchmark.extra_info["reference"] = True
    left, right = (side["vec"].to_numpy() for side in join_sides)
    rows = benchmark.pedantic(numpy_knn, args=(left, right, K_JOIN), rounds=3, warmup_rounds=1)
    assert rows.shape == (JOIN_LEFT, K_JOIN)


@pytest.mark.parametrize("normalized", [True, None], ids=["unit-vectors-promised", "cosine-computes-norms"])
def test_knn_join(
    benchmark: Any, join_sides: tuple[pl.DataFrame, pl.DataFrame], normalized: bool | None
) -> None:
    benchmark.group = JOIN_GROUP
    left, right = join_sides
    joined = benchmark.pedantic(
        left.embed.knn_join,
        args=(right,),
        kwargs={"on": "vec", "k": K_JOIN, "normalized": normalized},
        rounds=3,
        warmup_rounds=1,
    )
    expected = numpy_knn(left["vec"].to_numpy(), right["vec"].to_numpy(), K_JOIN)
    assert joined["id_right"].to_numpy().reshape(JOIN_LEFT, K_JOIN).tolist() == expected.tolist()


def test_cross_join_streaming(benchmark: Any, join_sides: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """The streaming engine runs the cross join in morsels, so even 10^8 pairs fit: slowly."""
    benchmark.group = JOIN_GROUP
    plan = polars_cross_join(*join_sides, K_JOIN)
    best = benchmark.pedantic(plan.collect, kwargs={"engine": "streaming"}, rounds=1)
    assert best.height == JOIN_LEFT


@pytest.fixture(scope="module")
def cross_sides() -> tuple[pl.DataFrame, pl.DataFrame]:
    return unit_vectors(CROSS_LEFT, seed=4), unit_vectors(CROSS_RIGHT, seed=5)


def test_knn_join_small(benchmark: Any, cross_sides: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    benchmark.group = CROSS_GROUP
    benchmark.extra_info["reference"] = True
    left, right = cross_sides
    joined = benchmark.pedantic(
        left.embed.knn_join, args=(right,), kwargs={"on": "vec", "k": K_JOIN}, rounds=3, warmup_rounds=1
    )
    assert joined.height == CROSS_LEFT * K_JOIN


def test_cross_join_in_memory(benchmark: Any, cross_sides: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """Every pair of vectors at once: about 3 KB a pair, 10^6 pairs here."""
    benchmark.group = CROSS_GROUP
    plan = polars_cross_join(*cross_sides, K_JOIN)
    best = benchmark.pedantic(plan.collect, kwargs={"engine": "in-memory"}, rounds=1)
    assert best.height == CROSS_LEFT
