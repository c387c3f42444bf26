"""Vectors between Polars and the kernels, shared by the Polars namespaces and embedding tables.

A vector column is ``pl.Array(numeric, d)``; the kernels take it as a ``(n, d)``
numpy array in which a null row is a row of NaN, which they never match, or as
the list of such arrays that its chunks give without a copy.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import polars as pl

from polars_embed.errors import DimensionMismatchError, InputTypeError, InvalidInputError
from polars_embed.kernels import squared_norms
from polars_embed.keywords import KeywordIndex
from polars_embed.metadata import provider_of
from polars_embed.provider import Provider
from polars_embed.quantization import Quantization, QuantizedVectors, quantize

# What the front ends (the Polars namespaces, embedding tables) share: one rule for each of
# "is this a vector column", its matrix, its nulls and the queries it is searched with.
__all__ = [
    "QueryLike",
    "VectorsLike",
    "as_matrix",
    "as_query_vectors",
    "cached_squared_norms",
    "cached_twin",
    "check_same_width",
    "null_where",
    "parse_query",
    "unit_length",
    "valid_rows",
    "vector_chunks",
    "vector_width",
]

VectorsLike = Sequence[float] | Sequence[Sequence[float]] | np.ndarray | pl.Series
QueryLike = str | Sequence[str] | VectorsLike


def unit_length(promised: bool | None, stored: Provider | None) -> bool:
    """Whether cosine may skip the vectors' norms: as the user promised, else as the provider
    that made them says (False when it is not known)."""
    if promised is not None:
        return promised
    return stored is not None and stored.normalized


def vector_width(dtype: pl.DataType, *, column: str) -> int:
    """The width of a vector column; an :class:`InputTypeError` naming the column when it is not one."""
    if isinstance(dtype, pl.Array) and len(dtype.shape) == 1 and dtype.inner.is_numeric():
        return dtype.shape[0]
    raise InputTypeError(
        f"column {column!r} is {dtype}, not a vector column (pl.Array(pl.Float32, d)); "
        f"embed text first, e.g. pl.col({column!r}).embed.with_provider(...)"
    )


def as_matrix(vectors: pl.Series) -> np.ndarray:
    """A vector column as ``(n, d)``, null rows as NaN; no copy for a float32 column without nulls."""
    vector_width(vectors.dtype, column=vectors.name)
    return vectors.to_numpy()


def vector_chunks(vectors: pl.Series) -> list[np.ndarray]:
    """A vector column as one ``(n_i, d)`` array per chunk, null rows as NaN.

    No copy of a float32 chunk without nulls: a frame built with
    ``pl.concat(..., rechunk=False)``, read from Parquet row groups or
    collected by the streaming engine is searched where it lies.
    """
    vector_width(vectors.dtype, column=vectors.name)
    return [chunk.to_numpy() for chunk in vectors.get_chunks()]


def valid_rows(vectors: pl.Series) -> np.ndarray | None:
    """Which rows are not null, or ``None`` when all of them are (the kernels' fast path)."""
    return vectors.is_not_null().to_numpy() if vectors.null_count() else None


def null_where(values: pl.Series, missing: np.ndarray) -> pl.Series:
    """``values`` with the rows where ``missing`` is True set to null."""
    if not missing.any():
        return values
    return pl.select(pl.when(pl.Series(~missing)).then(values)).to_series()


def as_query_vectors(value: VectorsLike) -> tuple[np.ndarray, bool]:
    """Query vectors as one float32 ``(q, d)`` array, and whether ``value`` was a single vector.

    A single vector is a 1-D array, a list of numbers or a numeric Series; a batch is a
    2-D array, a list of lists or a Series of arrays or lists.
    """
    single = _is_single_vector(value)
    try:
        if isinstance(value, pl.Series) and not single:
            array = np.asarray(value.to_list(), dtype=np.float32)
        else:
            array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputTypeError(
            f"query vectors must be numbers, all of one width ({str(error).splitlines()[0]}); "
            "pass a list of numbers, a list of such lists, or a numpy array"
        ) from None
    if array.ndim != (1 if single else 2) or array.shape[-1] == 0:
        raise InvalidInputError(
            f"query vectors must be one vector (d,) or one per row (q, d) with d > 0, got shape {array.shape}"
        )
    return array.reshape(-1, array.shape[-1]), single


def _is_single_vector(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    if isinstance(value, pl.Series):
        return value.dtype.is_numeric()
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return len(value) > 0 and all(isinstance(item, Real) for item in value)
    raise InputTypeError(
        f"a query is a text, a vector or a batch of either, got {type(value).__name__}; "
        "pass a string, a list of numbers or a numpy array"
    )


def check_same_width(vectors: pl.Series, other: pl.Series) -> None:
    """Fail, naming both widths and the models when known, when two vector columns differ in width."""
    if vector_width(vectors.dtype, column=vectors.name) != vector_width(other.dtype, column=other.name):
        raise DimensionMismatchError(
            f"cannot compare {_described(vectors)} with {_described(other)}: "
            "vectors of different widths come from different models"
        )


def _described(vectors: pl.Series) -> str:
    provider = provider_of(vectors)
    made_by = f", made by {provider.label}" if provider else ""
    return f"{vectors.name!r} (vectors of width {vectors.dtype.shape[0]}{made_by})"


@dataclass(frozen=True)
class _Kept:
    column: pl.Series  # keeps the buffers alive, so no other data can take their addresses
    buffers: tuple[tuple[int, int, int, int] | None, ...]
    value: Any


class _ColumnCache:
    """What is derived from the columns of live DataFrames (norms, quantised twins, keyword indexes), kept.

    An entry belongs to one frame (it goes when the frame is collected), one
    column name and one kind of value, and holds the column's Arrow buffers,
    by address, size, offset and length, together with the column itself.
    Holding the column keeps those buffers alive and shared, so Polars cannot
    reuse or mutate them in place: the same addresses mean the same values. A
    column that was replaced has other buffers, and its values are derived again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # DataFrames are not hashable: entries go by id, checked against a weak reference,
        # and leave when their frame is collected.
        self._frames: dict[int, tuple[weakref.ref[pl.DataFrame], dict[tuple[str, str], _Kept]]] = {}

    def get(self, frame: pl.DataFrame, name: str, kind: str, derive: Callable[[], Any]) -> Any:
        column = frame[name]
        buffers = _buffer_identity(column)
        with self._lock:
            entries = self._entries(frame)
            kept = None if entries is None else entries.get((name, kind))
        if kept is not None and kept.buffers == buffers:
            return kept.value
        value = derive()
        with self._lock:
            entries = self._entries(frame)
            if entries is None:
                entries = {}
                self._frames[id(frame)] = (weakref.ref(frame), entries)
                weakref.finalize(frame, self._forget, id(frame))
            entries[(name, kind)] = _Kept(column, buffers, value)
        return value

    def _entries(self, frame: pl.DataFrame) -> dict[tuple[str, str], _Kept] | None:
        entry = self._frames.get(id(frame))
        return entry[1] if entry is not None and entry[0]() is frame else None

    def _forget(self, frame_id: int) -> None:
        with self._lock:
            entry = self._frames.get(frame_id)
            if entry is not None and entry[0]() is None:
                del self._frames[frame_id]


def _buffer_identity(column: pl.Series) -> tuple[tuple[int, int, int, int] | None, ...]:
    """Address and size of every Arrow buffer of every chunk, with each chunk's offset and length."""
    identity: list[tuple[int, int, int, int] | None] = []
    for chunk in column.get_chunks():
        # The newest Arrow types are the buffers Polars holds (string views for text), not a copy.
        array = chunk.to_arrow(compat_level=pl.CompatLevel.newest())
        child = getattr(array, "values", None)  # a vector column's numbers
        for buffer in array.buffers():
            identity.append(None if buffer is None else (buffer.address, buffer.size, -1, -1))
        identity.append((array.offset, len(array), *((child.offset, len(child)) if child else (-1, -1))))
    return tuple(identity)


_KEPT = _ColumnCache()


def cached_squared_norms(frame: pl.DataFrame, name: str, chunks: list[np.ndarray]) -> np.ndarray:
    """The squared norms of ``frame[name]`` (whose chunks are ``chunks``), computed once per column data."""
    return _KEPT.get(frame, name, "squared_norms", lambda: squared_norms(chunks))


def cached_twin(
    frame: pl.DataFrame, name: str, chunks: list[np.ndarray], kind: Quantization
) -> QuantizedVectors:
    """The quantised twin of ``frame[name]``, made on its first quantised search and kept with the frame."""
    valid = valid_rows(frame[name])
    return _KEPT.get(frame, name, f"twin:{kind}", lambda: quantize(chunks, kind, valid=valid))


def cached_keyword_index(frame: pl.DataFrame, name: str) -> KeywordIndex:
    """The BM25 index of text column ``frame[name]``, built on its first hybrid search and kept with
    the frame (built again only when the column's data changes)."""
    return _KEPT.get(frame, name, "bm25", lambda: KeywordIndex(frame[name]))


def parse_query(query: QueryLike) -> tuple[tuple[str, ...] | None, np.ndarray | None, bool]:
    """Text queries or vector queries (``(q, d)`` float32), and whether there was a single query."""
    if isinstance(query, str):
        return (query,), None, True
    if isinstance(query, pl.Series | Sequence) and len(query) == 0:
        raise InvalidInputError("search needs at least one query, but got an empty batch")
    if isinstance(query, pl.Series) and query.dtype == pl.String:
        return tuple(query.to_list()), None, False
    if isinstance(query, Sequence) and all(isinstance(item, str) for item in query):
        return tuple(query), None, False
    vectors, single = as_query_vectors(query)
    return None, vectors, single
