"""Exact top-k similarity search between a batch of queries and a corpus.

Every search and join in polars-embed goes through :func:`topk`; the Polars and
DuckDB front ends only prepare arrays for it. The code is written against the
array API standard, so numpy, CuPy and ``array_api_strict`` arrays run the same
path; the one non-standard step (partition) lives in :mod:`polars_embed._xp`.

How the search stays cheap: the corpus is walked in blocks of rows, and each
block is scored with one matrix multiply per chunk of queries, so extra memory
is bounded by the block, never by ``q x n``. Every metric is turned into a
*key* where larger is better, and each query keeps its best ``k`` keys so far.
A block's maximum key per query is compared with that query's current k-th
best key; only the queries it beats look at the block more closely. After the
first few blocks that is a small minority, so selection costs little next to
the multiply.
"""

from __future__ import annotations

import logging
import operator
from typing import Literal, get_args

import array_api_compat

from polars_embed import _xp
from polars_embed._xp import Array, Namespace
from polars_embed.errors import ConfigError, DimensionMismatchError, InputTypeError, InvalidInputError

__all__ = ["Metric", "check_k", "check_metric", "l2_normalize", "pairwise_scores", "topk"]

logger = logging.getLogger(__name__)

Metric = Literal["cosine", "dot", "l2"]
_METRICS: tuple[str, ...] = get_args(Metric)

# Score entries per (query chunk x corpus block). Large blocks keep the number of
# BLAS calls low, which matters most when other processes compete for the cores:
# every multi-threaded call then waits for its threads to be scheduled. The
# selection makes a few temporaries of this size, so peak extra memory is a small
# multiple of 8 MiB.
_SCORE_BLOCK_ELEMENTS = 2 * 2**20
# Corpus rows per block on the CPU: at least enough that each BLAS call has real
# work; at most 128k rows, so that a single query over a large corpus still skips
# most blocks after a glance at their maximum instead of partitioning every key.
_MIN_CORPUS_BLOCK = 1024
_MAX_CORPUS_BLOCK = 131072
# Past this many candidates in one query row, a partition first cuts the row down
# to its best k (plus ties): sorting a whole block row would cost more.
_SPARSE_CANDIDATES = 64


