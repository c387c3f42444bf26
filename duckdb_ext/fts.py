"""The fts extension: BM25 keyword ranking of a table's text column, for hybrid search.

DuckDB's full-text index (``PRAGMA create_fts_index``) lives in a schema of its own,
``fts_<schema>_<table>``, in the table's database. It is built once and reused by every search;
DuckDB does not update it when the table changes, so polars-embed labels each index it
builds with the *version* of the rows it was built for, and :func:`prepare_index` rebuilds
it when the label differs. By default the version is the table's row count and last row
id: it changes when rows are added or deleted and when a checkpoint renumbers the rows
after deletes (documents are named by row id), not after an update that keeps every row
where it was (:func:`create_fts_index` rebuilds on demand). A caller that knows better when
the rows changed (an embedding table counts its writes) passes its own version, and may key
the documents by a column of its own instead of DuckDB's row ids. Next to DuckDB's tables,
the index keeps each term's BM25 weight in each document, ordered by term, for
:func:`keyword_ranking`.

Words are lower-cased runs of letters and digits (so ``E1234`` is one word, which
DuckDB's default, letters only, would cut to ``e``), Porter-stemmed, English stop
words removed. The fts extension is packaged for duckdb 1.5.5 only (the ``fts``
extra); on duckdb 2.x hybrid search on a table is refused with a clear error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import duckdb
import numpy as np

from duckdb_ext._catalog import (
    Column,
    Table,
    TableName,
    one_row,
    quote_identifier,
    quote_literal,
    resolve_table,
)
from duckdb_ext._extensions import load_extension, packaged_extension
from polars_embed.errors import ConfigError

log = logging.getLogger(__name__)

#: What separates words: anything but letters and digits (DuckDB's default drops digits too).
WORD_SEPARATORS = r"(\.|[^a-z0-9])+"
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The comment of the table of BM25 weights polars-embed adds to an index it builds: who built
# it (a search may rebuild its own over another column, never one built on request) and for
# which rows.
_LABEL = re.compile(
    r"polars-embed keyword weights, built by (a search|create_fts_index) for rows: (.{1,512})"
)


def load_fts(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckDB's fts extension into the connection's database, without the network.

    The extension file comes from the ``duckdb-extension-fts`` package (the ``fts``
    extra of polars-embed); without it, ``INSTALL fts; LOAD fts`` is tried.

    Raises
    ------
    MissingDependencyError
        When neither way works.
    """
    load_extension(con, "fts", packaged_extension("fts"), purpose="BM25 keyword search", extra="fts")


def create_fts_index(con: duckdb.DuckDBPyConnection, table: TableName, column: str) -> None:
    """Build (or rebuild) the full-text index of a table's text column, for hybrid search.

    Parameters
    ----------
    con
        The connection; fts is loaded into it (see :func:`load_fts`).
    table
        The table: a name, or a (schema, name) or (database, schema, name) tuple.
    column
        Its text column.
    """
    target = resolve_table(con, table)
    _build(con, target, text_column(target, column), "rowid", _row_ids_version(con, target), by_search=False)


def prepare_index(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    text: Column,
    *,
    key: str = "rowid",
    version: str | None = None,
) -> None:
    """Make sure the table's full-text index covers ``text`` and all its rows: build it
    unless it was built for ``version``, what the caller knows of the rows' state (e.g. a
    count of its writes; by default the table's row count and last row id, see the module's
    docstring). An index over another column that no search built (the user's own) is an
    error. ``key`` is the column that names each document, unique per row (see
    :func:`keyword_ranking`).
    """
    load_fts(con)
    if version is None:
        version = _row_ids_version(con, table)
    built = _built_index(con, table)
    if built is not None and built.fields != [text.name] and not built.by_search:
        raise ConfigError(
            f"table {table} has a full-text index over {built.fields}, not {[text.name]}: rebuild it with "
            f"duckdb_ext.create_fts_index(con, {table.name!r}, {text.name!r}), or pass text= one of "
            f"{built.fields}"
        )
    if built is None or built.fields != [text.name] or built.version != version:
        log.info("the full-text index of %s is not for rows %s: rebuilding it", table, version)
        _build(con, table, text, key, version, by_search=built is None or built.by_search)


def _row_ids_version(con: duckdb.DuckDBPyConnection, table: Table) -> str:
    """The table's row count and last row id: what changes when documents named by row id move."""
    rows, last = one_row(con, f"SELECT count(*), max(rowid) FROM {table.sql}")
    return f"{rows} rows to row id {last}"


def index_version(con: duckdb.DuckDBPyConnection, table: Table) -> str | None:
    """The version the table's full-text index was built for (:func:`prepare_index`), or
    ``None`` when it has none that polars-embed built."""
    built = _built_index(con, table)
    return None if built is None else built.version


@dataclass(frozen=True)
class _BuiltIndex:
    fields: list[str]
    by_search: bool
    version: str | None  # None: built by someone else, without polars-embed's weights


def _built_index(con: duckdb.DuckDBPyConnection, table: Table) -> _BuiltIndex | None:
    """What the table's full-text index covers and who built it for which rows; ``None``
    when it has none."""
    comments = dict(
        con.sql(
            "SELECT table_name, comment FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
            "AND table_name IN ('fields', 'weights')",
            params=[table.database, _index_schema_name(table)],
        ).fetchall()
    )
    if "fields" not in comments:
        return None
    fields = [
        field
        for (field,) in con.sql(
            f"SELECT field FROM {_index_schema(table)}.fields ORDER BY fieldid"
        ).fetchall()
    ]
    comment = comments.get("weights")
    label = _LABEL.fullmatch(comment) if isinstance(comment, str) else None
    if label is None:
        return _BuiltIndex(fields, by_search=False, version=None)
    return _BuiltIndex(fields, by_search=label[1] == "a search", version=label[2])


