"""What each embedding call did: rows, cache hits, requests, retries, tokens, time.

Every call, and every column a Polars query embeds, logs one line on the
``polars_embed`` logger. To read the figures in code, :func:`last_stats` gives
the most recent call's or column's (one record for a column, however many
morsels Polars handed over), and :func:`track_stats` adds up every call made
while it is open, from any thread (Polars and DuckDB call the engine from their
worker threads). Times are wall time: calls that overlap count once::

    with polars_embed.track_stats() as stats:
        df = df.with_columns(vec=pl.col("text").embed.with_provider("hashing"))
    print(stats.embedded, stats.tokens)
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    "truncated",
    "failed",
)


@dataclass(frozen=True)
class Failure:
    """A row the provider refused, embedded as a null vector under ``on_error="null"``.

    Attributes
    ----------
    row
        The row's position in the input: in the column, or, for a column handed over
        in pieces (Polars' streaming engine, DuckDB's batches), counted over the pieces
        in the order they arrived.
    text
        The beginning of the row's text (at most 60 characters).
    message
        Why: the provider's own words.
    """

    row: int
    text: str
    message: str


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
    truncated
        Texts longer than the model reads, embedded from their beginning only
        (counted where the provider knows its limit; see ``truncate=``).
    failed
        Rows given a null vector because the provider refused their text
        (``on_error="null"``).
    failures
        Those rows, each a :class:`Failure`: row, text prefix, the provider's message.
    seconds
        Wall time: overlapping calls (Polars' concurrent morsels) count once.
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
    truncated: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def add(self, other: EmbedStats) -> None:
        """Add another call's counters to these (not its time: wall times do not add up)."""
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.provider = other.provider
        if other.failures:  # a new list: copies of these stats handed out keep their own
            self.failures = [*self.failures, *other.failures]

    def __str__(self) -> str:
        return (
            f"{self.provider}: {self.rows} rows, {self.skipped} null or blank, "
            f"{self.distinct} distinct, {self.cache_hits} from cache, {self.shared} shared, "
            f"{self.embedded} embedded "
            f"in {self.requests} requests ({self.retries} retries, {self.tokens} tokens), "
            f"{self.truncated} truncated, {self.failed} failed, {self.seconds:.2f}s"
        )


class _Tracker:
    """The sums of one ``track_stats`` block; its seconds are the union of the calls' spans."""

    def __init__(self) -> None:
        self.totals = EmbedStats()
        self._spans: list[tuple[float, float]] = []  # disjoint, sorted

    def add(self, call: EmbedStats, started: float, ended: float) -> None:
        self.totals.add(call)
        spans = self._spans
        low = bisect.bisect_left(spans, started, key=lambda span: span[1])
        high = bisect.bisect_right(spans, ended, key=lambda span: span[0])
        merged = spans[low:high]  # the spans this call overlaps
        if merged:
            started, ended = min(started, merged[0][0]), max(ended, merged[-1][1])
        spans[low:high] = [(started, ended)]
        # Added up as spans merge, not summed again: a call costs the same after many others.
        self.totals.seconds += ended - started - sum(end - start for start, end in merged)


_lock = threading.Lock()
_open_trackers: list[_Tracker] = []
_last = EmbedStats()
_before_reading: list[Callable[[], None]] = []


def record(call: EmbedStats, started: float, ended: float, *, last: EmbedStats | None = None) -> None:
    """Add one engine call (from ``started`` to ``ended``, in ``time.perf_counter()``
    seconds) to every open tracker, and make ``last`` (the column the call is part of;
    the call itself by default) what :func:`last_stats` gives."""
    global _last
    with _lock:
        _last = dataclasses.replace(last if last is not None else call)
        for tracker in _open_trackers:
            tracker.add(call, started, ended)


def before_reading(finish: Callable[[], None]) -> None:
    """Run ``finish`` before :func:`last_stats` reads: it completes records that are
    closed in the background (a Polars column's, when its query has returned)."""
    _before_reading.append(finish)


def last_stats() -> EmbedStats:
    """A copy of the counters of the most recent embedding call or column in this process."""
    for finish in _before_reading:
        finish()
    with _lock:
        return dataclasses.replace(_last)


@contextmanager
def track_stats() -> Iterator[EmbedStats]:
    """Sum the counters of every embedding call made inside the ``with`` block.

    ``seconds`` is the wall time during which at least one call was running.
    """
    tracker = _Tracker()
    with _lock:
        _open_trackers.append(tracker)
    try:
        yield tracker.totals
    finally:
        with _lock:
            _open_trackers[:] = [open_ for open_ in _open_trackers if open_ is not tracker]