def topk(
    queries: Array,
    corpus: Array,
    k: int = 10,
    *,
    metric: Metric = "cosine",
    valid: Array | None = None,
    normalized: bool = False,
    block_size: int | None = None,
) -> tuple[Array, Array]:
    """Find the exact ``k`` best corpus rows for each query.

    Parameters
    ----------
    queries : array, shape (q, d) or (d,)
        Query vectors; a 1-D array is one query. Converted to float32 if needed.
    corpus : array, shape (n, d)
        Vectors to search, from the same array library as ``queries``. Should be
        float32: other dtypes are converted block by block, never copied whole.
    k : int, default 10
        Number of results per query. More than the number of searchable rows
        returns them all.
    metric : {"cosine", "dot", "l2"}, default "cosine"
        Cosine similarity and dot product rank descending, Euclidean distance
        (not squared) ranks ascending.
    valid : boolean array, shape (n,), optional
        False marks rows that must never be returned, e.g. null vectors.
    normalized : bool, default False
        Promise that corpus rows are unit length, so cosine skips dividing the
        scores by the row norms. Zero and non-finite rows are still excluded.
        Ignored for "dot" and "l2".
    block_size : int, optional
        Corpus rows per block, to override the default (mainly for tests).

    Returns
    -------
    indices : int64 array, shape (q, k_eff)
        Corpus row numbers, best first; ties go to the lower row number.
    scores : float32 array, shape (q, k_eff)
        The metric's value for each result.

    Raises
    ------
    ConfigError
        If ``k`` or ``block_size`` is not positive, or ``metric`` is unknown.
    InvalidInputError
        If the shapes do not fit (including ``valid``'s).
    DimensionMismatchError
        If the vector widths of ``queries`` and ``corpus`` differ.
    InputTypeError
        If the inputs are not real-valued arrays of one array library, ``k`` is
        not an integer, or ``valid`` is not boolean.

    Notes
    -----
    ``k_eff = min(k, number of searchable corpus rows)``; ``k`` is cut to the
    number of corpus rows before anything is allocated, so a huge ``k`` costs
    nothing. A row is not
    searchable when ``valid`` is False, when it holds NaN or infinity (or is so
    large that its squared norm overflows float32) and, for cosine, when its
    norm is zero. A query row holding NaN or infinity, or all zeros for
    cosine, gets indices -1 and scores NaN. Queries are always normalised for
    cosine; ``normalized`` only concerns the corpus.

    Extra memory is bounded by the block size, whatever ``q`` and ``n`` are.
    Ties are exact ties of the computed float32 scores, which can differ in
    the last bit between block sizes or BLAS builds. The L2 distances of the
    results are recomputed directly from the vectors, so they are accurate
    even for near-duplicates.

    Examples
    --------
    >>> import numpy as np
    >>> corpus = np.array([[1, 0], [0, 1], [3, 4]], dtype=np.float32)
    >>> indices, scores = topk(np.array([1, 0], dtype=np.float32), corpus, k=2)
    >>> indices
    array([[0, 2]])
    >>> scores
    array([[1. , 0.6]], dtype=float32)
    """
    xp = _xp.namespace(queries, corpus, valid)
    k = check_k(k)
    metric = check_metric(metric)
    if block_size is not None:
        block_size = _positive_integer(block_size, "block_size", "corpus rows per block")
    queries, corpus = _check_vectors(xp, queries, corpus)
    n_rows = corpus.shape[0]
    # Every buffer below is (queries, k) wide: never wider than the corpus has rows.
    k = min(k, max(n_rows, 1))
    if valid is not None and valid.dtype != xp.bool:
        raise InputTypeError(
            f"valid must be a boolean array (True for rows that may match), got {valid.dtype}"
        )
    if valid is not None and valid.shape != (n_rows,):
        raise InvalidInputError(
            f"valid must have one entry per corpus row, shape ({n_rows},), but has shape {valid.shape}"
        )
    if corpus.dtype != xp.float32:
        logger.debug("converting the %s corpus to float32 block by block", corpus.dtype)

    if block_size is None:
        block_size = _default_block_size(xp, queries.shape[0], corpus, k)
    query_block = max(1, _SCORE_BLOCK_ELEMENTS // block_size)
    with _xp.float_errors_ignored():
        query_keys, query_ok = _query_keys(xp, queries, metric)
        keys, indices, n_searchable = _search(
            xp, query_keys, query_ok, corpus, valid, k, metric, normalized, block_size, query_block
        )
        k_eff = min(k, n_searchable)
        keys, indices = keys[:, :k_eff], indices[:, :k_eff]
        if metric == "l2":
            return _exact_l2(xp, queries, corpus, indices, query_block)
        return indices, xp.where(indices >= 0, keys, xp.nan)


def l2_normalize(x: Array) -> Array:
    """Scale each row of ``x`` to unit Euclidean length.

    Parameters
    ----------
    x : array, shape (..., d)
        Vectors along the last axis. Converted to float32 if needed.

    Returns
    -------
    array, shape (..., d), float32
        Unit-length rows. Rows with zero or non-finite norm are returned
        unchanged (zero rows stay zero), without warnings.

    Examples
    --------
    >>> import numpy as np
    >>> l2_normalize(np.array([[3, 4], [0, 0]], dtype=np.float32))
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
    """
    xp = _xp.namespace(x)
    x = _as_float32(xp, x)
    with _xp.float_errors_ignored():
        norms = xp.sqrt(xp.vecdot(x, x))
        usable = xp.isfinite(norms) & (norms > 0)
        return x / xp.where(usable, norms, 1.0)[..., None]


def pairwise_scores(a: Array, b: Array, metric: Metric = "cosine") -> Array:
    """Score row ``i`` of ``a`` against row ``i`` of ``b`` (or against one vector).

    Parameters
    ----------
    a : array, shape (n, d)
        Left-hand vectors.
    b : array, shape (n, d) or (d,)
        Right-hand vectors, row-aligned with ``a``, or a single vector compared
        with every row of ``a``. Leading dimensions broadcast.
    metric : {"cosine", "dot", "l2"}, default "cosine"
        Same meaning as in :func:`topk`: cosine similarity, dot product or
        Euclidean distance.

    Returns
    -------
    array, shape (n,), float32
        One score per row. Cosine is NaN where either side has zero norm, and
        every metric is NaN where either side holds NaN.

    Raises
    ------
    ConfigError
        If ``metric`` is unknown.
    DimensionMismatchError
        If the vector widths differ.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[3, 4], [1, 0]], dtype=np.float32)
    >>> pairwise_scores(a, np.array([1, 0], dtype=np.float32))
    array([0.6, 1. ], dtype=float32)
    >>> pairwise_scores(a, np.array([1, 0], dtype=np.float32), "l2")
    array([4.472136, 0.      ], dtype=float32)
    """
    xp = _xp.namespace(a, b)
    metric = check_metric(metric)
    a, b = _as_float32(xp, a), _as_float32(xp, b)
    if a.shape[-1] != b.shape[-1]:
        raise DimensionMismatchError(
            f"vector widths differ: a has {a.shape[-1]} columns and b has {b.shape[-1]}, "
            "so they come from different models; compare vectors of one model"
        )
    with _xp.float_errors_ignored():
        if metric == "dot":
            return xp.vecdot(a, b)
        if metric == "l2":
            difference = a - b
            return xp.sqrt(xp.vecdot(difference, difference))
        norms = xp.sqrt(xp.vecdot(a, a)) * xp.sqrt(xp.vecdot(b, b))
        usable = xp.isfinite(norms) & (norms > 0)
        return xp.where(usable, xp.vecdot(a, b) / xp.where(usable, norms, 1.0), xp.nan)


def check_k(k: int) -> int:
    """``k`` as an int, or the error every search gives for a ``k`` that is not a positive integer."""
    return _positive_integer(k, "k", "results per query, e.g. k=10")


def check_metric(metric: str) -> Metric:
    """``metric`` if it is one the kernels know, or the error every search gives for another."""
    if metric not in _METRICS:
        raise ConfigError(f"unknown metric {metric!r}: pass metric= one of {', '.join(map(repr, _METRICS))}")
    return metric  # type: ignore[return-value]


def _positive_integer(value: int, name: str, meaning: str) -> int:
    """``value`` as an int when it is a positive integer (a bool is not), else an error naming it."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None:
        raise InputTypeError(f"{name} must be a positive integer ({meaning}), got {value!r}")
    if number <= 0:
        raise ConfigError(f"{name} must be a positive integer ({meaning}), got {number}")
    return number


def _check_vectors(xp: Namespace, queries: Array, corpus: Array) -> tuple[Array, Array]:
    if corpus.ndim != 2:
        raise InvalidInputError(
            f"corpus must be 2-D, one row per vector (n, d), but has shape {corpus.shape}"
        )
    if queries.ndim == 1:
        queries = xp.reshape(queries, (1, queries.shape[0]))
    elif queries.ndim != 2:
        raise InvalidInputError(
            f"queries must be one vector (d,) or one per row (q, d), but have shape {queries.shape}"
        )
    if queries.shape[1] != corpus.shape[1]:
        raise DimensionMismatchError(
            f"vector widths differ: queries have {queries.shape[1]} columns and the corpus has "
            f"{corpus.shape[1]}, so they come from different models; embed both with one model"
        )
    if not xp.isdtype(corpus.dtype, ("real floating", "integral")):
        raise InputTypeError(f"corpus must hold real numbers, but holds {corpus.dtype}")
    return _as_float32(xp, queries), corpus


def _as_float32(xp: Namespace, x: Array) -> Array:
    if x.dtype == xp.float32:
        return x
    if not xp.isdtype(x.dtype, ("real floating", "integral")):
        raise InputTypeError(f"vectors must hold real numbers, but an array holds {x.dtype}")
    return xp.astype(x, xp.float32)


def _query_keys(xp: Namespace, queries: Array, metric: Metric) -> tuple[Array, Array]:
    """Return the left factor of the key multiply and which queries can match.

    The keys are, per metric: cosine ``(q / |q|) . (x / |x|)``; dot ``q . x``;
    l2 ``2 q . x - |x|^2``, which orders rows like ``-|q - x|^2`` because
    ``|q|^2`` is the same for every row of one query.
    """
    squared_norms = xp.vecdot(queries, queries)
    usable = xp.isfinite(squared_norms)
    if metric == "cosine":
        usable = usable & (squared_norms > 0)
        queries = queries / xp.sqrt(xp.where(usable, squared_norms, 1.0))[:, None]
    elif metric == "l2":
        queries = 2 * queries
    # Zeroing unusable queries keeps NaN and inf out of the multiply.
    return xp.where(usable[:, None], queries, 0.0), usable


def _search(
    xp: Namespace,
    query_keys: Array,
    query_ok: Array,
    corpus: Array,
    valid: Array | None,
    k: int,
    metric: Metric,
    normalized: bool,
    corpus_block: int,
    query_block: int,
) -> tuple[Array, Array, int]:
    """Walk the corpus in blocks; return each query's best keys, their rows, and
    how many corpus rows are searchable.

    Cosine (unless ``normalized``) and L2 need every row's squared norm, which
    also tells which rows are searchable. Dot and normalised cosine need no
    norms, so rows are only checked once they beat a query's k-th best
    (``unchecked_rows``): that saves a pass over the corpus, as costly as the
    multiply itself for a single query. The searchable count then comes from
    the results, so it is only done this way when some query can match.
    """
    device = array_api_compat.device(corpus)
    needs_norms = metric == "l2" or (metric == "cosine" and not normalized)
    check_late = not needs_norms and bool(xp.any(query_ok))
    query_chunks = _chunks(query_keys.shape[0], query_block)
    # Each query chunk keeps its best k keys so far, best first; a query that can
    # never match starts "full" at +inf so no block ever beats its k-th best.
    best_keys = []
    best_indices = []
    for chunk in query_chunks:
        usable = query_ok[chunk, None]
        empty = xp.full((usable.shape[0], k), -xp.inf, dtype=xp.float32, device=device)
        best_keys.append(xp.where(usable, empty, xp.inf))
        best_indices.append(xp.full((usable.shape[0], k), -1, dtype=xp.int64, device=device))

    n_searchable = 0
    for block in _chunks(corpus.shape[0], corpus_block):
        rows = corpus[block, :]
        if rows.dtype != xp.float32:
            rows = xp.astype(rows, xp.float32)
        searchable = None if valid is None else valid[block]
        column_scale = column_shift = None
        if not check_late:
            # Correct the multiply's output per column rather than the corpus: a
            # normalised copy of the corpus would cost as much memory as the corpus.
            squared_norms = xp.vecdot(rows, rows)
            finite_norms = _searchable(xp, squared_norms, metric)
            searchable = finite_norms if searchable is None else searchable & finite_norms
            safe_squared_norms = xp.where(finite_norms, squared_norms, 1.0)
            if metric == "cosine" and not normalized:
                column_scale = 1.0 / xp.sqrt(safe_squared_norms)
            elif metric == "l2":
                column_shift = safe_squared_norms
        n_block_searchable = rows.shape[0] if searchable is None else int(xp.count_nonzero(searchable))
        n_searchable += n_block_searchable
        if n_block_searchable == 0:
            continue

        rows_t = xp.matrix_transpose(rows)
        for i, chunk in enumerate(query_chunks):
            keys = query_keys[chunk, :] @ rows_t
            if column_scale is not None:
                keys *= column_scale
            if column_shift is not None:
                keys -= column_shift
            if n_block_searchable < rows.shape[0]:
                keys = xp.where(searchable, keys, -xp.inf)
            best_keys[i], best_indices[i] = _merge_block(
                xp,
                keys,
                block.start,
                best_keys[i],
                best_indices[i],
                rows if check_late else None,
                metric,
            )

    keys = xp.concat(best_keys, axis=0)
    indices = xp.concat(best_indices, axis=0)
    if check_late:
        # Every query that can match found min(k, searchable rows) results.
        n_searchable = int(xp.max(xp.count_nonzero(indices >= 0, axis=1)))
    return keys, indices, n_searchable


def _default_block_size(xp: Namespace, n_queries: int, corpus: Array, k: int) -> int:
    rows = max(_SCORE_BLOCK_ELEMENTS // max(n_queries, 1), 4 * k)
    if corpus.dtype != xp.float32:
        # Each block is converted to float32: keep that copy within the budget too.
        rows = min(rows, max(_SCORE_BLOCK_ELEMENTS // max(corpus.shape[1], 1), 4 * k))
    if array_api_compat.is_cupy_namespace(xp):
        # Each block costs a few device-to-host synchronisations (block maxima, candidate
        # counts), which dwarf a GPU's multiply of a CPU-sized block: no cap.
        # Not measured yet: no GPU was available when this was written.
        return rows
    return min(max(rows, _MIN_CORPUS_BLOCK), _MAX_CORPUS_BLOCK)


def _chunks(length: int, size: int) -> list[slice]:
    """Split ``range(length)`` into slices of ``size``; at least one, possibly empty.

    Stops stay within bounds: the standard leaves out-of-bounds slices unspecified.
    """
    return [slice(start, min(start + size, length)) for start in range(0, max(length, 1), size)]


def _searchable(xp: Namespace, squared_norms: Array, metric: Metric) -> Array:
    """Rows that may be returned, judged by their squared norms.

    A NaN or infinity anywhere in a row makes its squared norm NaN or infinite;
    cosine also cannot rank zero rows.
    """
    finite = xp.isfinite(squared_norms)
    return finite & (squared_norms > 0) if metric == "cosine" else finite


def _merge_block(
    xp: Namespace,
    keys: Array,
    first_row: int,
    best_keys: Array,
    best_indices: Array,
    unchecked_rows: Array | None,
    metric: Metric,
) -> tuple[Array, Array]:
    """Fold one block of keys into each query's running best ``k``.

    ``keys`` is (queries, block), -inf where a row cannot match; ``first_row``
    is the corpus row number of its first column. ``unchecked_rows`` is the
    block's vectors when its rows were not yet checked for NaN, infinity or
    (cosine) zeros, else None. The best lists stay sorted by key descending,
    then row number ascending. Every block row number is above every number
    already kept, so a block entry must strictly beat the k-th best to enter:
    a tie would lose to the lower number.
    """
    n_queries = keys.shape[0]
    k = best_keys.shape[1]
    block_max = xp.max(keys, axis=1)
    if bool(xp.any(xp.isnan(block_max))):
        # NaN rows (or overflow) give NaN keys, which would hide the block maximum.
        keys = xp.where(xp.isnan(keys), -xp.inf, keys)
        block_max = xp.max(keys, axis=1)
    active = block_max > best_keys[:, k - 1]
    n_active = int(xp.count_nonzero(active))
    if n_active == 0:
        return best_keys, best_indices
    # Gathering the active queries only pays when they are few; the others would merely
    # contribute no candidates.
    subset = 2 * n_active < n_queries
    if subset:
        (active_rows,) = xp.nonzero(active)
        keys = xp.take(keys, active_rows, axis=0)
        kept_keys = xp.take(best_keys, active_rows, axis=0)
        kept_indices = xp.take(best_indices, active_rows, axis=0)
    else:
        kept_keys, kept_indices = best_keys, best_indices

    candidate_keys, candidate_columns = _candidates(xp, keys, kept_keys[:, k - 1], k, unchecked_rows, metric)
    all_keys = xp.concat([kept_keys, candidate_keys], axis=1)
    all_indices = xp.concat(
        [kept_indices, xp.where(candidate_columns >= 0, candidate_columns + first_row, -1)],
        axis=1,
    )
    # Stable, so equal keys keep their order: kept entries (lower row numbers, already
    # ordered) before candidates (in row-number order). Negating rather than asking for
    # descending order spares the flips that array_api_compat adds for numpy.
    order = xp.argsort(-all_keys, axis=1, stable=True)[:, :k]
    merged_keys = xp.take_along_axis(all_keys, order, axis=1)
    merged_indices = xp.take_along_axis(all_indices, order, axis=1)
    if not subset:
        return merged_keys, merged_indices

    # Spread the merged rows back over all queries without integer-array assignment,
    # which the standard lacks: active query i takes merged row (number of active before i).
    merged_row = xp.maximum(xp.cumulative_sum(xp.astype(active, xp.int64)) - 1, 0)
    active = active[:, None]
    return (
        xp.where(active, xp.take(merged_keys, merged_row, axis=0), best_keys),
        xp.where(active, xp.take(merged_indices, merged_row, axis=0), best_indices),
    )


def _candidates(
    xp: Namespace,
    keys: Array,
    kth_best: Array,
    k: int,
    unchecked_rows: Array | None,
    metric: Metric,
) -> tuple[Array, Array]:
    """Return each row's entries that beat ``kth_best``, left-aligned and padded.

    Returns keys and block columns; padding has key -inf and column -1. Rows
    with more than a handful of candidates are first cut down to their best
    ``k`` and any ties with the k-th, so the later sort stays small and the
    lowest column still wins ties.
    """
    n_rows, n_columns = keys.shape
    most = max(_SPARSE_CANDIDATES, k)
    beats = keys > kth_best[:, None]
    cut = int(xp.count_nonzero(beats)) > n_rows * most
    if not cut:
        positions, starts, counts = _runs_by_row(xp, beats)
        cut = int(xp.max(counts)) > most
    if cut:
        beats = beats & (keys >= _xp.kth_largest(xp, keys, k)[:, None])
        positions, starts, counts = _runs_by_row(xp, beats)

    width = int(xp.max(counts))
    slot = xp.arange(width, device=array_api_compat.device(keys))
    present = slot[None, :] < counts[:, None]
    picked = xp.take(positions, xp.reshape(xp.where(present, starts[:, None] + slot, 0), (-1,)))
    columns = picked % n_columns
    if unchecked_rows is not None:
        searchable = xp.reshape(_searchable_columns(xp, unchecked_rows, columns, metric), (n_rows, width))
        if cut and not bool(xp.all(searchable | ~present)):
            # Unsearchable rows took places in the cut that searchable rows behind them
            # should have had: check the whole block and cut again (rare).
            searchable = _searchable(xp, xp.vecdot(unchecked_rows, unchecked_rows), metric)
            keys = xp.where(searchable, keys, -xp.inf)
            return _candidates(xp, keys, kth_best, k, None, metric)
        present = present & searchable
    values = xp.reshape(xp.take(xp.reshape(keys, (-1,)), picked), (n_rows, width))
    return (
        xp.where(present, values, -xp.inf),
        xp.where(present, xp.reshape(columns, (n_rows, width)), -1),
    )


def _runs_by_row(xp: Namespace, mask: Array) -> tuple[Array, Array, Array]:
    """Return the flat positions of True in a 2-D mask, and where each row's run
    of them starts and how long it is (positions are in row-major order)."""
    # One flat nonzero is much faster than a 2-D one in numpy.
    positions = xp.nonzero(xp.reshape(mask, (-1,)))[0]
    row_numbers = xp.arange(mask.shape[0] + 1, device=array_api_compat.device(mask))
    bounds = xp.searchsorted(positions // mask.shape[1], row_numbers)
    return positions, bounds[:-1], bounds[1:] - bounds[:-1]


def _searchable_columns(xp: Namespace, rows: Array, columns: Array, metric: Metric) -> Array:
    """Check the block rows numbered ``columns``; gather them only when they are few."""
    if columns.shape[0] < rows.shape[0]:
        picked = xp.take(rows, columns, axis=0)
        return _searchable(xp, xp.vecdot(picked, picked), metric)
    return xp.take(_searchable(xp, xp.vecdot(rows, rows), metric), columns)


def _exact_l2(
    xp: Namespace, queries: Array, corpus: Array, indices: Array, query_block: int
) -> tuple[Array, Array]:
    """Recompute the results' L2 distances from the vectors and re-rank by them.

    The key ``2 q . x - |x|^2`` loses precision to cancellation when ``q`` and
    ``x`` are close; the direct ``|q - x|`` does not. Work goes in chunks of
    queries so the gathered vectors stay within the block budget.
    """
    n_queries, k_eff = indices.shape
    found = indices >= 0
    if k_eff == 0:
        return indices, xp.zeros(indices.shape, dtype=xp.float32)
    rows_per_chunk = max(1, _SCORE_BLOCK_ELEMENTS // (k_eff * queries.shape[1]))
    distances = []
    for chunk in _chunks(n_queries, rows_per_chunk):
        rows = xp.where(found[chunk, :], indices[chunk, :], 0)
        gathered = xp.take(corpus, xp.reshape(rows, (-1,)), axis=0)
        gathered = xp.reshape(_as_float32(xp, gathered), (rows.shape[0], k_eff, corpus.shape[1]))
        difference = gathered - queries[chunk, None, :]
        distances.append(xp.sqrt(xp.vecdot(difference, difference)))
    distance = xp.where(found, xp.concat(distances, axis=0), xp.inf)

    # Order by distance, ties by row number: sort by row number first, then stably by
    # distance. Missing results (-1) have infinite distance and stay last.
    last = xp.iinfo(xp.int64).max
    by_index = xp.argsort(xp.where(found, indices, last), axis=1, stable=True)
    indices = xp.take_along_axis(indices, by_index, axis=1)
    distance = xp.take_along_axis(distance, by_index, axis=1)
    by_distance = xp.argsort(distance, axis=1, stable=True)
    indices = xp.take_along_axis(indices, by_distance, axis=1)
    distance = xp.take_along_axis(distance, by_distance, axis=1)
    return indices, xp.where(indices >= 0, distance, xp.nan)
