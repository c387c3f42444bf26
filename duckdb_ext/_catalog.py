"""Names and column facts from the DuckDB catalog, and the SQL text built from them.

Every table and column name the package writes into SQL goes through
:func:`quote_identifier`; a name is looked up in the catalog once and then used
fully qualified, so the statements the package runs name exactly the table
that was looked up, whatever the search path says.

The package runs on duckdb 1.5.5 and on 2.x, so it keeps to what both have:
queries are relations (``con.sql``) read with ``fetchall()``, ``.pl()`` or
Arrow, and every result is read to its end; 2.x has no ``fetchone()`` on
relations and no ``.pl()`` on ``con.execute`` results.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from polars_embed.errors import ConfigError
from polars_embed.metadata import VectorSpec

# Shared by the DuckDB front end and embedding tables.
__all__ = [
    "Column",
    "Table",
    "TableName",
    "float_literal",
    "has_hnsw_index",
    "one_row",
    "quote_identifier",
    "quote_literal",
    "registered",
    "resolve_table",
    "row_id_condition",
    "set_comment",
    "table_parts",
    "vector_literal",
]

TableName = str | Sequence[str]
"""A table: ``"docs"``, ``("schema", "docs")`` or ``("database", "schema", "docs")``.

Each part is one identifier, taken literally: ``"a.b"`` is a table named ``a.b``.
"""

_VECTOR_TYPE = re.compile(r"FLOAT\[(\d+)\]")
_CASTABLE_TYPE = re.compile(r"(FLOAT|DOUBLE)\[\d*\]")


def one_row(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple:
    """The one row a query gives (an aggregate, a setting), with its result read to the end."""
    (row,) = con.sql(sql, params=params).fetchall()
    return row


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, whatever characters it holds."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigError(f"a table or column name must be a non-empty string without NUL, got {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, data: Any) -> Iterator[str]:
    """``data`` (Arrow, Polars, pandas) visible to SQL on ``con`` under a fresh name, quoted for
    SQL, for the duration of the block: one that cannot clash with the user's names."""
    name = f"__polars_embed_{uuid.uuid4().hex}"
    con.register(name, data)
    try:
        yield quote_identifier(name)
    finally:
        con.unregister(name)


# duckdb 2 reads the rows of a semi-join with a registered table of row ids, or of a list of
# them, by row id; 1.5 scans the table for either, and reads by row id only a subquery on the
# same table with the ids written out (2,000 rows of a 1M-row file: 37 ms against 395 ms; on
# 2.0.1 28 ms against 7 ms; benchmarks/README.md).
JOINS_BY_ROW_ID = int(duckdb.__version__.split(".")[0]) >= 2


def row_id_condition(table_sql: str, row_ids: np.ndarray) -> str:
    """The SQL condition of the rows of table ``table_sql`` with these row ids (integers of
    the package's own, never read from a file), written as this duckdb reads them by row id,
    not by a scan of the table (see ``JOINS_BY_ROW_ID``; 8 rows of a 1M-row file on 1.5.5:
    4.2 ms against 9.9 ms for ``= ANY``)."""
    if row_ids.size == 0:
        return "false"
    listed = ", ".join(str(int(row)) for row in row_ids.tolist())
    if JOINS_BY_ROW_ID:
        return f"rowid = ANY([{listed}]::BIGINT[])"
    return f"rowid IN (SELECT rowid FROM {table_sql} WHERE rowid IN ({listed}))"


def float_literal(values: np.ndarray, sql_type: str) -> str:
    """A constant of ``sql_type`` (``FLOAT[d]``, ``FLOAT[]``) holding exactly these float32 values.

    Nine significant digits give back every float32 exactly. One string cast is
    much cheaper for DuckDB to plan than a list of hundreds of number literals.
    """
    return "'[" + ", ".join(format(float(value), ".8e") for value in values) + f"]'::{sql_type}"


def vector_literal(vector: np.ndarray) -> str:
    """A constant ``FLOAT[d]`` expression holding exactly ``vector``'s values."""
    return float_literal(vector, f"FLOAT[{len(vector)}]")


