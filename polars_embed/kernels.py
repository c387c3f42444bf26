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
the multiply. With numpy, the selection of one block runs on a worker thread
while the multiply of the next one runs on the BLAS threads, so the cores are
not left waiting for it.

A corpus may come in chunks (the chunks of a Polars column, Arrow record
batches): they are walked in turn, rows numbered across them, never joined
into one array. Results of separate searches over parts of a corpus combine
with :func:`topk_merge`, by the same rule as within one search: best key
first, ties to the lower row number.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, get_args

import array_api_compat

from polars_embed import _xp
from polars_embed._pools import shared_pool
from polars_embed._xp import Array, Namespace
from polars_embed.errors import ConfigError, DimensionMismatchError, InputTypeError, InvalidInputError

__all__ = [
    "Corpus",
    "Metric",
    "check_k",
    "check_metric",
    "l2_normalize",
    "pairwise_scores",
    "squared_norms",
    "take_rows",
    "topk",
    "topk_merge",
]

logger = logging.getLogger(__name__)

Metric = Literal["cosine", "dot", "l2"]
_METRICS: tuple[str, ...] = get_args(Metric)
Corpus = Array | Sequence[Array]
"""An ``(n, d)`` array, or a sequence of ``(n_i, d)`` chunks whose rows are numbered in turn."""

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
    corpus: Corpus,
    k: int = 10,
    *,
    metric: Metric = "cosine",
    valid: Array | None = None,
    normalized: bool = False,
    squared_norms: Array | None = None,
    block_size: int | None = None,
) -> tuple[Array, Array]:
    """Find the exact ``k`` best corpus rows for each query.

    Parameters
    ----------
    queries : array, shape (q, d) or (d,)
        Query vectors; a 1-D array is one query. Converted to float32 if needed.
    corpus : array, shape (n, d), or a sequence of arrays of shape (n_i, d)
        Vectors to search, from the same array library as ``queries``. Should be
        float32: other dtypes are converted block by block, never copied whole.
        A sequence is searched as the rows of its chunks in turn, without
        joining them (small chunks are joined a block at a time).
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
    squared_norms : array, shape (n,), optional
        The corpus rows' squared Euclidean norms, as :func:`squared_norms`
        gives them, kept from an earlier search of the same vectors: cosine
        and L2 then skip their pass over the corpus to compute them. Results
        are the same as without; norms of other vectors give wrong results.
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
    Where torch is already imported (the sentence-transformers provider
    imports it), numpy batches of two or more queries are multiplied by
    torch's CPU matmul, without copies: on x86 its wheels carry MKL, 1.4x as
    fast as the OpenBLAS of numpy's wheels for 100 queries here. Set
    ``POLARS_EMBED_TORCH_MATMUL=0`` to keep numpy's; a forked child, and
    torch allowed a lower float32 precision, keep it anyway.
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

    A corpus in chunks numbers its rows across them:

    >>> topk(np.array([0, 1], dtype=np.float32), [corpus[:2], corpus[2:]], k=2)[0]
    array([[1, 2]])
    """
    chunks = _corpus_chunks(corpus)
    xp = _xp.namespace(queries, *chunks, valid, squared_norms)
    k = check_k(k)
    metric = check_metric(metric)
    if block_size is not None:
        block_size = _positive_integer(block_size, "block_size", "corpus rows per block")
    for chunk in chunks:
        queries, _ = _check_vectors(xp, queries, chunk)
    n_rows = sum(chunk.shape[0] for chunk in chunks)
    # Every buffer below is (queries, k) wide: never wider than the corpus has rows.
    k = min(k, max(n_rows, 1))
    _check_valid(xp, valid, n_rows)
    if squared_norms is not None and squared_norms.shape != (n_rows,):
        raise InvalidInputError(
            f"squared_norms must have one entry per corpus row, shape ({n_rows},), "
            f"but has shape {squared_norms.shape}"
        )
    if any(chunk.dtype != xp.float32 for chunk in chunks):
        logger.debug("converting the corpus to float32 block by block")

    if block_size is None:
        block_size = _default_block_size(xp, queries.shape[0], chunks, k)
    query_block = max(1, _SCORE_BLOCK_ELEMENTS // block_size)
    if squared_norms is not None:
        squared_norms = _as_float32(xp, squared_norms)
    with _xp.float_errors_ignored():
        query_keys, query_ok = _query_keys(xp, queries, metric)
        keys, indices, n_searchable = _search(
            xp,
            query_keys,
            query_ok,
            chunks,
            _Rows(valid, squared_norms),
            k,
            metric,
            normalized,
            block_size,
            query_block,
        )
        k_eff = min(k, n_searchable)
        keys, indices = keys[:, :k_eff], indices[:, :k_eff]
        if metric == "l2":
            return _exact_l2(xp, queries, chunks, indices, query_block)
        return indices, xp.where(indices >= 0, keys, xp.nan)


def topk_merge(
    indices: Sequence[Array], scores: Sequence[Array], k: int, *, metric: Metric = "cosine"
) -> tuple[Array, Array]:
    """Combine the top-k results of searches over separate parts of one corpus.

    Each part is a :func:`topk` result whose row numbers have been made global
    (the part's first row added). The merged result is what one :func:`topk`
    over the whole corpus gives: best score first, ties to the lower row
    number, missing results (row -1, score NaN) last.

    Parameters
    ----------
    indices : sequence of int arrays, shape (q, k_i)
        Row numbers of each part's results, -1 for none.
    scores : sequence of float arrays, shape (q, k_i)
        Their scores, as :func:`topk` returns them for ``metric``.
    k : int
        Results per query to keep.
    metric : {"cosine", "dot", "l2"}, default "cosine"
        Which way the scores rank: cosine and dot descending, L2 ascending.

    Returns
    -------
    indices : int64 array, shape (q, min(k, sum of k_i))
    scores : float32 array, of the same shape

    Examples
    --------
    >>> import numpy as np
    >>> corpus = np.array([[1, 0], [0, 1], [1, 0], [3, 4]], dtype=np.float32)
    >>> query = np.array([1, 0], dtype=np.float32)
    >>> first, second = topk(query, corpus[:2], 2), topk(query, corpus[2:], 2)
    >>> topk_merge([first[0], second[0] + 2], [first[1], second[1]], 3)
    (array([[0, 2, 3]]), array([[1. , 1. , 0.6]], dtype=float32))
    """
    k = check_k(k)
    metric = check_metric(metric)
    if len(indices) == 0 or len(indices) != len(scores):
        raise InvalidInputError(
            "topk_merge needs one scores array per indices array, and at least one of each: "
            "pass the two halves of each partial result in the same order"
        )
    xp = _xp.namespace(*indices, *scores)
    all_indices = xp.concat([xp.astype(part, xp.int64) for part in indices], axis=1)
    all_scores = xp.concat([_as_float32(xp, part) for part in scores], axis=1)
    found = all_indices >= 0
    keys = xp.where(found, -all_scores if metric == "l2" else all_scores, -xp.inf)
    merged_indices, merged_keys = _rank(xp, all_indices, keys, min(k, all_indices.shape[1]))
    merged_scores = -merged_keys if metric == "l2" else merged_keys
    return merged_indices, xp.where(merged_indices >= 0, merged_scores, xp.nan)


def squared_norms(corpus: Corpus) -> Array:
    """Each corpus row's squared Euclidean norm, float32, as :func:`topk` computes them.

    Keep them to pass as ``topk(..., squared_norms=...)`` in later searches of
    the same vectors: cosine and L2 then read the corpus once instead of twice.

    Examples
    --------
    >>> import numpy as np
    >>> squared_norms(np.array([[3, 4], [1, 0]], dtype=np.float32))
    array([25.,  1.], dtype=float32)
    """
    chunks = _corpus_chunks(corpus)
    xp = _xp.namespace(*chunks)
    with _xp.float_errors_ignored():
        parts = [_squared_norms(xp, rows) for _, rows in _blocks(xp, chunks, _MAX_CORPUS_BLOCK)]
    if not parts:
        return xp.zeros((0,), dtype=xp.float32, device=array_api_compat.device(chunks[0]))
    return xp.concat(parts) if len(parts) > 1 else parts[0]


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
    chunks: list[Array],
    given: _Rows,
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

    The main thread converts each block and runs its multiplies; the norms
    and the selection of a block are tasks of a :class:`_Pipeline`, which runs
    them in order, on a worker thread for numpy, while the next multiply runs.
    """
    device = array_api_compat.device(query_keys)
    needs_norms = metric == "l2" or (metric == "cosine" and not normalized)
    check_late = not needs_norms and given.squared_norms is None and bool(xp.any(query_ok))
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

    def prepare(block: _Block) -> None:
        """Find the block's searchable rows and how its keys are corrected, from the row norms."""
        nonlocal n_searchable
        if not check_late:
            squared = given.rows(block, "squared_norms")
            if squared is None:
                squared = _squared_norms(xp, block.rows)
            # Correct the multiply's output per column rather than the corpus: a
            # normalised copy of the corpus would cost as much memory as the corpus.
            finite_norms = _searchable(xp, squared, metric)
            block.searchable = finite_norms if block.searchable is None else block.searchable & finite_norms
            safe_squared = xp.where(finite_norms, squared, 1.0)
            if metric == "cosine" and not normalized:
                block.column_scale = 1.0 / xp.sqrt(safe_squared)
            elif metric == "l2":
                block.column_shift = safe_squared
        if block.searchable is not None:
            block.n_searchable = int(xp.count_nonzero(block.searchable))
        n_searchable += block.n_searchable

    def select(block: _Block, i: int, keys: Array) -> None:
        if block.n_searchable == 0:
            return
        if block.column_scale is not None:
            keys *= block.column_scale
        if block.column_shift is not None:
            keys -= block.column_shift
        if block.n_searchable < block.rows.shape[0]:
            keys = xp.where(block.searchable, keys, -xp.inf)
        best_keys[i], best_indices[i] = _merge_block(
            xp,
            keys,
            block.first_row,
            best_keys[i],
            best_indices[i],
            block.rows if check_late else None,
            metric,
        )

    several_blocks = sum(chunk.shape[0] for chunk in chunks) > corpus_block
    with _Pipeline(threaded=several_blocks and array_api_compat.is_numpy_namespace(xp)) as pipeline:
        for first_row, rows in _blocks(xp, chunks, corpus_block):
            block = _Block(first_row, rows, given.rows_of(first_row, rows.shape[0], "valid"))
            if block.searchable is not None and not bool(xp.any(block.searchable)):
                continue
            pipeline.submit(prepare, block)
            rows_t = xp.matrix_transpose(rows)
            for i, chunk in enumerate(query_chunks):
                pipeline.submit(select, block, i, _xp.matmul(xp, query_keys[chunk, :], rows_t))

    keys = xp.concat(best_keys, axis=0)
    indices = xp.concat(best_indices, axis=0)
    if check_late:
        # Every query that can match found min(k, searchable rows) results.
        n_searchable = int(xp.max(xp.count_nonzero(indices >= 0, axis=1)))
    return keys, indices, n_searchable


@dataclass(frozen=True)
class _Rows:
    """What the caller told about the corpus rows: which may match, their squared norms."""

    valid: Array | None
    squared_norms: Array | None

    def rows_of(self, first_row: int, n_rows: int, name: str) -> Array | None:
        values = getattr(self, name)
        return None if values is None else values[first_row : first_row + n_rows]

    def rows(self, block: _Block, name: str) -> Array | None:
        return self.rows_of(block.first_row, block.rows.shape[0], name)


@dataclass
class _Block:
    """One block of corpus rows, and what :func:`_search` learns about them before selecting."""

    first_row: int
    rows: Array
    searchable: Array | None  # None: every row
    n_searchable: int = -1
    column_scale: Array | None = None
    column_shift: Array | None = None

    def __post_init__(self) -> None:
        self.n_searchable = self.rows.shape[0]


class _Pipeline:
    """Runs tasks in the order they are submitted, on the worker thread or inline.

    On the worker, a block's norms and selection overlap with the main thread's
    next multiply (numpy and BLAS release the GIL). At most two tasks of one
    pipeline wait at once, so at most three blocks of keys are alive. The
    worker is one thread for the process, started on first use (a forked child
    starts its own): searches run from several threads at once share it, each
    still in its own order. Only for numpy: CuPy already runs asynchronously,
    and its current device and stream are per-thread.
    """

    def __init__(self, *, threaded: bool) -> None:
        self._executor = shared_pool("polars-embed-topk", 1) if threaded else None
        self._pending: list[Future[None]] = []

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Wait for every task even after an error: none may still use the blocks.
        pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]
        if exc_info[0] is None:
            for error in errors:
                if error is not None:
                    raise error

    def submit(self, task: Callable[..., None], *args: Any) -> None:
        if self._executor is None:
            task(*args)
            return
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        self._pending.append(self._executor.submit(_errors_ignored, task, *args))


