"""The embedding engine: the one path from texts to vectors, for every front end.

::

    texts ─► nulls and blanks set aside ─► distinct texts ─► batches, longest first,
    by count and tokens ─► provider (bounded concurrency, retries) ─► validated
    ─► scattered back in input order as pl.Array(pl.Float32, d)

A provider only embeds a batch; everything around that happens here, once, for
Polars, DuckDB and plain Python alike. The engine keeps no per-call state
outside the call, so many threads may use it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm.auto import tqdm

from polars_embed.cache import InFlight, cache_for, text_keys
from polars_embed.errors import (
    ConfigError,
    EmbeddingIncompleteError,
    InvalidEmbeddingError,
    ProviderError,
    RetryableProviderError,
)
from polars_embed.metadata import remember
from polars_embed.provider import Embedded, Kind, Provider, check_kind
from polars_embed.registry import ProviderLike, resolve_provider
from polars_embed.stats import EmbedStats, record

log = logging.getLogger("polars_embed")

TextsLike = Sequence[str | None] | pl.Series | pa.Array | pa.ChunkedArray | np.ndarray

#: Exponential backoff between retries: BACKOFF_BASE * 2**attempt, at most BACKOFF_CAP
#: seconds, with jitter. A server's Retry-After is honoured up to RETRY_AFTER_CAP seconds.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 120.0

_limits: dict[Provider, threading.BoundedSemaphore] = {}
_limits_lock = threading.Lock()

_T = TypeVar("_T")


def embed(
    texts: TextsLike,
    provider: ProviderLike = None,
    *,
    kind: Kind = "document",
    progress: bool | None = None,
    **options: Any,
) -> pl.Series:
    """Embed texts, returning one vector per input row.

    Parameters
    ----------
    texts
        A list of strings, a Polars Series or an Arrow array of strings. Nulls
        and blank strings give null vectors and are never sent to the provider.
    provider
        A registered name (``"hashing"``), ``"name:model"``, a
        :class:`~polars_embed.Provider`, or any callable from a list of strings
        to vectors. Default: the local ``sentence-transformers`` model.
    kind
        ``"document"`` or ``"query"``: many models embed the two differently.
    progress
        Show a progress bar: ``None`` shows one on long calls in a terminal or
        notebook (not under pytest, nor with ``POLARS_EMBED_PROGRESS=0``).
    **options
        Provider options, e.g. ``model="..."``, ``batch_size=64``.

    Returns
    -------
    pl.Series
        ``pl.Array(pl.Float32, d)``, aligned with ``texts``.

    Examples
    --------
    >>> import polars_embed
    >>> vectors = polars_embed.embed(["a cat", None, "a cat", "  "], "hashing", dims=8)
    >>> vectors.dtype, vectors.null_count()
    (Array(Float32, shape=(8,)), 2)
    """
    resolved = resolve_provider(provider, **options)
    return embed_series(as_text_series(texts), resolved, kind=kind, progress=progress)


async def aembed(
    texts: TextsLike,
    provider: ProviderLike = None,
    *,
    kind: Kind = "document",
    progress: bool | None = None,
    **options: Any,
) -> pl.Series:
    """:func:`embed` for code already running in an event loop.

    The work runs on a worker thread, so the loop stays responsive.
    """
    return await asyncio.to_thread(embed, texts, provider, kind=kind, progress=progress, **options)


def embed_queries(queries: Sequence[str], provider: Provider) -> np.ndarray:
    """Embed search queries as a ``(q, d)`` float32 array; a blank query is an error."""
    blank = [i for i, query in enumerate(queries) if not isinstance(query, str) or not query.strip()]
    if blank:
        raise ValueError(
            f"search queries must be non-blank strings; query {blank[0]} is {queries[blank[0]]!r}"
        )
    vectors = embed_series(pl.Series("query", list(queries), dtype=pl.String), provider, kind="query")
    return vectors.to_numpy()


def as_text_series(texts: TextsLike, name: str = "embedding") -> pl.Series:
    """Texts as a Polars String Series; anything that is not text is a ``TypeError``."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string: wrap it as [text]")
    if isinstance(texts, pa.Array | pa.ChunkedArray):
        series = pl.Series(name, texts)
    elif isinstance(texts, pl.Series):
        series = texts
    else:
        try:
            series = pl.Series(name, list(texts), dtype=pl.String, strict=True)
        except TypeError as error:
            raise TypeError(f"embed() needs strings or None: {error}".split("\n")[0]) from None
    if series.dtype in (pl.Null, pl.Categorical) or isinstance(series.dtype, pl.Enum):
        series = series.cast(pl.String)
    if series.dtype != pl.String:
        raise TypeError(
            f"embed() needs a String column, but {series.name!r} is {series.dtype}; "
            f"convert it first, e.g. pl.col({series.name!r}).cast(pl.String)"
        )
    return series


