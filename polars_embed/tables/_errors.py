"""Errors of embedding tables.

Each derives from :class:`~polars_embed.PolarsEmbedError` and from the built-in
exception a Python user would expect, and is rebuilt from its message alone.
"""

from __future__ import annotations

from polars_embed.errors import PolarsEmbedError


class ValidationError(PolarsEmbedError, ValueError):
    """Records that break the table's declaration; nothing of the write that met them was written."""


class ConflictError(PolarsEmbedError, ValueError):
    """``add`` met ids that the table holds already, or another writer changed the table meanwhile."""


class RecordNotFoundError(PolarsEmbedError, KeyError):
    """No record of the table has the requested id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class TableNotFoundError(PolarsEmbedError, KeyError):
    """The database holds no embedding table by that name."""

    def __str__(self) -> str:
        return str(self.args[0])


class TableExistsError(PolarsEmbedError, ValueError):
    """``create_table`` was asked for a name the database already uses."""


class DatabaseLockedError(PolarsEmbedError, OSError):
    """Another process holds the database file in a way that excludes this one."""


class DatabaseNotFoundError(PolarsEmbedError, FileNotFoundError):
    """A database opened read-only does not exist."""


class ReadOnlyError(PolarsEmbedError, PermissionError):
    """A write to a database that was opened read-only."""


class WriteError(PolarsEmbedError, RuntimeError):
    """DuckDB refused a write (a full disk, a constraint added with plain SQL); none of it was kept."""
