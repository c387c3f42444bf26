"""Nearest neighbours of a query in a table's vector column, by cosine similarity.

Two paths give the same kind of answer, a relation of the table's rows plus a
``score`` column, best first:

- **HNSW**, when the column has a vss cosine index that DuckDB's planner picks
  for the query (checked on the plan itself: ``HNSW_INDEX_SCAN``). vss applies a
  WHERE filter *after* the index has returned its ``LIMIT`` rows, so a filtered
  search asks the index for more rows than ``k`` (as many as the filter's
  selectivity says are needed, twice over, growing if that was not enough) and
  keeps the first ``k`` that pass the filter.
- **Exact**, otherwise: DuckDB scores every row (its dot product with the
  query, over its norm) and keeps the best by the rule of
  :func:`polars_embed.topk` (zero and non-finite vectors never match, ties go
  to the lower row id). It is also where a
  filtered search goes when the filter is so selective that the index would
  have to return more than a quarter of the rows the exact search would score.

A **hybrid** search (``hybrid=True``) ranks the vectors exactly and the words of a
text column by BM25 (DuckDB's fts extension, :mod:`duckdb_ext.fts`), and fuses the
two rankings (:class:`polars_embed.keywords.Ranking`); a reranker (``rerank=``)
then reorders the best candidates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from duckdb_ext import fts
from duckdb_ext._catalog import (
    Column,
    Table,
    TableName,
    float_literal,
    has_hnsw_index,
    one_row,
    quote_identifier,
    resolve_table,
    vector_literal,
)
from duckdb_ext._twins import twin_recall, twin_topk
from duckdb_ext.vss import load_vss
from polars_embed.engine import embed_queries
from polars_embed.errors import (
    ConfigError,
    DimensionMismatchError,
    InputTypeError,
    InvalidInputError,
    MissingDependencyError,
    PolarsEmbedError,
)
from polars_embed.kernels import check_k, topk, topk_merge
from polars_embed.keywords import Fusion, Ranking
from polars_embed.metadata import provider_for_query, provider_of
from polars_embed.namespaces._vectors import unit_length
from polars_embed.provider import Provider
from polars_embed.quantization import Quantization, QuantizedSearch
from polars_embed.registry import ProviderLike, RerankerLike, resolve_provider

log = logging.getLogger(__name__)

QueryLike = str | Sequence[float] | np.ndarray | pl.Series

INDEX_SCAN = "HNSW_INDEX_SCAN"
_DISTANCE = "__polars_embed_distance"
# A filtered index search first asks for this many times the rows the filter's
# selectivity says it needs, then grows the request by _FETCH_GROWTH while it
# stays within _MAX_FETCH_SHARE of the rows an exact search would score.
_FETCH_MARGIN = 2
_FETCH_GROWTH = 4
_MAX_FETCH_SHARE = 0.25
_RECOGNITION_SAMPLE = 16
# Rows per Arrow record batch when the vectors themselves are ranked (some hold a NULL).
_BATCH_ROWS = 65536


def search(
    con: duckdb.DuckDBPyConnection,
    table: TableName,
    column: str,
    query: QueryLike,
    *,
    k: int = 10,
    where: str | None = None,
    provider: ProviderLike = None,
    exact: bool = False,
    normalized: bool | None = None,
    text: str | None = None,
    hybrid: bool = False,
    fusion: Fusion = "rrf",
    weight: float = 0.5,
    rerank: RerankerLike | None = None,
    rerank_top: int = 50,
    quantized: Quantization | None = None,
    oversample: int | None = None,
    in_memory: bool = False,
) -> duckdb.DuckDBPyRelation:
    """Find the ``k`` rows whose vectors are most similar to ``query``.

    Parameters
    ----------
    con
        The connection.
    table
        The table: a name, or a (schema, name) or (database, schema, name) tuple.
    column
        Its ``FLOAT[d]`` vector column.
    query
        A text, embedded as a search query, or a vector of width ``d``.
    k
        How many rows to return (fewer when fewer rows have a vector and pass ``where``).
    where
        A SQL condition on the table's columns, e.g. ``"lang = 'en'"``. It is
        inserted into the query as written: it is SQL, so never build it from
        untrusted input.
    provider
        The provider that embeds a text query. By default the one recorded in
        the column's comment (:func:`embed_table`, :func:`record_provider`),
        else the one that made the vectors if this process made them (e.g.
        with ``embed()`` in SQL). A provider that differs from the recorded
        one is an error.
    exact
        Skip any HNSW index and rank every row exactly.
    normalized
        Promise that the vectors have unit length, so the exact search skips their
        norms (half of DuckDB's work per row). Default: what the provider recorded
        in the column's comment (or that made the vectors in this process) says.
    text
        The text column (``VARCHAR``) the vectors were made from, for ``hybrid`` and ``rerank``.
    hybrid
        Also rank the rows by BM25 keyword relevance of ``text`` to the (text) query,
        through DuckDB's fts extension, and fuse the two rankings, as
        :meth:`polars_embed.namespaces.frame.EmbedFrameNamespace.search` does: ``score``
        is the fused score, and ``vector_rank`` and ``keyword_rank`` say where each row
        was in each ranking (NULL where it was not). The vectors are ranked exactly.
        The full-text index (a schema ``fts_<schema>_<table>``) is built on first
        use and reused; it is rebuilt when rows are added or deleted, or moved by a
        checkpoint (after an update of the texts in place, call
        :func:`duckdb_ext.create_fts_index`).
        Needs the fts extension, packaged for duckdb 1.5.5 only (the ``fts`` extra).
    fusion, weight
        How the rankings are fused: ``"rrf"`` (reciprocal rank fusion) or
        ``"weighted"``, with ``weight`` the vector ranking's share.
    rerank, rerank_top
        A reranker (``"cohere:rerank-v3.5"``, a cross-encoder, a
        :class:`~polars_embed.Reranker`) that reorders the best ``rerank_top``
        candidates by reading the query with each one's ``text``; ``score`` is then
        its relevance.
    quantized
        ``"int8"`` or ``"binary"``: rank the rows on a compact twin of the vectors
        (:func:`polars_embed.quantize`) and rescore the best ``oversample * k``
        exactly, as :meth:`polars_embed.namespaces.frame.EmbedFrameNamespace.search`
        does; never through an HNSW index. The first such search reads the column
        once to make the twin, kept in memory for this connection; a search after
        the table's rows changed makes it again (see :mod:`duckdb_ext._twins`).
        The candidates are read back by row id: ``"int8"`` reads 40 for
        ``k=10``, ``"binary"`` 2,000, which duckdb 1.x reads several times as
        slowly as 2.x.
    oversample
        Candidates rescored per result with ``quantized`` (default 4 for
        ``"int8"``, 200 for ``"binary"``).
    in_memory
        Rank every row exactly on a float32 copy of the vectors (and their norms)
        kept in memory for this connection, by :func:`polars_embed.topk`, as fast
        as numpy on an array, where DuckDB's own exact ranking takes several times
        as long; the copy costs ``4 * d`` bytes a row, and is made and checked as
        ``quantized``'s twin is. Never through an HNSW index.

    Returns
    -------
    duckdb.DuckDBPyRelation
        The table's columns and ``score`` (cosine similarity), best first. The
        relation is lazy: through an index it searches again each time it is
        read; an exact search's rows are fixed when ``search`` returns.

    Raises
    ------
    ConfigError
        If ``quantized`` is given with ``exact`` or ``in_memory``, the table or
        column does not exist, the column is not ``FLOAT[d]`` (a ``FLOAT[]`` list
        column: the message gives the cast), the table has a column named
        ``score`` or ``rowid``, or the model that must embed a text query is not
        known or is not the column's.
    DimensionMismatchError
        If the query vector, or the provider's vectors, are not ``d`` wide.
    ValueError
        If ``k`` is not a positive integer, or the query vector is all zeros
        or not finite.

    Notes
    -----
    The HNSW path needs DuckDB's vss extension, which is packaged for duckdb
    1.5.5 only (the ``vss`` extra). On duckdb 2.x every search is exact, by
    :func:`polars_embed.topk`, which is always correct.

    Examples
    --------
    >>> import duckdb, duckdb_ext
    >>> con = duckdb.connect()
    >>> _ = duckdb_ext.register(con, "hashing", dims=64)
    >>> _ = con.sql(
    ...     "CREATE TABLE pets AS SELECT body, embed(body) AS vector FROM "
    ...     "(VALUES ('a black cat'), ('a small dog'), ('a black dog')) t(body)"
    ... )
    >>> duckdb_ext.search(con, "pets", "vector", "black cat", k=2).select("body").fetchall()
    [('a black cat',), ('a black dog',)]
    >>> dogs = duckdb_ext.search(con, "pets", "vector", "black cat", k=2, where="body LIKE '%dog'")
    >>> dogs.select("body").fetchall()
    [('a black dog',), ('a small dog',)]
    """
    k = check_k(k)  # before it reaches SQL text
    twin_search = QuantizedSearch.check(
        quantized, oversample, exact_by="exact" if exact else "in_memory" if in_memory else None
    )
    if where is not None and not where.strip():
        where = None
    ranking = Ranking.check(
        text=text, hybrid=hybrid, fusion=fusion, weight=weight, rerank=rerank, rerank_top=rerank_top
    )
    target = resolve_table(con, table)
    vectors = target.require_column(column)
    width = vectors.width
    for added in ["score", *(ranking.columns if ranking else [])]:
        if target.column(added) is not None:
            raise ConfigError(
                f"table {target} has a column named {added!r}, which search adds; rename it first"
            )
    target.check_row_ids()
    if ranking is not None and not isinstance(query, str):
        raise ConfigError(
            "hybrid and reranked searches need a text query (its words are ranked and read), "
            "not a vector: pass the query text"
        )
    texts = None if ranking is None else fts.text_column(target, ranking.text)
    stored = None
    if isinstance(query, str):
        stored = _query_provider(con, target, vectors, provider)
        query_vector = embed_queries([query], stored)[0]
    elif provider is not None:
        raise ConfigError("provider= embeds a text query, but the query is already a vector")
    else:
        query_vector = _as_vector(query)
    if query_vector.shape[0] != width:
        raise DimensionMismatchError(
            f"the query vector has width {query_vector.shape[0]}, but column {vectors.name!r} of "
            f"{target} holds vectors of width {width}"
        )
    if not (np.isfinite(query_vector).all() and query_vector.any()):
        raise InvalidInputError(
            "the query vector must be finite and not all zeros: cosine similarity needs a direction"
        )
    if ranking is None and not exact and twin_search is None and not in_memory:
        indexed = _indexed_search(con, target, vectors, query_vector, k, where)
        if indexed is not None:
            return indexed
    if twin_search is not None or in_memory:

        def rank_vectors(depth: int, restart: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
            return twin_topk(con, target, vectors, query_vector, depth, where, twin_search)

    else:
        # Only an exact ranking asks whether the norms are needed (an index search never does).
        unit = unit_length(normalized, stored or _recorded_provider(vectors))

        def rank_vectors(depth: int, restart: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
            return _exact_topk(con, target, vectors, query_vector, depth, where, unit, restart)

    if ranking is not None:
        assert isinstance(query, str) and texts is not None
        return _ranked_search(con, target, texts, query, rank_vectors, k, where, ranking)
    return _exact_search(con, target, rank_vectors, k)


def recall_at_k(
    con: duckdb.DuckDBPyConnection,
    table: TableName,
    column: str,
    quantized: Quantization,
    *,
    k: int = 10,
    sample: int = 100,
    seed: int = 0,
    oversample: int | None = None,
) -> float:
    """The share of the exact top ``k`` that ``search(..., quantized=...)`` finds on this table.

    ``sample`` of the table's rows with a vector, drawn at random, are searched
    for, each left out of its own results, both through the column's twin (made
    or reused as :func:`search` does) and exactly; the share of the exact results
    the quantised searches found is the recall, what ``quantized`` trades on your
    data (:func:`polars_embed.recall_at_k` for a table). The column's vectors are
    read into memory once for the exact side.

    Parameters
    ----------
    con, table, column
        As in :func:`search`.
    quantized : {"int8", "binary"}
        The twin to measure.
    k : int, default 10
        Results per query compared.
    sample : int, default 100
        Rows drawn as queries.
    seed : int, default 0
        Seed of that draw.
    oversample : int, optional
        As in :func:`search`.

    Returns
    -------
    float
        Between 0 and 1; 1.0 when every exact result was found (or there are no vectors).

    Examples
    --------
    >>> import duckdb, duckdb_ext, numpy as np, polars as pl
    >>> con = duckdb.connect()
    >>> vectors = np.random.default_rng(0).standard_normal((2000, 32), dtype=np.float32)
    >>> _ = con.register("frame", pl.DataFrame({"vector": vectors}))
    >>> _ = con.sql("CREATE TABLE docs AS SELECT * FROM frame")
    >>> duckdb_ext.recall_at_k(con, "docs", "vector", "int8", k=5, sample=20, oversample=20) > 0.95
    True
    """
    k = check_k(k)
    search = QuantizedSearch.check(quantized, oversample)
    if search is None:
        raise ConfigError("recall_at_k measures a quantised search: pass quantized='int8' or 'binary'")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ConfigError(f"sample must be a positive number of rows to draw as queries, got {sample!r}")
    target = resolve_table(con, table)
    vectors = target.require_column(column)
    vectors.width  # noqa: B018 - a column that is not FLOAT[d] is refused here, with the cast
    target.check_row_ids()
    with _one_snapshot(con):
        return twin_recall(con, target, vectors, search, k, sample, seed)


def _query_provider(
    con: duckdb.DuckDBPyConnection, table: Table, vectors: Column, provider: ProviderLike
) -> Provider:
    """The provider that must embed a text query: the given one, the recorded one, or the recognised one."""
    spec = vectors.stored_spec()
    given = None if provider is None else resolve_provider(provider)
    if spec is not None:
        stored = spec.provider_for(given)
    else:
        sample = con.sql(
            f"SELECT {vectors.sql} FROM {table.sql} WHERE {vectors.sql} IS NOT NULL "
            f"LIMIT {_RECOGNITION_SAMPLE}"
        ).pl()
        stored = provider_of(sample.to_series()) if sample.height else None
    return provider_for_query(
        given,
        stored,
        column=vectors.name,
        width=vectors.width,
        unknown="its comment does not say (fill it with duckdb_ext.embed_table, or describe it with "
        "duckdb_ext.record_provider) and this process did not make those vectors. Pass provider=, "
        "or a query vector",
    )


def _recorded_provider(vectors: Column) -> Provider | None:
    """The provider the column's comment names, or None where it names none that can be built."""
    spec = vectors.stored_spec()
    if spec is None:
        return None
    try:
        return spec.create_provider()
    except PolarsEmbedError:
        return None


