"""Names and column facts from the DuckDB catalog, and the SQL text built from them.

Every table and column name the package writes into SQL goes through
:func:`quote_identifier`; a name is looked up in the catalog once and then used
fully qualified, so the statements the package runs name exactly the table
that was looked up, whatever the search path says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np

from polars_embed.errors import ConfigError
from polars_embed.metadata import VectorSpec

TableName = str | Sequence[str]
"""A table: ``"docs"``, ``("schema", "docs")`` or ``("database", "schema", "docs")``.

Each part is one identifier, taken literally: ``"a.b"`` is a table named ``a.b``.
"""

_VECTOR_TYPE = re.compile(r"FLOAT\[(\d+)\]")


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, whatever characters it holds."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigError(f"a table or column name must be a non-empty string without NUL, got {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def float_list(values: np.ndarray) -> str:
    """A SQL list literal that casts back to exactly these float32 values.

    Nine significant digits give back every float32 exactly, and the exponent
    makes DuckDB read each number as a DOUBLE rather than a DECIMAL.
    """
    return "[" + ", ".join(format(float(value), ".8e") for value in values) + "]"


def vector_literal(vector: np.ndarray) -> str:
    """A constant ``FLOAT[d]`` expression holding exactly ``vector``'s values."""
    return f"{float_list(vector)}::FLOAT[{len(vector)}]"


@dataclass(frozen=True)
class Table:
    """A base table, as the catalog names it."""

    database: str
    schema: str
    name: str

    @property
    def sql(self) -> str:
        """The fully qualified, quoted name."""
        return ".".join(map(quote_identifier, (self.database, self.schema, self.name)))

    def __str__(self) -> str:
        return f"{self.database}.{self.schema}.{self.name}"


@dataclass(frozen=True)
class Column:
    """A column of a table: its name as the catalog spells it, type and comment."""

    table: Table
    name: str
    data_type: str
    comment: str | None

    @property
    def sql(self) -> str:
        """The quoted column name, to use inside a query over its table."""
        return quote_identifier(self.name)

    @property
    def width(self) -> int:
        """The vector width ``d`` of a ``FLOAT[d]`` column; any other type is an error."""
        match = _VECTOR_TYPE.fullmatch(self.data_type)
        if match is None:
            raise ConfigError(
                f"column {self.name!r} of {self.table} is {self.data_type}, not a FLOAT[d] vector column"
            )
        return int(match.group(1))

    def stored_spec(self) -> VectorSpec | None:
        """The description of the vectors kept in the comment, if the comment is one.

        A comment that is not a JSON object naming a provider is someone else's
        note and is ignored; one that names a provider must be a valid spec.
        """
        if not self.comment:
            return None
        try:
            data = json.loads(self.comment)
        except ValueError:
            return None
        if not isinstance(data, dict) or "provider" not in data:
            return None
        return VectorSpec.from_json(self.comment)


def resolve_table(con: duckdb.DuckDBPyConnection, table: TableName) -> Table:
    """Find a base table the way DuckDB resolves a name: temporary tables first, then
    the current schema; a two-part name is a schema in the current database, or a
    database's ``main`` schema."""
    parts = tuple(table) if isinstance(table, tuple | list) else (table,)
    if not 1 <= len(parts) <= 3:
        raise ConfigError(
            f"a table is a name or a (schema, name) or (database, schema, name) tuple, got {table!r}"
        )
    for part in parts:
        quote_identifier(part)
    current_database, current_schema = con.execute("SELECT current_database(), current_schema()").fetchone()
    *qualifiers, name = parts
    if len(qualifiers) == 2:
        places = [tuple(qualifiers)]
    elif len(qualifiers) == 1:
        places = [(current_database, qualifiers[0]), (qualifiers[0], "main")]
    else:
        places = [("temp", "main"), (current_database, current_schema)]
    found = con.execute(
        "SELECT database_name, schema_name, table_name FROM duckdb_tables() "
        "WHERE lower(table_name) = lower(?)",
        [name],
    ).fetchall()
    by_place = {
        (database.lower(), schema.lower()): Table(database, schema, spelled)
        for database, schema, spelled in found
    }
    for database, schema in places:
        match = by_place.get((database.lower(), schema.lower()))
        if match is not None:
            return match
    raise ConfigError(
        f"no table {'.'.join(parts)!r} (views are not searchable: search needs a base table's rowid)"
    )


def column_of(con: duckdb.DuckDBPyConnection, table: Table, name: str) -> Column | None:
    """The column ``name`` of ``table`` (matched without regard to case), or None."""
    quote_identifier(name)
    row = con.execute(
        "SELECT column_name, data_type, comment FROM duckdb_columns() "
        "WHERE database_name = ? AND schema_name = ? AND table_name = ? AND lower(column_name) = lower(?)",
        [table.database, table.schema, table.name, name],
    ).fetchone()
    return Column(table, *row) if row else None


def require_column(con: duckdb.DuckDBPyConnection, table: Table, name: str) -> Column:
    """The column ``name`` of ``table``; a missing one is an error naming what exists."""
    column = column_of(con, table, name)
    if column is None:
        names = [
            row[0]
            for row in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? "
                "AND table_name = ? ORDER BY column_index",
                [table.database, table.schema, table.name],
            ).fetchall()
        ]
        raise ConfigError(f"table {table} has no column {name!r}; its columns are {names}")
    return column


def set_comment(con: duckdb.DuckDBPyConnection, column: Column, comment: str) -> None:
    """Store ``comment`` on ``column``."""
    con.execute(f"COMMENT ON COLUMN {column.table.sql}.{column.sql} IS {quote_literal(comment)}")