def _errors_ignored(task: Callable[..., None], *args: Any) -> None:
    # numpy's error state is per thread: the worker does not inherit topk's.
    with _xp.float_errors_ignored():
        task(*args)


def _corpus_chunks(corpus: Corpus) -> list[Array]:
    if isinstance(corpus, list | tuple):
        if not corpus:
            raise InvalidInputError("a corpus in chunks needs at least one chunk: pass an empty (0, d) one")
        return list(corpus)
    return [corpus]


def _blocks(xp: Namespace, chunks: list[Array], size: int) -> Iterator[tuple[int, Array]]:
    """Yield ``(first row, float32 rows)`` blocks of about ``size`` rows over the chunks in turn.

    A chunk of a sixteenth of a block or more is sliced in place; smaller ones
    are joined with their neighbours into one block, so that many tiny chunks
    do not cost one multiply each. Only the joined rows are ever copied: a
    copy costs a pass over them, as much as one query's multiply.
    """
    first_row = 0
    pending: list[Array] = []
    pending_rows = 0
    for chunk in chunks:
        n_rows = chunk.shape[0]
        if n_rows == 0:
            continue
        if n_rows < max(size // 16, 1):
            pending.append(_as_float32(xp, chunk))
            pending_rows += n_rows
            if pending_rows >= size:
                yield first_row, xp.concat(pending, axis=0)
                first_row, pending, pending_rows = first_row + pending_rows, [], 0
            continue
        if pending:
            yield first_row, xp.concat(pending, axis=0)
            first_row, pending, pending_rows = first_row + pending_rows, [], 0
        for block in _chunks(n_rows, size):
            yield first_row + block.start, _as_float32(xp, chunk[block, :])
        first_row += n_rows
    if pending:
        yield first_row, xp.concat(pending, axis=0)


def _squared_norms(xp: Namespace, rows: Array) -> Array:
    return xp.vecdot(rows, rows)


def _default_block_size(xp: Namespace, n_queries: int, chunks: list[Array], k: int) -> int:
    rows = max(_SCORE_BLOCK_ELEMENTS // max(n_queries, 1), 4 * k)
    if any(chunk.dtype != xp.float32 for chunk in chunks):
        # Each block is converted to float32: keep that copy within the budget too.
        rows = min(rows, max(_SCORE_BLOCK_ELEMENTS // max(chunks[0].shape[1], 1), 4 * k))
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

    One comparison with each query's k-th best and one flat ``nonzero`` find
    the candidates (NaN keys never compare greater); everything after that
    works on the candidates alone, which after the first blocks are few.
    """
    n_queries = keys.shape[0]
    k = best_keys.shape[1]
    candidates = _candidates(xp, keys, best_keys[:, k - 1], k, unchecked_rows, metric)
    if candidates is None:
        return best_keys, best_indices
    positions, starts, counts = candidates
    active = counts > 0
    n_active = int(xp.count_nonzero(active))
    # Gathering the active queries only pays when they are few; the others would merely
    # contribute no candidates.
    subset = 2 * n_active < n_queries
    if subset:
        (active_rows,) = xp.nonzero(active)
        starts, counts = xp.take(starts, active_rows), xp.take(counts, active_rows)
        kept_keys = xp.take(best_keys, active_rows, axis=0)
        kept_indices = xp.take(best_indices, active_rows, axis=0)
    else:
        kept_keys, kept_indices = best_keys, best_indices

    values, columns = _gather_candidates(xp, keys, positions, starts, counts)
    all_keys = xp.concat([kept_keys, values], axis=1)
    all_indices = xp.concat([kept_indices, xp.where(columns >= 0, columns + first_row, -1)], axis=1)
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
) -> tuple[Array, Array, Array] | None:
    """Find each row's entries that beat ``kth_best``, as :func:`_runs_by_row` gives them.

    Returns None when there are none. Rows with more than a handful of
    candidates are first cut down to their best ``k`` and any ties with the
    k-th, so the later sort stays small and the lowest column still wins
    ties. Candidates in ``unchecked_rows`` that cannot be searched are
    dropped: their key becomes -inf.
    """
    beats = keys > kth_best[:, None]
    positions, starts, counts = _runs_by_row(xp, beats)
    if positions.shape[0] == 0:
        return None
    crowded = counts > max(_SPARSE_CANDIDATES, k)
    cut = bool(xp.any(crowded))
    if cut:
        beats = beats & (keys >= _cut_threshold(xp, keys, crowded, k)[:, None])
        positions, starts, counts = _runs_by_row(xp, beats)
    if unchecked_rows is None:
        return positions, starts, counts
    columns = positions % keys.shape[1]
    searchable = _searchable_columns(xp, unchecked_rows, columns, metric)
    if bool(xp.all(searchable)):
        return positions, starts, counts
    if cut:
        # Unsearchable rows took places in the cut that searchable rows behind them
        # should have had: check the whole block and cut again (rare).
        searchable = _searchable(xp, _squared_norms(xp, unchecked_rows), metric)
        return _candidates(xp, xp.where(searchable, keys, -xp.inf), kth_best, k, None, metric)
    # Few candidates: drop the unsearchable ones by their flat positions.
    (kept,) = xp.nonzero(searchable)
    if kept.shape[0] == 0:
        return None
    positions = xp.take(positions, kept)
    row_numbers = xp.arange(keys.shape[0] + 1, device=array_api_compat.device(keys))
    bounds = xp.searchsorted(positions // keys.shape[1], row_numbers)
    return positions, bounds[:-1], bounds[1:] - bounds[:-1]


def _gather_candidates(
    xp: Namespace, keys: Array, positions: Array, starts: Array, counts: Array
) -> tuple[Array, Array]:
    """The candidates :func:`_candidates` found, one row per entry of ``starts``: (keys, columns).

    Rows are padded to the longest with key -inf and column -1; columns stay
    in order within each row.
    """
    width = int(xp.max(counts))
    slot = xp.arange(width, device=array_api_compat.device(keys))
    present = slot[None, :] < counts[:, None]
    picked = xp.take(positions, xp.reshape(xp.where(present, starts[:, None] + slot, 0), (-1,)))
    n_rows = counts.shape[0]
    columns = xp.reshape(picked % keys.shape[1], (n_rows, width))
    values = xp.reshape(xp.take(xp.reshape(keys, (-1,)), picked), (n_rows, width))
    return xp.where(present, values, -xp.inf), xp.where(present, columns, -1)


def _cut_threshold(xp: Namespace, keys: Array, crowded: Array, k: int) -> Array:
    """Each crowded row's k-th largest key (NaN counted as -inf); -inf for the other rows."""
    (crowded_rows,) = xp.nonzero(crowded)
    crowded_keys = xp.take(keys, crowded_rows, axis=0)
    crowded_keys = xp.where(xp.isnan(crowded_keys), -xp.inf, crowded_keys)
    cut = _xp.kth_largest(xp, crowded_keys, k)
    slot = xp.maximum(xp.cumulative_sum(xp.astype(crowded, xp.int64)) - 1, 0)
    return xp.where(crowded, xp.take(cut, slot), -xp.inf)


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
        return _searchable(xp, _squared_norms(xp, picked), metric)
    return xp.take(_searchable(xp, _squared_norms(xp, rows), metric), columns)


def _check_valid(xp: Namespace, valid: Array | None, n_rows: int) -> None:
    """Refuse a ``valid`` mask that is not boolean or not one entry per corpus row."""
    if valid is None:
        return
    if valid.dtype != xp.bool:
        raise InputTypeError(
            f"valid must be a boolean array (True for rows that may match), got {valid.dtype}"
        )
    if valid.shape != (n_rows,):
        raise InvalidInputError(
            f"valid must have one entry per corpus row, shape ({n_rows},), but has shape {valid.shape}"
        )


def take_rows(corpus: Corpus, rows: Array) -> Array:
    """The corpus rows numbered ``rows`` (row numbers across the chunks, in any order), as float32."""
    chunks = _corpus_chunks(corpus)
    return _take_rows(_xp.namespace(*chunks), chunks, rows)


def _take_rows(xp: Namespace, chunks: list[Array], rows: Array) -> Array:
    """Gather corpus rows (valid global row numbers, any order) from chunks, as float32.

    Rows are grouped by chunk with one stable sort, gathered one chunk at a
    time, and put back in their order by the inverse permutation: the
    standard has no scatter.
    """
    if len(chunks) == 1:
        return _as_float32(xp, xp.take(chunks[0], rows, axis=0))
    device = array_api_compat.device(rows)
    lengths = [chunk.shape[0] for chunk in chunks]
    starts = [sum(lengths[:i]) for i in range(len(chunks) + 1)]
    chunk_of = xp.searchsorted(xp.asarray(starts[1:], dtype=xp.int64, device=device), rows, side="right")
    order = xp.argsort(chunk_of, stable=True)
    sorted_rows = xp.take(rows, order)
    bounds = xp.searchsorted(xp.take(chunk_of, order), xp.arange(len(chunks) + 1, device=device))
    parts = []
    for i, chunk in enumerate(chunks):
        low, high = int(bounds[i]), int(bounds[i + 1])
        if high > low:
            parts.append(_as_float32(xp, xp.take(chunk, sorted_rows[low:high] - starts[i], axis=0)))
    if not parts:
        return xp.zeros((0, chunks[0].shape[1]), dtype=xp.float32, device=device)
    return xp.take(xp.concat(parts, axis=0), xp.argsort(order), axis=0)


def _rank(xp: Namespace, indices: Array, keys: Array, k: int) -> tuple[Array, Array]:
    """Each row's best ``k`` entries by key descending, ties to the lower index, -1 last.

    The one ranking rule of every merge: sort by index first, then stably by key.
    """
    last = xp.iinfo(xp.int64).max
    by_index = xp.argsort(xp.where(indices >= 0, indices, last), axis=1, stable=True)
    indices = xp.take_along_axis(indices, by_index, axis=1)
    keys = xp.take_along_axis(keys, by_index, axis=1)
    by_key = xp.argsort(-keys, axis=1, stable=True)[:, :k]
    return xp.take_along_axis(indices, by_key, axis=1), xp.take_along_axis(keys, by_key, axis=1)


def _exact_l2(
    xp: Namespace, queries: Array, chunks: list[Array], indices: Array, query_block: int
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
    width = queries.shape[1]
    rows_per_chunk = max(1, _SCORE_BLOCK_ELEMENTS // (k_eff * width))
    distances = []
    for chunk in _chunks(n_queries, rows_per_chunk):
        rows = xp.where(found[chunk, :], indices[chunk, :], 0)
        gathered = _take_rows(xp, chunks, xp.reshape(rows, (-1,)))
        gathered = xp.reshape(gathered, (rows.shape[0], k_eff, width))
        difference = gathered - queries[chunk, None, :]
        distances.append(xp.sqrt(xp.vecdot(difference, difference)))
    distance = xp.where(found, xp.concat(distances, axis=0), xp.inf)
    # Missing results (-1) have infinite distance and stay last.
    indices, negated = _rank(xp, indices, -distance, k_eff)
    return indices, xp.where(indices >= 0, -negated, xp.nan)