def _as_vector(query: QueryLike) -> np.ndarray:
    try:
        vector = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputTypeError(f"a query is a text or a vector of numbers: {error}") from None
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1:
        raise InvalidInputError(f"a query vector must be one row of numbers, got shape {vector.shape}")
    return vector


def _indexed_search(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    vectors: Column,
    query: np.ndarray,
    k: int,
    where: str | None,
) -> duckdb.DuckDBPyRelation | None:
    """The search through an HNSW index, or None where DuckDB would not use one."""
    if not has_hnsw_index(con, table):
        return None
    try:
        load_vss(con)
    except MissingDependencyError as error:
        log.warning("table %s has an HNSW index, but the search is exact: %s", table, error)
        return None
    # The index scan reserves room for LIMIT rows: never more than the table has.
    k = min(k, con.sql(f"SELECT count(*) FROM {table.sql}").fetchall()[0][0])
    if k == 0:
        return None
    literal = vector_literal(query)
    unfiltered = _index_sql(table, vectors, literal, fetch=k, k=k, where=None)
    # Whether the planner picks the index (metric, column, query shape) is read off its plan.
    if INDEX_SCAN not in str(con.sql(f"EXPLAIN (FORMAT json) {unfiltered}").fetchall()):
        return None
    if where is None:
        return con.sql(unfiltered)
    matching, searchable = one_row(
        con,
        f"SELECT count(*) FILTER (WHERE (\n{where}\n)), count(*) "
        f"FROM {table.sql} AS {quote_identifier(table.name)} WHERE {vectors.sql} IS NOT NULL",
    )
    if matching <= k:
        return None  # the exact search scores just those rows
    fetch = math.ceil(k * searchable / matching * _FETCH_MARGIN)
    while fetch <= _MAX_FETCH_SHARE * matching:
        filtered = _index_sql(table, vectors, literal, fetch=fetch, k=k, where=where)
        if one_row(con, f"SELECT count(*) FROM ({filtered})") == (k,):
            return con.sql(filtered)
        fetch *= _FETCH_GROWTH
    log.debug(
        "the filter on %s keeps %d of %d rows, too few for the index: exact search",
        table,
        matching,
        searchable,
    )
    return None


