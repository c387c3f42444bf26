"""Search over an embedding table: a query builder, its two paths, and the agreement of two columns.

- **Exact** (the default): the column's vectors are read once through Arrow and
  kept in memory while the table is unchanged; filters become the set of ids
  that pass them (SQL runs in DuckDB, Polars expressions on the columns they
  use), and :func:`polars_embed.topk` ranks only those rows, so a filtered
  search returns exactly ``k`` records whenever ``k`` match.
- **HNSW**, when the column has an index (:meth:`Table.create_index`) and the
  filters are SQL: :func:`duckdb_ext.search`, with its over-fetch and exact
  fallback for filtered searches.

A **hybrid** search ranks the vectors exactly (as above) and the words of the
column's source text by BM25 over the same filtered records (DuckDB's fts
extension, through :mod:`duckdb_ext.fts`, its documents keyed by record id), and
the two rankings are fused and reranked by :class:`polars_embed.keywords.Ranking`,
the rule every front end shares. The full-text index is built once per table
state: it is labelled with the table's generation and record count, which every
write through the table (and :meth:`Table.refresh`) changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

import duckdb_ext
from duckdb_ext import fts
from duckdb_ext._catalog import has_hnsw_index, quote_identifier, quote_literal
from polars_embed.engine import embed_queries
from polars_embed.errors import ConfigError, DimensionMismatchError, MissingDependencyError, ReadOnlyError
from polars_embed.kernels import check_k, topk
from polars_embed.keywords import Fusion, Ranking
from polars_embed.namespaces._vectors import parse_query
from polars_embed.quantization import QuantizedSearch, quantized_topk
from polars_embed.registry import RerankerLike
from polars_embed.tables._declaration import VectorColumn

if TYPE_CHECKING:
    from polars_embed.tables._table import Table, _Vectors

_ROW_ID = "__polars_embed_row_id"

Filter = pl.Expr | str
"""A filter: a Polars expression over the table's columns, or a SQL condition (inserted as written)."""