def embed_series(
    texts: pl.Series, provider: Provider, *, kind: Kind = "document", progress: bool | None = None
) -> pl.Series:
    """The engine's core: a String Series in, an aligned ``pl.Array(pl.Float32, d)`` out."""
    check_kind(kind)
    started = time.perf_counter()
    keep = texts.is_not_null() & (texts.str.strip_chars() != "")
    distinct = texts.filter(keep).unique(maintain_order=True)
    stats = EmbedStats(
        provider=provider.label, rows=len(texts), skipped=len(texts) - int(keep.sum()), distinct=len(distinct)
    )
    try:
        vectors = _embed_distinct(distinct.to_list(), provider, kind, progress, stats)
    finally:
        stats.seconds = time.perf_counter() - started
        record(stats)
        log.log(logging.INFO if stats.embedded else logging.DEBUG, "embedded %s", stats)
    lookup = pl.DataFrame(
        {"text": distinct, "position": pl.int_range(len(distinct), dtype=pl.UInt32, eager=True)}
    )
    positions = pl.DataFrame({"text": texts}).join(lookup, on="text", how="left", maintain_order="left")
    distinct_vectors = pl.Series(texts.name, vectors)
    remember(distinct_vectors, provider)
    return distinct_vectors.gather(positions["position"])