def _index_sql(table: Table, vectors: Column, literal: str, *, fetch: int, k: int, where: str | None) -> str:
    """The nearest ``fetch`` rows by the index, then the first ``k`` that pass ``where``.

    The inner query has the one shape vss rewrites into an index scan: ORDER BY
    a distance to a constant, then LIMIT. The filter stays outside it, where it
    cannot be pushed below the LIMIT; the subquery takes the table's name so
    that ``where`` may qualify columns with it.
    """
    condition = f"WHERE (\n{where}\n)\n" if where else ""
    return (
        f"SELECT * EXCLUDE ({_DISTANCE}), 1 - {_DISTANCE} AS score\n"
        f"FROM (SELECT *, array_cosine_distance({vectors.sql}, {literal}) AS {_DISTANCE} "
        f"FROM {table.sql} ORDER BY {_DISTANCE} LIMIT {fetch}) AS {quote_identifier(table.name)}\n"
        f"{condition}ORDER BY {_DISTANCE} LIMIT {k}"
    )


# The row ids and cosine scores of a search's best rows, as many as asked for (``restart``:
# see _one_snapshot): exactly, or on the column's twin and rescored.
_VectorRanking = Callable[[int, Callable[[], None]], tuple[np.ndarray, np.ndarray]]


def _exact_search(
    con: duckdb.DuckDBPyConnection, table: Table, rank_vectors: _VectorRanking, k: int
) -> duckdb.DuckDBPyRelation:
    # Row ids are only stable within one snapshot (a checkpoint after deletes renumbers
    # rows), so the hits are ranked and fetched in one, and kept as they were then.
    with _one_snapshot(con) as restart:
        rows, scores = rank_vectors(k, restart)
        hits = _hits(con, table, rows, scores)
    return con.from_arrow(hits)


