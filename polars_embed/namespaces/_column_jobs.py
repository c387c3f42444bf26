"""One engine job per column per Polars query, however many morsels Polars hands over.

Polars gives the function of an expression nothing but a Series: not which query
runs it, nor when that query ends. The streaming engine calls an elementwise
function once per morsel, concurrently, on its worker threads, while the thread
that called ``collect()`` (or ``sink_parquet``, ``DataFrame.with_columns``, ...)
waits inside Polars; the in-memory engine calls it on that thread itself. So a
query is known by the frame through which that thread entered Polars: the same
frame for every morsel of one query, a new one for the next query, even of the
same expression. The morsels of a column share one :class:`~polars_embed.engine.EmbedJob`
(one progress bar, one stats record) while that frame runs; once it has returned
and no morsel is in flight, the job is closed, by a small watcher thread within
``WATCH_INTERVAL`` seconds, or at once by :func:`polars_embed.last_stats`.

When several threads wait inside Polars at once, a morsel could belong to any of
their calls: a job then lasts while any of the calls its first morsel saw runs, and
takes the morsels that see one of them. Where no such call can be seen at all
(``collect_async``, which waits in no thread), a job ends when its column has had
no morsel for ``IDLE_SECONDS``.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import polars as pl

from polars_embed.engine import EmbedJob, Images, LongTexts, OnError, Pool, Truncate, as_input_series
from polars_embed.provider import Kind, Provider
from polars_embed.stats import before_reading

WATCH_INTERVAL = 0.05
IDLE_SECONDS = 1.0

_POLARS_CODE = os.path.dirname(pl.__file__) + os.sep


@dataclass(frozen=True, eq=False)  # each expression its own: jobs are keyed by it
class ColumnEmbedder:
    """The function an embedding expression gives Polars: each call embeds one batch of a column."""

    provider: Provider
    kind: Kind
    progress: bool | None
    truncate: Truncate
    max_tokens: int | None = None
    on_error: OnError = "raise"
    long_texts: LongTexts = "truncate"
    pool: Pool = "mean"
    images: Images | None = None

    def __call__(self, texts: pl.Series, **_polars_arguments: Any) -> pl.Series:  # Polars adds return_dtype
        series = as_input_series(texts)
        queries = _running_queries(sys._getframe(1))
        if queries is None:  # not called by Polars: a call of its own
            with self.new_job() as job:
                return job.embed(series)
        column = _join(self, series.name, queries)
        try:
            return column.job.embed(series)
        finally:
            _leave(column)

    def new_job(self) -> EmbedJob:
        """A job for one column of one query, with this expression's options."""
        return EmbedJob(
            self.provider,
            kind=self.kind,
            progress=self.progress,
            truncate=self.truncate,
            max_tokens=self.max_tokens,
            images=self.images,
            on_error=self.on_error,
            long_texts=self.long_texts,
            pool=self.pool,
        )


Query = tuple[int, FrameType]  # a thread, and the frame through which it entered Polars


@dataclass(eq=False)
class _Column:
    """An open job, the Polars calls that may be its query, and its morsels in flight."""

    job: EmbedJob
    queries: list[Query]
    in_flight: int = 0
    last_active: float = field(default_factory=time.monotonic)
    replaced: bool = False


_lock = threading.Lock()
_open: dict[tuple[ColumnEmbedder, str], _Column] = {}
_watcher: threading.Thread | None = None


def _join(embedder: ColumnEmbedder, name: str, queries: list[Query]) -> _Column:
    """The open job of this column in the running query, opened if there is none."""
    global _watcher
    key = (embedder, name)
    retired = None
    with _lock:
        column = _open.get(key)
        if column is not None and not _same_query(column.queries, queries):
            retired, column = column, None  # its query has returned: this morsel starts a new one
            retired.replaced = True
            del _open[key]
        if column is None:
            column = _open[key] = _Column(embedder.new_job(), queries)
            if _watcher is None:
                _watcher = threading.Thread(target=_watch, name="polars-embed-columns", daemon=True)
                _watcher.start()
        column.in_flight += 1
        if retired is not None and retired.in_flight:
            retired = None  # closed by its last morsel instead
    if retired is not None:
        retired.job.close()
    return column


def _same_query(open_: list[Query], seen: list[Query]) -> bool:
    """Whether a morsel that sees the calls ``seen`` belongs to a job opened on ``open_``."""
    if not open_ or not seen:
        return not open_ and not seen
    return any(frame is known for _, frame in seen for _, known in open_)