@dataclass(frozen=True)
class Search:
    """A search of a table, refined with :meth:`where`, :meth:`limit`, :meth:`include` and
    :meth:`exclude`, and run by :meth:`to_polars` or :meth:`to_arrow`.

    The result has the table's columns and ``score`` (cosine similarity,
    ``pl.Float32``), best first; a batch of queries adds ``query_index`` first.
    A hybrid or reranked search's ``score`` is the fused score or the reranker's
    relevance, followed by ``vector_rank`` (and ``keyword_rank``, for hybrid).
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
    ranking: Ranking | None = None  # hybrid and reranked searches
    quantized: QuantizedSearch | None = None

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
        text: str | None = None,
        hybrid: bool = False,
        fusion: Fusion = "rrf",
        weight: float = 0.5,
        rerank: RerankerLike | None = None,
        rerank_top: int = 50,
        quantized: str | None = None,
        oversample: int | None = None,
    ) -> Search:
        column = table._declaration.vector(on)
        quantized_search = QuantizedSearch.check(quantized, oversample, exact_by="exact" if exact else None)
        try:
            texts, vectors, single = parse_query(query)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"a query is a text, a vector, or a list of either: {error}") from None
        ranking = Ranking.check(
            text=_keyword_text(table, column, text) if hybrid or rerank is not None else text,
            hybrid=hybrid,
            fusion=fusion,
            weight=weight,
            rerank=rerank,
            rerank_top=rerank_top,
        )
        if ranking is not None:
            _check_ranked(table, ranking, texts)
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
            ranking,
            quantized_search,
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
        if self.ranking is not None:
            result = self._ranked(queries, self.ranking)
        elif self._through_index():
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
        kept, indices, scores = self._vector_ranking(queries, self.k, self._matching())
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

    def _matching(self) -> pl.Series | None:
        """The ids of the records that pass the filters; None when there is none."""
        return self.table._matching_ids(self.filters, self.included, self.excluded)

    def _vector_ranking(
        self, queries: np.ndarray, depth: int, matching: pl.Series | None
    ) -> tuple[_Vectors, np.ndarray, np.ndarray]:
        """The kept vectors, and each query's ``depth`` best of those whose ids are ``matching``
        (positions in the kept vectors, ``-1`` past the last match, and their scores)."""
        kept = self.table._vectors_for_search(self.column)
        valid = None if matching is None else kept.ids.is_in(matching.implode()).to_numpy()
        if self.leave_out is not None:
            others = (kept.ids != self.leave_out).to_numpy()
            valid = others if valid is None else valid & others
        if len(kept.ids) == 0 or (valid is not None and not valid.any()):
            indices = np.zeros((len(queries), 0), dtype=np.int64)
            scores = np.zeros((len(queries), 0), dtype=np.float32)
        elif self.quantized is not None:
            twin = kept.twin(self.quantized.kind)
            indices, scores = quantized_topk(
                queries, kept.matrix, twin, depth, oversample=self.quantized.oversample, valid=valid
            )
        else:
            indices, scores = topk(queries, kept.matrix, depth, valid=valid, normalized=kept.normalized)
        return kept, indices, scores

    def _ranked(self, queries: np.ndarray, ranking: Ranking) -> pl.DataFrame:
        """A hybrid or reranked search: the vector and keyword rankings of the same filtered
        records, fused and reranked by ``ranking``, then the records read."""
        assert self.texts is not None  # checked by _check_ranked
        table, ident = self.table, self.table.id_column
        depth = ranking.depth(self.k)
        keywords = None
        with table._database._lock:  # both rankings of one table state, and the index as checked
            matching = self._matching()
            if ranking.keywords:
                _ready_keyword_index(table, ranking.text)
                keywords = _keyword_rankings(table, ranking.text, self.texts, depth, matching)
            kept, indices, scores = self._vector_ranking(queries, depth, matching)
        rows = _Rows.of(kept, None if keywords is None else pl.concat([ids for ids, _ in keywords]))
        frames = []
        for number, query in enumerate(self.texts):
            found = indices[number] >= 0
            fused = ranking.combine(
                query,
                (indices[number][found], scores[number][found]),
                None if keywords is None else rows.numbered(*keywords[number]),
                k=self.k,
                higher_is_better=True,
                texts_of=lambda numbers: _texts(table, ranking.text, rows.ids(numbers)),
            )
            frames.append(
                pl.DataFrame(
                    [
                        pl.Series("query_index", np.full(len(fused.rows), number, dtype=np.uint32)),
                        rows.ids(fused.rows),
                        pl.Series("score", fused.scores, dtype=pl.Float32),
                        pl.Series(_ROW_ID, rows.row_ids(fused.rows)),
                        *ranking.rank_columns(fused),
                    ]
                )
            )
        hits = pl.concat(frames)
        hints = hits[_ROW_ID]
        found = table._rows_by_id(hits[ident], None if hints.has_nulls() else hints.to_numpy())
        result = hits.join(found, on=ident, how="inner", maintain_order="left")
        return result.select("query_index", *table.schema, "score", *ranking.columns)

    def _through_index(self) -> bool:
        if self.exact or self.quantized is not None:
            return False
        if any(isinstance(condition, pl.Expr) for condition in self.filters):
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
class _Rows:
    """How a hybrid search numbers the records it fuses: the kept vectors' positions, then
    the records that only the keywords found (they have no vector), from ``len(kept.ids)`` on."""

    kept: _Vectors
    numbers: pl.DataFrame  # the id and number of every record a keyword ranking found
    extra: pl.Series  # the ids of those without a kept vector, in the order of their numbers

    @classmethod
    def of(cls, kept: _Vectors, found: pl.Series | None) -> _Rows:
        ident = kept.ids.name
        found = pl.Series(ident, [], dtype=pl.String) if found is None else found.unique(maintain_order=True)
        numbered = kept.ids.to_frame().with_row_index("number").join(found.to_frame(), on=ident, how="semi")
        extra = found.filter(~found.is_in(numbered[ident].implode()))
        numbers = pl.concat(
            [
                numbered.select(ident, pl.col("number").cast(pl.Int64)),
                pl.DataFrame({ident: extra, "number": np.arange(len(extra)) + len(kept.ids)}),
            ]
        )
        return cls(kept, numbers, extra)

    def numbered(self, ids: pl.Series, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A keyword ranking of records by id, as a ranking of their numbers."""
        ident = self.kept.ids.name
        joined = ids.to_frame().join(self.numbers, on=ident, how="left", maintain_order="left")
        return joined["number"].to_numpy(), scores

    def ids(self, numbers: np.ndarray) -> pl.Series:
        """The ids of the records with these numbers, in their order."""
        inside = numbers < len(self.kept.ids)
        ids = pl.concat(
            [self.kept.ids.gather(numbers[inside]), self.extra.gather(numbers[~inside] - len(self.kept.ids))]
        )
        return ids.gather(np.argsort(np.concatenate([np.flatnonzero(inside), np.flatnonzero(~inside)])))

    def row_ids(self, numbers: np.ndarray) -> pl.Series:
        """Where each record was when its vector was read (null for one without a vector)."""
        inside = numbers < len(self.kept.ids)
        hints = np.zeros(len(numbers), dtype=np.int64)
        hints[inside] = self.kept.row_ids[numbers[inside]]
        return pl.Series(_ROW_ID, hints).scatter(np.flatnonzero(~inside), None)


