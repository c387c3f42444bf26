"""Rows on their way into a table: every accepted form as one DataFrame, checked against the declaration.

Every check runs before anything is embedded or written, and a refusal quotes the
record by its id and names the field: ``record 'doc1': meta.year must be integer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from polars_embed.errors import DimensionMismatchError, ValidationError
from polars_embed.metadata import provider_of
from polars_embed.namespaces._vectors import null_where
from polars_embed.tables._declaration import Declaration, Model, VectorColumn, check_metadata_schema

RowsLike = pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatch | Sequence[Mapping[str, Any] | Model]
_QUOTED = 60  # characters of an id quoted in a message
_SHOWN = 5  # ids listed in a message


def record(identifier: Any) -> str:
    """How a message names a record: ``record 'doc1'``."""
    text = identifier if isinstance(identifier, str) else str(identifier)
    return f"record {text[:_QUOTED] + '…' if len(text) > _QUOTED else text!r}"


def listed(ids: Iterable[str]) -> str:
    """A few ids for a message, and how many more there are."""
    ids = list(ids)
    shown = ", ".join(repr(identifier[:_QUOTED]) for identifier in ids[:_SHOWN])
    return shown + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def as_frame(rows: RowsLike, declaration: Declaration) -> pl.DataFrame:
    """Rows as a DataFrame: a Polars or Arrow frame as it is, records (dicts, Models) column by column."""
    if isinstance(rows, pl.LazyFrame):
        return rows.collect()
    if isinstance(rows, pl.DataFrame):
        return rows
    if isinstance(rows, pa.Table | pa.RecordBatch):
        frame = pl.from_arrow(rows)
        assert isinstance(frame, pl.DataFrame)
        return frame
    if isinstance(rows, Mapping | Model | str) or not isinstance(rows, Sequence):
        raise ValidationError(
            f"rows are a Polars or Arrow frame or a list of records (dicts or pe.Model instances), "
            f"got {type(rows).__name__}; wrap a single record in a list"
        )
    records = [item.to_dict() if isinstance(item, Model) else item for item in rows]
    bad = next((item for item in records if not isinstance(item, Mapping)), None)
    if bad is not None:
        raise ValidationError(f"a list of rows holds dicts or pe.Model instances, got a {type(bad).__name__}")
    names = list(dict.fromkeys(name for item in records for name in item))
    vector_names = set(declaration.vector_names)
    columns = {}
    for name in names:
        values = [item.get(name) for item in records]
        if name in vector_names:
            columns[name] = _vectors_from_records(name, values, records, declaration.id)
        elif name == declaration.metadata:
            columns[name] = pl.Series(name, [_as_json(value) for value in values], dtype=pl.String)
        else:
            dtype = declaration.schema.get(name)
            try:
                columns[name] = pl.Series(name, values, dtype=dtype, strict=True)
            except (TypeError, ValueError, pl.exceptions.PolarsError):
                columns[name] = pl.Series(name, values, strict=False)  # the cast below names the bad record
    return pl.DataFrame(columns, height=len(records))


def _nulls(name: str, height: int, dtype: pl.DataType) -> pl.Series:
    return pl.repeat(None, height, dtype=dtype, eager=True).alias(name)


def _as_json(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValidationError(f"metadata must be JSON (dicts, lists, text, numbers): {error}") from None


def _vectors_from_records(
    name: str, values: list[Any], records: list[Mapping[str, Any]], id_name: str
) -> pl.Series:
    arrays = [None if value is None else np.asarray(value, dtype=np.float32) for value in values]
    widths = {array.shape for array in arrays if array is not None}
    if not widths:
        return _nulls(name, len(values), pl.Null)
    if len(widths) > 1 or len(next(iter(widths))) != 1:
        first = next(array for array in arrays if array is not None)
        odd = next(i for i, array in enumerate(arrays) if array is not None and array.shape != first.shape)
        raise ValidationError(
            f"{record(records[odd].get(id_name))}: {name} has shape {arrays[odd].shape}, but the other "
            f"vectors have shape {first.shape}; a vector is one row of numbers of the column's width"
        )
    (width,) = next(iter(widths))
    matrix = np.full((len(arrays), width), np.nan, dtype=np.float32)
    missing = np.array([array is None for array in arrays])
    for i, array in enumerate(arrays):
        if array is not None:
            matrix[i] = array
    return null_where(pl.Series(name, matrix), missing)


def prepare(rows: RowsLike, declaration: Declaration, *, table: str) -> pl.DataFrame:
    """The rows as the table's columns and types, every check passed; vectors not given are null.

    Raises :class:`ValidationError` (or :class:`DimensionMismatchError` for a vector
    of the wrong width) naming the first record that breaks the declaration.
    """
    frame = as_frame(rows, declaration)
    unknown = [name for name in frame.columns if name not in declaration.columns]
    if unknown:
        raise ValidationError(
            f"the rows have columns {unknown} that table {table!r} does not declare; its columns are "
            f"{declaration.columns}"
        )
    if declaration.id not in frame.columns:
        raise ValidationError(f"the rows have no id column {declaration.id!r}; every record needs an id")
    ids = frame[declaration.id]
    columns = []
    for name, dtype in declaration.schema.items():
        if name in frame.columns:
            columns.append(_cast(frame[name], dtype, ids, metadata=name == declaration.metadata))
        elif name in declaration.defaults:
            columns.append(
                pl.repeat(declaration.defaults[name], frame.height, dtype=dtype, eager=True).alias(name)
            )
        elif name in declaration.required:
            raise ValidationError(f"the rows have no column {name!r}, which table {table!r} requires")
        else:
            columns.append(_nulls(name, frame.height, dtype))
    prepared = pl.DataFrame(columns, height=frame.height)
    _check_ids(prepared[declaration.id], declaration.id_max_length)
    ids = prepared[declaration.id]
    for name in sorted(declaration.required):
        nulls = prepared[name].is_null()
        if nulls.any():
            raise ValidationError(
                f"{record(ids.filter(nulls)[0])}: {name} is null, but table {table!r} requires it; "
                f"give every record a {name}"
            )
    if declaration.metadata is not None:
        _check_metadata(prepared[declaration.metadata], ids, declaration)
    vectors = [
        _given_vectors(frame[column.name], column, ids, table)
        if column.name in frame.columns
        else _nulls(column.name, frame.height, pl.Array(pl.Float32, column.width))
        for column in declaration.vectors
    ]
    return prepared.with_columns(vectors)


def _cast(values: pl.Series, dtype: pl.DataType, ids: pl.Series, *, metadata: bool) -> pl.Series:
    if metadata:
        values = _metadata_text(values, ids)
    if values.dtype == dtype:
        return values
    cast = values.cast(dtype, strict=False)
    lost = cast.is_null() & values.is_not_null()
    if lost.any():
        bad = values.filter(lost)[0]
        raise ValidationError(
            f"{record(ids.filter(lost)[0])}: {values.name} is {bad!r} ({values.dtype}), which is not "
            f"a {dtype}; convert the column first"
        )
    return cast


def _metadata_text(values: pl.Series, ids: pl.Series) -> pl.Series:
    """Metadata as JSON text: JSON text as given, a Struct column without its null fields."""
    if values.dtype in (pl.String, pl.Null):
        return values.cast(pl.String)
    if isinstance(values.dtype, pl.Struct):
        # A struct has every field in every row; a JSON object need not, so null fields go.
        return pl.Series(
            values.name, [_as_json(_without_nulls(value)) for value in values.to_list()], dtype=pl.String
        )
    raise ValidationError(
        f"{record(ids[0]) if len(ids) else 'the rows'}: metadata column {values.name!r} is {values.dtype}; "
        "give dicts, a Struct column or JSON text"
    )


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _check_ids(ids: pl.Series, max_length: int) -> None:
    empty = ids.is_null() | (ids.str.len_chars() == 0)
    if empty.any():
        row = int(empty.arg_max())
        raise ValidationError(f"the record at row {row} has no id; every record needs a non-empty text id")
    long = ids.str.len_chars() > max_length
    if long.any():
        bad = ids.filter(long)[0]
        raise ValidationError(
            f"{record(bad)}: its id is {len(bad)} characters long, over the table's limit of {max_length}; "
            "shorten it (or declare pe.Id(max_length=...))"
        )
    repeated = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
    if len(repeated):
        raise ValidationError(
            f"ids {listed(repeated)} appear more than once in the rows; give each record one row"
        )


def _check_metadata(texts: pl.Series, ids: pl.Series, declaration: Declaration) -> None:
    validator = None
    if declaration.metadata_schema is not None:
        validator = check_metadata_schema(declaration.metadata_schema)(declaration.metadata_schema)
    failures = []
    for identifier, text in zip(ids, texts, strict=True):
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError as error:
            failures.append(f"{record(identifier)}: {texts.name} is not valid JSON ({error})")
            continue
        if validator is not None:
            problem = _schema_problem(validator, value, texts.name)
            if problem is not None:
                failures.append(f"{record(identifier)}: {problem}")
    if failures:
        more = f" ({len(failures) - 1} more records fail too)" if len(failures) > 1 else ""
        raise ValidationError(f"{failures[0]}{more}; fix the metadata, nothing was written")


def _schema_problem(validator: Any, value: Any, column: str) -> str | None:
    """The most relevant way ``value`` breaks the schema, as ``meta.year must be integer``."""
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    path = column + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
    )
    expected = error.validator_value
    if error.validator == "type":
        kinds = [expected] if isinstance(expected, str) else list(expected)
        return f"{path} must be {' or '.join(kinds)}"
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = next((name for name in expected if name not in error.instance), "?")
        return f"{path}.{missing} is required"
    if error.validator == "enum":
        return f"{path} must be one of {json.dumps(expected)[:200]}"
    return f"{path}: {error.message[:200]}"


def _given_vectors(values: pl.Series, column: VectorColumn, ids: pl.Series, table: str) -> pl.Series:
    """Vectors that came with the rows as ``pl.Array(pl.Float32, d)``; width, values and model checked."""
    target = pl.Array(pl.Float32, column.width)
    if values.dtype == pl.Null:
        return values.cast(target)
    if isinstance(values.dtype, pl.Array | pl.List) and values.dtype.inner.is_numeric():
        widths = values.list.len() if isinstance(values.dtype, pl.List) else None
        width = values.dtype.shape[0] if isinstance(values.dtype, pl.Array) else None
        wrong = (widths != column.width) if widths is not None else None
        if (width is not None and width != column.width) or (wrong is not None and wrong.any()):
            row = 0 if wrong is None else int(wrong.fill_null(False).arg_max())
            given = width if width is not None else widths[row]
            made_by = provider_of(values)
            raise DimensionMismatchError(
                f"{record(ids[row])}: {column.name} has width {given}"
                f"{f' (made by {made_by.label})' if made_by else ''}, but column {column.name!r} of "
                f"{table!r} holds vectors of width {column.width} made by {column.spec.label}; "
                "give vectors from that model, or leave the column out to embed the source"
            )
    else:
        raise ValidationError(
            f"{record(ids[0]) if len(ids) else 'the rows'}: {column.name} is {values.dtype}; vectors are "
            "pl.Array(pl.Float32, d) (or lists of numbers)"
        )
    vectors = values.cast(target)
    present = vectors.is_not_null()
    matrix = vectors.to_numpy()
    finite = np.isfinite(matrix).all(axis=1)
    broken = present.to_numpy() & ~finite
    if broken.any():
        raise ValidationError(
            f"{record(ids[int(np.argmax(broken))])}: {column.name} holds NaN or infinite values; "
            "vectors must be finite"
        )
    made_by = provider_of(vectors)
    if made_by is not None and not column.made_by(made_by):
        first = int(present.arg_max())
        raise ValidationError(
            f"{record(ids[first])}: {column.name} was made by {made_by.label} ({made_by.spec()}), but column "
            f"{column.name!r} of {table!r} holds vectors of {column.spec.label} "
            f"({dict(column.spec.options)}); "
            "vectors of two models cannot be searched together"
        )
    return vectors
