"""Tests for polars_embed.kernels: exact top-k against a brute-force reference."""

from __future__ import annotations

import doctest
import itertools
import multiprocessing
import os
import tracemalloc
import warnings
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polars_embed import (
    ConfigError,
    DimensionMismatchError,
    InputTypeError,
    InvalidInputError,
    _pools,
    kernels,
)
from polars_embed.kernels import l2_normalize, pairwise_scores, topk

METRICS = ("cosine", "dot", "l2")


def reference_topk(queries, corpus, k, metric, valid=None):
    """Brute force in float64: full score matrix, then a stable argsort.

    Returns indices, scores and the float64 score matrix (for looking up the
    true score of any returned row).
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    corpus = np.asarray(corpus, dtype=np.float64)
    searchable = np.all(np.isfinite(corpus), axis=1)
    usable = np.all(np.isfinite(queries), axis=1)
    if metric == "cosine":
        searchable &= np.any(corpus != 0, axis=1)
        usable &= np.any(queries != 0, axis=1)
    if valid is not None:
        searchable &= valid
    with np.errstate(all="ignore"):
        if metric == "l2":
            scores = np.sqrt(((queries[:, None, :] - corpus[None, :, :]) ** 2).sum(axis=2))
        else:
            scores = queries @ corpus.T
            if metric == "cosine":
                scores /= np.linalg.norm(queries, axis=1)[:, None]
                scores /= np.linalg.norm(corpus, axis=1)[None, :]
    # Rank ascending by a key where smaller is better; -inf/inf push rows out.
    rank_key = scores if metric == "l2" else -scores
    rank_key = np.where(searchable[None, :], rank_key, np.inf)
    k_eff = min(k, int(searchable.sum()))
    order = np.argsort(rank_key, axis=1, kind="stable")[:, :k_eff]
    indices = np.where(usable[:, None], order, -1)
    top = np.where(usable[:, None], np.take_along_axis(scores, order, axis=1), np.nan)
    return indices, top, scores


def check_against_reference(queries, corpus, k, metric, valid, indices, scores, exact):
    """Assert that (indices, scores) is a correct top-k for the reference.

    Float32 and float64 can order near-ties differently, so in general the
    scores must match the reference's best k within a tolerance and each index
    must carry its own true score. With ``exact`` (small-integer dot products,
    which float32 computes without rounding) the indices must match exactly.
    """
    ref_indices, ref_scores, all_scores = reference_topk(queries, corpus, k, metric, valid)
    assert indices.dtype == np.int64
    assert scores.dtype == np.float32
    assert indices.shape == scores.shape == ref_indices.shape
    if exact:
        np.testing.assert_array_equal(indices, ref_indices)
    for row, (got_i, got_s, want_i, want_s) in enumerate(
        zip(indices, scores, ref_indices, ref_scores, strict=True)
    ):
        if want_i.size and want_i[0] == -1:  # query that cannot match
            assert np.all(got_i == -1) and np.all(np.isnan(got_s))
            continue
        assert np.all(got_i >= 0)
        assert len(set(got_i.tolist())) == got_i.size
        tolerance = 1e-4 * (1 + np.abs(want_s))
        np.testing.assert_array_less(np.abs(got_s - want_s), tolerance)
        np.testing.assert_array_less(np.abs(got_s - all_scores[row, got_i]), tolerance)
        # Best first; exact ties in the returned scores go to the lower row.
        step = np.diff(got_s) if metric == "l2" else -np.diff(got_s)
        assert np.all(step >= 0)
        assert np.all(np.diff(got_i)[step == 0] > 0)


ROW_KINDS = ("plain", "plain", "plain", "plain", "zero", "nan", "inf")


def with_special_rows(values, kinds):
    """Overwrite rows of ``values`` with zeros, NaN or infinity as ``kinds`` says."""
    values = values.copy()
    for row, kind in enumerate(kinds):
        if kind == "zero":
            values[row] = 0
        elif kind == "nan":
            values[row, row % values.shape[1]] = np.nan
        elif kind == "inf":
            values[row, 0] = -np.inf if row % 2 else np.inf
    return values


@st.composite
def problems(draw):
    """Small searches full of duplicates, ties, and zero, NaN and infinite rows."""
    n = draw(st.integers(0, 40))
    d = draw(st.integers(1, 5))
    q = draw(st.integers(0, 4))
    # Few distinct small integers: many duplicate rows and exactly tied scores.
    cells = st.integers(-2, 2)
    corpus = np.array(draw(st.lists(cells, min_size=n * d, max_size=n * d)), np.float32)
    queries = np.array(draw(st.lists(cells, min_size=q * d, max_size=q * d)), np.float32)
    corpus = with_special_rows(
        corpus.reshape(n, d), draw(st.lists(st.sampled_from(ROW_KINDS), min_size=n, max_size=n))
    )
    queries = with_special_rows(
        queries.reshape(q, d), draw(st.lists(st.sampled_from(ROW_KINDS), min_size=q, max_size=q))
    )
    masks = st.lists(st.booleans(), min_size=n, max_size=n).map(lambda m: np.array(m, bool))
    valid = draw(st.none() | masks)
    return {
        "queries": queries,
        "corpus": corpus,
        "k": draw(st.integers(1, n + 3)),
        "metric": draw(st.sampled_from(METRICS)),
        "valid": valid,
        "normalized": draw(st.booleans()),
        "block_size": draw(st.none() | st.integers(1, 12)),
        # Small limits force the partition cut that large blocks take.
        "sparse_candidates": draw(st.sampled_from([1, 3, kernels._SPARSE_CANDIDATES])),
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_topk_matches_brute_force(problem):
    queries, corpus, metric = problem["queries"], problem["corpus"], problem["metric"]
    normalized = problem["normalized"] and metric == "cosine"
    if normalized:
        corpus = l2_normalize(corpus)
    with mock.patch.object(kernels, "_SPARSE_CANDIDATES", problem["sparse_candidates"]):
        indices, scores = topk(
            queries,
            corpus,
            problem["k"],
            metric=metric,
            valid=problem["valid"],
            normalized=normalized,
            block_size=problem["block_size"],
        )
    exact = metric == "dot"
    check_against_reference(queries, corpus, problem["k"], metric, problem["valid"], indices, scores, exact)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_size", [None, 7, 64])
def test_realistic_sizes_match_brute_force(metric, block_size):
    rng = np.random.default_rng(7)
    corpus = rng.standard_normal((3000, 24), dtype=np.float32)
    queries = rng.standard_normal((40, 24), dtype=np.float32)
    indices, scores = topk(queries, corpus, 15, metric=metric, block_size=block_size)
    check_against_reference(queries, corpus, 15, metric, None, indices, scores, exact=False)


@pytest.mark.parametrize("metric", METRICS)
def test_ascending_corpus_takes_the_partition_path_every_block(metric):
    # Each block beats the previous one for every query, so no block can be skipped.
    ramp = np.linspace(0.1, 10, 2000, dtype=np.float32)[:, None]
    corpus = np.hstack([ramp, np.ones_like(ramp)])
    queries = np.array([[1, 0.1], [2, 0.5]], dtype=np.float32)
    if metric == "l2":
        queries = queries * 100
    indices, scores = topk(queries, corpus, 10, metric=metric, block_size=100)
    check_against_reference(queries, corpus, 10, metric, None, indices, scores, exact=False)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_size", [None, 1, 3])
def test_ties_go_to_the_lower_row(metric, block_size):
    corpus = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [1, 0], [0, 0.5]], dtype=np.float32)
    query = np.array([1, 0], dtype=np.float32)
    indices, _ = topk(query, corpus, 4, metric=metric, block_size=block_size)
    expected = {"cosine": [1, 3, 4, 0], "dot": [1, 3, 4, 0], "l2": [1, 3, 4, 5]}
    np.testing.assert_array_equal(indices, [expected[metric]])


def test_one_dimensional_query_gives_one_row():
    corpus = np.eye(3, dtype=np.float32)
    indices, scores = topk(np.array([0, 1, 0], dtype=np.float32), corpus, k=2)
    assert indices.shape == scores.shape == (1, 2)
    assert indices[0, 0] == 1


def test_k_larger_than_corpus_returns_every_searchable_row():
    corpus = np.array([[1, 0], [np.nan, 1], [0, 1], [0, 0]], dtype=np.float32)
    indices, scores = topk(corpus[:1], corpus, k=10)
    np.testing.assert_array_equal(indices, [[0, 2]])
    np.testing.assert_allclose(scores, [[1, 0]])


def test_zero_and_nan_rows_never_rank_first():
    # Every real row scores below zero, so an unchecked zero row would win.
    corpus = np.array(
        [[-1, 0], [0, 0], [np.nan, np.nan], [np.inf, 0], [0, -1], [np.nan, 1]], dtype=np.float32
    )
    query = np.array([1, 1], dtype=np.float32)
    for metric in METRICS:
        for normalized in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                indices, scores = topk(query, corpus, 10, metric=metric, normalized=normalized)
            assert not np.isnan(scores).any()
            assert {2, 3, 5}.isdisjoint(indices[0].tolist())
            assert (1 in indices[0]) == (metric != "cosine")


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("block_size", [None, 20])
def test_many_unsearchable_rows_do_not_crowd_out_real_ones(normalized, block_size):
    corpus = np.zeros((200, 3), dtype=np.float32)
    corpus[:, 0] = -np.arange(1, 201)
    corpus[10:150, 1] = np.inf  # more than k rows that the dot product would rank first
    query = np.array([-1, 1, 0], np.float32)
    indices, _ = topk(query, corpus, 5, metric="dot", block_size=block_size)
    np.testing.assert_array_equal(indices, [[199, 198, 197, 196, 195]])
    corpus[10:150] = 0  # zero rows score 0, above every real (negative) cosine
    corpus[:10] = l2_normalize(corpus[:10])
    corpus[150:] = l2_normalize(corpus[150:])
    query = np.array([1, 1, 0], np.float32)
    indices, _ = topk(query, corpus, 5, normalized=normalized, block_size=block_size)
    assert set(indices[0].tolist()).isdisjoint(range(10, 150))


@pytest.mark.parametrize("metric", METRICS)
def test_unusable_query_gets_minus_one_and_nan(metric):
    corpus = np.array([[1, 0], [0, 1]], dtype=np.float32)
    queries = np.array([[np.nan, 1], [0, 0], [1, 0], [np.inf, 0]], dtype=np.float32)
    indices, scores = topk(queries, corpus, k=2, metric=metric)
    assert indices.shape == (4, 2)
    for row in (0, 3) if metric != "cosine" else (0, 1, 3):
        np.testing.assert_array_equal(indices[row], [-1, -1])
        assert np.isnan(scores[row]).all()
    assert indices[2, 0] == 0


def test_no_usable_query_still_reports_the_searchable_width():
    corpus = np.array([[1, 0], [0, 0], [0, 1]], dtype=np.float32)
    for metric, width in (("dot", 3), ("cosine", 2)):
        indices, _ = topk(np.zeros((2, 2), np.float32) + np.nan, corpus, 5, metric=metric)
        assert indices.shape == (2, width)
        indices, _ = topk(np.zeros((0, 2), np.float32), corpus, 5, metric=metric)
        assert indices.shape == (0, width)


def test_valid_mask_excludes_rows():
    corpus = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    valid = np.array([False, True, True])
    indices, _ = topk(np.array([1, 0], np.float32), corpus, 3, valid=valid)
    np.testing.assert_array_equal(indices, [[1, 2]])


def test_empty_corpus_gives_empty_results():
    indices, scores = topk(np.ones((3, 4), np.float32), np.zeros((0, 4), np.float32))
    assert indices.shape == scores.shape == (3, 0)


def test_l2_scores_are_exact_distances_even_for_near_duplicates():
    rng = np.random.default_rng(3)
    corpus = rng.standard_normal((500, 64), dtype=np.float32) * 100
    query = corpus[123] + np.float32(1e-3)
    indices, scores = topk(query, corpus, 3, metric="l2")
    assert indices[0, 0] == 123
    np.testing.assert_allclose(scores[0, 0], np.sqrt(64) * 1e-3, rtol=1e-2)


@pytest.mark.parametrize("metric", METRICS)
def test_normalized_fast_path_agrees_with_the_general_path(metric):
    rng = np.random.default_rng(5)
    corpus = l2_normalize(rng.standard_normal((1000, 16), dtype=np.float32))
    queries = rng.standard_normal((8, 16), dtype=np.float32)
    plain = topk(queries, corpus, 10, metric=metric)
    fast = topk(queries, corpus, 10, metric=metric, normalized=True)
    np.testing.assert_array_equal(plain[0], fast[0])
    np.testing.assert_allclose(plain[1], fast[1], atol=1e-6)


def test_other_dtypes_are_converted_and_give_the_same_results():
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((300, 8))
    queries = rng.standard_normal((5, 8))
    indices, scores = topk(queries, corpus, 4, block_size=50)
    want = topk(queries.astype(np.float32), corpus.astype(np.float32), 4, block_size=50)
    np.testing.assert_array_equal(indices, want[0])
    np.testing.assert_allclose(scores, want[1], rtol=1e-6)  # BLAS may round the last bit otherwise
    assert scores.dtype == np.float32
    int_indices, _ = topk(np.array([1, 0]), np.array([[0, 1], [2, 0]]), 1)
    np.testing.assert_array_equal(int_indices, [[1]])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 0}, ConfigError, "k must be a positive integer"),
        ({"k": -3}, ConfigError, "k must be a positive integer .*, got -3"),
        ({"k": True}, InputTypeError, "k must be a positive integer .*, got True"),
        ({"k": 2.5}, InputTypeError, "k must be a positive integer .*, got 2.5"),
        ({"metric": "manhattan"}, ConfigError, "'cosine', 'dot', 'l2'"),
        ({"valid": np.ones(4, dtype=bool)}, InvalidInputError, r"shape \(3,\)"),
        ({"valid": np.ones(3)}, InputTypeError, "boolean"),
        ({"block_size": 0}, ConfigError, "block_size"),
        ({"block_size": "8"}, InputTypeError, "block_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    corpus = np.eye(3, dtype=np.float32)
    with pytest.raises(error, match=message):
        topk(corpus, corpus, **kwargs)


def test_inputs_that_are_not_arrays_of_one_library_are_a_type_error():
    with pytest.raises(InputTypeError, match=r"arrays of one array library .* got builtins\.list"):
        topk([1.0, 0.0], np.eye(2, dtype=np.float32))


def test_mismatched_widths_name_both():
    with pytest.raises(DimensionMismatchError, match="queries have 3 columns and the corpus has 4"):
        topk(np.ones((2, 3), np.float32), np.ones((5, 4), np.float32))
    with pytest.raises(DimensionMismatchError, match="a has 3 columns and b has 4"):
        pairwise_scores(np.ones((2, 3), np.float32), np.ones(4, np.float32))


def test_memory_stays_bounded_for_many_queries(monkeypatch):
    # tracemalloc traces numpy's arrays, not the products torch would make.
    monkeypatch.setenv("POLARS_EMBED_TORCH_MATMUL", "0")
    rng = np.random.default_rng(0)
    n_queries, n_rows = 1000, 200_000
    corpus = rng.standard_normal((n_rows, 8), dtype=np.float32)
    queries = rng.standard_normal((n_queries, 8), dtype=np.float32)
    tracemalloc.start()
    try:
        topk(queries, corpus, 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_score_matrix = n_queries * n_rows * 4  # 800 MB
    assert peak < 64 * 2**20 < full_score_matrix / 10


def peak_bytes(call):
    """The most memory (traced by tracemalloc, as numpy's arrays are) that ``call()`` held at once."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_a_huge_k_is_cut_to_the_corpus_before_anything_is_allocated(metric):
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((10, 4), dtype=np.float32)
    queries = rng.standard_normal((3, 4), dtype=np.float32)
    huge = 10**7  # an allocation by k would hold 3 x 10**7 x 12 bytes at once: 360 MB
    indices, scores = topk(queries, corpus, huge, metric=metric)
    want = topk(queries, corpus, 10, metric=metric)
    np.testing.assert_array_equal(indices, want[0])
    np.testing.assert_array_equal(scores, want[1])
    assert peak_bytes(lambda: topk(queries, corpus, huge, metric=metric)) < 2**20


def test_corpus_is_never_copied_whole():
    as_float64 = np.random.default_rng(0).standard_normal((400_000, 64))
    float32_copy = as_float64.size * 4  # 102 MB
    for corpus in (as_float64.astype(np.float32), as_float64):
        tracemalloc.start()
        try:
            topk(corpus[:1], corpus, 5, metric="cosine")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 32 * 2**20 < float32_copy / 3


def _search_the_fork_corpus(_: object = None) -> list[int]:
    corpus = np.random.default_rng(5).standard_normal((300_000, 16), dtype=np.float32)
    return topk(corpus[:3], corpus, 4)[0].ravel().tolist()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_a_search_searches_too():
    # The search of many blocks hands work to a worker thread started on first use; a
    # forked child has no such thread, and its search used to wait for it forever.
    in_parent = _search_the_fork_corpus()
    assert _pools._pools  # the parent's worker has started
    with multiprocessing.get_context("fork").Pool(1) as pool:
        in_child = pool.apply_async(_search_the_fork_corpus).get(timeout=60)
    assert in_child == in_parent


def test_l2_normalize_keeps_zero_rows_and_warns_about_nothing():
    x = np.array([[3, 4], [0, 0], [np.nan, 1], [np.inf, 1]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = l2_normalize(x)
    np.testing.assert_allclose(out[0], [0.6, 0.8])
    np.testing.assert_array_equal(out[1], [0, 0])
    assert np.isnan(out[2, 0])
    assert out.dtype == np.float32
    np.testing.assert_allclose(l2_normalize(np.array([0, 2.0])), [0, 1])


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_scores_agree_with_topk_scores(metric):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((20, 6), dtype=np.float32)
    b = rng.standard_normal((20, 6), dtype=np.float32)
    row_aligned = pairwise_scores(a, b, metric)
    against_one = pairwise_scores(a, b[0], metric)
    assert row_aligned.shape == against_one.shape == (20,)
    assert row_aligned.dtype == np.float32
    _, _, all_scores = reference_topk(a, b, 1, metric)
    np.testing.assert_allclose(row_aligned, np.diag(all_scores), rtol=1e-5, atol=1e-5)
    _, _, to_first = reference_topk(b[:1], a, 1, metric)
    np.testing.assert_allclose(against_one, to_first[0], rtol=1e-5, atol=1e-5)


def test_pairwise_cosine_is_nan_for_zero_or_nan_rows_without_warnings():
    a = np.array([[0, 0], [np.nan, 1], [1, 0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pairwise_scores(a, np.array([1, 1], np.float32))
    assert np.isnan(out[:2]).all()
    np.testing.assert_allclose(out[2], np.sqrt(0.5))


def test_docstring_examples_run():
    failures, _ = doctest.testmod(kernels)
    assert failures == 0


def test_only_standard_calls_outside_the_shim():
    # array_api_strict raises on anything the standard lacks, so the same run passing
    # there proves the kernels use the standard only (the shim falls back to sort).
    xp = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(4)
    corpus = rng.integers(-3, 4, (500, 6)).astype(np.float32)
    corpus[[5, 50]] = np.nan
    corpus[[7, 8]] = 0
    corpus[9, 2] = np.inf
    queries = rng.integers(-3, 4, (30, 6)).astype(np.float32)
    queries[3] = 0
    valid = rng.random(500) > 0.1
    for metric in METRICS:
        for normalized in (False, True):
            for block_size in (None, 37):
                got = topk(
                    xp.asarray(queries),
                    xp.asarray(corpus),
                    12,
                    metric=metric,
                    valid=xp.asarray(valid),
                    normalized=normalized,
                    block_size=block_size,
                )
                want = topk(
                    queries,
                    corpus,
                    12,
                    metric=metric,
                    valid=valid,
                    normalized=normalized,
                    block_size=block_size,
                )
                assert all(type(part) is type(xp.asarray(0)) for part in got)
                assert got[0].dtype == xp.int64 and got[1].dtype == xp.float32
                np.testing.assert_array_equal(np.asarray(got[0]), want[0])
                np.testing.assert_allclose(np.asarray(got[1]), want[1], rtol=1e-6)
        got = pairwise_scores(xp.asarray(corpus), xp.asarray(queries[0]), metric)
        np.testing.assert_allclose(np.asarray(got), pairwise_scores(corpus, queries[0], metric), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(l2_normalize(xp.asarray(corpus))), l2_normalize(corpus), rtol=1e-6)


def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(6)
    corpus = rng.standard_normal((5000, 32), dtype=np.float32)
    corpus[[3, 30]] = np.nan
    corpus[40] = 0
    queries = rng.standard_normal((20, 32), dtype=np.float32)
    for metric in METRICS:
        indices, scores = topk(cupy.asarray(queries), cupy.asarray(corpus), 10, metric=metric)
        assert isinstance(indices, cupy.ndarray)
        want = topk(queries, corpus, 10, metric=metric)
        np.testing.assert_array_equal(cupy.asnumpy(indices), want[0])
        np.testing.assert_allclose(cupy.asnumpy(scores), want[1], rtol=1e-4, atol=1e-5)


def split_rows(array, cuts):
    """``array`` split into chunks at the sorted row numbers ``cuts``."""
    bounds = [0, *sorted(cuts), array.shape[0]]
    return [array[start:stop] for start, stop in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.lists(st.integers(0, 40), max_size=6))
def test_a_corpus_in_chunks_gives_what_one_array_gives(problem, cuts):
    # Small integers make every dot and L2 score exact, so chunk and block boundaries cannot
    # change a single bit: ties, null rows (valid) and NaN, infinite and zero rows included.
    corpus, metric = problem["corpus"], problem["metric"]
    cuts = [cut for cut in cuts if cut <= corpus.shape[0]]
    kwargs = {"metric": metric, "valid": problem["valid"], "block_size": problem["block_size"]}
    want = topk(problem["queries"], corpus, problem["k"], **kwargs)
    got = topk(problem["queries"], split_rows(corpus, cuts), problem["k"], **kwargs)
    if metric == "cosine":
        # The unit query is not exact: another block shape may sum its products in another
        # order (an AVX-512 BLAS moved one score by its last bit), and with it reorder a
        # near-tie. Both answers must still be a correct top k.
        for indices, scores in (want, got):
            check_against_reference(
                problem["queries"], corpus, problem["k"], metric, problem["valid"], indices, scores, False
            )
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6, equal_nan=True)
        return
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_small_chunks_are_joined_and_large_ones_walked_in_place():
    rng = np.random.default_rng(8)
    corpus = rng.integers(-3, 4, (5000, 8)).astype(np.float32)
    queries = rng.integers(-3, 4, (6, 8)).astype(np.float32)
    chunks = split_rows(corpus, [3, 4, 10, 900, 901, 4000])
    for metric in METRICS:
        want = topk(queries, corpus, 20, metric=metric, block_size=256)
        got = topk(queries, chunks, 20, metric=metric, block_size=256)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="at least one chunk"):
        topk(queries, [], 3)
    with pytest.raises(ValueError, match="corpus has 4"):
        topk(queries, [corpus[:5], np.ones((3, 4), np.float32)], 3)


@pytest.mark.parametrize("metric", METRICS)
def test_topk_merge_of_parts_is_topk_of_the_whole(metric):
    rng = np.random.default_rng(9)
    corpus = rng.integers(-2, 3, (700, 4)).astype(np.float32)  # many exact ties
    corpus[[5, 300]] = np.nan
    queries = rng.integers(-2, 3, (9, 4)).astype(np.float32)
    queries[2] = np.nan  # cannot match: -1 and NaN from every part
    want = topk(queries, corpus, 15, metric=metric)
    parts, starts = split_rows(corpus, [100, 101, 450]), [0, 100, 101, 450]
    results = [topk(queries, part, 15, metric=metric) for part in parts]
    indices = [
        np.where(found >= 0, found + start, -1) for (found, _), start in zip(results, starts, strict=True)
    ]
    got = kernels.topk_merge(indices, [scores for _, scores in results], 15, metric=metric)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_topk_merge_refuses_mismatched_parts():
    with pytest.raises(ValueError, match="one scores array per indices"):
        kernels.topk_merge([np.zeros((1, 1), np.int64)], [], 3)


@pytest.mark.parametrize("metric", METRICS)
def test_kept_squared_norms_give_the_same_results(metric):
    rng = np.random.default_rng(10)
    corpus = rng.standard_normal((3000, 16), dtype=np.float32)
    corpus[[3, 40]] = 0
    corpus[7, 2] = np.nan
    queries = rng.standard_normal((5, 16), dtype=np.float32)
    chunks = split_rows(corpus, [1000, 2500])
    norms = kernels.squared_norms(chunks)
    np.testing.assert_array_equal(norms, kernels.squared_norms(corpus))
    want = topk(queries, corpus, 12, metric=metric, block_size=500)
    got = topk(queries, chunks, 12, metric=metric, squared_norms=norms, block_size=500)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(InvalidInputError, match=r"squared_norms must have one entry per corpus row"):
        topk(queries, corpus, 3, squared_norms=norms[:10])


def test_the_worker_thread_sees_the_same_floating_point_rules():
    # Zero and NaN rows produce warnings in the norm pass, which runs on the worker
    # thread for numpy; they must stay silent there too.
    corpus = np.zeros((5000, 4), dtype=np.float32)
    corpus[::7] = np.nan
    corpus[1::7, 0] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        indices, _ = topk(np.ones(4, np.float32), corpus, 3, block_size=100)
    np.testing.assert_array_equal(indices, [[1, 8, 15]])


def test_the_standard_fallbacks_for_bits_agree_with_numpy():
    xp = pytest.importorskip("array_api_strict")
    from polars_embed import _xp

    rng = np.random.default_rng(11)
    words = rng.integers(0, 2**63, (40, 3), dtype=np.uint64) | np.uint64(2**63)
    np.testing.assert_array_equal(
        np.asarray(_xp.bitwise_count(xp, xp.asarray(words))), np.bitwise_count(words)
    )
    bits = rng.random((7, 130)) > 0.5
    packed, standard = _xp.pack_bits(np, bits), np.asarray(_xp.pack_bits(xp, xp.asarray(bits)))
    assert packed.shape == standard.shape == (7, 3)
    # Bit order inside a word may differ; the number of set bits and equality may not.
    np.testing.assert_array_equal(np.bitwise_count(packed).sum(axis=1), bits.sum(axis=1))
    np.testing.assert_array_equal(np.bitwise_count(standard).sum(axis=1), bits.sum(axis=1))


@pytest.mark.parametrize("split", [[], [3], [0, 3, 3, 9]], ids=["one-array", "two-chunks", "empty-chunks"])
def test_take_rows_gathers_row_numbers_across_chunks_in_their_order(split: list[int]) -> None:
    corpus = np.arange(12 * 4, dtype=np.float64).reshape(12, 4)
    chunks = np.split(corpus, split) if split else corpus
    rows = np.array([11, 0, 5, 3, 5, 9])
    taken = kernels.take_rows(chunks, rows)
    assert taken.dtype == np.float32
    np.testing.assert_array_equal(taken, corpus[rows].astype(np.float32))
    assert kernels.take_rows(chunks, np.zeros(0, dtype=np.int64)).shape == (0, 4)


@pytest.fixture
def torch_products(monkeypatch):
    """torch, imported, with its matmul counting the products topk hands it."""
    torch = pytest.importorskip("torch")
    calls = []
    real_matmul = torch.matmul

    def counted(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return real_matmul(a, b)

    monkeypatch.setattr(torch, "matmul", counted)
    monkeypatch.delenv("POLARS_EMBED_TORCH_MATMUL", raising=False)
    return torch, calls


def integer_problem(n_rows=40_000, n_queries=24, width=32):
    """Small integers, so that every BLAS computes the same float32 products exactly."""
    rng = np.random.default_rng(21)
    corpus = rng.integers(-4, 5, (n_rows, width)).astype(np.float32)
    corpus[[10, n_rows // 2]] = 0
    corpus[30, 3] = np.nan
    return rng.integers(-4, 5, (n_queries, width)).astype(np.float32), corpus


@pytest.mark.parametrize("metric", METRICS)
def test_batches_multiplied_by_torch_give_what_numpy_gives(torch_products, monkeypatch, metric):
    _, calls = torch_products
    queries, corpus = integer_problem()
    corpus.flags.writeable = False  # as a column read from Arrow is
    valid = np.arange(corpus.shape[0]) % 5 != 0
    chunks = split_rows(corpus, [15_000])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = topk(queries, chunks, 10, metric=metric, valid=valid)
    assert calls, "the batch did not go through torch"
    monkeypatch.setenv("POLARS_EMBED_TORCH_MATMUL", "0")
    calls.clear()
    want = topk(queries, chunks, 10, metric=metric, valid=valid)
    assert not calls
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_one_query_small_products_and_reversed_views_stay_in_numpy(torch_products):
    _, calls = torch_products
    queries, corpus = integer_problem()
    topk(queries[0], corpus, 5)
    topk(queries[:4], corpus[:100], 5)
    # torch cannot view negative strides (it aborts the process): numpy multiplies them.
    reversed_rows = corpus[::-1]
    indices, _ = topk(queries, reversed_rows, 5, metric="dot")
    assert not calls
    want, _ = topk(queries, np.ascontiguousarray(reversed_rows), 5, metric="dot")
    np.testing.assert_array_equal(indices, want)


def test_torch_allowed_a_lower_precision_leaves_the_product_to_numpy(torch_products):
    torch, calls = torch_products
    rng = np.random.default_rng(22)
    corpus = rng.standard_normal((20_000, 64), dtype=np.float32)
    queries = rng.standard_normal((16, 64), dtype=np.float32)
    torch.set_float32_matmul_precision("medium")  # bfloat16 products where the CPU has AMX
    try:
        _, scores = topk(queries, corpus, 5, metric="dot")
    finally:
        torch.set_float32_matmul_precision("highest")
    assert not calls
    want = reference_topk(queries, corpus, 5, "dot")
    np.testing.assert_allclose(scores, want[1], rtol=1e-5)
    topk(queries, corpus, 5, metric="dot")
    assert calls  # and back at full precision, torch again


def test_an_array_numpy_cannot_export_to_torch_is_multiplied_by_numpy(torch_products):
    from polars_embed import _xp

    class Unexportable(np.ndarray):
        """What numpy before 2.1 does with a read-only array: refuse to export it."""

        def __dlpack__(self, *args, **kwargs):
            raise BufferError("Cannot export readonly array since signalling readonly is unsupported")

    queries, corpus = integer_problem(n_rows=2000)
    product = _xp.matmul(np, queries, corpus.T.view(Unexportable))
    np.testing.assert_array_equal(np.asarray(product), queries @ corpus.T)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_torch_multiplied_still_searches(torch_products):
    _, calls = torch_products
    in_parent = _search_the_fork_corpus()
    assert calls
    with multiprocessing.get_context("fork").Pool(1) as pool:
        in_child = pool.apply_async(_search_the_fork_corpus).get(timeout=60)
    assert in_child == in_parent
