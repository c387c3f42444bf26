"""The fts extension: BM25 keyword ranking of a table's text column, for hybrid search.

DuckDB's full-text index (``PRAGMA create_fts_index``) lives in a schema of its own,
``fts_<schema>_<table>``, in the table's database. It is built once and reused by every search;
DuckDB does not update it when the table changes, so the index is labelled with the
*version* of the rows it was built for, and :func:`prepare_index` rebuilds it when the
label differs (an index :func:`create_fts_index` built has no label: a search rebuilds
it once, over the same column only). By default the version is the table's row count and
last row id: it changes when rows are added or deleted and when a checkpoint renumbers
the rows after deletes (documents are named by row id), not after an update that keeps
every row where it was (:func:`create_fts_index` rebuilds on demand). A caller that knows better when the
rows changed (an embedding table counts its writes) passes its own version, and may key
the documents by a column of its own instead of DuckDB's row ids.

Words are lower-cased runs of letters and digits (so ``E1234`` is one word, which
DuckDB's default, letters only, would cut to ``e``), Porter-stemmed, English stop
words removed. The fts extension is packaged for duckdb 1.5.5 only (the ``fts``
extra); on duckdb 2.x hybrid search on a table is refused with a clear error.
"""

from __future__ import annotations

import logging
import re

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
# What starts the comment of an index built for a version (on its ``stats`` table).
_VERSION_LABEL = "polars-embed keyword index, version "


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
    _build(con, target, text_column(target, column), "rowid", None)


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
    docstring). An index over another column that no version labels (someone's own) is an
    error. ``key`` is the column that names each document, unique per row (see
    :func:`keyword_ranking`).
    """
    load_fts(con)
    if version is None:
        version = _row_ids_version(con, table)
    indexed = _indexed_fields(con, table)
    built_for = None if indexed is None else index_version(con, table)
    if indexed is not None and indexed != [text.name] and built_for is None:
        raise ConfigError(
            f"table {table} has a full-text index over {indexed}, not {[text.name]}: rebuild it with "
            f"duckdb_ext.create_fts_index(con, {table.name!r}, {text.name!r}), or pass text= one of {indexed}"
        )
    if built_for != version:
        log.info("the full-text index of %s is for rows %s, not %s: rebuilding it", table, built_for, version)
        _build(con, table, text, key, version)


def _row_ids_version(con: duckdb.DuckDBPyConnection, table: Table) -> str:
    """The table's row count and last row id: what changes when documents named by row id move."""
    rows, last = one_row(con, f"SELECT count(*), max(rowid) FROM {table.sql}")
    return f"{rows} rows to row id {last}"


def index_version(con: duckdb.DuckDBPyConnection, table: Table) -> str | None:
    """The version the table's full-text index was built for (:func:`prepare_index`), or ``None``."""
    found = con.sql(
        "SELECT comment FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
        "AND table_name = 'stats'",
        params=[table.database, _index_schema_name(table)],
    ).fetchall()
    comment = found[0][0] if found else None
    if not isinstance(comment, str) or not comment.startswith(_VERSION_LABEL):
        return None
    return comment.removeprefix(_VERSION_LABEL)


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
    # match_bm25's own formula and defaults (k1 = 1.2, b = 0.75, log10) over the index's tables, for
    # the documents that have a query term only: the macro, called per row, scores every row
    # (0.5 s for 100,000 rows, more than the vector search). A single indexed column, so
    # no field filter. Documents are grouped by their number, and only then named by their key
    # (text keys cost twice as much to group); the table's rows join in last, so that deleted
    # rows and ``where`` count.
    found = con.sql(
        f"""WITH tokens AS (
            SELECT DISTINCT stem(unnest({schema}.tokenize({quote_literal(query)})), 'porter') AS t),
        wanted AS (SELECT dict.termid,
            log10(((SELECT num_docs FROM {schema}.stats) - dict.df + 0.5) / (dict.df + 0.5) + 1) AS idf
            FROM {schema}.dict AS dict JOIN tokens ON dict.term = tokens.t),
        matched AS (SELECT terms.docid, terms.termid, count(*) AS tf FROM {schema}.terms AS terms
            WHERE terms.termid IN (SELECT termid FROM wanted) GROUP BY terms.docid, terms.termid),
        scored AS (SELECT matched.docid, sum(wanted.idf
            * (matched.tf * 2.2 / (matched.tf + 1.2 * (0.25 + 0.75 * docs.len
                                                          / (SELECT avgdl FROM {schema}.stats))))) AS score
            FROM matched JOIN {schema}.docs AS docs ON matched.docid = docs.docid
            JOIN wanted ON matched.termid = wanted.termid GROUP BY matched.docid)
        SELECT docs.name AS row_id, scored.score FROM scored
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


def _indexed_fields(con: duckdb.DuckDBPyConnection, table: Table) -> list[str] | None:
    """The columns the table's full-text index covers, or ``None`` when it has none."""
    (exists,) = one_row(
        con,
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
        "AND table_name = 'fields'",
        [table.database, _index_schema_name(table)],
    )
    if not exists:
        return None
    fields = con.sql(f"SELECT field FROM {_index_schema(table)}.fields ORDER BY fieldid").fetchall()
    return [field for (field,) in fields]


def _key_sql(key: str) -> str:
    return "rowid" if key == "rowid" else quote_identifier(key)


def _build(con: duckdb.DuckDBPyConnection, table: Table, text: Column, key: str, version: str | None) -> None:
    """Build the index; ``version`` labels it as one a search may rebuild (see :func:`prepare_index`),
    ``None`` leaves it the user's own, which a search over another column will not overwrite."""
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
    if version is not None:
        label = quote_literal(_VERSION_LABEL + version)
        con.execute(f"COMMENT ON TABLE {_index_schema(table)}.stats IS {label}")
    log.info("built the full-text index of %s.%s", table, text.name)