def _leave(column: _Column) -> None:
    with _lock:
        column.in_flight -= 1
        column.last_active = time.monotonic()
        done = column.replaced and not column.in_flight
    if done:
        column.job.close()


def close_finished() -> None:
    """Close the jobs whose query has returned (or, when unknown, that have gone idle)."""
    now = time.monotonic()
    with _lock:
        if not _open:
            return
        stacks = _thread_stacks()
        finished = [
            key
            for key, column in _open.items()
            if not column.in_flight
            and (
                not any(_on_stack(frame, stacks.get(thread)) for thread, frame in column.queries)
                if column.queries
                else now - column.last_active > IDLE_SECONDS
            )
        ]
        closing = [_open.pop(key) for key in finished]
    for column in closing:
        column.job.close()


def _watch() -> None:
    global _watcher
    try:
        while True:
            time.sleep(WATCH_INTERVAL)
            close_finished()
            with _lock:
                if not _open:
                    _watcher = None
                    return
    except BaseException:
        with _lock:  # the next job starts a watcher again
            if _watcher is threading.current_thread():
                _watcher = None
        raise


_stacks_lock = threading.Lock()


def _thread_stacks() -> dict[int, FrameType]:
    """``sys._current_frames()``, with the cyclic garbage collector paused around it.

    On Python 3.11 a collection that starts inside ``sys._current_frames()`` (it
    allocates frame objects while holding the interpreter's thread-list lock) can run a
    finalizer that gives up the GIL to a thread waiting for that lock: the process hangs
    (python/cpython#106883, fixed only from 3.12). The lock keeps two callers from
    turning the collector back on under each other.
    """
    if sys.version_info >= (3, 12):
        return sys._current_frames()
    with _stacks_lock:
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return sys._current_frames()
        finally:
            if paused:
                gc.enable()


def _running_queries(caller: FrameType | None) -> list[Query] | None:
    """The Polars calls that may be running the query a morsel belongs to, as (thread,
    frame that entered Polars); ``None`` when the morsel was not handed over by Polars."""
    entered = _entered_polars(caller)
    if entered is not None:  # the in-memory engine, on the thread that called Polars
        return [(threading.get_ident(), entered)]
    frame = caller
    while frame is not None and _in_polars(frame):
        frame = frame.f_back
    if frame is not None:
        return None  # called from other Python code, not by Polars
    # A Polars worker thread (its stack starts inside Polars): the query is the one
    # some other thread waits for inside Polars.
    here = threading.get_ident()
    running = []
    for thread, top in _thread_stacks().items():
        try:
            entered = _entered_polars(_below_morsels(top)) if thread != here else None
        except _StackChanged:
            continue  # that thread has moved on: it runs no query this morsel could be part of
        if entered is not None:
            running.append((thread, entered))
    return running


def _entered_polars(frame: FrameType | None) -> FrameType | None:
    """The frame through which the Polars call at the top of a stack was entered from
    other code; ``None`` when the stack does not start with Polars code, or is a Polars
    worker's (no other code below)."""
    entered = None
    while frame is not None and _in_polars(frame):
        entered, frame = frame, _back(frame)
    return entered if frame is not None else None


def _below_morsels(top: FrameType) -> FrameType | None:
    """The frame below the innermost embedding morsel on a stack (the stack itself if none):
    what a morsel runs (the engine, the model, Polars calls they make) is no query."""
    frame: FrameType | None = top
    while frame is not None:
        if frame.f_code is _MORSEL_CODE:
            return _back(frame)
        frame = _back(frame)
    return top


def _on_stack(wanted: FrameType, top: FrameType | None) -> bool:
    """Whether ``wanted`` is on the stack below ``top``; True where that stack changed while
    it was walked (the next look, a moment later, tells)."""
    frame = top
    try:
        while frame is not None:
            if frame is wanted:
                return True
            frame = _back(frame)
    except _StackChanged:
        return True
    return False


class _StackChanged(Exception):
    """Another thread's stack changed under a walk of it."""


def _back(frame: FrameType) -> FrameType | None:
    """``frame.f_back``. On CPython 3.11, walking another thread's stack while that thread
    returns from the frames walked can lead into freed memory: ``f_back`` once gave a
    ``cell`` there, which is raised as :class:`_StackChanged`."""
    back = frame.f_back
    if back is not None and not isinstance(back, FrameType):
        raise _StackChanged
    return back


def _in_polars(frame: FrameType) -> bool:
    return frame.f_code.co_filename.startswith(_POLARS_CODE)


_MORSEL_CODE = ColumnEmbedder.__call__.__code__
before_reading(close_finished)
