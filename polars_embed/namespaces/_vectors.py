"""Vectors between Polars and the kernels, shared by the expression and frame namespaces.

A vector column is ``pl.Array(numeric, d)``; the kernels take it as a ``(n, d)``
numpy array in which a null row is a row of NaN, which they never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import polars as pl

from polars_embed.errors import DimensionMismatchError, InputTypeError, InvalidInputError
from polars_embed.metadata import provider_of

VectorsLike = Sequence[float] | Sequence[Sequence[float]] | np.ndarray | pl.Series


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