def _embed_distinct(
    texts: list[str], provider: Provider, kind: Kind, progress: bool | None, stats: EmbedStats
) -> np.ndarray:
    """Embed distinct non-blank texts into one ``(len(texts), d)`` float32 array.

    A text that another call in this process is already embedding (a parallel morsel of
    the same collect, another thread) is not sent again: this call embeds its own texts
    first, then takes the other call's vectors, and sends those itself only if that call
    failed (see :class:`~polars_embed.cache.InFlight`).
    """
    limit = _concurrency_limit(provider)
    # Some providers learn their width from a request (a probe), retried like any other.
    width, stats.retries = _with_retries(provider, lambda: provider.dimension, limit)
    vectors = np.empty((len(texts), width), dtype=np.float32)
    on_disk = cache_for(provider)
    cache = on_disk.session() if on_disk else None  # remembers a lock for the rest of this call
    keys = text_keys(provider, kind, texts) if provider.cacheable else None

    def request(batch: list[int]) -> tuple[Embedded, int]:
        return _request_with_retries(provider, [texts[i] for i in batch], kind, limit)

    def store(batch: list[int], answer: tuple[Embedded, int]) -> None:
        embedded, retries = answer
        vectors[batch] = _validated(embedded.vectors, provider, [texts[i] for i in batch], width)
        if cache and keys:  # as each batch lands, so that a failed column resumes from here
            cache.put([keys[i] for i in batch], vectors[batch])
        in_flight.landed(batch)
        stats.embedded += len(batch)
        stats.requests += 1
        stats.retries += retries
        stats.tokens += embedded.tokens
        bar.update(len(batch))

    with InFlight(keys, vectors) as in_flight:
        todo: list[int] = list(range(len(texts)))
        while todo:  # more than once only for texts whose owner, another call, failed
            owned = in_flight.claim(todo)
            cached = cache.get([keys[i] for i in owned], width) if cache and keys else {}
            hits = [owned[i] for i in cached]
            if hits:
                vectors[hits] = np.stack(list(cached.values()))
                in_flight.landed(hits)
            stats.cache_hits += len(hits)
            pending = [position for i, position in enumerate(owned) if i not in cached]
            plan = _plan_batches([texts[p] for p in pending], provider)
            batches = [[pending[i] for i in batch] for batch in plan]
            with progress_bar(len(pending), provider.label, progress) as bar:
                try:
                    _run_batches(batches, request, store, provider.resolve("max_concurrency"))
                except ProviderError as error:
                    # The provider's error is chained below, so it must not show a secret either.
                    error.args = tuple(
                        provider.redact(arg) if isinstance(arg, str) else arg for arg in error.args
                    )
                    done = stats.cache_hits + stats.shared + stats.embedded
                    kept = " Finished batches are in the embedding cache: a rerun resumes." if cache else ""
                    raise EmbeddingIncompleteError(
                        f"{provider.label} failed after {done} of {len(texts)} distinct texts were "
                        f"embedded ({stats.cache_hits} from the cache); nothing was returned.{kept} "
                        f"{provider.redact(str(error))}",
                        done=done,
                        total=len(texts),
                    ) from error
            shared, todo = in_flight.wait()
            stats.shared += shared
    return vectors


def _plan_batches(texts: list[str], provider: Provider) -> list[list[int]]:
    """Group text positions into requests, by count and, where the provider says, by tokens.

    Texts go longest first so that each batch holds texts of similar length, which
    keeps the padding a local model computes on small.
    """
    size = provider.resolve("batch_size")
    if provider.max_batch_size:
        size = min(size, provider.max_batch_size)
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    token_budget = provider.max_batch_tokens
    tokens = provider.count_tokens(texts) if token_budget or provider.max_text_tokens else None
    if tokens is not None and provider.max_text_tokens:
        too_long = [i for i, count in enumerate(tokens) if count > provider.max_text_tokens]
        if too_long:
            first = too_long[0]
            raise ConfigError(
                f"{len(too_long)} texts are over {provider.label}'s limit of "
                f"{provider.max_text_tokens} tokens per text, e.g. one of about {tokens[first]} "
                f"tokens starting {texts[first][:60]!r}; shorten them first"
            )
    order = np.argsort([-len(text) for text in texts], kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    current_tokens = 0
    for position in order.tolist():
        cost = tokens[position] if tokens is not None else 0
        full = len(current) == size or (token_budget and current_tokens + cost > token_budget)
        if current and full:
            batches.append(current)
            current, current_tokens = [], 0
        current.append(position)
        current_tokens += cost
    if current:
        batches.append(current)
    return batches


def _run_batches(
    batches: list[list[int]],
    request: Callable[[list[int]], Any],
    store: Callable[[list[int], Any], None],
    concurrency: int,
) -> None:
    """Request every batch, ``concurrency`` at a time, and store each answer in this thread.

    After a failure no new batch starts, the ones already in flight are finished
    and stored (so a cache keeps them), and the first failure is raised.
    """
    if concurrency <= 1 or len(batches) <= 1:
        for batch in batches:
            store(batch, request(batch))
        return
    failure: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(batches)), thread_name_prefix="polars-embed")
    try:
        futures = {pool.submit(request, batch): batch for batch in batches}
        for future in as_completed(futures):
            try:
                store(futures[future], future.result())
            except CancelledError:
                continue
            except Exception as error:
                if failure is None:
                    failure = error
                    for pending in futures:
                        pending.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        raise failure


