"""The catalog table's name, and running statements the way both duckdb 1.5 and 2.x accept."""

from __future__ import annotations

from typing import Any

import duckdb

#: The table that holds every embedding table's declaration and generation.
CATALOG = "__polars_embed_tables"


def run(
    connection: duckdb.DuckDBPyConnection, statement: str, params: list[Any] | None = None
) -> list[tuple]:
    """Run a statement to the end, returning its rows: duckdb 2 refuses the next while one is unread."""
    return connection.execute(statement, params).fetchall()
