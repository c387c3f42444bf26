"""Exceptions raised by polars-embed.

Every error a user can meet derives from :class:`PolarsEmbedError`, and each one
also derives from the built-in exception a Python user would expect (``KeyError``
for an unknown name, ``ImportError`` for a missing extra, ``ValueError`` for bad
values), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class PolarsEmbedError(Exception):
    """Base class of every polars-embed error."""


class UnknownProviderError(PolarsEmbedError, KeyError):
    """No provider is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateProviderError(PolarsEmbedError, ValueError):
    """Two providers claim the same name."""


class MissingDependencyError(PolarsEmbedError, ImportError):
    """A provider needs an optional dependency that is not installed."""


class ConfigError(PolarsEmbedError, ValueError):
    """An option is unknown, has the wrong type, or references an unset variable."""


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


class AuthenticationError(ProviderError):
    """The provider rejected the credentials (HTTP 401/403)."""


class InvalidEmbeddingError(ProviderError):
    """A provider returned something that is not one finite float vector per text."""


class EmbeddingIncompleteError(ProviderError):
    """A column failed part way through; nothing partial was returned.

    ``done`` and ``total`` count distinct texts. Batches that finished before the
    failure are kept by the embedding cache (when it is on), so a rerun pays only
    for the rest.
    """

    def __init__(self, message: str, *, done: int, total: int) -> None:
        super().__init__(message)
        self.done = done
        self.total = total


class DimensionMismatchError(PolarsEmbedError, ValueError):
    """Vectors of different widths (usually from different models) were compared."""


class BudgetExceededError(PolarsEmbedError, ValueError):
    """A run would cost more tokens than its ``max_tokens``: refused before the first
    request, or stopped before the request that would pass it (what was embedded is
    in the cache)."""