@dataclass(frozen=True)
class Column:
    """A table column: its name as the catalog spells it, its type and its comment."""

    name: str
    data_type: str
    comment: str | None
    table_sql: str = field(default="", compare=False, repr=False)

    @property
    def sql(self) -> str:
        """The quoted column name, to use inside a query over its table."""
        return quote_identifier(self.name)

    @property
    def width(self) -> int:
        """The vector width ``d`` of a ``FLOAT[d]`` column; any other type is an error."""
        match = _VECTOR_TYPE.fullmatch(self.data_type)
        if match is not None:
            return int(match.group(1))
        problem = f"column {self.name!r} is {self.data_type}, not a FLOAT[d] vector column"
        if _CASTABLE_TYPE.fullmatch(self.data_type):  # e.g. a plain Parquet file's lists of floats
            raise ConfigError(
                f"{problem}: cast it to the vectors' width d with ALTER TABLE {self.table_sql or '<table>'} "
                f"ALTER {self.sql} TYPE FLOAT[d] (e.g. FLOAT[384]), or create the table from a Parquet "
                f"file with duckdb_ext.load_parquet, which does that"
            )
        raise ConfigError(problem)

    def matrix(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """This ``FLOAT[d]`` column's ``values``, read out of DuckDB through Arrow, as a float32
        ``(n, d)`` matrix, where a NULL element is NaN (none may be a NULL vector)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return values.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.width)

    def stored_spec(self) -> VectorSpec | None:
        """The description of the vectors kept in the comment, if the comment is one.

        A comment that is not a JSON object naming a provider is someone else's
        note and is ignored; one that names a provider must be a valid spec.
        """
        return VectorSpec.from_comment(self.comment) if self.comment else None


@dataclass(frozen=True)
class Table:
    """A base table as the catalog names it, with its columns and oid when it was looked up
    (a table dropped and made again under its name gets another oid)."""

    database: str
    schema: str
    name: str
    columns: tuple[Column, ...] = field(default=(), compare=False, repr=False)
    oid: int = field(default=0, compare=False, repr=False)

    @property
    def sql(self) -> str:
        """The fully qualified, quoted name."""
        return ".".join(map(quote_identifier, (self.database, self.schema, self.name)))

    def __str__(self) -> str:
        return f"{self.database}.{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        """The column ``name`` (matched without regard to case, as DuckDB does), or None."""
        quote_identifier(name)
        return next((column for column in self.columns if column.name.lower() == name.lower()), None)

    def check_row_ids(self) -> None:
        """Fail if a column named ``rowid`` hides the row ids that name rows to update or return."""
        if self.column("rowid") is not None:
            raise ConfigError(f"table {self} has a column named 'rowid', which hides DuckDB's row ids")

    def require_column(self, name: str) -> Column:
        """The column ``name``; a missing one is an error naming those that exist."""
        column = self.column(name)
        if column is None:
            names = [column.name for column in self.columns]
            raise ConfigError(f"table {self} has no column {name!r}; its columns are {names}")
        return column


def table_parts(table: TableName) -> tuple[str, ...]:
    """The one to three identifiers that name ``table``, each checked for quoting."""
    parts = tuple(table) if isinstance(table, tuple | list) else (table,)
    if not 1 <= len(parts) <= 3:
        raise ConfigError(
            f"a table is a name or a (schema, name) or (database, schema, name) tuple, got {table!r}"
        )
    for part in parts:
        quote_identifier(part)
    return parts


def resolve_table(con: duckdb.DuckDBPyConnection, table: TableName) -> Table:
    """Find a base table and its columns the way DuckDB resolves a name: temporary
    tables first, then the current schema; a two-part name is a schema in the
    current database, or a database's ``main`` schema."""
    parts = table_parts(table)
    *qualifiers, name = parts
    rows = con.sql(
        "SELECT database_name, schema_name, table_name, table_oid, column_name, data_type, comment, "
        "current_database(), current_schema() FROM duckdb_columns() AS c "
        # Views have columns too; oids are the database instance's, one per catalog entry.
        "WHERE lower(table_name) = lower(?) AND table_oid IN "
        "(SELECT table_oid FROM duckdb_tables() WHERE lower(table_name) = lower(?)) ORDER BY column_index",
        params=[name, name],
    ).fetchall()
    columns: dict[tuple[str, str, str, int], list[Column]] = {}
    for database, schema, spelled, oid, column_name, data_type, comment, _, _ in rows:
        table_sql = ".".join(map(quote_identifier, (database, schema, spelled)))
        columns.setdefault((database, schema, spelled, oid), []).append(
            Column(column_name, data_type, comment, table_sql)
        )
    if rows:
        current_database, current_schema = rows[0][-2:]
        if len(qualifiers) == 2:
            places = [tuple(qualifiers)]
        elif len(qualifiers) == 1:
            places = [(current_database, qualifiers[0]), (qualifiers[0], "main")]
        else:
            places = [("temp", "main"), (current_database, current_schema)]
        for place in places:
            for (database, schema, spelled, oid), found in columns.items():
                if (database.lower(), schema.lower()) == (place[0].lower(), place[1].lower()):
                    return Table(database, schema, spelled, tuple(found), oid)
    raise ConfigError(
        f"no table {'.'.join(parts)!r} (views are not searchable: search needs a base table's rowid)"
    )


def set_comment(con: duckdb.DuckDBPyConnection, table: Table, column: Column, comment: str) -> None:
    """Store ``comment`` on ``column`` of ``table``."""
    con.execute(f"COMMENT ON COLUMN {table.sql}.{column.sql} IS {quote_literal(comment)}")


def has_hnsw_index(con: duckdb.DuckDBPyConnection, table: Table) -> bool:
    """Whether ``table`` has an HNSW (vss) index on any column."""
    (count,) = one_row(
        con,
        "SELECT count(*) FROM duckdb_indexes() WHERE database_name = ? AND schema_name = ? "
        "AND table_name = ? AND sql ILIKE '%USING HNSW%'",
        [table.database, table.schema, table.name],
    )
    return count > 0
