"""Quantised search: twins, the coarse pass, exact rescoring, recall, and the Polars options."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Iterator
from unittest import mock

import numpy as np
import polars as pl
import pytest

import polars_embed
from polars_embed import quantization as quantize_module
from polars_embed.kernels import pairwise_scores, squared_norms, topk
from polars_embed.quantization import quantize, quantized_candidates, quantized_topk, recall_at_k, share_found

KINDS = ("int8", "binary")


@pytest.fixture(autouse=True, params=["numpy", "numkong"])
def coarse_kernels(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on the plain numpy coarse pass and on numkong's kernels (the optional extra)."""
    if request.param == "numkong":
        pytest.importorskip("numkong")
        yield request.param
        return
    with mock.patch.object(quantize_module, "_numkong", return_value=None):
        yield request.param


def clustered(rows: int, dims: int, seed: int = 0) -> np.ndarray:
    """Vectors around a few hundred centres, like embeddings of related texts (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(rows // 20, 1), dims), dtype=np.float32)
    vectors = centres[rng.integers(0, len(centres), rows)] + 0.35 * rng.standard_normal(
        (rows, dims), dtype=np.float32
    )
    return vectors + 0.5  # off-centre, as real embeddings are: the binary twin centres them


@pytest.mark.parametrize(("kind", "least"), [("int8", 0.99), ("binary", 0.95)])
def test_recall_on_a_seeded_clustered_corpus(kind: str, least: float) -> None:
    corpus = clustered(20_000, 96)
    twin = quantize(corpus, kind)
    assert recall_at_k(corpus, twin, k=10, sample=60) >= least
    noise = np.random.default_rng(1).standard_normal((40, 96), dtype=np.float32)
    queries = corpus[::500] + 0.3 * noise  # new texts about the corpus's topics
    assert recall_at_k(corpus, twin, queries=queries, k=10) >= least


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_exact_cosines_best_first(kind: str) -> None:
    corpus = clustered(3000, 32)
    queries = clustered(5, 32, seed=2)
    indices, scores = quantized_topk(queries, corpus, quantize(corpus, kind), k=8)
    assert indices.shape == scores.shape == (5, 8) and scores.dtype == np.float32
    for query, rows, row_scores in zip(queries, indices, scores, strict=True):
        np.testing.assert_allclose(row_scores, pairwise_scores(corpus[rows], query), rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(row_scores) <= 0)


@pytest.mark.parametrize("kind", KINDS)
def test_null_zero_and_nan_rows_never_match(kind: str) -> None:
    corpus = clustered(500, 16)
    corpus[[0, 1]] = 0
    corpus[2, 3] = np.nan
    corpus[3, 0] = np.inf
    valid = np.ones(500, dtype=bool)
    valid[4] = False
    queries = np.stack([corpus[5], corpus[0], np.full(16, np.nan, np.float32)])
    queries[0] = corpus[4]  # the query is the invalid row itself: it must not be found
    indices, scores = quantized_topk(queries, corpus, quantize(corpus, kind, valid=valid), k=600)
    assert indices.shape == (3, 495)
    assert set(indices[0].tolist()).isdisjoint({0, 1, 2, 3, 4})
    assert np.all(indices[1:] == -1) and np.isnan(scores[1:]).all()  # zero and NaN queries


@pytest.mark.parametrize("kind", KINDS)
def test_a_twin_of_chunks_is_the_twin_of_the_whole(kind: str) -> None:
    corpus = clustered(9000, 40)
    whole = quantize(corpus, kind)
    chunked = quantize([corpus[:10], corpus[10:5000], corpus[5000:]], kind)
    np.testing.assert_array_equal(whole.codes, chunked.codes)
    queries = clustered(4, 40, seed=3)
    np.testing.assert_array_equal(
        quantized_topk(queries, corpus, whole, 5)[0],
        quantized_topk(queries, [corpus[:4000], corpus[4000:]], chunked, 5)[0],
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_twin_made_on_several_threads_is_the_one_of_one_thread(kind: str) -> None:
    corpus = clustered(45_000, 24)  # six blocks, the last one shorter
    corpus[7] = np.nan
    with mock.patch.object(quantize_module, "_threads", return_value=1):
        alone = quantize(corpus, kind)
    with mock.patch.object(quantize_module, "_threads", return_value=3):
        shared = quantize(corpus, kind)
    for field in ("codes", "scales", "center", "searchable", "squared_norms"):
        np.testing.assert_array_equal(getattr(shared, field), getattr(alone, field))


def test_the_twins_take_a_quarter_and_a_thirty_second_of_the_bytes() -> None:
    corpus = clustered(1000, 384)
    assert quantize(corpus, "int8").nbytes == corpus.nbytes // 4
    assert quantize(corpus, "binary").nbytes == corpus.nbytes // 32


@pytest.mark.parametrize("kind", KINDS)
def test_the_twin_keeps_the_squared_norms_its_rescoring_divides_by(kind: str) -> None:
    corpus = clustered(3000, 32)
    twin = quantize([corpus[:1000], corpus[1000:]], kind)
    assert twin.squared_norms.dtype == np.float32
    np.testing.assert_allclose(twin.squared_norms, squared_norms(corpus), rtol=1e-6)


def test_the_coarse_pass_runs_on_several_threads_with_the_same_result() -> None:
    corpus = clustered(80_000, 32)
    queries = clustered(3, 32, seed=4)
    twin = quantize(corpus, "binary")
    with mock.patch.object(quantize_module, "_threads", return_value=1):
        one = quantized_topk(queries, corpus, twin, 10)
    with mock.patch.object(quantize_module, "_threads", return_value=3):
        three = quantized_topk(queries, corpus, twin, 10)
    np.testing.assert_array_equal(one[0], three[0])


def _binary_search_of_the_fork_corpus(_: object = None) -> list[int]:
    corpus = clustered(80_000, 16)
    twin = quantize(corpus, "binary")
    return quantized_topk(corpus[:2], corpus, twin, 5)[0].ravel().tolist()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_a_search_searches_on_threads_of_its_own() -> None:
    # The coarse pass runs on a pool of threads kept for the process; a forked child has
    # none of them, and a search there must not wait for the parent's.
    in_parent = _binary_search_of_the_fork_corpus()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        in_child = pool.apply_async(_binary_search_of_the_fork_corpus).get(timeout=60)
    assert in_child == in_parent


def brute_force_candidates(twin: quantize_module.QuantizedVectors, queries: np.ndarray, count: int):
    """Each query's ``count`` rows of least Hamming distance, ties to the lower row, bit by bit."""
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    query_bits = np.unpackbits(
        quantize_module._xp.pack_bits(np, (unit - twin.center) > 0).view(np.uint8), axis=1
    )
    corpus_bits = np.unpackbits(np.ascontiguousarray(twin.codes.T).view(np.uint8), axis=1)
    distance = (query_bits[:, None, :] != corpus_bits[None, :, :]).sum(axis=2)
    distance = np.where(twin.searchable, distance, np.iinfo(np.int64).max)
    return np.argsort(distance, axis=1, kind="stable")[:, :count]


