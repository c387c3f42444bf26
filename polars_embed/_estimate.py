"""The cost of an embedding run, before it runs: rows, distinct texts, cache hits, requests, tokens.

Everything is counted the way a run counts it (the engine's own null handling, cache
lookup, token counting and batching), and nothing is sent to the provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from polars_embed.engine import TextsLike, as_text_series, distinct_texts, plan_requests
from polars_embed.errors import ConfigError
from polars_embed.provider import Kind
from polars_embed.registry import ProviderLike, resolve_provider

__all__ = ["Estimate", "estimate"]


@dataclass(frozen=True)
class Estimate:
    """What embedding a column would cost.

    Attributes
    ----------
    provider
        ``"name:model"`` of the provider.
    rows
        Input rows.
    skipped
        Rows that are null or blank: never sent.
    distinct
        Distinct non-blank texts: each is embedded once.
    cached
        Distinct texts already in the embedding cache: free.
    requests
        Requests the rest would take.
    tokens
        Tokens the rest would cost.
    token_counter
        How ``tokens`` were counted (a tokenizer, or an approximation).
    price_per_million_tokens
        The price given, if any.
    """

    provider: str
    rows: int
    skipped: int
    distinct: int
    cached: int
    requests: int
    tokens: int
    token_counter: str
    price_per_million_tokens: float | None = None

    @property
    def to_embed(self) -> int:
        """Distinct texts that would be sent."""
        return self.distinct - self.cached

    @property
    def cost(self) -> float | None:
        """``tokens`` at ``price_per_million_tokens``; ``None`` without a price."""
        if self.price_per_million_tokens is None:
            return None
        return self.tokens * self.price_per_million_tokens / 1_000_000

    def __str__(self) -> str:
        price = "" if self.cost is None else f", about ${self.cost:.8f}".rstrip("0").rstrip(".")
        return (
            f"{self.provider}: {self.rows} rows, {self.skipped} null or blank, {self.distinct} distinct, "
            f"{self.cached} in the cache; {self.to_embed} to embed in {self.requests} "
            f"request{'' if self.requests == 1 else 's'}, "
            f"about {self.tokens} tokens ({self.token_counter}){price}"
        )


def estimate(
    texts_or_frame: TextsLike | pl.DataFrame | pl.LazyFrame,
    provider: ProviderLike = None,
    *,
    column: str | None = None,
    kind: Kind = "document",
    price_per_million_tokens: float | None = None,
    **options: Any,
) -> Estimate:
    """Preview an embedding run: what it would send and cost, without sending anything.

    Parameters
    ----------
    texts_or_frame
        Texts (as :func:`polars_embed.embed` takes them), or a DataFrame or LazyFrame
        with the text column (a LazyFrame reads only that column).
    provider
        As for :func:`polars_embed.embed`.
    column
        The text column of a frame; not needed when the frame has one String column.
    kind
        ``"document"`` or ``"query"``: the cache keeps the two apart.
    price_per_million_tokens
        The provider's price, to get :attr:`Estimate.cost`.
    **options
        Provider options, e.g. ``model="..."``.

    Returns
    -------
    Estimate
        Rows, distinct texts, cache hits, requests and tokens. Tokens are the
        provider's own count (for OpenAI: tiktoken when it loads, else UTF-8 bytes / 3),
        else an approximation, and :attr:`Estimate.token_counter` says which.

    Examples
    --------
    >>> import polars_embed
    >>> preview = polars_embed.estimate(
    ...     ["a cat", "a cat", None, "a dog"], "openai", price_per_million_tokens=0.02
    ... )
    >>> preview.rows, preview.skipped, preview.distinct, preview.requests
    (4, 1, 2, 1)
    """
    texts = _texts_of(texts_or_frame, column)
    resolved = resolve_provider(provider, **options)
    if price_per_million_tokens is not None and not price_per_million_tokens >= 0:
        raise ConfigError(f"price_per_million_tokens must be 0 or more, got {price_per_million_tokens!r}")
    distinct, skipped = distinct_texts(texts)
    plan = plan_requests(distinct.to_list(), resolved, kind=kind)
    return Estimate(
        provider=resolved.label,
        rows=len(texts),
        skipped=skipped,
        distinct=len(distinct),
        cached=plan.cached,
        requests=plan.requests,
        tokens=plan.tokens,
        token_counter=plan.token_counter,
        price_per_million_tokens=price_per_million_tokens,
    )


def _texts_of(texts_or_frame: TextsLike | pl.DataFrame | pl.LazyFrame, column: str | None) -> pl.Series:
    if not isinstance(texts_or_frame, pl.DataFrame | pl.LazyFrame):
        if column is not None:
            raise ConfigError("column= names a column of a frame; these texts are not a frame")
        return as_text_series(texts_or_frame)
    schema = texts_or_frame.collect_schema()
    if column is None:
        text_columns = [name for name, dtype in schema.items() if dtype == pl.String]
        if len(text_columns) != 1:
            raise ConfigError(
                f"which column holds the texts? pass column=, one of {', '.join(map(repr, schema))}"
            )
        column = text_columns[0]
    if column not in schema:
        raise ConfigError(f"no column {column!r}; the columns are {', '.join(map(repr, schema))}")
    selected = texts_or_frame.lazy().select(pl.col(column)).collect(engine="streaming")
    return as_text_series(selected.to_series())
