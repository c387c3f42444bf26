"""Exceptions raised by polars-embed.

The hierarchy::

    PolarsEmbedError
    ├── ConfigError             (ValueError)  an option or argument is not accepted
    ├── InvalidInputError       (ValueError)  data that cannot be embedded or searched
    │   └── InvalidImageError                 an image that cannot be read or is refused
    ├── InputTypeError          (TypeError)   data or an argument of the wrong type
    ├── DimensionMismatchError  (ValueError)  vectors of different widths compared
    ├── BudgetExceededError     (ValueError)  a run would pass its max_tokens
    ├── ColumnNotFoundError     (polars.exceptions.ColumnNotFoundError)
    ├── DuplicateColumnError    (polars.exceptions.DuplicateError)
    ├── UnknownProviderError    (KeyError)
    ├── DuplicateProviderError  (ValueError)
    ├── MissingDependencyError  (ImportError)
    ├── ProviderError                         a provider failed to embed a batch
    │   ├── RetryableProviderError
    │   ├── InputRefusedError                 the service refused a batch for its texts
    │   ├── AuthenticationError
    │   ├── InvalidEmbeddingError
    │   └── EmbeddingIncompleteError          a column failed part way; nothing returned
    │   embedding tables (polars_embed.tables):
    ├── ValidationError         (ValueError)  records that break the table's declaration
    ├── ConflictError           (ValueError)  ids that exist already, or a concurrent change
    ├── RecordNotFoundError     (KeyError)
    ├── TableNotFoundError      (KeyError)
    ├── TableExistsError        (ValueError)
    ├── DatabaseLockedError     (OSError)     another process holds the database file
    ├── DatabaseNotFoundError   (FileNotFoundError)
    ├── ReadOnlyError           (PermissionError)
    └── WriteError              (RuntimeError)  DuckDB refused a write; none of it was kept

Each class also derives from the exception that Python or Polars would raise in
its place (in brackets), so existing ``except`` clauses keep working.

Every error is rebuilt from its message alone on the way out of a Polars
expression: Polars 2.x raises ``type(error)(message)`` with the expression
appended to the message, keeping the class but losing the attributes, the
traceback and ``__cause__``. So every class here takes its message as its only
required argument, and the message alone says what went wrong, how to fix it
and, for :class:`EmbeddingIncompleteError`, how far the work got and whether a
rerun resumes. Exceptions pickle (for process pools and Ray) with their attributes.
"""

from __future__ import annotations

import re

import polars as pl


class PolarsEmbedError(Exception):
    """Base class of every polars-embed error."""


class ConfigError(PolarsEmbedError, ValueError):
    """An option or argument is not accepted: unknown, out of range, of the wrong type for a
    provider option, referencing an unset variable, or read from a file that cannot be trusted."""


class InvalidInputError(PolarsEmbedError, ValueError):
    """Data that cannot be embedded or searched: no query, a blank query, a vector of the
    wrong shape or without a direction."""


class InvalidImageError(InvalidInputError):
    """An image that cannot be embedded: unreadable, truncated, of a format not read, over
    Pillow's decompression-bomb limit, or a path that is a URL or leads outside its root.
    The message names the row."""


class InputTypeError(PolarsEmbedError, TypeError):
    """Data or an argument of the wrong type: texts that are not strings, a column that is not
    a vector column, vectors that are not numbers, a ``k`` that is not an integer."""


class DimensionMismatchError(PolarsEmbedError, ValueError):
    """Vectors of different widths (usually from different models) were compared."""


class BudgetExceededError(PolarsEmbedError, ValueError):
    """A run would cost more tokens than its ``max_tokens``: refused before the first
    request, or stopped before the request that would pass it (what was embedded is
    in the cache)."""


class ColumnNotFoundError(PolarsEmbedError, pl.exceptions.ColumnNotFoundError):
    """A column named in an argument is not in the frame."""


class DuplicateColumnError(PolarsEmbedError, pl.exceptions.DuplicateError):
    """An output column would take a name the frame already has."""


class UnknownProviderError(PolarsEmbedError, KeyError):
    """No provider is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateProviderError(PolarsEmbedError, ValueError):
    """Two providers claim the same name."""


class MissingDependencyError(PolarsEmbedError, ImportError):
    """A provider needs an optional dependency that is not installed."""


class ProviderError(PolarsEmbedError):
    """A provider failed to embed a batch; the message carries the provider's own words."""


class RetryableProviderError(ProviderError):
    """A failure worth retrying: rate limits, server errors, timeouts, dropped connections.

    Parameters
    ----------
    message
        What went wrong, in the provider's words.
    retry_after
        Seconds the server asked us to wait (``Retry-After``), if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InputRefusedError(ProviderError):
    """The service refused a batch for what is in it (HTTP 400, 413 or 422: a text over its
    token limit, content it will not take). Never retried as it is; with ``on_error="null"``
    the engine splits the batch to find the texts at fault and embeds the rest."""


class AuthenticationError(ProviderError):
    """The provider rejected the credentials (HTTP 401/403)."""


class InvalidEmbeddingError(ProviderError):
    """A provider returned something that is not one finite float vector per text."""


# How the engine words the progress of a failed column; read back by an error rebuilt from it.
_PROGRESS = re.compile(r"after (\d+) of (\d+) distinct texts")


class EmbeddingIncompleteError(ProviderError):
    """A column failed part way through; nothing partial was returned.

    ``done`` and ``total`` count distinct texts; when they are not given (an error
    rebuilt from its message, as Polars does) they are read from the message.
    Batches that finished before the failure are kept by the embedding cache
    (when it is on), so a rerun pays only for the rest.
    """

    def __init__(self, message: str, *, done: int | None = None, total: int | None = None) -> None:
        super().__init__(message)
        progress = _PROGRESS.search(str(message))
        if progress is not None:
            done = int(progress[1]) if done is None else done
            total = int(progress[2]) if total is None else total
        self.done = done
        self.total = total


# --- Embedding tables ---------------------------------------------------------------------


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
