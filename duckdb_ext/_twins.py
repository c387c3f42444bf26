"""Searches of a DuckDB vector column that rank its rows in memory, on a twin kept for the connection.

The first ``search(..., quantized=...)`` of a column reads its vectors once and
makes their twin (:func:`polars_embed.quantize`), kept in this process for the
connection, and dropped with it. A search runs the coarse pass on the twin, then
reads the candidates' float32 vectors back from the table by row id and rescores
them exactly, so the scores are exact and the float32 vectors never stay in memory.
``search(..., in_memory=True)`` keeps a float32 copy of the vectors instead (with
their squared norms), which :func:`polars_embed.topk` ranks exactly.

DuckDB tells nothing of writes, so each search first checks that the twin is
still of the table's rows, and makes it again when it is not. A row id names the
same vector for as long as the row lives: an update of the vector column is a
delete and an insert in DuckDB (the row gets a new row id). What the check reads:

- the table's oid, which a table dropped and made again under its name changes;
- its row count and last row id, which every insert, delete and vector update changes;
- the vectors of a few rows spread over the table, compared exactly: a checkpoint
  after deletes can move rows to lower row ids, and would move these too.

One write escapes it: ``ALTER TABLE ... ALTER ... USING`` rewrites vectors in place,
under the same row ids, and is seen only where it changes one of the rows compared
(a rewrite of every row always is). Until a write that is seen, a quantised search
may miss the rows it rewrote (it rescores what it finds on the table's vectors), and
a search on the copy ranks them by their old vectors.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from duckdb_ext import _catalog
from duckdb_ext._catalog import Column, Table, quote_identifier, registered, row_id_condition
from polars_embed.kernels import squared_norms, take_rows, topk
from polars_embed.quantization import (
    QuantizedSearch,
    QuantizedVectors,
    quantize,
    quantized_candidates,
    sampled_rows,
    share_found,
)

__all__ = ["twin_recall", "twin_topk"]

log = logging.getLogger(__name__)

# Rows per Arrow record batch when a column's vectors are read to make its twin: as many
# as topk's blocks for one query, so the copy's chunks are its blocks (at 65,536 a search
# of 1M x 384 ran twice the blocks and took 3 ms longer).
_BATCH_ROWS = 131072
# Rows whose vectors the freshness check compares (the last one always among them).
_SAMPLES = 8
# Past this many ids a listing costs more to parse than the scan: on 1.5.5, 50,000 rows of a
# 1M-row file took 428 ms listed and 526 ms joined, 200,000 rows 1.9 s and 0.75 s.
_LISTED_ROWS_AT_MOST = 50_000


@dataclass(frozen=True)
class _TableState:
    oid: int
    rows: int
    last_row: int | None


@dataclass(frozen=True, eq=False)
class _Copy:
    """The float32 vectors, in chunks, and their squared norms."""

    chunks: list[np.ndarray]
    squared_norms: np.ndarray


@dataclass(frozen=True, eq=False)
class _Twin:
    """What the rows are ranked on: a quantised twin, or (kind "float32") the vectors' copy."""

    ranked: QuantizedVectors | _Copy
    row_ids: np.ndarray  # the table's row id of each twin row, ascending
    state: _TableState
    sample_rows: np.ndarray
    sample_vectors: np.ndarray


# Per connection, by (database, schema, table, column, kind): its twins.
_twins: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, dict[tuple[str, ...], _Twin]] = (
    weakref.WeakKeyDictionary()
)


