"""Quantised search: a coarse pass over a compact twin of the vectors, then exact rescoring.

A twin (:func:`quantize`) holds one of two codes per corpus row:

- ``"int8"``: the unit vector, each dimension scaled by its largest absolute
  value in the corpus to the range -127..127; a quarter of the float32 bytes.
  The coarse score is the dot product of the scaled query with the codes.
- ``"binary"``: one sign bit per dimension of the vector minus the corpus mean,
  64 to a word; a thirty-second of the float32 bytes. The coarse score is the
  Hamming distance to the query's bits, counted with popcount.

The coarse pass runs in numpy, on one thread per core. Where numkong is
installed (``polars-embed[quantized]``, optional), its SIMD kernels take over
the parts numpy does slowly: the Hamming distances and the int8 dot products
(numpy has no int8 matrix product), over a packed copy of the codes made on
the first search of several queries and kept with the twin (one int8 query
takes numkong's row-by-row product over the codes themselves, which was the
faster). Two exceptions, from measurements
(benchmarks/README.md): where numkong's Hamming kernel is its AVX-512 one, it
costs as much for one query as numpy's count for several, so numpy counts for
up to 8 queries; and on CPUs without int8 dot-product instructions (AVX-512
VNNI, AVX-VNNI) numkong only takes the int8 products of up to 16 queries: for
more, no int8 kernel measured faster than float32 search, so the search is
exact, and int8 saves memory, not time.

:func:`quantized_topk` ranks every row by the coarse score, keeps
``oversample * k`` candidates per query, and rescores those exactly, by cosine
similarity on their float32 vectors: the scores returned are exact, only the
candidate set is approximate. :func:`recall_at_k` measures what that costs
against exact :func:`~polars_embed.kernels.topk` on a sample of queries.

Only cosine similarity is offered: both codes describe directions.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Literal, get_args

import array_api_compat

from polars_embed import _xp
from polars_embed._pools import shared_pool
from polars_embed._xp import Array, Namespace
from polars_embed.errors import ConfigError, DimensionMismatchError
from polars_embed.kernels import (
    _SCORE_BLOCK_ELEMENTS,
    Corpus,
    _as_float32,
    _blocks,
    _candidates,
    _check_valid,
    _chunks,
    _corpus_chunks,
    _gather_candidates,
    _rank,
    _searchable,
    _squared_norms,
    _take_rows,
    check_k,
    topk,
    topk_merge,
)

__all__ = [
    "Quantization",
    "QuantizedSearch",
    "QuantizedVectors",
    "quantize",
    "quantized_candidates",
    "quantized_topk",
    "recall_at_k",
    "sampled_rows",
    "share_found",
]

Quantization = Literal["int8", "binary"]
_KINDS: tuple[str, ...] = get_args(Quantization)
# Candidates rescored per result: what reached recall@10 >= 0.99 on 20,000 MiniLM
# vectors of real-word sentences (benchmarks/README.md): int8 found every exact
# result even at 2, binary reached 0.994 at 200 (0.94 at 50). Random vectors need more.
DEFAULT_OVERSAMPLE: dict[str, int] = {"int8": 4, "binary": 200}
# Bytes of a step's words in the Hamming pass of numpy and CuPy: steps this large make few
# array calls and cut-off updates per row (one query over 1M x 384 bits took 9.5 ms in
# steps of 16,384 rows, 5.6 ms in steps of 65,536).
_HAMMING_STEP_BYTES = 3 * 2**20
# Popcounts of this many 64-bit words add up in a byte (3 x 64 <= 255) in numpy's Hamming pass.
_WORDS_PER_BYTE_SUM = 3
# Words xored in one call of numpy's Hamming pass (1 MiB): few enough to stay in L2, and
# enough that two threads do not wait on each other for the GIL between calls.
_HAMMING_CALL_WORDS = 131072
# From this many corpus rows on, a coarse pass runs one range of rows per core.
_THREADED_ROWS = 65536
# Up to this many queries, numpy counts the Hamming distances where numkong's kernel for
# them is its AVX-512 one: on a Zen 5 core it took 36 ms over 1M rows for one query and
# 56 ms for 16, numpy's count about 7 ms a query (benchmarks/README.md).
_NUMPY_HAMMING_QUERIES = 8
# Corpus rows per call of a numkong kernel (and per packed matrix of bits).
_KERNEL_BLOCK = 8192
# At most this many corpus rows per step of a numkong pass: the cut-offs tighten step by step.
_KERNEL_STEP_ROWS = 65536
# From this many queries on, each step of the int8 pass is one kernel block (see _int8_topk):
# the copy of a block's products costs about 5 us per query, a step's numpy calls about 75 us.
_IN_PLACE_PRODUCT_QUERIES = 16
# The coarse pass sorts its waiting candidates into each query's best list once they
# number this many times the list's length.
_FOLD_AFTER = 4
# The Hamming pass first counts the distances of _SAMPLE_ROWS rows spread over a twin of at
# least _GUESS_LEAST_STRIDE times as many, and lets a row wait only below the distance under
# which the sample says _GUESS_MARGIN times the candidates lie. Otherwise the cut-offs tighten
# only step by step: 100 queries over 1M rows had 1.15M rows per thread wait, sorted in twice;
# with the guess 230,000, sorted in once, and the pass took 157 ms instead of 208
# (benchmarks/README.md).
_SAMPLE_ROWS = 16384
_GUESS_LEAST_STRIDE = 8
_GUESS_MARGIN = 2
# Fewer expected in the sample than this, and the guess is too rough to make.
_GUESS_LEAST_HITS = 32
# Queries whose sample is counted at once: their distances (fewer than 2 * _SAMPLE_ROWS each)
# stay within the score budget.
_GUESS_QUERIES = _SCORE_BLOCK_ELEMENTS // (2 * _SAMPLE_ROWS)
# Corpus rows per block when making a twin: small enough that temporaries stay in cache.
_QUANTIZE_BLOCK = 8192
# Up to this many queries, numkong's int8 dot products do the int8 coarse pass on any
# CPU: one query took about a fifth of a float32 matrix-vector product, and the cost
# grows with each query, where a float32 multiply grows far more slowly. Chosen from
# those figures (benchmarks/README.md), not timed at the crossing: on AVX2, 16 queries
# took 0.4x an exact search that computed the norms. Beyond it, without int8 dot-product
# instructions, the search is exact (quantized_topk).
_INT8_KERNEL_QUERIES = 16
# numkong's targets that have int8 dot-product instructions (its get_capabilities() names).
_INT8_DOT_TARGETS = (
    "icelake",
    "alder",
    "sierra",
    "sapphire",
    "genoa",
    "turin",
    "diamond",
    "neonsdot",
    "svesdot",
)


@dataclass(frozen=True, eq=False)
class QuantizedVectors:
    """The compact twin of a corpus of ``n`` vectors of width ``width``, made by :func:`quantize`.

    ``codes`` is ``(n, width)`` int8 for ``"int8"``, ``(words, n)`` uint64
    for ``"binary"`` (word-major, so each pass reads one word of every row);
    ``scales`` (int8) and ``center`` (binary) are per-dimension float32;
    ``searchable`` says which rows can match (finite, non-zero, valid), and
    ``squared_norms`` holds the float32 rows' squared norms, so that rescoring
    (and an exact search) need not compute them again.
    """

    kind: Quantization
    codes: Array
    scales: Array | None
    center: Array | None
    searchable: Array
    width: int
    squared_norms: Array
    # What an optional kernel library made from the codes on first use (packed bits).
    _derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def n_rows(self) -> int:
        return self.searchable.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        # What a kernel library derived (it may not pickle) is made again after unpickling.
        return {**self.__dict__, "_derived": {}}

    def _searching_only(self, valid: Array) -> QuantizedVectors:
        """This twin with only the rows where ``valid`` is True searchable, sharing its codes
        and what a kernel library derived from them."""
        twin = replace(self, searchable=self.searchable & valid)
        object.__setattr__(twin, "_derived", self._derived)  # frozen: the one way to share it
        return twin

    @property
    def nbytes(self) -> int:
        """Bytes held by the codes, which is what the coarse pass reads."""
        return _nbytes(self.codes)


@dataclass(frozen=True)
class QuantizedSearch:
    """A quantised search's options, as a front end's ``quantized=`` and ``oversample=`` ask for them."""

    kind: Quantization
    oversample: int | None

    @classmethod
    def check(
        cls,
        kind: str | None,
        oversample: int | None,
        metric: str = "cosine",
        *,
        exact_by: str | None = None,
    ) -> QuantizedSearch | None:
        """The options, or None for an exact search; a clear error for options that do not fit.

        ``exact_by`` names the front end's option that was set to rank every row
        exactly (``"exact"``, ``"in_memory"``), which a twin cannot honour.
        """
        if kind is None:
            if oversample is not None:
                raise ConfigError("oversample= is for a quantized= search; pass quantized='int8' or 'binary'")
            return None
        if kind not in _KINDS:
            raise ConfigError(f"quantized must be 'int8', 'binary' or None, got {kind!r}")
        if exact_by is not None:
            raise ConfigError(
                f"{exact_by}=True ranks every row by its float32 vector and quantized= ranks them on "
                "a twin: pass one of them"
            )
        if metric != "cosine":
            raise ConfigError(f"a quantized search ranks by cosine similarity, not {metric!r}: drop metric=")
        return cls(kind, None if oversample is None else check_k(oversample))


def quantize(corpus: Corpus, kind: Quantization, *, valid: Array | None = None) -> QuantizedVectors:
    """Make the compact twin of ``corpus`` that :func:`quantized_topk` searches.

    Parameters
    ----------
    corpus : array (n, d), or a sequence of (n_i, d) chunks
        The vectors, as for :func:`~polars_embed.kernels.topk`.
    kind : {"int8", "binary"}
        int8 codes (a quarter of float32) or sign bits (a thirty-second).
    valid : boolean array, shape (n,), optional
        False marks rows that must never be returned.

    Returns
    -------
    QuantizedVectors

    Examples
    --------
    >>> import numpy as np
    >>> corpus = np.random.default_rng(0).standard_normal((1000, 384), dtype=np.float32)
    >>> quantize(corpus, "binary").nbytes, quantize(corpus, "int8").nbytes, corpus.nbytes
    (48000, 384000, 1536000)
    """
    if kind not in _KINDS:
        raise ConfigError(f"unknown quantization {kind!r}: pass one of {', '.join(map(repr, _KINDS))}")
    chunks = _corpus_chunks(corpus)
    xp = _xp.namespace(*chunks, valid)
    width = chunks[0].shape[1]

    def blocks() -> Iterator[tuple[int, Array]]:
        # Walked once per pass, never kept: joined small chunks are the only copies.
        return _blocks(xp, chunks, _QUANTIZE_BLOCK)

    n_rows = sum(chunk.shape[0] for chunk in chunks)
    _check_valid(xp, valid, n_rows)
    device = _device(chunks[0])

    def written(
        shape: tuple[int, ...], dtype: object, make: Callable[[Array], Array], axis: int = 0
    ) -> Array:
        # Each block's result goes straight into one array, in C order: no joined copy
        # beside the parts, and the word-major bits really are word-major (a join of
        # transposed blocks came out row by row, and the Hamming pass took 1.5x as long).
        out = xp.empty(shape, dtype=dtype, device=device)

        def write(first_row: int, rows: Array) -> None:
            out[(slice(None),) * axis + (slice(first_row, first_row + rows.shape[0]),)] = make(rows)

        _on_blocks(xp, blocks(), write)
        return out

    with _xp.float_errors_ignored():
        norms = written((n_rows,), xp.float32, lambda rows: _squared_norms(xp, rows))
        searchable = _searchable(xp, norms, "cosine")
        if valid is not None:
            searchable = searchable & valid
        if kind == "int8":
            scales = _int8_scales(xp, blocks(), searchable, width)
            codes = written((n_rows, width), xp.int8, lambda rows: _int8_codes(xp, rows, scales))
            return QuantizedVectors(kind, codes, scales, None, searchable, width, norms)
        center = _mean(xp, blocks(), searchable, width)
        codes = written(
            (-(-width // 64), n_rows),  # word-major
            xp.uint64,
            lambda rows: xp.matrix_transpose(_sign_words(xp, rows, center)),
            axis=1,
        )
        return QuantizedVectors(kind, codes, None, center, searchable, width, norms)


def quantized_topk(
    queries: Array,
    corpus: Corpus,
    quantized: QuantizedVectors,
    k: int = 10,
    *,
    oversample: int | None = None,
    valid: Array | None = None,
) -> tuple[Array, Array]:
    """The ``k`` rows of best cosine similarity, found through the twin and rescored exactly.

    Parameters
    ----------
    queries : array, shape (q, d) or (d,)
        Query vectors.
    corpus : array (n, d), or a sequence of (n_i, d) chunks
        The float32 vectors the twin was made from: the candidates are
        rescored on them.
    quantized : QuantizedVectors
        The twin, from ``quantize(corpus, ...)``.
    k : int, default 10
        Results per query.
    oversample : int, optional
        Candidates rescored per result (``oversample * k`` per query). More
        gives better recall and costs more. Default: 4 for int8, 200 for binary.
    valid : boolean array, shape (n,), optional
        False marks rows that must not be returned in this search (a filter),
        besides those the twin was made without.

    Returns
    -------
    indices : int64 array, shape (q, k_eff)
    scores : float32 array, shape (q, k_eff)
        As :func:`~polars_embed.kernels.topk` returns them for cosine: best
        first, ties to the lower row, -1 and NaN for a query that cannot match.

    Notes
    -----
    Where an int8 twin's coarse pass would cost more than exact search, the
    float32 vectors are searched exactly instead: on numpy arrays without
    numkong, and for more than 16 queries on a CPU without int8 dot-product
    instructions (AVX-512 VNNI, AVX-VNNI or Arm's dot product).

    Examples
    --------
    >>> import numpy as np
    >>> corpus = np.random.default_rng(0).standard_normal((5000, 64), dtype=np.float32)
    >>> twin = quantize(corpus, "binary")
    >>> found, _ = quantized_topk(corpus[:3], corpus, twin, k=1)
    >>> found
    array([[0],
           [1],
           [2]])
    """
    k = check_k(k)
    chunks = _corpus_chunks(corpus)
    xp = _xp.namespace(queries, *chunks)
    n_rows = sum(chunk.shape[0] for chunk in chunks)
    if n_rows != quantized.n_rows:
        raise DimensionMismatchError(
            f"the twin was made from {quantized.n_rows} vectors of width {quantized.width}, but the "
            f"corpus has {n_rows} of width {chunks[0].shape[1]}: make the twin from this corpus"
        )
    queries, quantized = _searched(xp, queries, quantized, valid)
    numpy_int8 = quantized.kind == "int8" and array_api_compat.is_numpy_namespace(xp)
    if numpy_int8 and not _int8_kernel_runs(xp, queries.shape[0]):
        # The coarse pass would be the float32 multiply of the codes, converted block by
        # block: more than exact search costs (1.2x for 100 queries, 2.4x for one,
        # benchmarks/README.md), so the exact search runs, with the exact answers.
        return topk(queries, chunks, k, valid=quantized.searchable, squared_norms=quantized.squared_norms)
    with _xp.float_errors_ignored():
        unit, rows = _coarse_pass(xp, queries, quantized, k, oversample)
        usable_rows = int(xp.count_nonzero(quantized.searchable))
        return _rescore(xp, unit, chunks, quantized.squared_norms, rows, min(k, usable_rows))


def quantized_candidates(
    queries: Array,
    quantized: QuantizedVectors,
    k: int = 10,
    *,
    oversample: int | None = None,
    valid: Array | None = None,
) -> Array:
    """The rows of the coarse pass alone: each query's ``oversample * k`` candidates, to be
    rescored on float32 vectors kept elsewhere (a database table, say).

    Parameters
    ----------
    queries : array, shape (q, d) or (d,)
        Query vectors.
    quantized : QuantizedVectors
        The twin, from :func:`quantize`.
    k, oversample, valid
        As in :func:`quantized_topk`.

    Returns
    -------
    int64 array, shape (q, c)
        Each query's candidate rows of the twin, in no particular order, padded with
        -1 where fewer rows can match (and all -1 for a query that cannot match).
        The int8 coarse pass runs even where exact search would cost less, since the
        float32 vectors are not at hand.

    Examples
    --------
    >>> import numpy as np
    >>> corpus = np.random.default_rng(0).standard_normal((5000, 64), dtype=np.float32)
    >>> candidates = quantized_candidates(corpus[:2], quantize(corpus, "int8"), k=3)
    >>> candidates.shape, [row in found for row, found in zip([0, 1], candidates.tolist())]
    ((2, 12), [True, True])
    """
    k = check_k(k)
    xp = _xp.namespace(queries)
    queries, quantized = _searched(xp, queries, quantized, valid)
    with _xp.float_errors_ignored():
        return _coarse_pass(xp, queries, quantized, k, oversample)[1]


def _searched(
    xp: Namespace, queries: Array, quantized: QuantizedVectors, valid: Array | None
) -> tuple[Array, QuantizedVectors]:
    """The queries as a float32 (q, d) matrix of the twin's width, and the twin with only the
    ``valid`` rows searchable."""
    if queries.ndim == 1:
        queries = xp.reshape(queries, (1, queries.shape[0]))
    queries = _as_float32(xp, queries)
    if queries.shape[1] != quantized.width:
        raise DimensionMismatchError(
            f"the queries have width {queries.shape[1]}, but the twin was made from vectors of width "
            f"{quantized.width}: embed them with the corpus's provider"
        )
    _check_valid(xp, valid, quantized.n_rows)
    return queries, quantized if valid is None else quantized._searching_only(valid)


def _coarse_pass(
    xp: Namespace, queries: Array, quantized: QuantizedVectors, k: int, oversample: int | None
) -> tuple[Array, Array]:
    """The unit queries (zero for one that cannot match), and each one's candidate rows by the
    twin's codes, -1 where none."""
    oversample = DEFAULT_OVERSAMPLE[quantized.kind] if oversample is None else check_k(oversample)
    candidates = min(k * oversample, quantized.n_rows)
    squared = xp.vecdot(queries, queries)
    usable = xp.isfinite(squared) & (squared > 0)
    unit = xp.where(usable[:, None], queries / xp.sqrt(xp.where(usable, squared, 1.0))[:, None], 0.0)
    if candidates == 0:
        rows = xp.full((queries.shape[0], 0), -1, dtype=xp.int64, device=_device(queries))
    elif quantized.kind == "int8":
        rows = _int8_topk(xp, unit * quantized.scales, quantized, candidates)
    else:
        rows = _hamming_topk(xp, unit, quantized, candidates)
    return unit, xp.where(usable[:, None], rows, -1)


def recall_at_k(
    corpus: Corpus,
    quantized: QuantizedVectors,
    *,
    queries: Array | None = None,
    k: int = 10,
    sample: int = 100,
    seed: int = 0,
    oversample: int | None = None,
) -> float:
    """The share of the exact top-``k`` that :func:`quantized_topk` finds, over a sample of queries.

    Parameters
    ----------
    corpus, quantized
        The vectors and their twin.
    queries : array (q, d), optional
        The queries to try. Default: ``sample`` rows of the corpus drawn at
        random, each searched with itself left out of both result lists.
    k : int, default 10
        Results per query compared.
    sample : int, default 100
        Corpus rows to draw as queries when ``queries`` is not given.
    seed : int, default 0
        Seed of that draw.
    oversample : int, optional
        As in :func:`quantized_topk`.

    Returns
    -------
    float
        Between 0 and 1; 1.0 when the quantised search finds every exact result.

    Examples
    --------
    >>> import numpy as np
    >>> corpus = np.random.default_rng(0).standard_normal((2000, 32), dtype=np.float32)
    >>> recall_at_k(corpus, quantize(corpus, "int8"), k=5, oversample=20) > 0.95
    True
    """
    import numpy

    k = check_k(k)
    chunks = _corpus_chunks(corpus)
    xp = _xp.namespace(*chunks)
    leave_out = queries is None
    if leave_out:
        picked = sampled_rows(quantized, sample, seed)
        queries = _take_rows(xp, chunks, xp.asarray(picked, device=_device(chunks[0])))
    wanted = k + 1 if leave_out else k
    exact, _ = topk(queries, chunks, wanted, metric="cosine", valid=quantized.searchable)
    found, _ = quantized_topk(queries, chunks, quantized, wanted, oversample=oversample)
    return share_found(numpy.asarray(found), numpy.asarray(exact), k, left_out=picked if leave_out else None)


def sampled_rows(quantized: QuantizedVectors, sample: int, seed: int) -> Any:
    """``sample`` of the twin's searchable rows drawn at random by ``seed`` (all of them where
    there are fewer), ascending, as a numpy array: the queries a recall is measured on.

    >>> import numpy as np
    >>> corpus = np.random.default_rng(0).standard_normal((6, 4), dtype=np.float32)
    >>> twin = quantize(corpus, "int8", valid=np.arange(6) % 2 == 0)
    >>> sampled_rows(twin, 2, seed=0).size, set(sampled_rows(twin, 10, seed=0).tolist())
    (2, {0, 2, 4})
    """
    import numpy

    searchable = numpy.flatnonzero(numpy.asarray(quantized.searchable))
    drawn = numpy.random.default_rng(seed).choice(searchable, min(sample, searchable.size), replace=False)
    return numpy.sort(drawn)


def share_found(found: Any, exact: Any, k: int, *, left_out: Any = None) -> float:
    """The share of each query's exact top ``k`` rows that ``found`` holds, over all queries.

    ``found`` and ``exact`` are (q, n) arrays of rows, -1 for none, best first; with
    ``left_out``, each query's own row (the row it was drawn from) is dropped from both
    lists before their first ``k`` are compared (so both must hold ``k + 1``). 1.0 when
    there is nothing to find.

    >>> import numpy as np
    >>> share_found(np.array([[3, 1, 7]]), np.array([[3, 7, 2]]), 2, left_out=np.array([3]))
    0.5
    """
    hits = total = 0
    for i, (got, expected) in enumerate(zip(found.tolist(), exact.tolist(), strict=True)):
        got, expected = [row for row in got if row >= 0], [row for row in expected if row >= 0]
        if left_out is not None:
            got = [row for row in got if row != left_out[i]]
            expected = [row for row in expected if row != left_out[i]]
        expected, got = expected[:k], got[:k]
        hits += len(set(expected) & set(got))
        total += len(expected)
    return hits / total if total else 1.0


def _numkong() -> ModuleType | None:
    """numkong, the optional SIMD kernels of the coarse pass, or None where it is not installed."""
    try:
        import numkong
    except ImportError:
        return None
    return numkong


def _kernels(xp: Namespace) -> ModuleType | None:
    """numkong for numpy arrays where it is installed; None for the plain array path."""
    return _numkong() if array_api_compat.is_numpy_namespace(xp) else None


def _int8_topk(xp: Namespace, scaled: Array, quantized: QuantizedVectors, candidates: int) -> Array:
    """Each query's ``candidates`` rows of largest dot product of ``scaled`` with the int8 codes.

    On numpy arrays, queries go to numkong's packed int8 matrix product, quantised to
    int8 themselves (each by its own largest value, which leaves its ranking unchanged):
    :func:`quantized_topk` comes here only where :func:`_int8_kernel_runs` says so, and
    searches exactly elsewhere (:func:`quantized_candidates` always comes here). Other
    array libraries (CuPy) take the float32 multiply of :func:`topk`, converting the
    codes block by block.
    """
    nk = _kernels(xp)
    if nk is None:
        rows, _ = topk(scaled, quantized.codes, candidates, metric="dot", valid=quantized.searchable)
        return rows
    import numpy

    largest = numpy.max(numpy.abs(scaled), axis=1, keepdims=True)
    query_codes = numpy.round(scaled * (127 / numpy.where(largest > 0, largest, 1.0))).astype(numpy.int8)
    n_queries = query_codes.shape[0]
    codes = numpy.asarray(quantized.codes)
    if n_queries == 1 and 127 * 127 * quantized.width < 2**24:  # its float32 products are exact
        return _coarse_topk(
            xp,
            lambda rows, scratch: _one_query_products(nk, query_codes, codes[rows], scratch),
            1,
            quantized,
            candidates,
            _KERNEL_STEP_ROWS,
        )
    packed = _packed(quantized, "numkong_int8", lambda rows: nk.dots_pack(codes[rows], dtype="int8"))

    def dot_products(rows: slice, scratch: dict[str, Array]) -> Array:
        # The int32 products are ranked as they come, in buffers a thread keeps for every
        # step (fresh ones would cost page faults). A step of one block is written by
        # numkong into the keys themselves; a longer one gathers its blocks' products.
        shape = (n_queries, rows.stop - rows.start)
        if scratch.get("shape") != shape:
            keys = numpy.empty(shape, dtype=numpy.int32)
            one_block = shape[1] <= _KERNEL_BLOCK
            block = keys if one_block else numpy.empty((n_queries, _KERNEL_BLOCK), dtype=numpy.int32)
            scratch.update(shape=shape, keys=keys, block=block, out=nk.from_dlpack(block))
        keys = scratch["keys"]
        if scratch["block"] is keys:
            nk.dots_packed(query_codes, packed[rows.start // _KERNEL_BLOCK], out=scratch["out"])
            return keys
        for first in range(rows.start, rows.stop, _KERNEL_BLOCK):
            width = min(_KERNEL_BLOCK, rows.stop - first)
            out = scratch["out"] if width == _KERNEL_BLOCK else None  # the last block is shorter
            found = nk.dots_packed(query_codes, packed[first // _KERNEL_BLOCK], out=out)
            keys[:, first - rows.start : first - rows.start + width] = numpy.asarray(found)
        return keys

    # Many queries search block by block, written in place: copying their products would
    # cost more than the numpy calls of the extra steps (with 100 queries, 118 ms for a
    # search of 1M rows against 140 ms); few queries take longer steps, which cost less
    # than their copies.
    if n_queries >= _IN_PLACE_PRODUCT_QUERIES:
        step_blocks = 1
    else:
        step_blocks = max(1, min(_KERNEL_STEP_ROWS, _SCORE_BLOCK_ELEMENTS // n_queries) // _KERNEL_BLOCK)
    return _coarse_topk(xp, dot_products, n_queries, quantized, candidates, step_blocks * _KERNEL_BLOCK)


def _one_query_products(nk: ModuleType, query_codes: Any, codes: Any, scratch: dict[str, Any]) -> Any:
    """The ``(1, rows)`` dot products of one int8 query with int8 ``codes`` as float32 (exact
    up to 1,040 dimensions), by numkong's product of one pair of rows at a time.

    Over 1M x 384 on both threads it took 16 ms where the packed matrix product took 21 ms
    on a CPU with AMX (whose tiles hold 16 queries), as long without AMX, and it needs no
    packed copy of the codes (benchmarks/README.md)."""
    import numpy

    if scratch.get("rows") != codes.shape[0]:
        scratch["rows"] = codes.shape[0]
        scratch["products"] = numpy.empty((1, codes.shape[0]), dtype=numpy.float32)
        scratch["out"] = nk.from_dlpack(scratch["products"])
    nk.cdist(query_codes, codes, metric="dot", out=scratch["out"])
    return scratch["products"]


def _int8_kernel_runs(xp: Namespace, n_queries: int) -> bool:
    """Whether numkong's int8 kernel does the int8 coarse pass of these queries: on numpy
    arrays where numkong is installed, for a few queries on any CPU, and for any number
    where the CPU has int8 dot-product instructions (there it took half the time of the
    float32 multiply for 100 queries)."""
    nk = _kernels(xp)
    return nk is not None and (n_queries <= _INT8_KERNEL_QUERIES or _has_int8_dot_products(nk))


def _has_int8_dot_products(nk: ModuleType) -> bool:
    """Whether numkong runs on int8 dot-product instructions here (AVX-512 VNNI, AVX-VNNI, Arm dot)."""
    capabilities = nk.get_capabilities()
    return any(capabilities.get(name) for name in _INT8_DOT_TARGETS)


def _packed(quantized: QuantizedVectors, layout: str, pack: Callable[[slice], Any]) -> list[Any]:
    """The twin's codes in one of numkong's packed layouts, one matrix per block of rows
    (``pack`` makes a block's), made once per twin."""
    return _derived(
        quantized, layout, lambda: [pack(rows) for rows in _chunks(quantized.n_rows, _KERNEL_BLOCK)]
    )


def _derived(quantized: QuantizedVectors, name: str, make: Callable[[], Any]) -> Any:
    """What ``make`` derives from the twin's codes, made once per twin."""
    made = quantized._derived.get(name)
    if made is None:
        made = quantized._derived[name] = make()
    return made


def _hamming_topk(xp: Namespace, unit: Array, quantized: QuantizedVectors, candidates: int) -> Array:
    """Each query's ``candidates`` rows of least Hamming distance, ties to the lower row."""
    query_words = _xp.pack_bits(xp, (unit - quantized.center) > 0)
    n_queries, n_words = query_words.shape

    def counted(rows: slice) -> Array:
        """The (queries, rows) distances, by popcount of the differing words, in standard
        array calls (the path of other array libraries than numpy)."""
        distance = xp.zeros((n_queries, rows.stop - rows.start), dtype=xp.uint16, device=_device(unit))
        for word in range(n_words):
            different = quantized.codes[word, rows][None, :] ^ query_words[:, word, None]
            distance += xp.astype(_xp.bitwise_count(xp, different), xp.uint16)
        return distance

    block_rows = max(1, min(_HAMMING_STEP_BYTES // (8 * n_words), _SCORE_BLOCK_ELEMENTS // max(n_queries, 1)))
    if not array_api_compat.is_numpy_namespace(xp):
        return _coarse_topk(
            xp,
            lambda rows, scratch: -xp.astype(counted(rows), xp.float32),
            n_queries,
            quantized,
            candidates,
            block_rows,
        )
    import numpy

    nk = _kernels(xp)
    codes = numpy.asarray(quantized.codes)
    if nk is None or (n_queries <= _NUMPY_HAMMING_QUERIES and _has_tiled_hamming(nk)):
        steps = _chunks(quantized.n_rows, block_rows)

        def counted_by_numpy(words: Any, below: Any) -> Any:
            return _least_distances(
                lambda rows, scratch: _numpy_hamming(codes, words, rows, scratch),
                steps,
                words.shape[0],
                quantized,
                candidates,
                below=below,
            )

        def sample_by_numpy(stride: int, queries: slice) -> Any:
            sampled = _derived(
                quantized, "sampled_codes", lambda: numpy.ascontiguousarray(codes[:, ::stride])
            )
            return _numpy_hamming(sampled, query_words[queries], slice(0, sampled.shape[1]), {})[0]

        guess = _guessed_cutoffs(quantized, n_queries, candidates, sample_by_numpy)
        return _exact_after_guess(counted_by_numpy, query_words, guess)

    def pack(rows: slice) -> Any:
        row_major = numpy.ascontiguousarray(codes[:, rows].T)
        return nk.hammings_pack(row_major.view(numpy.uint8), dtype="uint1")

    packed = _packed(quantized, "numkong_bits", pack)
    query_bytes = numpy.ascontiguousarray(query_words).view(numpy.uint8)
    full_blocks, last_rows = divmod(quantized.n_rows, _KERNEL_BLOCK)

    def counted_by_numkong(chunk_bytes: Any, below: Any) -> Any:
        step_blocks = max(
            1, min(_KERNEL_STEP_ROWS, _SCORE_BLOCK_ELEMENTS // chunk_bytes.shape[0]) // _KERNEL_BLOCK
        )
        steps = [
            slice(first * _KERNEL_BLOCK, min(first + step_blocks, full_blocks) * _KERNEL_BLOCK)
            for first in range(0, full_blocks, step_blocks)
        ]
        if last_rows:
            steps.append(slice(full_blocks * _KERNEL_BLOCK, quantized.n_rows))

        def distances(rows: slice, scratch: dict[str, Array]) -> Array:
            # Each thread writes every step into the same buffer: fresh ones would cost
            # page faults as large as the work, step after step.
            width = min(_KERNEL_BLOCK, rows.stop - rows.start)
            shape = (-(-(rows.stop - rows.start) // width), chunk_bytes.shape[0], width)
            if scratch.get("shape") != shape:
                scratch["shape"], scratch["found"] = shape, nk.empty(shape, dtype="uint32")
            for block in range(shape[0]):
                nk.hammings_packed(
                    chunk_bytes, packed[rows.start // _KERNEL_BLOCK + block], out=scratch["found"][block]
                )
            return numpy.asarray(scratch["found"])

        return _least_distances(distances, steps, chunk_bytes.shape[0], quantized, candidates, below=below)

    found = []
    # A step's distances are (blocks, queries, block rows) uint32: a query chunk keeps them in budget.
    for queries in _chunks(n_queries, max(1, _SCORE_BLOCK_ELEMENTS // _KERNEL_BLOCK)):
        chunk_bytes = query_bytes[queries]

        def sample_by_numkong(stride: int, queries: slice, chunk_bytes: Any = chunk_bytes) -> Any:
            def pack_sample() -> Any:
                rows = numpy.ascontiguousarray(codes[:, ::stride].T)
                return nk.hammings_pack(rows.view(numpy.uint8), dtype="uint1")

            packed_sample = _derived(quantized, "numkong_bits_sample", pack_sample)
            return numpy.asarray(nk.hammings_packed(chunk_bytes[queries], packed_sample))

        guess = _guessed_cutoffs(quantized, chunk_bytes.shape[0], candidates, sample_by_numkong)
        found.append(_exact_after_guess(counted_by_numkong, chunk_bytes, guess))
    return numpy.concatenate(found, axis=0) if len(found) > 1 else found[0]


def _exact_after_guess(counted: Callable[[Any, Any], Any], queries: Any, guess: Any) -> Any:
    """``counted(queries, below)``'s rows, held back by the guessed cut-offs ``guess`` (or
    None), with the queries whose lists came out short searched again without them."""
    rows = counted(queries, guess)
    if guess is not None:
        short = rows[:, -1] < 0
        if short.any():
            rows[short] = counted(queries[short], None)
    return rows


def _guessed_cutoffs(
    quantized: QuantizedVectors,
    n_queries: int,
    candidates: int,
    sample_distances: Callable[[int, slice], Any],
) -> Any:
    """For each query, a distance below which, by a sample of the twin's rows, about
    ``_GUESS_MARGIN`` times ``candidates`` of its searchable rows lie; None for a twin too
    small to sample, or a search whose sample would hold too few.

    ``sample_distances(stride, queries)`` gives the ``(queries, rows)`` distances of those
    queries to every ``stride``-th row, from the first, asked for ``_GUESS_QUERIES`` at a time."""
    import numpy

    stride = quantized.n_rows // _SAMPLE_ROWS
    if stride < _GUESS_LEAST_STRIDE:
        return None
    searchable = numpy.asarray(quantized.searchable)
    sampled = searchable[::stride]
    in_sample = int(numpy.count_nonzero(sampled))
    expected = _GUESS_MARGIN * candidates * in_sample / max(1, int(numpy.count_nonzero(searchable)))
    if not _GUESS_LEAST_HITS <= expected <= in_sample:
        return None
    cutoffs = []
    for queries in _chunks(n_queries, _GUESS_QUERIES):
        distances = sample_distances(stride, queries)
        least = _Least(distances.shape[0], quantized.width + 1, math.ceil(expected))
        if not bool(sampled.all()):
            distances = numpy.where(sampled, distances, least.beyond)
        cutoffs.append(least.histogram_cutoff(distances[None]) + 1)
    return numpy.concatenate(cutoffs)


def _numpy_hamming(codes: Any, query_words: Any, rows: slice, scratch: dict[str, Any]) -> Any:
    """The ``(1, queries, rows)`` uint16 Hamming distances of the word-major ``codes`` of
    ``rows`` to each query's words, into buffers a thread reuses from step to step.

    Word by word, for as many queries at once as keep the xor within the core's L2
    cache: the counts of three words add up in uint8 (at most 192) before they join the
    uint16 sum. Over 1M rows of 6 words this took 3.7 ms against 6.2 ms for one xor,
    popcount and sum over all the words of a step (benchmarks/README.md)."""
    import numpy

    n_words, width = codes.shape[0], rows.stop - rows.start
    if scratch.get("width") != width:
        at_once = (min(query_words.shape[0], max(1, _HAMMING_CALL_WORDS // width)), width)
        scratch["width"] = width
        scratch["different"] = numpy.empty(at_once, dtype=numpy.uint64)
        scratch["count"] = numpy.empty(at_once, dtype=numpy.uint8)
        scratch["counts"] = numpy.empty(at_once, dtype=numpy.uint8)
        scratch["distances"] = numpy.empty((1, query_words.shape[0], width), dtype=numpy.uint16)
    distances = scratch["distances"]
    for queries in _chunks(query_words.shape[0], scratch["different"].shape[0]):
        n_queries = queries.stop - queries.start
        different, count, counts = (scratch[name][:n_queries] for name in ("different", "count", "counts"))
        for first in range(0, n_words, _WORDS_PER_BYTE_SUM):
            for word in range(first, min(first + _WORDS_PER_BYTE_SUM, n_words)):
                numpy.bitwise_xor(codes[word, rows][None, :], query_words[queries, word, None], out=different)
                numpy.bitwise_count(different, out=counts if word == first else count)
                if word > first:
                    numpy.add(counts, count, out=counts)
            if first == 0:
                numpy.copyto(distances[0, queries], counts)
            else:
                numpy.add(distances[0, queries], counts, out=distances[0, queries])
    return distances


def _has_tiled_hamming(nk: ModuleType) -> bool:
    """Whether numkong counts Hamming distances with its AVX-512 kernel, which costs as much
    for one query as numpy's count for several (benchmarks/README.md)."""
    return bool(nk.get_capabilities().get("icelake"))


def _least_distances(
    distances_of: Callable[[slice, dict[str, Any]], Any],
    steps: list[slice],
    n_queries: int,
    quantized: QuantizedVectors,
    candidates: int,
    *,
    below: Any = None,
) -> Any:
    """Each query's ``candidates`` rows of least Hamming distance, ties to the lower row (numpy).

    ``distances_of(step, scratch)`` gives the distances of the rows of one step
    (``steps`` cover the corpus in order) as an integer ``(blocks, queries,
    width)`` array, row ``step.start + block * width + column``; ``scratch`` is
    a dict of its own per thread. A distance is a small integer (0 to the
    width), so each query's cut-off is read off a histogram of its distances,
    with no sort or partition of scores, and a step is filtered by one
    comparison with it. The histogram of the rows that passed is kept up to
    date, so the cut-off tightens after every step, and the rows waiting are
    sorted into each query's best list only when they take much memory. The
    steps are split into one range per core, each ranked on its own thread
    (numpy and numkong release the GIL); the ranges' lists merge the same way.
    Rows come out in no particular order, padded with -1.

    ``below`` (one distance per query) holds back every row at or above it
    from the start: a query whose list comes out full is exact, one whose
    list is short has to be searched again without it.
    """
    import numpy

    least = _Least(n_queries, quantized.width + 1, candidates)
    searchable = numpy.asarray(quantized.searchable)
    every_row = bool(searchable.all())
    n_parts = max(1, min(len(steps), _threads(numpy) if quantized.n_rows >= _THREADED_ROWS else 1))
    parts = [[steps[i] for i in part] for part in numpy.array_split(numpy.arange(len(steps)), n_parts)]

    def rank(part: list[slice]) -> list[Any]:
        scratch: dict[str, Any] = {}
        cutoff = numpy.full(n_queries, least.beyond, dtype=numpy.int64)
        if below is not None:
            cutoff = numpy.minimum(cutoff, below)
        kept: list[list[Any]] = []  # (query, distance, row) of each query's best, then of waiting rows
        waiting = 0
        passed_counts = numpy.zeros(least.n_bins, dtype=numpy.int64)  # per query and distance
        for step in part:
            distances = distances_of(step, scratch)
            n_blocks, _, width = distances.shape
            if not every_row:
                distances = numpy.where(searchable[step].reshape(n_blocks, 1, width), distances, least.beyond)
            if (cutoff == least.beyond).any():
                # Lists not yet full take this step's own best (and ties) straight from its
                # histogram, not every row of it.
                cutoff = numpy.minimum(cutoff, least.histogram_cutoff(distances) + 1)
            # One flat pass: a 3-D nonzero costs five times as much per element.
            (passed,) = numpy.nonzero((distances < cutoff.astype(distances.dtype)[None, :, None]).reshape(-1))
            block, at = numpy.divmod(passed, n_queries * width)
            query, column = numpy.divmod(at, width)
            distance = distances.reshape(-1)[passed].astype(numpy.int64)
            kept.append([query, distance, step.start + block * width + column])
            passed_counts += numpy.bincount(least.bin(query, distance), minlength=least.n_bins)
            # A later row at a query's candidates-th least distance so far loses to the rows
            # already at or below it (ties go to the lower row): only a smaller one enters.
            cutoff = numpy.minimum(cutoff, least.threshold(passed_counts)[0])
            waiting += query.size
            if waiting >= _FOLD_AFTER * candidates * n_queries:
                kept, waiting = [least.keep(kept)[0]], 0
        return least.keep(kept)[0]

    ranked = _on_cores(numpy, rank, parts)
    query, _, row = ranked[0] if len(ranked) == 1 else least.keep(ranked)[0]
    # numpy sorts 16-bit integers by radix: 1.4 ms for 200,000 entries against 7.7 ms as int64.
    order = numpy.argsort(query.astype(numpy.uint16) if n_queries <= 2**16 else query, kind="stable")
    query, row = query.take(order), row.take(order)
    rows = numpy.full((n_queries, candidates), -1, dtype=numpy.int64)
    rows[query, numpy.arange(query.size) - numpy.searchsorted(query, query)] = row
    return rows


@dataclass(frozen=True)
class _Least:
    """The bookkeeping of :func:`_least_distances`: each query's ``candidates`` least distances."""

    n_queries: int
    beyond: int  # past every distance: the cut-off while a query's list is not full
    candidates: int

    def keep(self, parts: list[list[Any]]) -> tuple[list[Any], Any]:
        """Each query's best of the ``(query, distance, row)`` entries of ``parts``, ties to the
        lower row, and each query's last distance kept (``beyond`` while it has too few)."""
        import numpy

        query, distance, row = (numpy.concatenate([part[i] for part in parts]) for i in range(3))
        last, below = self.threshold(numpy.bincount(self.bin(query, distance), minlength=self.n_bins))
        last_of_each = last[query]
        keep = distance < last_of_each
        # Of the rows at a query's last distance, the lowest fill its list. One sort of a
        # (query, row) key: lexsort of the two took 5 ms for 70,000 ties, this 0.9 ms.
        ties = numpy.flatnonzero(distance == last_of_each)
        if ties.size:
            tied_rows = row[ties]
            ties = ties[numpy.argsort(query[ties] * (int(tied_rows.max()) + 1) + tied_rows, kind="stable")]
        tied_query = query[ties]
        place = numpy.arange(ties.size) - numpy.searchsorted(tied_query, tied_query)
        keep[ties[place < (self.candidates - below)[tied_query]]] = True
        kept = numpy.flatnonzero(keep)  # taking by index: a boolean mask took 5 times as long
        return [query.take(kept), distance.take(kept), row.take(kept)], last

    def histogram_cutoff(self, distances: Any) -> Any:
        """Each query's ``candidates``-th least distance in a ``(blocks, queries, width)`` step."""
        import numpy

        query = numpy.arange(self.n_queries)[None, :, None]
        counts = numpy.bincount(self.bin(query, distances).reshape(-1), minlength=self.n_bins)
        return self.threshold(counts)[0]

    @property
    def n_bins(self) -> int:
        """Bins of the queries' histograms of distances, ``beyond + 1`` per query."""
        return self.n_queries * (self.beyond + 1)

    def bin(self, query: Any, distance: Any) -> Any:
        """The histogram bin of each (query, distance)."""
        return query * (self.beyond + 1) + distance

    def threshold(self, counts: Any) -> tuple[Any, Any]:
        """From the queries' histograms (flat, ``beyond + 1`` bins each): each query's
        ``candidates``-th least distance (``beyond`` where it has fewer), and how many are below it."""
        import numpy

        at_most = numpy.cumsum(counts.reshape(self.n_queries, self.beyond + 1), axis=1)
        full = at_most[:, -1] >= self.candidates
        last = numpy.where(full, numpy.argmax(at_most >= self.candidates, axis=1), self.beyond)
        below = at_most[numpy.arange(self.n_queries), numpy.maximum(last - 1, 0)]
        return last, numpy.where(last > 0, below, 0)


def _coarse_topk(
    xp: Namespace,
    keys_of: Callable[[slice, dict[str, Array]], Array],
    n_queries: int,
    quantized: QuantizedVectors,
    candidates: int,
    block_rows: int,
) -> Array:
    """Each query's ``candidates`` rows of largest coarse key, ties to the lower row.

    ``keys_of(rows, scratch)`` gives the ``(queries, rows)`` keys of a block
    of ``block_rows`` rows (fewer at the end); blocks start at multiples of
    ``block_rows``, and ``scratch`` is a dict of its own per thread, where it
    may keep buffers it reuses from block to block. The corpus is split into one range of blocks per core,
    each ranked on its own thread (numpy and numkong release the GIL), and
    the ranges' lists merge by :func:`topk_merge`.
    """
    n_rows = quantized.n_rows
    n_parts = _threads(xp) if n_rows >= _THREADED_ROWS else 1
    n_blocks = -(-n_rows // block_rows)
    blocks_per_part = -(-n_blocks // n_parts)
    parts = _chunks(n_rows, blocks_per_part * block_rows)
    device = _device(quantized.searchable)

    def rank(part: slice) -> tuple[Array, Array]:
        best_keys = xp.full((n_queries, candidates), -xp.inf, dtype=xp.float32, device=device)
        best_rows = xp.full((n_queries, candidates), -1, dtype=xp.int64, device=device)
        # Candidates wait here and are folded into the best lists only once they are a few
        # times as many as the lists are long: one sort of (k + few) per block would cost
        # more than the distances when k is in the thousands. Until then a block is
        # compared with an older k-th best, which only lets a few more candidates wait.
        waiting_keys: list[Array] = []
        waiting_rows: list[Array] = []

        def fold() -> None:
            nonlocal best_keys, best_rows
            if not waiting_keys:
                return
            all_keys = xp.concat([best_keys, *waiting_keys], axis=1)
            all_rows = xp.concat([best_rows, *waiting_rows], axis=1)
            waiting_keys.clear()
            waiting_rows.clear()
            best_rows, best_keys = _best_of(xp, all_rows, all_keys, candidates)

        scratch: dict[str, Array] = {}
        with _xp.float_errors_ignored():
            for block in _chunks(part.stop - part.start, block_rows):
                rows = slice(part.start + block.start, part.start + block.stop)
                if rows.stop <= rows.start:
                    continue
                keys = keys_of(rows, scratch)
                lowest = _lowest(xp, keys)
                searchable = quantized.searchable[rows]
                if not bool(xp.all(searchable)):
                    keys = xp.where(searchable, keys, lowest)
                kth_best = best_keys[:, candidates - 1]
                if xp.isdtype(keys.dtype, "integral"):  # exact in float32: |keys| < 2**24
                    kth_best = xp.astype(xp.where(kth_best > -xp.inf, kth_best, lowest), keys.dtype)
                found = _candidates(xp, keys, kth_best, candidates, None, "dot")
                if found is None:
                    continue
                values, columns = _gather_candidates(xp, keys, *found)
                waiting_keys.append(xp.astype(values, xp.float32))
                waiting_rows.append(xp.where(columns >= 0, columns + rows.start, -1))
                if sum(waiting.shape[1] for waiting in waiting_keys) >= _FOLD_AFTER * candidates:
                    fold()
            fold()
        return best_rows, best_keys

    results = _on_cores(xp, rank, parts)
    rows, _ = topk_merge([r for r, _ in results], [k for _, k in results], candidates, metric="dot")
    return rows


def _lowest(xp: Namespace, keys: Array) -> Any:
    """The key below every real one in ``keys``' dtype: -inf, or the least integer."""
    return xp.iinfo(keys.dtype).min if xp.isdtype(keys.dtype, "integral") else -xp.inf


def _rescore(
    xp: Namespace, unit: Array, chunks: list[Array], squared_norms: Array, rows: Array, k: int
) -> tuple[Array, Array]:
    """Exact cosine of each query with its candidate rows (of these ``squared_norms``), and
    the best ``k`` of them."""
    n_queries, n_candidates = rows.shape
    width = unit.shape[1]
    found = rows >= 0
    if n_candidates == 0 or k == 0:
        empty = xp.full((n_queries, k), -1, dtype=xp.int64, device=_device(unit))
        return empty, xp.full((n_queries, k), xp.nan, dtype=xp.float32, device=_device(unit))
    per_chunk = max(1, _SCORE_BLOCK_ELEMENTS // (n_candidates * width))

    def cosines(chunk: slice) -> Array:
        picked = xp.where(found[chunk, :], rows[chunk, :], 0)
        vectors = xp.reshape(_take_rows(xp, chunks, xp.reshape(picked, (-1,))), (-1, n_candidates, width))
        norms = xp.sqrt(xp.reshape(xp.take(squared_norms, xp.reshape(picked, (-1,))), picked.shape))
        return xp.vecdot(vectors, unit[chunk, None, :]) / xp.where(norms > 0, norms, 1.0)

    query_chunks = _chunks(n_queries, per_chunk)
    # numpy's gathers and products release the GIL: 100 queries rescored in half the time.
    keys = _on_cores(xp, cosines, query_chunks)
    keys = xp.where(found, xp.concat(keys, axis=0), -xp.inf)
    indices, best = _best_of(xp, xp.where(found, rows, -1), keys, min(k, n_candidates))
    indices = xp.where(best > -xp.inf, indices, -1)
    return indices, xp.where(indices >= 0, best, xp.nan)


def _best_of(xp: Namespace, rows: Array, keys: Array, k: int) -> tuple[Array, Array]:
    """Each query's ``k`` entries of largest key, best first, ties to the lower row, padded
    with row -1 and key -inf: a partition first cuts each query's entries to its best (and
    the ties with the last of them), so that only those are sorted."""
    n_queries = keys.shape[0]
    device = _device(keys)
    nothing = xp.full((n_queries,), -xp.inf, dtype=xp.float32, device=device)
    found = _candidates(xp, keys, nothing, k, None, "dot")
    if found is None:
        return (
            xp.full((n_queries, k), -1, dtype=xp.int64, device=device),
            xp.full((n_queries, k), -xp.inf, dtype=xp.float32, device=device),
        )
    values, columns = _gather_candidates(xp, keys, *found)
    picked = xp.where(columns >= 0, xp.take_along_axis(rows, xp.maximum(columns, 0), axis=1), -1)
    short = k - values.shape[1]
    if short > 0:
        values = xp.concat(
            [values, xp.full((n_queries, short), -xp.inf, dtype=values.dtype, device=device)], axis=1
        )
        picked = xp.concat(
            [picked, xp.full((n_queries, short), -1, dtype=picked.dtype, device=device)], axis=1
        )
    return _rank(xp, picked, values, k)


def _int8_scales(xp: Namespace, blocks: Iterator[tuple[int, Array]], searchable: Array, width: int) -> Array:
    """Per dimension, the largest absolute value of the searchable unit vectors over 127."""
    largest = xp.zeros((width,), dtype=xp.float32, device=_device(searchable))

    def block_largest(first_row: int, rows: Array) -> Array:
        unit = _unit_rows(xp, rows, searchable[first_row : first_row + rows.shape[0]])
        return xp.max(xp.abs(unit), axis=0)

    for block in _on_blocks(xp, blocks, block_largest):
        largest = xp.maximum(largest, block)
    return xp.where(largest > 0, largest, 1.0) / 127


def _int8_codes(xp: Namespace, rows: Array, scales: Array) -> Array:
    unit = _unit_rows(xp, rows, None)
    return xp.astype(xp.clip(xp.round(unit / scales), -127, 127), xp.int8)


def _unit_rows(xp: Namespace, rows: Array, searchable: Array | None) -> Array:
    """Rows scaled to unit length. With ``searchable``, the rows that cannot match become
    zeros (for sums over the corpus); without, they are left as they come (masked later)."""
    squared = _squared_norms(xp, rows)
    usable = _searchable(xp, squared, "cosine")
    unit = rows * (1.0 / xp.sqrt(xp.where(usable, squared, 1.0)))[:, None]
    if searchable is None:
        return unit
    return xp.where((usable & searchable)[:, None], unit, 0.0)


def _mean(xp: Namespace, blocks: Iterator[tuple[int, Array]], searchable: Array, width: int) -> Array:
    """The mean of the searchable unit vectors: signs around it split the corpus evenly."""
    total = xp.zeros((width,), dtype=xp.float32, device=_device(searchable))

    def block_sum(first_row: int, rows: Array) -> Array:
        return xp.sum(_unit_rows(xp, rows, searchable[first_row : first_row + rows.shape[0]]), axis=0)

    for block in _on_blocks(xp, blocks, block_sum):  # summed in the blocks' order, as one thread would
        total = total + block
    return total / max(int(xp.count_nonzero(searchable)), 1)


def _sign_words(xp: Namespace, rows: Array, center: Array) -> Array:
    return _xp.pack_bits(xp, (_unit_rows(xp, rows, None) - center) > 0)


def _threads(xp: Namespace) -> int:
    """Threads for the coarse pass: one per core for numpy, one elsewhere (CuPy is asynchronous)."""
    if not array_api_compat.is_numpy_namespace(xp):
        return 1
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, len(cores))


def _on_cores(xp: Namespace, task: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[task(item) for item in items]``, on the process's pool of one thread per core where
    there are several items and ``xp`` is numpy (numpy and numkong release the GIL; CuPy is
    asynchronous already). The pool is kept: starting threads for each search cost about a
    millisecond of a one-query search's 12 ms."""
    threads = _threads(xp)
    if len(items) <= 1 or threads == 1:
        return [task(item) for item in items]
    return list(shared_pool("polars-embed-quantized", threads).map(task, items))


def _on_blocks(
    xp: Namespace, blocks: Iterator[tuple[int, Array]], task: Callable[[int, Array], Any]
) -> list[Any]:
    """``[task(first_row, rows) for first_row, rows in blocks]``, a few blocks at a time on the
    cores (:func:`_on_cores`): only those few are held at once where blocks are joined copies."""

    def run(block: tuple[int, Array]) -> Any:
        with _xp.float_errors_ignored():  # numpy's error state is a thread's own
            return task(*block)

    results: list[Any] = []
    at_once = 4 * _threads(xp)
    while group := list(itertools.islice(blocks, at_once)):
        results += _on_cores(xp, run, group)
    return results


def _device(x: Array) -> object:
    return array_api_compat.device(x)


def _nbytes(x: Array) -> int:
    import numpy

    return int(x.size) * numpy.dtype(str(x.dtype)).itemsize
