"""A DuckDB database of embedding tables: connecting, the catalog of declarations, transactions.

DuckDB lets one process open a database file for writing, or many processes
open it read-only. :func:`connect` turns a refused lock into a
:class:`DatabaseLockedError` that says which of the two to do. Within a process,
one :class:`Database` serialises the statements on its connection (a DuckDB
connection is not thread-safe), and every write is one transaction that also
bumps the table's *generation* in the catalog: a cheap way for readers to know
their cached vectors are stale, and a write-write conflict (hence a clean
failure) for two writers of one table at once. A write that turns out to change
nothing (an upsert of records as they are stored, a delete that matches none) is
rolled back, bump and all, so that what readers keep stays good.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from os import PathLike
from typing import Any

import duckdb
import polars as pl

from duckdb_ext._catalog import quote_identifier, quote_literal, registered
from polars_embed.errors import (
    ConfigError,
    ConflictError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    ReadOnlyError,
    TableExistsError,
    TableNotFoundError,
    WriteError,
)
from polars_embed.registry import ProviderLike
from polars_embed.tables._declaration import MAX_NAME_CHARS, Declaration, Model, declare
from polars_embed.tables._sql import CATALOG, run
from polars_embed.tables._table import Table

log = logging.getLogger(__name__)

_LOCK_HOLDER = re.compile(r"\(PID (\d+)\)")


def connect(
    database: str | PathLike[str] | duckdb.DuckDBPyConnection = ":memory:", *, read_only: bool = False
) -> Database:
    """Open a database of embedding tables: a DuckDB file, ``":memory:"``, or a DuckDB connection.

    Parameters
    ----------
    database
        A file path (created when missing, unless ``read_only``), ``":memory:"``, or
        an open ``duckdb`` connection (e.g. from ``duckdb_ext.connect`` for tables
        with an HNSW index), which the database uses and does not close.
    read_only
        Open the file read-only, so that several processes can search it at once.

    Raises
    ------
    DatabaseLockedError
        When another process holds the file (DuckDB allows one writer, or many readers).

    Examples
    --------
    >>> import polars_embed as pe
    >>> with pe.connect() as db:
    ...     db.table_names()
    []
    """
    if isinstance(database, duckdb.DuckDBPyConnection):
        return Database(database, read_only=read_only, owned=False, where="a DuckDB connection")
    path = str(database)
    try:
        connection = duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as error:
        raise _open_error(path, read_only, error) from None
    # DuckDB's own progress bar would print over logs; embedding shows polars-embed's one.
    run(connection, "SET enable_progress_bar = false")
    return Database(connection, read_only=read_only, owned=True, where=path)


def _open_error(path: str, read_only: bool, error: duckdb.Error) -> Exception:
    message = str(error)
    if "lock" in message.lower():
        holder = _LOCK_HOLDER.search(message)
        who = f"process {holder.group(1)}" if holder else "another process"
        if read_only:
            return DatabaseLockedError(
                f"database {path!r} is open for writing in {who}, and DuckDB lets no other process in "
                "meanwhile: close it there (readers can share the file once no process writes it)"
            )
        return DatabaseLockedError(
            f"database {path!r} is open in {who}, and DuckDB lets only one process write a file: open it "
            "read-only with pe.connect(path, read_only=True) (many processes may read at once, "
            "when none writes), or close it there"
        )
    if "does not exist" in message:
        return DatabaseNotFoundError(f"database {path!r} does not exist, so it cannot be opened read-only")
    return DatabaseLockedError(f"database {path!r} could not be opened: {message}")


@dataclasses.dataclass
class _Write:
    """One write transaction: its connection, and whether the write changed the table."""

    connection: duckdb.DuckDBPyConnection
    changed: bool = True


class Database:
    """Embedding tables in one DuckDB database. Made by :func:`connect`; a context manager."""

    def __init__(
        self, connection: duckdb.DuckDBPyConnection, *, read_only: bool, owned: bool, where: str
    ) -> None:
        self._connection = connection
        self._where = where
        self._owned = owned
        self.read_only = read_only
        self._lock = threading.RLock()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, for plain SQL over the tables (their vectors are ``FLOAT[d]``).

        Writes made with plain SQL skip the table's checks and embedding; call
        :meth:`Table.refresh` after them.
        """
        return self._connection

    # --- tables -------------------------------------------------------------------------

    def create_table(
        self,
        name: str,
        schema: type[Model] | Mapping[str, Any] | pl.Schema,
        *,
        id: str | None = None,
        vectors: Mapping[str, Any] | None = None,
        metadata: str | None = None,
        metadata_schema: Mapping[str, Any] | None = None,
        id_max_length: int | None = None,
        exist_ok: bool = False,
    ) -> Table:
        """Create an embedding table, declared by a :class:`Model` or by a Polars schema.

        Parameters
        ----------
        name
            The DuckDB table's name.
        schema
            A :class:`Model` subclass, or a Polars schema (``{"id": pl.String, ...}``
            or Python types) of the non-vector columns.
        id
            With a Polars schema: the id column (default ``"id"``).
        vectors
            With a Polars schema: ``{"body_vec": pe.VectorOf("body", provider=...)}``.
        metadata
            With a Polars schema: the JSON metadata column (a Model's ``dict`` field is one).
        metadata_schema
            A JSON Schema every record's metadata must satisfy (checked by ``jsonschema``).
        id_max_length
            The longest id, in characters (default 300, or the Model's ``pe.Id(max_length=...)``).
        exist_ok
            Open the table instead when it exists with this same declaration.

        Returns
        -------
        Table
        """
        _check_name(name)
        declaration, providers = declare(
            schema,
            id=id,
            vectors=vectors,
            metadata=metadata,
            metadata_schema=metadata_schema,
            id_max_length=id_max_length,
        )
        with self._lock:
            stored = self._stored_declaration(name)
            if stored is not None:
                if exist_ok and _same_declaration(stored, declaration.to_json()):
                    return self.open_table(name, providers=providers)
                raise TableExistsError(
                    f"table {name!r} exists already{' with another declaration' if exist_ok else ''}: "
                    f"open it with db.open_table({name!r}), or drop it first with db.drop_table({name!r})"
                )
            with self._transaction(name, new=True) as write:
                connection = write.connection
                if _relation_exists(connection, name):
                    raise TableExistsError(
                        f"{name!r} is already a table or view of this database that is not an embedding "
                        "table; choose another name"
                    )
                run(connection, _create_statement(connection, name, declaration))
                for column in declaration.vectors:
                    # duckdb_ext.search reads it to embed text queries against the column
                    run(
                        connection,
                        f"COMMENT ON COLUMN {quote_identifier(name)}.{quote_identifier(column.name)} "
                        f"IS {quote_literal(column.spec.to_json())}",
                    )
                run(connection, f"INSERT INTO {CATALOG} VALUES (?, ?, 0)", [name, declaration.to_json()])
        log.info("created embedding table %s with vector columns %s", name, declaration.vector_names)
        return Table(self, name, declaration, providers)

    def open_table(self, name: str, *, providers: Mapping[str, ProviderLike] | None = None) -> Table:
        """Open an embedding table; its declaration comes from the database, no provider is needed.

        Parameters
        ----------
        name
            The table.
        providers
            Providers for some vector columns, by column, e.g. with runtime options
            (``base_url``, an API key). Each must be the one the column was made
            with; without one, the stored description builds it when first needed.
        """
        with self._lock:
            stored = self._stored_declaration(name)
            if stored is None:
                raise TableNotFoundError(
                    f"database has no embedding table {name!r}; its tables are {self.table_names()}: "
                    "create it with db.create_table"
                )
            schema = pl.from_arrow(
                self._connection.sql(f"SELECT * FROM {quote_identifier(name)} LIMIT 0").to_arrow_table()
            ).schema
        declaration = Declaration.from_json(stored, schema, table=name)
        return Table(self, name, declaration, dict(providers or {}))

    def table_names(self) -> list[str]:
        """The embedding tables of this database, sorted."""
        with self._lock:
            if not _relation_exists(self._connection, CATALOG):
                return []
            return [
                row[0] for row in self._connection.sql(f"SELECT name FROM {CATALOG} ORDER BY name").fetchall()
            ]

    def drop_table(self, name: str) -> None:
        """Drop an embedding table and its declaration."""
        with self._lock:
            if self._stored_declaration(name) is None:
                raise TableNotFoundError(
                    f"database has no embedding table {name!r}; its tables are {self.table_names()}"
                )
            with self._transaction(name) as write:
                run(write.connection, f"DROP TABLE {quote_identifier(name)}")
                run(write.connection, f"DELETE FROM {CATALOG} WHERE name = ?", [name])

    # --- plumbing for tables --------------------------------------------------------------

    def _stored_declaration(self, name: str) -> str | None:
        if not _relation_exists(self._connection, CATALOG):
            return None
        rows = self._connection.sql(
            f"SELECT declaration FROM {CATALOG} WHERE name = ?", params=[name]
        ).fetchall()
        return rows[0][0] if rows else None

    def _check_writable(self, name: str) -> None:
        if self.read_only:
            raise ReadOnlyError(
                f"table {name!r} is in a database opened read-only; open it with pe.connect(path) to write "
                "(one process at a time)"
            )

    @contextlib.contextmanager
    def _transaction(self, name: str, *, new: bool = False) -> Iterator[_Write]:
        """One write transaction on table ``name``, which bumps its generation: all of it, or none.

        ``new`` for the write that creates the table (and the catalog, the first time).
        A write that sets ``changed = False`` is rolled back instead of committed.
        """
        with self._lock:
            self._check_writable(name)
            connection = self._connection
            if new:
                run(
                    connection,
                    f"CREATE TABLE IF NOT EXISTS {CATALOG} "
                    "(name VARCHAR PRIMARY KEY, declaration VARCHAR NOT NULL, generation BIGINT NOT NULL)",
                )
            connection.begin()
            try:
                if not new:
                    run(
                        connection, f"UPDATE {CATALOG} SET generation = generation + 1 WHERE name = ?", [name]
                    )
                write = _Write(connection)
                yield write
                if write.changed:
                    connection.commit()
                else:
                    connection.rollback()
            except BaseException as error:
                with contextlib.suppress(duckdb.Error):  # DuckDB ends a conflicting transaction itself
                    connection.rollback()
                if isinstance(error, duckdb.TransactionException) and "onflict" in str(error):
                    raise ConflictError(
                        f"another writer changed table {name!r} at the same time, so nothing of this write "
                        "was kept; write again"
                    ) from None
                if isinstance(error, duckdb.Error):
                    raise WriteError(
                        f"DuckDB refused a write to table {name!r} ({str(error).splitlines()[0]}), so "
                        "nothing of it was kept; fix the cause it names and write again"
                    ) from error
                raise

    def _store_declaration(self, name: str, declaration: str) -> None:
        run(self._connection, f"UPDATE {CATALOG} SET declaration = ? WHERE name = ?", [declaration, name])

    def close(self) -> None:
        """Close the connection (one passed to :func:`connect` stays open)."""
        if self._owned:
            self._connection.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self._where!r}, read_only={self.read_only})"


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or "\x00" in name:
        raise ConfigError(f"a table name is a string of 1 to {MAX_NAME_CHARS} characters, got {name!r}")
    if name.startswith("__polars_embed"):
        raise ConfigError(f"table names starting with '__polars_embed' are reserved, got {name!r}")