def twin_topk(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    vectors: Column,
    query: np.ndarray,
    k: int,
    where: str | None,
    search: QuantizedSearch | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The row ids and exact cosine scores of the ``k`` best rows passing ``where``, found
    through the column's twin of ``search``'s kind, or ranked on the copy of its vectors
    without one; to be called within one snapshot."""
    twin = _current_twin(con, table, vectors, "float32" if search is None else search.kind)
    valid = None if where is None else _passing(con, table, twin, where)
    return _ranked_on(con, table, vectors, twin, query, k, valid, search)


def _ranked_on(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    vectors: Column,
    twin: _Twin,
    query: np.ndarray,
    k: int,
    valid: np.ndarray | None,
    search: QuantizedSearch | None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`twin_topk` on a twin already checked against the table."""
    if isinstance(twin.ranked, _Copy):
        copy = twin.ranked
        (rows,), (scores,) = topk(query, copy.chunks, k, valid=valid, squared_norms=copy.squared_norms)
        kept = rows >= 0
        return twin.row_ids[rows[kept]], scores[kept]
    assert search is not None
    (candidates,) = quantized_candidates(query, twin.ranked, k, oversample=search.oversample, valid=valid)
    candidates = np.unique(candidates[candidates >= 0])  # ascending row ids: ties go to the lower
    if candidates.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    row_ids, values = _vectors_of(con, table, vectors, twin.row_ids[candidates])
    (picked,), (scores,) = topk(query, values, k, normalized=False)
    kept = picked >= 0
    return row_ids[picked[kept]], scores[kept]


def _current_twin(con: duckdb.DuckDBPyConnection, table: Table, vectors: Column, kind: str) -> _Twin:
    """The column's twin of this kind, made again unless it is of the table's rows as they are."""
    twins = _twins.setdefault(con, {})
    key = (table.database, table.schema, table.name, vectors.name, kind)
    twin = twins.get(key)
    state, rows, values = _observed(con, table, vectors, None if twin is None else twin.sample_rows)
    if (
        twin is not None
        and twin.state == state
        and np.array_equal(rows, twin.sample_rows)
        and np.array_equal(values, twin.sample_vectors, equal_nan=True)
    ):
        return twin
    log.info("making the %s twin of %s.%s for its %d rows", kind, table, vectors.name, state.rows)
    twins[key] = twin = _make_twin(con, table, vectors, kind, state)
    return twin


def _observed(
    con: duckdb.DuckDBPyConnection, table: Table, vectors: Column, sample_rows: np.ndarray | None
) -> tuple[_TableState, np.ndarray, np.ndarray]:
    """The table's state, and which of ``sample_rows`` it holds with their vectors, in one
    statement: on a search of a large table each statement costs a millisecond or more."""
    listed = row_id_condition(table.sql, np.zeros(0, dtype=np.int64) if sample_rows is None else sample_rows)
    found = con.sql(
        f"WITH state AS (SELECT count(*) AS n_rows, max(rowid) AS last_row FROM {table.sql}) "
        "SELECT state.n_rows, state.last_row, sampled.rowid, sampled.vector FROM state LEFT JOIN "
        f"(SELECT rowid, {vectors.sql} AS vector FROM {table.sql} WHERE {listed}) "
        "AS sampled ON true ORDER BY sampled.rowid"
    ).to_arrow_table()
    n_rows, last_row = found.column(0)[0].as_py(), found.column(1)[0].as_py()
    sampled = found.filter(found.column(2).is_valid())
    state = _TableState(table.oid, n_rows, last_row)
    return state, sampled.column(2).to_numpy(), vectors.matrix(sampled.column(3))


def twin_recall(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    vectors: Column,
    search: QuantizedSearch,
    k: int,
    sample: int,
    seed: int,
) -> float:
    """The share of the exact top ``k`` that :func:`twin_topk` finds, for ``sample`` of the
    table's rows drawn at random as queries, each left out of both lists; within one snapshot."""
    twin = _current_twin(con, table, vectors, search.kind)
    assert isinstance(twin.ranked, QuantizedVectors)
    ids, chunks = _read_vectors(con, table, vectors)
    picked = sampled_rows(twin.ranked, sample, seed)
    if picked.size == 0:
        return 1.0
    queries = take_rows(chunks, picked)
    exact, _ = topk(queries, chunks, k + 1, valid=twin.ranked.searchable)
    found = np.full(exact.shape, -1, dtype=np.int64)
    for i, query in enumerate(queries):
        rows, _ = _ranked_on(con, table, vectors, twin, query, k + 1, None, search)
        found[i, : rows.size] = np.searchsorted(ids, rows)
    return share_found(found, np.asarray(exact), k, left_out=picked)


def _make_twin(
    con: duckdb.DuckDBPyConnection, table: Table, vectors: Column, kind: str, state: _TableState
) -> _Twin:
    ids, chunks = _read_vectors(con, table, vectors)
    if kind == "float32":
        # The copy goes into numpy's own memory, a chunk at a time: numpy asks Linux for huge
        # pages, Arrow's allocator does not, and a matrix-vector product over DuckDB's buffers
        # of 1M x 384 took 61.6 ms against 53.7 ms (benchmarks/README.md).
        for number, chunk in enumerate(chunks):
            chunks[number] = np.array(chunk)
        ranked: QuantizedVectors | _Copy = _Copy(chunks, squared_norms(chunks))
    else:
        ranked = quantize(chunks, kind)  # type: ignore[arg-type]
    picked = np.unique(np.linspace(0, ids.size - 1, _SAMPLES).astype(np.int64)) if ids.size else ids
    return _Twin(ranked, ids, state, ids[picked], take_rows(chunks, picked))


def _read_vectors(
    con: duckdb.DuckDBPyConnection, table: Table, vectors: Column
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The row ids of the rows with a vector, ascending, and those vectors, in chunks."""
    row_ids, chunks = [], []
    query = f"SELECT rowid, {vectors.sql} FROM {table.sql} WHERE {vectors.sql} IS NOT NULL"
    for batch in con.sql(query).to_arrow_reader(_BATCH_ROWS):
        row_ids.append(batch.column(0).to_numpy())
        chunks.append(vectors.matrix(batch.column(1)))
    ids = np.concatenate(row_ids) if row_ids else np.zeros(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # a scan may not keep the rows in order
    if not chunks:
        return ids, [np.zeros((0, vectors.width), dtype=np.float32)]
    if np.any(order != np.arange(ids.size)):
        return ids[order], [np.concatenate(chunks)[order]]
    return ids, chunks


def _passing(con: duckdb.DuckDBPyConnection, table: Table, twin: _Twin, where: str) -> np.ndarray:
    """Which of the twin's rows pass the SQL condition ``where``."""
    passing = con.sql(
        f"SELECT rowid FROM {table.sql} AS {quote_identifier(table.name)} WHERE (\n{where}\n)"
    ).fetchnumpy()["rowid"]
    positions = np.searchsorted(twin.row_ids, passing)
    inside = positions < twin.row_ids.size
    positions = positions[inside][twin.row_ids[positions[inside]] == passing[inside]]
    valid = np.zeros(twin.row_ids.size, dtype=bool)
    valid[positions] = True
    return valid


def _vectors_of(
    con: duckdb.DuckDBPyConnection, table: Table, vectors: Column, row_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The row ids among ``row_ids`` that the table holds, ascending, and their vectors, read
    by row id (see ``duckdb_ext._catalog.JOINS_BY_ROW_ID``)."""
    if row_ids.size == 0:
        return row_ids, np.zeros((0, vectors.width), dtype=np.float32)
    selected = f"SELECT rowid, {vectors.sql} FROM {table.sql} WHERE"
    if _catalog.JOINS_BY_ROW_ID or row_ids.size > _LISTED_ROWS_AT_MOST:
        with registered(con, pa.table({"row_id": row_ids})) as wanted:
            found = con.sql(f"{selected} rowid IN (SELECT row_id FROM {wanted})").to_arrow_table()
    else:
        found = con.sql(f"{selected} {row_id_condition(table.sql, row_ids)}").to_arrow_table()
    # Sorted here: an ORDER BY of 2,000 rows took 2.6 ms on duckdb 2.0.1, numpy 0.3 ms.
    found_ids = found.column(0).to_numpy()
    order = np.argsort(found_ids)
    return found_ids[order], vectors.matrix(found.column(1))[order]
