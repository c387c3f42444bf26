"""Search over an embedding table: a query builder, its two paths, and the agreement of two columns.

- **Exact** (the default): the column's vectors are read once through Arrow and
  kept in memory while the table is unchanged; filters become the set of ids
  that pass them (SQL runs in DuckDB, Polars expressions on the columns they
  use), and :func:`polars_embed.topk` ranks only those rows, so a filtered
  search returns exactly ``k`` records whenever ``k`` match.
- **HNSW**, when the column has an index (:meth:`Table.create_index`) and the
  filters are SQL: :func:`duckdb_ext.search`, with its over-fetch and exact
  fallback for filtered searches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

import duckdb_ext
from duckdb_ext._catalog import has_hnsw_index, quote_identifier, quote_literal
from polars_embed.engine import embed_queries
from polars_embed.errors import ConfigError, DimensionMismatchError
from polars_embed.kernels import check_k, topk
from polars_embed.namespaces._vectors import parse_query
from polars_embed.tables._declaration import VectorColumn

if TYPE_CHECKING:
    from polars_embed.tables._table import Table

_ROW_ID = "__polars_embed_row_id"

Filter = pl.Expr | str
"""A filter: a Polars expression over the table's columns, or a SQL condition (inserted as written)."""


@dataclass(frozen=True)
class Search:
    """A search of a table, refined with :meth:`where`, :meth:`limit`, :meth:`include` and
    :meth:`exclude`, and run by :meth:`to_polars` or :meth:`to_arrow`.

    The result has the table's columns and ``score`` (cosine similarity,
    ``pl.Float32``), best first; a batch of queries adds ``query_index`` first.
    """

    table: Table
    column: VectorColumn
    texts: tuple[str, ...] | None
    vectors: np.ndarray | None
    single: bool
    k: int
    filters: tuple[Filter, ...] = ()
    included: Mapping[str, Any] | None = None
    excluded: Mapping[str, Any] | None = None
    exact: bool = False
    leave_out: str | None = None

    @classmethod
    def of(
        cls,
        table: Table,
        query: Any,
        *,
        on: str | None,
        k: int,
        where: Filter | None,
        include: Mapping[str, Any] | None,
        exclude: Mapping[str, Any] | None,
        exact: bool,
        leave_out: str | None = None,
    ) -> Search:
        column = table._declaration.vector(on)
        try:
            texts, vectors, single = parse_query(query)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"a query is a text, a vector, or a list of either: {error}") from None
        if texts is not None:
            table.provider(column.name)  # a column whose provider cannot be built says so now, not when run
        if vectors is not None and vectors.shape[1] != column.width:
            raise DimensionMismatchError(
                f"the query vectors have width {vectors.shape[1]}, but column {column.name!r} of table "
                f"{table.name!r} holds vectors of width {column.width} made by {column.spec.label}"
            )
        return cls(
            table,
            column,
            texts,
            vectors,
            single,
            check_k(k),
            () if where is None else (where,),
            include,
            exclude,
            exact,
            leave_out,
        )

    def where(self, condition: Filter) -> Search:
        """Also require ``condition``: a Polars expression or a SQL condition."""
        return dataclasses.replace(self, filters=(*self.filters, condition))

    def limit(self, k: int) -> Search:
        """Return ``k`` records per query."""
        return dataclasses.replace(self, k=check_k(k))

    def include(self, values: Mapping[str, Any]) -> Search:
        """Keep records whose metadata has each key equal to its value (or to one of a list of values)."""
        return dataclasses.replace(self, included={**(self.included or {}), **values})

    def exclude(self, values: Mapping[str, Any]) -> Search:
        """Drop records whose metadata has any key equal to its value (or to one of a list of values)."""
        return dataclasses.replace(self, excluded={**(self.excluded or {}), **values})

    def to_arrow(self) -> pa.Table:
        """The result as an Arrow table."""
        return self.to_polars().to_arrow()

    def to_polars(self) -> pl.DataFrame:
        """The result as a DataFrame: ``[query_index,] <table columns>, score``, best first per query."""
        queries = self.query_vectors()
        if self._through_index():
            result = self._indexed(queries)
        else:
            hits = self.hits(queries)
            rows = self.table._rows_by_id(hits[self.table.id_column], hits[_ROW_ID].to_numpy())
            result = hits.join(rows, on=self.table.id_column, how="inner", maintain_order="left")
            result = result.select("query_index", *self.table.schema, "score")
        return result.drop("query_index") if self.single else result

    def query_vectors(self) -> np.ndarray:
        """The queries as a ``(q, d)`` float32 array, text embedded by the column's own provider."""
        if self.vectors is not None:
            return self.vectors
        assert self.texts is not None
        return embed_queries(list(self.texts), self.table.provider(self.column.name))

    def hits(self, queries: np.ndarray) -> pl.DataFrame:
        """The exact top-k of each query: ``query_index``, the id column, ``score``, and where the
        record was when its vector was read."""
        kept = self.table._vectors_for_search(self.column)
        matching = self.table._matching_ids(self.filters, self.included, self.excluded)
        valid = None if matching is None else kept.ids.is_in(matching.implode()).to_numpy()
        if self.leave_out is not None:
            others = (kept.ids != self.leave_out).to_numpy()
            valid = others if valid is None else valid & others
        if len(kept.ids) == 0 or (valid is not None and not valid.any()):
            indices = np.zeros((len(queries), 0), dtype=np.int64)
            scores = np.zeros((len(queries), 0), dtype=np.float32)
        else:
            indices, scores = topk(queries, kept.matrix, self.k, valid=valid, normalized=kept.normalized)
        found = indices >= 0
        query_index = np.repeat(np.arange(len(queries), dtype=np.uint32), indices.shape[1]).reshape(
            indices.shape
        )
        return pl.DataFrame(
            {
                "query_index": query_index[found],
                self.table.id_column: kept.ids.gather(indices[found]),
                "score": scores[found],
                _ROW_ID: kept.row_ids[indices[found]],
            }
        )

    def _through_index(self) -> bool:
        if self.exact or any(isinstance(condition, pl.Expr) for condition in self.filters):
            return False
        with self.table._database._lock:
            return has_hnsw_index(self.table._database.connection, self.table._located)

    def _indexed(self, queries: np.ndarray) -> pl.DataFrame:
        conditions = [condition for condition in self.filters if isinstance(condition, str)]
        conditions += self.table._metadata_conditions(self.included, keep=True)
        conditions += self.table._metadata_conditions(self.excluded, keep=False)
        if self.leave_out is not None:
            conditions.append(f"{quote_identifier(self.table.id_column)} <> {quote_literal(self.leave_out)}")
        where = " AND ".join(f"({condition})" for condition in conditions) or None
        frames = []
        with self.table._database._lock:
            connection = self.table._database.connection
            for number, query in enumerate(queries):
                found = duckdb_ext.search(
                    connection, self.table.name, self.column.name, query, k=self.k, where=where
                ).to_arrow_table()
                frame = pl.from_arrow(found)
                assert isinstance(frame, pl.DataFrame)
                frames.append(frame.select(pl.lit(number, dtype=pl.UInt32).alias("query_index"), pl.all()))
        return pl.concat(frames).with_columns(pl.col("score").cast(pl.Float32))

    def __repr__(self) -> str:
        query = self.texts if self.texts is not None else f"<{len(self.vectors)} vectors>"  # type: ignore[arg-type]
        return f"Search({self.table.name!r}, {query}, on={self.column.name!r}, k={self.k})"