def keyword_ranking(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    text: Column,
    query: str,
    depth: int,
    where: str | None,
    *,
    key: str = "rowid",
    current: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``depth`` rows that best match ``query`` by BM25, and their scores, best first,
    ties to the lower row; only rows that have a word of the query, and pass ``where``.
    A row is named by its ``key``, the column the index was built with (row ids, int64,
    by default). The index must be ready (:func:`prepare_index`); ``current`` says that
    it holds exactly the table's rows as they are (it was built for their version), so
    that without ``where`` they need no check against the table."""
    schema = _index_schema(table)
    condition = f"WHERE (\n{where}\n)" if where else ""
    kept = (
        ""
        if current and not where
        else f"JOIN (SELECT {_key_sql(key)} AS row_id FROM {table.sql} AS {quote_identifier(table.name)} "
        f"{condition}) AS kept ON docs.name = kept.row_id"
    )
    # match_bm25's own formula and defaults (k1 = 1.2, b = 0.75, log10), for the documents that
    # have a query term only: the macro, called per row, scores every row (0.5 s for 100,000
    # rows, more than the vector search). Each term's weight in each document is kept at build
    # time, ordered by term, and the query's terms go in as constants, so that DuckDB reads only
    # the row groups that hold them (6x faster than reading the index's terms). Documents are
    # grouped by their number and only then named by their key; the table's rows join in last,
    # so that deleted rows and ``where`` count.
    terms = con.sql(
        f"SELECT termid, log10(((SELECT num_docs FROM {schema}.stats) - df + 0.5) / (df + 0.5) + 1) "
        f"FROM {schema}.dict WHERE term IN (SELECT DISTINCT stem(unnest({schema}.tokenize(?)), 'porter'))",
        params=[query],
    ).fetchall()
    wanted = ", ".join(str(int(term)) for term, _ in terms) or "NULL"
    idf_of_term = (
        f"CASE termid {' '.join(f'WHEN {int(term)} THEN {float(idf)!r}' for term, idf in terms)} END"
        if terms
        else "0"  # no term of the query is in the index: nothing matches
    )
    found = con.sql(
        f"""SELECT docs.name AS row_id, scored.score FROM (
            SELECT docid, sum({idf_of_term} * weight) AS score FROM {schema}.weights
            WHERE termid IN ({wanted}) GROUP BY docid) AS scored
        JOIN {schema}.docs AS docs ON scored.docid = docs.docid {kept}
        WHERE scored.score > 0 ORDER BY scored.score DESC, docs.name LIMIT {int(depth)}"""
    ).to_arrow_table()
    rows = found.column(0).to_numpy()
    return rows.astype(np.int64) if key == "rowid" else rows, found.column(1).to_numpy().astype(np.float32)


def text_column(table: Table, name: str) -> Column:
    """Column ``name`` of ``table``, which must be text, for keyword ranking."""
    column = table.column(name)
    if column is None:
        raise ConfigError(f"table {table} has no column {name!r} to rank keywords in")
    if column.data_type != "VARCHAR":
        raise ConfigError(
            f"column {column.name!r} of {table} is {column.data_type}, not text (VARCHAR): "
            f"pass the text column the vectors were made from as text="
        )
    return column


def _index_schema(table: Table) -> str:
    """The schema of the table's full-text index, in the table's database (quoted)."""
    return f"{quote_identifier(table.database)}.{quote_identifier(_index_schema_name(table))}"


def _index_schema_name(table: Table) -> str:
    return f"fts_{table.schema}_{table.name}"


def _key_sql(key: str) -> str:
    return "rowid" if key == "rowid" else quote_identifier(key)


def _build(
    con: duckdb.DuckDBPyConnection, table: Table, text: Column, key: str, version: str, *, by_search: bool
) -> None:
    """Build the index and its table of BM25 weights, labelled with who built it for which rows."""
    load_fts(con)
    # The extension pastes these names into the SQL it writes, unquoted: only plain ones are safe.
    names = (table.database, table.schema, table.name, text.name, key)
    odd = [name for name in names if not _PLAIN_NAME.fullmatch(name)]
    if odd:
        raise ConfigError(
            f"DuckDB's full-text index only takes plain names (letters, digits and _), and {odd[0]!r} "
            f"(of {table}.{text.name}) is not one: rename it, or copy the rows to such a table, for a "
            "hybrid search"
        )
    qualified = ".".join(names[:3])
    con.execute(
        f"PRAGMA create_fts_index({quote_literal(qualified)}, {quote_literal(key)}, "
        f"{quote_literal(text.name)}, ignore = {quote_literal(WORD_SEPARATORS)}, overwrite = 1)"
    )
    schema = _index_schema(table)
    con.execute(
        f"""CREATE OR REPLACE TABLE {schema}.weights AS SELECT terms.termid, terms.docid, count(*) * 2.2
            / (count(*) + 1.2 * (0.25 + 0.75 * any_value(docs.len) / (SELECT avgdl FROM {schema}.stats)))
            AS weight
        FROM {schema}.terms AS terms JOIN {schema}.docs AS docs ON terms.docid = docs.docid
        GROUP BY terms.termid, terms.docid ORDER BY terms.termid"""
    )
    builder = "a search" if by_search else "create_fts_index"
    label = f"polars-embed keyword weights, built by {builder} for rows: {version}"
    con.execute(f"COMMENT ON TABLE {schema}.weights IS {quote_literal(label)}")
    log.info("built the full-text index of %s.%s", table, text.name)