def test_numpy_counts_every_hamming_distance_up_to_the_widest() -> None:
    # The counts of three words add up in a byte before the uint16 sum: a row whose 7 words
    # all differ from the query's (448 bits) must not wrap around, in any step of rows.
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2**64, size=(7, 500), dtype=np.uint64)
    query_words = np.stack([codes[:, 3], ~codes[:, 250], np.zeros(7, dtype=np.uint64)])
    bits = np.unpackbits(np.ascontiguousarray(codes.T).view(np.uint8), axis=1)
    query_bits = np.unpackbits(query_words.view(np.uint8), axis=1)
    expected = (query_bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    scratch: dict = {}
    for rows in (slice(0, 500), slice(200, 300), slice(0, 500)):  # the buffers are reused
        found = quantize_module._numpy_hamming(codes, query_words, rows, scratch)
        np.testing.assert_array_equal(found[0], expected[:, rows])
    assert found[0, 0, 3] == 0 and found[0, 1, 250] == 448


@pytest.mark.parametrize("tiled_hamming", [True, False], ids=["few-queries-on-numpy", "numkong-for-all"])
@pytest.mark.parametrize(
    ("rows", "n_queries", "count", "width"),
    [
        (3000, 3, 50, 24),
        (70_000, 2, 700, 24),
        (140_000, 2, 300, 24),
        (140_000, 20, 40, 24),  # many queries, each step a call of its own per query
        (5000, 40, 1, 24),
        (20_000, 2, 9000, 24),
        (4000, 5, 60, 130),
    ],
)
def test_the_binary_coarse_pass_keeps_the_rows_of_least_hamming_distance(
    rows, n_queries, count, width, tiled_hamming
) -> None:
    # Many rows tie at each distance: the lower row must win, across blocks, steps and
    # threads, also where a step holds fewer rows than a list (the 9000 case), and for
    # codes of several words, the last one partly filled.
    corpus = clustered(rows, width)
    corpus[5] = 0  # never a candidate
    twin = quantize(corpus, "binary")
    queries = clustered(n_queries, width, seed=6)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    with (
        mock.patch.object(quantize_module, "_threads", return_value=3),
        mock.patch.object(quantize_module, "_has_tiled_hamming", return_value=tiled_hamming),
    ):
        found = quantize_module._hamming_topk(np, unit, twin, count)
    # The same rows per query, in whatever order.
    np.testing.assert_array_equal(
        np.sort(found, axis=1), np.sort(brute_force_candidates(twin, queries, count), axis=1)
    )


@pytest.mark.parametrize("corpus_kind", ["clustered", "filtered", "sample-misleads"])
def test_the_binary_pass_guesses_a_cutoff_from_a_sample_and_stays_exact(corpus_kind: str) -> None:
    # A twin of 8 sample strides or more first counts a sample of rows spread over it, and
    # holds back the rows the sample says are too far. Where the guess is too low (here
    # only the sampled rows lie near the queries), the short lists are searched again
    # without it.
    n_rows, n_queries, count, width = 140_000, 12, 2000, 24
    queries = clustered(n_queries, width, seed=6)
    corpus = clustered(n_rows, width)
    if corpus_kind == "sample-misleads":
        rng = np.random.default_rng(4)
        stride = n_rows // quantize_module._SAMPLE_ROWS
        corpus = -queries[rng.integers(0, n_queries, n_rows)] + 0.3 * rng.standard_normal((n_rows, width))
        corpus[::stride] = queries[rng.integers(0, n_queries, corpus[::stride].shape[0])]
        corpus[::stride] += 0.9 * rng.standard_normal(corpus[::stride].shape)
        corpus = corpus.astype(np.float32)
        count = 9000
    twin = quantize(corpus, "binary")
    if corpus_kind == "filtered":
        twin = twin._searching_only(np.arange(n_rows) % 3 == 0)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    passes = []
    real_pass = quantize_module._least_distances

    def counted_pass(*args, below=None):
        passes.append(below is not None)
        return real_pass(*args, below=below)

    with (
        mock.patch.object(quantize_module, "_has_tiled_hamming", return_value=False),
        mock.patch.object(quantize_module, "_least_distances", side_effect=counted_pass),
        mock.patch.object(quantize_module, "_GUESS_QUERIES", 5),  # the sample counted in parts
    ):
        found = quantize_module._hamming_topk(np, unit, twin, count)
    np.testing.assert_array_equal(
        np.sort(found, axis=1), np.sort(brute_force_candidates(twin, queries, count), axis=1)
    )
    assert passes == ([True, False] if corpus_kind == "sample-misleads" else [True])


@pytest.mark.parametrize(
    ("rows", "n_queries", "count"),
    [(3000, 3, 50), (20_000, 2, 700), (70_000, 4, 300), (20_000, 2, 9000), (5000, 40, 1), (20_000, 20, 60)],
)
def test_the_int8_coarse_pass_keeps_the_rows_of_largest_product(
    coarse_kernels: str, rows: int, n_queries: int, count: int
) -> None:
    # numkong's int32 products, ranked as integers: the rows of the largest product of the
    # query's codes with the corpus's, ties to the lower row, across kernel blocks (the last
    # one shorter), threads, and lists longer than a block (the 9000 case).
    if coarse_kernels == "numpy":
        pytest.skip("numpy alone ranks the scaled float32 query against the codes, not its codes")
    corpus = np.round(clustered(rows, 16) * 2) / 2  # coarse values: many equal products
    corpus[5] = 0  # never a candidate
    twin = quantize(corpus, "int8")
    queries = clustered(n_queries, 16, seed=6)
    scaled = queries / np.linalg.norm(queries, axis=1, keepdims=True) * twin.scales
    with mock.patch.object(quantize_module, "_threads", return_value=3):
        found = quantize_module._int8_topk(np, scaled, twin, count)
    largest = np.abs(scaled).max(axis=1, keepdims=True)
    query_codes = np.round(scaled * (127 / largest)).astype(np.int32)
    products = np.where(twin.searchable, query_codes @ twin.codes.T.astype(np.int32), np.iinfo(np.int32).min)
    expected = np.argsort(-products.astype(np.int64), axis=1, kind="stable")[:, :count]
    np.testing.assert_array_equal(np.sort(found, axis=1), np.sort(expected, axis=1))


@pytest.mark.parametrize("tiled_hamming", [True, False])
def test_numkong_counts_hamming_distances_for_few_queries_only_without_its_avx512_kernel(
    coarse_kernels: str, tiled_hamming: bool
) -> None:
    # numkong's AVX-512 Hamming kernel costs as much for one query as numpy's count for
    # several: up to _NUMPY_HAMMING_QUERIES queries, numpy counts there.
    corpus = clustered(3000, 32)
    twin = quantize(corpus, "binary")
    few = clustered(quantize_module._NUMPY_HAMMING_QUERIES, 32, seed=3)
    many = clustered(quantize_module._NUMPY_HAMMING_QUERIES + 1, 32, seed=3)
    packings = mock.Mock(wraps=quantize_module._packed)

    def numkong_counted() -> bool:
        return any(call.args[1] == "numkong_bits" for call in packings.call_args_list)

    with (
        mock.patch.object(quantize_module, "_has_tiled_hamming", return_value=tiled_hamming),
        mock.patch.object(quantize_module, "_packed", packings),
    ):
        quantized_topk(few, corpus, twin, 10)
        numkong_for_few = numkong_counted()
        quantized_topk(many, corpus, twin, 10)
    assert numkong_for_few == (coarse_kernels == "numkong" and not tiled_hamming)
    assert numkong_counted() == (coarse_kernels == "numkong")


@pytest.mark.parametrize("int8_instructions", [True, False], ids=["vnni", "no-vnni"])
@pytest.mark.parametrize("n_queries", [1, 5, quantize_module._INT8_KERNEL_QUERIES + 1])
def test_int8_finds_the_exact_results_for_few_and_many_queries(
    n_queries: int, int8_instructions: bool
) -> None:
    # Few queries take numkong's int8 kernel where it is installed; many take it only where
    # the CPU has int8 dot-product instructions, else the float32 multiply.
    corpus = clustered(20_000, 64)
    twin = quantize(corpus, "int8")
    noise = np.random.default_rng(7).standard_normal((n_queries, 64), dtype=np.float32)
    queries = corpus[:: 20_000 // n_queries][:n_queries] + 0.3 * noise
    with mock.patch.object(quantize_module, "_has_int8_dot_products", return_value=int8_instructions):
        assert recall_at_k(corpus, twin, queries=queries, k=10) >= 0.99


def test_one_int8_query_ranks_as_in_a_batch_without_a_packed_copy(coarse_kernels: str) -> None:
    # One query takes numkong's row-by-row product over the codes as they are; a batch the
    # packed matrix product, made on its first search. Both rank by the same integers, ties
    # to the lower row, over steps and threads.
    if coarse_kernels == "numpy":
        pytest.skip("numpy alone packs nothing")
    corpus = clustered(70_000, 48)
    corpus[3] = 0  # never a candidate
    twin = quantize(corpus, "int8")
    queries = np.concatenate([corpus[[10]] + 0.01, corpus[[500]]])
    with mock.patch.object(quantize_module, "_threads", return_value=3):
        alone = quantized_candidates(queries[0], twin, k=10, oversample=30)
        assert "numkong_int8" not in twin._derived
        in_batch = quantized_candidates(queries, twin, k=10, oversample=30)
    assert "numkong_int8" in twin._derived
    np.testing.assert_array_equal(np.sort(alone[0]), np.sort(in_batch[0]))
    assert 10 in alone[0] and 3 not in alone[0]
    # Past 1,040 dimensions a product may not be exact in float32: one query is packed too.
    wide = quantize(clustered(2000, 1100), "int8")
    quantized_candidates(clustered(1, 1100, seed=2)[0], wide, k=5)
    assert "numkong_int8" in wide._derived


def test_an_int8_twin_whose_coarse_pass_costs_more_is_searched_exactly(coarse_kernels: str) -> None:
    # Without numkong, or for many queries without int8 dot-product instructions, the
    # coarse pass would be the float32 multiply of the codes: exact search is cheaper.
    corpus = clustered(5000, 32)
    corpus[7] = np.nan  # never a result, as in exact search
    twin = quantize(corpus, "int8", valid=np.arange(5000) != 11)
    queries = clustered(quantize_module._INT8_KERNEL_QUERIES + 1, 32, seed=8)
    with (
        mock.patch.object(quantize_module, "_has_int8_dot_products", return_value=False),
        mock.patch.object(quantize_module, "_int8_topk", side_effect=AssertionError("coarse pass ran")),
    ):
        found, scores = quantized_topk(queries, corpus, twin, k=10)
        if coarse_kernels == "numpy":
            few_found, _ = quantized_topk(queries[:2], corpus, twin, k=10)
    exact_found, exact_scores = topk(queries, corpus, 10, metric="cosine", valid=twin.searchable)
    np.testing.assert_array_equal(found, exact_found)
    np.testing.assert_array_equal(scores, exact_scores)
    assert not np.isin([7, 11], found).any()
    if coarse_kernels == "numpy":
        np.testing.assert_array_equal(few_found, exact_found[:2])


def test_without_numkong_the_numpy_pass_runs() -> None:
    with mock.patch.dict("sys.modules", {"numkong": None}):  # what a missing package looks like
        assert quantize_module._numkong() is None
        corpus = clustered(3000, 32)
        found, _ = quantized_topk(corpus[:2], corpus, quantize(corpus, "binary"), k=1)
    np.testing.assert_array_equal(found, [[0], [1]])


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_a_filter_restricts_one_search_and_leaves_the_twin_as_it_was(kind: str) -> None:
    corpus = clustered(6000, 32)
    queries = clustered(4, 32, seed=9)
    twin = quantize(corpus, kind)
    quantized_topk(queries, corpus, twin, 10)  # what a kernel library derives, made once
    derived = dict(twin._derived)
    valid = np.arange(6000) % 3 == 0
    found, scores = quantized_topk(queries, corpus, twin, 10, valid=valid)
    assert valid[found].all()
    exact, exact_scores = topk(queries, corpus, 10, metric="cosine", valid=valid)
    if kind == "int8":
        np.testing.assert_array_equal(found, exact)
    else:
        assert np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]) >= 0.9
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], rtol=1e-5)
    assert twin.searchable.all() and twin._derived == derived  # the twin itself is unchanged
    unfiltered, _ = quantized_topk(queries, corpus, twin, 10)
    assert not valid[unfiltered].all()


