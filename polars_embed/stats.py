"""What each embedding call did: rows, cache hits, requests, retries, tokens, time.

Every call logs one line on the ``polars_embed`` logger. To read the figures in
code, :func:`last_stats` gives the most recent call's, and :func:`track_stats`
adds up every call made while it is open, from any thread (Polars and DuckDB
call the engine from their worker threads)::

    with polars_embed.track_stats() as stats:
        df = df.with_columns(vec=pl.col("text").embed.with_provider("hashing"))
    print(stats.embedded, stats.tokens)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_COUNTERS = (
    "rows",
    "skipped",
    "distinct",
    "cache_hits",
    "shared",
    "embedded",
    "requests",
    "retries",
    "tokens",
)


@dataclass
class EmbedStats:
    """Counters for one call, or a sum of calls.

    Attributes
    ----------
    provider
        ``"name:model"`` of the provider (the last one, for a sum).
    rows
        Input rows.
    skipped
        Rows that were null or blank: null vectors, never sent.
    distinct
        Distinct non-blank texts.
    cache_hits
        Distinct texts found in the embedding cache.
    shared
        Distinct texts another call in this process was embedding at the same time
        (a parallel morsel, another thread): its vectors were taken, nothing was sent.
    embedded
        Texts sent to the provider.
    requests
        Batches the provider answered.
    retries
        Requests retried after a retryable failure.
    tokens
        Tokens billed, where the provider reports them.
    seconds
        Wall time.
    """

    provider: str = ""
    rows: int = 0
    skipped: int = 0
    distinct: int = 0
    cache_hits: int = 0
    shared: int = 0
    embedded: int = 0
    requests: int = 0
    retries: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, other: EmbedStats) -> None:
        """Add another call's counters to these."""
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds
        self.provider = other.provider

    def __str__(self) -> str:
        return (
            f"{self.provider}: {self.rows} rows, {self.skipped} null or blank, "
            f"{self.distinct} distinct, {self.cache_hits} from cache, {self.shared} shared, "
            f"{self.embedded} embedded "
            f"in {self.requests} requests ({self.retries} retries, {self.tokens} tokens), "
            f"{self.seconds:.2f}s"
        )


_lock = threading.Lock()
_open_trackers: list[EmbedStats] = []
_last = EmbedStats()


def record(stats: EmbedStats) -> None:
    """Make ``stats`` the last call's and add it to every open tracker."""
    global _last
    with _lock:
        _last = stats
        for totals in _open_trackers:
            totals.add(stats)


def last_stats() -> EmbedStats:
    """A copy of the counters of the most recent embedding call in this process."""
    with _lock:
        return dataclasses.replace(_last)


@contextmanager
def track_stats() -> Iterator[EmbedStats]:
    """Sum the counters of every embedding call made inside the ``with`` block."""
    totals = EmbedStats()
    with _lock:
        _open_trackers.append(totals)
    try:
        yield totals
    finally:
        with _lock:
            _open_trackers[:] = [open_ for open_ in _open_trackers if open_ is not totals]