def _ranked_search(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    texts: Column,
    query: str,
    rank_vectors: _VectorRanking,
    k: int,
    where: str | None,
    ranking: Ranking,
) -> duckdb.DuckDBPyRelation:
    """A hybrid or reranked search: both rankings and the hits read in one snapshot."""
    if ranking.keywords:
        fts.prepare_index(con, table, texts)  # it may write the index: before the read-only snapshot
    depth = ranking.depth(k)
    with _one_snapshot(con) as restart:
        vector = rank_vectors(depth, restart)
        keyword = fts.keyword_ranking(con, table, texts, query, depth, where) if ranking.keywords else None
        ranked = ranking.combine(
            query,
            vector,
            keyword,
            k=k,
            higher_is_better=True,
            texts_of=lambda rows: _texts_of(con, table, texts, rows),
        )
        hits = _hits(con, table, ranked.rows, ranked.scores, ranking.rank_columns(ranked))
    return con.from_arrow(hits)


def _texts_of(
    con: duckdb.DuckDBPyConnection, table: Table, texts: Column, rows: np.ndarray
) -> list[str | None]:
    """The texts of the rows with these row ids, in their order."""
    row_list = ", ".join(str(int(row)) for row in rows)
    found = dict(
        con.sql(
            f"SELECT rowid, {texts.sql} FROM {table.sql} "
            f"WHERE rowid IN (SELECT unnest([{row_list}]::BIGINT[]))"
        ).fetchall()
    )
    return [found.get(int(row)) for row in rows]