def _request_with_retries(
    provider: Provider, texts: list[str], kind: Kind, limit: threading.BoundedSemaphore
) -> tuple[Embedded, int]:
    """One batch, retried on retryable failures only; returns the answer and the retries made."""
    answer, retries = _with_retries(provider, lambda: provider.embed_batch(texts, kind=kind), limit)
    return (answer if isinstance(answer, Embedded) else Embedded(answer)), retries


def _with_retries(
    provider: Provider, call: Callable[[], _T], limit: threading.BoundedSemaphore
) -> tuple[_T, int]:
    """``call()`` within the concurrency limit, retried on retryable failures only;
    returns its answer and the retries made."""
    retries = provider.resolve("max_retries")
    for attempt in range(retries + 1):
        try:
            with limit:
                return call(), attempt
        except RetryableProviderError as error:
            if attempt == retries:
                raise
            delay = _backoff(attempt, error.retry_after)
            log.warning(
                "%s: %s; retry %d of %d in %.1fs",
                provider.label,
                provider.redact(str(error)),
                attempt + 1,
                retries,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry ``attempt + 1``: the server's word, else jittered backoff."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), RETRY_AFTER_CAP)
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)  # jitter keeps parallel clients from retrying in step


def _concurrency_limit(provider: Provider) -> threading.BoundedSemaphore:
    """One limit per provider configuration, shared by every call in the process."""
    try:
        with _limits_lock:
            if provider not in _limits:
                _limits[provider] = threading.BoundedSemaphore(max(provider.resolve("max_concurrency"), 1))
            return _limits[provider]
    except TypeError:  # an unhashable callable: limit each call on its own
        return threading.BoundedSemaphore(max(provider.resolve("max_concurrency"), 1))


def _validated(vectors: Any, provider: Provider, texts: list[str], width: int) -> np.ndarray:
    """A provider's answer as a C-contiguous ``(len(texts), width)`` float32 array, or an error."""
    try:
        array = np.asarray(vectors)
    except (TypeError, ValueError) as error:
        raise InvalidEmbeddingError(
            f"{provider.label} returned something that is not an array: {error}"
        ) from None
    if array.dtype.kind not in "fiu":
        raise InvalidEmbeddingError(f"{provider.label} returned {array.dtype} values, not numbers")
    if array.ndim != 2 or array.shape[0] != len(texts):
        raise InvalidEmbeddingError(
            f"{provider.label} returned an array of shape {array.shape} for {len(texts)} texts; "
            f"expected ({len(texts)}, {width})"
        )
    if array.shape[1] != width:
        raise InvalidEmbeddingError(
            f"{provider.label} returned vectors of width {array.shape[1]} but declares width {width}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InvalidEmbeddingError(
            f"{provider.label} returned NaN or infinite values for {len(bad)} of {len(texts)} "
            f"texts, e.g. for {texts[bad[0]][:60]!r}"
        )
    zero = ~array.any(axis=1)
    if zero.any():
        log.warning(
            "%s returned %d all-zero vectors (e.g. for %r); cosine search never matches them",
            provider.label,
            int(zero.sum()),
            texts[int(np.argmax(zero))][:60],
        )
    return array


def progress_bar(total: int, label: str, progress: bool | None) -> tqdm:
    """The progress bar of a long embedding job; ``progress=None`` decides as :func:`embed` documents."""
    if progress is None:
        progress = _progress_by_default()
    # delay: a call that ends within two seconds never draws a bar
    return tqdm(total=total, desc=f"embedding ({label})", unit="text", disable=not progress, delay=2.0)


def _progress_by_default() -> bool:
    setting = os.environ.get("POLARS_EMBED_PROGRESS")
    if setting is not None:
        return setting.strip().lower() not in ("0", "false", "no", "off", "")
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    return "ipykernel" in sys.modules or bool(sys.stderr and sys.stderr.isatty())