@dataclass(frozen=True)
class Agreement:
    """How far two vector columns agree on a sample of queries.

    Attributes
    ----------
    first, second
        The two vector columns.
    k
        The size of each top-k compared.
    overlaps
        For each query, the share of ``first``'s top-k that ``second``'s top-k holds too.
    """

    first: str
    second: str
    k: int
    overlaps: np.ndarray

    @property
    def mean_overlap(self) -> float:
        """The mean share of each query's top-k that the two columns have in common (1.0: the same)."""
        return float(self.overlaps.mean()) if len(self.overlaps) else float("nan")

    def __str__(self) -> str:
        return (
            f"top-{self.k} overlap of {self.first!r} and {self.second!r} on {len(self.overlaps)} queries: "
            f"{self.mean_overlap:.2f}"
        )


def agreement(
    table: Table, first: str, second: str, *, queries: Sequence[str] | None, sample: int, k: int
) -> Agreement:
    """See :meth:`Table.agreement`."""
    columns = [table._declaration.vector(first), table._declaration.vector(second)]
    both = " AND ".join(f"{quote_identifier(column.name)} IS NOT NULL" for column in columns)
    if queries is None:
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
            raise ConfigError(f"sample must be a positive integer, got {sample!r}")
        source = quote_identifier(columns[0].source)
        queries = (
            table._frame(
                f"SELECT {source} FROM {quote_identifier(table.name)} WHERE {both} AND trim({source}) <> '' "
                f"ORDER BY hash({quote_identifier(table.id_column)}) LIMIT {sample}"
            )
            .to_series()
            .to_list()
        )
    if not queries:
        raise ConfigError(
            f"no record has both {first!r} and {second!r} vectors yet to compare them on; fill them first"
        )
    tops = []
    for column in columns:
        search = Search.of(
            table, list(queries), on=column.name, k=k, where=both, include=None, exclude=None, exact=True
        )
        hits = search.hits(search.query_vectors())
        tops.append(hits.group_by("query_index").agg(pl.col(table.id_column)))
    joined = tops[0].join(tops[1], on="query_index", how="full", coalesce=True, suffix="_second")
    overlaps = [
        len(set(a or ()) & set(b or ())) / k
        for a, b in zip(
            joined[table.id_column].to_list(), joined[f"{table.id_column}_second"].to_list(), strict=True
        )
    ]
    return Agreement(first, second, k, np.array(overlaps, dtype=np.float64))