def _hits(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    rows: np.ndarray,
    scores: np.ndarray,
    ranks: Sequence[pl.Series] = (),
) -> pa.Table:
    """The rows with these row ids, in their order, with a ``score`` column and the ``ranks``
    columns (``UINTEGER``, NULL for a null rank)."""
    row_list = ", ".join(str(int(row)) for row in rows)
    rank_lists = "".join(
        f", unnest([{', '.join('NULL' if rank is None else str(rank) for rank in column)}]::UINTEGER[]) "
        f"AS {quote_identifier(column.name)}"
        for column in ranks
    )
    rank_names = "".join(f", hits.{quote_identifier(column.name)}" for column in ranks)
    return con.sql(
        f"SELECT target.*, hits.score{rank_names} FROM {table.sql} AS target JOIN (SELECT "
        f"unnest([{row_list}]::BIGINT[]) AS row, unnest({float_literal(scores, 'FLOAT[]')}) AS score, "
        f"unnest(range({len(rows)})) AS rank{rank_lists}) AS hits ON target.rowid = hits.row "
        "ORDER BY hits.rank"
    ).to_arrow_table()


@contextmanager
def _one_snapshot(con: duckdb.DuckDBPyConnection) -> Iterator[Callable[[], None]]:
    """Run the body in one transaction: the caller's, if one is open, else a read-only one of
    its own. The body gets a function that starts its own one again after a failed statement."""
    if _in_transaction(con):  # the caller's transaction is one snapshot already
        yield lambda: None
        return
    con.begin()

    def restart() -> None:
        con.rollback()
        con.begin()

    try:
        yield restart
    finally:
        con.rollback()  # nothing was written