def _keyword_text(table: Table, column: VectorColumn, text: str | None) -> str:
    """The text column whose words a hybrid or reranked search ranks: ``text``, else the vector
    column's own source, which must be text."""
    if text is not None:
        return text
    if table._declaration.schema[column.source] != pl.String:
        raise ConfigError(
            f"column {column.name!r} of table {table.name!r} is embedded from images in {column.source!r}, "
            "which have no words to rank or read: pass text= a text column of the table"
        )
    return column.source


def _check_ranked(table: Table, ranking: Ranking, texts: tuple[str, ...] | None) -> None:
    """A hybrid or reranked search needs text queries, a text column, and free names for its
    rank columns; a hybrid one needs the fts extension."""
    if texts is None:
        raise ConfigError(
            "hybrid and reranked searches need text queries (their words are ranked and read), "
            "not vectors: pass the query text"
        )
    schema = table._declaration.schema
    if schema.get(ranking.text) != pl.String:
        raise ConfigError(
            f"text= names {ranking.text!r}, which is not a text column of table {table.name!r}: pass one of "
            f"{[name for name, dtype in schema.items() if dtype == pl.String]}"
        )
    taken = [name for name in ranking.columns if name in table.schema]
    if taken:
        raise ConfigError(
            f"table {table.name!r} has a column named {taken[0]!r}, which a hybrid or reranked search adds; "
            "rename it first"
        )
    if ranking.keywords:
        with table._database._lock:
            try:
                fts.load_fts(table._database.connection)
            except MissingDependencyError:
                raise MissingDependencyError(
                    f"a hybrid search of table {table.name!r} ranks keywords with DuckDB's fts extension, "
                    f"which is not available for duckdb {duckdb.__version__}: install polars-embed[fts] "
                    "(it pins duckdb to a version fts is packaged for), or search without hybrid=True"
                ) from None


def _ready_keyword_index(table: Table, text: str) -> None:
    """Have the table's full-text index cover ``text`` as the records are now: built once per
    table state, since a write through the table, or a plain SQL insert or delete, makes a new one.

    The label is read each time (a few catalog lookups): another handle on the table, or
    ``duckdb_ext``, may have rebuilt the index, over another column, since."""
    database = table._database
    with database._lock:
        state = table._state()
        connection, located = database.connection, table._located
        version = f"{text} by {table.id_column} at generation {state[0]} with {state[1]} records"
        if database.read_only and fts.index_version(connection, located) != version:
            raise ReadOnlyError(
                f"table {table.name!r} has no keyword index of {text!r} for its records as they are, and the "
                "database is open read-only: run one hybrid search where it is open for writing, then read"
            )
        try:
            fts.prepare_index(
                connection, located, fts.text_column(located, text), key=table.id_column, version=version
            )
        except duckdb.Error as error:
            raise table._refused(error) from None


def _keyword_rankings(
    table: Table, text: str, queries: Sequence[str], depth: int, matching: pl.Series | None
) -> list[tuple[pl.Series, np.ndarray]]:
    """Each query's ``depth`` best records by BM25 of ``text`` among the ``matching`` ones (ids,
    best first, and their scores)."""
    ident = table.id_column
    rankings = []
    with table._database._lock, table._staged(matching) as staged:
        connection, located = table._database.connection, table._located
        where = (
            None
            if matching is None
            else f"{quote_identifier(ident)} IN (SELECT {quote_identifier(ident)} FROM {staged})"
        )
        column = fts.text_column(located, text)
        for query in queries:
            try:
                ids, scores = fts.keyword_ranking(
                    connection, located, column, query, depth, where, key=ident, current=True
                )
            except duckdb.Error as error:
                raise table._refused(error) from None
            rankings.append((pl.Series(ident, ids, dtype=pl.String), scores))
    return rankings


def _texts(table: Table, text: str, ids: pl.Series) -> list[str | None]:
    """The ``text`` of the records with these ids, in their order."""
    if len(ids) == 0:
        return []
    literals = ", ".join(map(quote_literal, ids))
    ident = quote_identifier(table.id_column)
    columns = ", ".join(map(quote_identifier, dict.fromkeys([table.id_column, text])))
    found = table._frame(f"SELECT {columns} FROM {table._table_sql} WHERE {ident} IN ({literals})")
    return ids.to_frame().join(found, on=table.id_column, how="left", maintain_order="left")[text].to_list()


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