def test_a_filter_of_the_wrong_shape_or_type_is_refused() -> None:
    corpus = clustered(500, 8)
    twin = quantize(corpus, "binary")
    with pytest.raises(polars_embed.InvalidInputError, match="one entry per corpus row"):
        quantized_topk(corpus[:1], corpus, twin, 3, valid=np.ones(499, dtype=bool))
    with pytest.raises(polars_embed.InputTypeError, match="boolean"):
        quantized_topk(corpus[:1], corpus, twin, 3, valid=np.ones(500))
    with pytest.raises(polars_embed.InvalidInputError, match="one entry per corpus row"):
        quantize(corpus, "int8", valid=np.ones(3, dtype=bool))


@pytest.mark.parametrize("kind", KINDS)
def test_a_searched_twin_pickles_and_searches_the_same(kind: str) -> None:
    corpus = clustered(4000, 32)
    twin = quantize(corpus, kind)
    before = quantized_topk(corpus[:3], corpus, twin, 5)[0]  # may leave packed bits with the twin
    again = pickle.loads(pickle.dumps(twin))
    np.testing.assert_array_equal(quantized_topk(corpus[:3], corpus, again, 5)[0], before)


def test_bad_arguments() -> None:
    corpus = clustered(100, 8)
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize(corpus, "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="make the twin from this corpus"):
        quantized_topk(corpus[:2], corpus[:50], quantize(corpus, "int8"))


class TestPolars:
    def test_search_and_knn_join_find_what_exact_search_finds(self) -> None:
        corpus = clustered(4000, 48)
        frame = pl.DataFrame({"id": range(4000), "vec": corpus})
        query = corpus[17] + 0.01
        for kind in KINDS:
            exact = frame.embed.search(query, k=5)
            quantized = frame.embed.search(query, k=5, quantized=kind)
            assert quantized["id"].to_list() == exact["id"].to_list()
            np.testing.assert_allclose(quantized["score"], exact["score"], rtol=1e-5)
            left = frame.head(20)
            joined = left.embed.knn_join(frame, on="vec", k=3, quantized=kind, oversample=50)
            assert (
                joined["id_right"].to_list()
                == left.embed.knn_join(frame, on="vec", k=3)["id_right"].to_list()
            )
            lazy = frame.lazy().embed.search(query, k=5, quantized=kind).collect()
            assert lazy["id"].to_list() == exact["id"].to_list()

    def test_the_twin_is_kept_with_the_frame_and_made_again_for_new_data(self) -> None:
        corpus = clustered(2000, 16)
        frame = pl.DataFrame({"id": range(2000), "vec": corpus})
        with mock.patch.object(
            polars_embed.namespaces._vectors, "quantize", wraps=quantize_module.quantize
        ) as made:
            frame.embed.search(corpus[3], k=2, quantized="binary")
            frame.embed.search(corpus[4], k=2, quantized="binary")
            assert made.call_count == 1
            changed = corpus.copy()
            changed[3] = -changed[3]
            frame.replace_column(1, pl.Series("vec", changed))
            hits = frame.embed.search(corpus[3], k=1, quantized="binary")
            assert made.call_count == 2
        assert hits["id"].to_list() != [3]

    def test_options_are_checked_when_the_plan_is_made(self) -> None:
        frame = pl.DataFrame({"vec": clustered(10, 4)})
        with pytest.raises(ValueError, match="'int8', 'binary' or None"):
            frame.lazy().embed.search([1.0, 0, 0, 0], quantized="pq")
        with pytest.raises(ValueError, match="by cosine similarity, not 'l2'"):
            frame.embed.search([1.0, 0, 0, 0], quantized="int8", metric="l2")
        with pytest.raises(ValueError, match="oversample= is for a quantized= search"):
            frame.embed.knn_join(frame, on="vec", oversample=3)


def test_exact_topk_is_what_recall_compares_with() -> None:
    corpus = clustered(2000, 24)
    twin = quantize(corpus, "int8")
    queries = clustered(10, 24, seed=5)
    exact, _ = topk(queries, corpus, 5)
    found, _ = quantized_topk(queries, corpus, twin, 5, oversample=400)  # every row rescored
    np.testing.assert_array_equal(found, exact)
    assert recall_at_k(corpus, twin, queries=queries, k=5, oversample=400) == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_the_candidates_alone_hold_the_best_rows_of_the_filter(kind: str) -> None:
    corpus = clustered(6000, 32)
    twin = quantize(corpus, kind)
    queries = corpus[[5, 17, 4001]] + 0.01
    valid = np.arange(6000) % 4 != 1
    candidates = quantized_candidates(queries, twin, 10, oversample=8, valid=valid)
    assert candidates.shape == (3, 80) and candidates.dtype == np.int64
    exact, _ = topk(queries, corpus, 1, metric="cosine", valid=valid)
    for row, best in zip(candidates, exact[:, 0], strict=True):
        assert len(set(row.tolist())) == 80 and valid[row].all() and best in row
    (everything,) = quantized_candidates(queries[0], twin, 10, oversample=1000, valid=valid)
    assert sorted(everything[everything >= 0].tolist()) == np.flatnonzero(valid).tolist()
    with pytest.raises(ValueError, match="width 8, but the twin was made from vectors of width 32"):
        quantized_candidates(queries[:, :8], twin)


def test_share_found_compares_the_first_k_rows_left_after_the_query_row() -> None:
    exact = np.array([[4, 2, 9, 1], [-1, -1, -1, -1]])
    found = np.array([[2, 4, 1, 9], [3, -1, -1, -1]])  # the second query has nothing to find
    assert share_found(found, exact, 2) == 1.0
    assert share_found(found, exact, 2, left_out=np.array([4, 3])) == 0.5  # [2, 9] against [2, 1]
    assert share_found(found[1:], exact[1:], 3) == 1.0