def _in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` is inside a transaction it began: outside one, each statement is a
    transaction of its own, with an id of its own."""
    (first,), (second,) = (one_row(con, "SELECT txid_current()") for _ in range(2))
    return first == second


def _exact_topk(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    vectors: Column,
    query: np.ndarray,
    k: int,
    where: str | None,
    unit: bool,
    restart: Callable[[], None],
) -> tuple[np.ndarray, np.ndarray]:
    """The row ids and cosine scores of the ``k`` best rows (``restart``: see :func:`_one_snapshot`).

    DuckDB ranks the rows itself, on its own threads: each row's dot product with
    the unit query, divided by the row's norm unless the vectors have ``unit``
    length, and a top-``k`` ordered by score, then row id, so that ties go to the
    lower row id as in :func:`polars_embed.topk`; only those ``k`` rows leave it.
    Rows whose squared norm (where it is computed) is zero or not finite, or
    whose score is not finite, never match, as in :func:`polars_embed.topk`.
    Streaming every row's score to numpy instead took up to 1.6 times as long,
    and exporting the vectors themselves 15 times numpy's search of them
    (benchmarks/README.md).
    """
    condition = f" AND (\n{where}\n)" if where else ""
    source = f"FROM {table.sql} AS {quote_identifier(table.name)} WHERE {vectors.sql} IS NOT NULL{condition}"
    dot = f"array_inner_product({vectors.sql}, {vector_literal(query / np.linalg.norm(query))})"
    if unit:
        usable, score, squared = "isfinite(dot)", "dot", ""
    else:
        usable = "isfinite(dot) AND isfinite(squared) AND squared > 0"
        score = "(dot / sqrt(squared))::FLOAT"
        squared = f", array_inner_product({vectors.sql}, {vectors.sql}) AS squared"
    # A row that cannot match scores NULL, which sorts last: a filter on the score would
    # be pushed down to the scan and compute every dot product twice (1.5 times the time).
    scored = (
        f"SELECT rowid, CASE WHEN {usable} THEN {score} END AS score "
        f"FROM (SELECT rowid, {dot} AS dot{squared} {source})"
    )
    try:
        ranked = con.sql(
            f"SELECT * FROM ({scored} ORDER BY score DESC NULLS LAST, rowid LIMIT {k}) "
            "WHERE score IS NOT NULL"
        ).fetchnumpy()
        return ranked["rowid"].astype(np.int64), ranked["score"].astype(np.float32)
    except duckdb.InvalidInputException as error:
        if "NULL" not in str(error):
            raise
    # Some vector holds a NULL, which DuckDB's array functions refuse: rank the
    # vectors themselves, where such a row is NaN and never matches (slower).
    restart()
    found_rows, found_scores = [np.zeros((1, 0), dtype=np.int64)], [np.zeros((1, 0), dtype=np.float32)]
    for batch in con.sql(f"SELECT rowid, {vectors.sql} {source}").to_arrow_reader(_BATCH_ROWS):
        values = vectors.matrix(batch.column(1))
        indices, scores = topk(query, values, k, normalized=unit)
        found_rows.append(batch.column(0).to_numpy()[indices])
        found_scores.append(scores)
    rows, scores = topk_merge(found_rows, found_scores, k)
    return rows[0], scores[0]