def _same_declaration(stored: str, new: str) -> bool:
    """Equal declarations, whichever polars-embed version described their vectors."""
    import json

    def without_library(text: str) -> Any:
        data = json.loads(text)
        for column in data.get("vectors", []):
            column.get("spec", {}).pop("library", None)
        return data

    return without_library(stored) == without_library(new)


def _relation_exists(connection: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = connection.sql(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = current_schema() "
        "AND database_name = current_database()",
        params=[name],
    ).fetchall()
    views = connection.sql(
        "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND schema_name = current_schema() "
        "AND database_name = current_database()",
        params=[name],
    ).fetchall()
    return rows[0][0] + views[0][0] > 0


def _create_statement(connection: duckdb.DuckDBPyConnection, name: str, declaration: Declaration) -> str:
    """``CREATE TABLE`` with the DuckDB type of each column as DuckDB maps its Arrow type."""
    empty = pl.DataFrame(
        schema={
            **declaration.schema,
            **{column.name: pl.Array(pl.Float32, column.width) for column in declaration.vectors},
        }
    )
    try:
        with registered(connection, empty.to_arrow()) as staged:
            described = connection.sql(f"DESCRIBE SELECT * FROM {staged}").fetchall()
    except duckdb.Error as error:
        raise ConfigError(f"DuckDB cannot store these column types: {error}") from None
    columns = []
    for column_name, data_type, *_ in described:
        if column_name == declaration.metadata:
            data_type = "JSON"
        required = " NOT NULL" if column_name in declaration.required else ""
        columns.append(f"{quote_identifier(column_name)} {data_type}{required}")
    return f"CREATE TABLE {quote_identifier(name)} ({', '.join(columns)})"
