"""The embedding engine: the one path from texts to vectors, for every front end.

::

    texts ─► nulls and blanks set aside ─► distinct texts ─► batches, longest first,
    by count and tokens ─► provider (bounded concurrency, retries) ─► validated
    ─► scattered back in input order as pl.Array(pl.Float32, d)

A provider only embeds a batch; everything around that happens here, once, for
Polars, DuckDB and plain Python alike. The engine keeps no per-call state
outside the call (or the :class:`EmbedJob` a front end opens for a column it
hands over in pieces), so many threads may use it at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from polars_embed._chunks import chunk_budget, chunk_texts
from polars_embed._env import env_flag
from polars_embed._inputs import Images, Prepared, check_accepts, prepare
from polars_embed._tokens import approximate_token_counter, approximate_tokens
from polars_embed.cache import InFlight, cache_for, text_keys
from polars_embed.errors import (
    BudgetExceededError,
    ConfigError,
    EmbeddingIncompleteError,
    InputRefusedError,
    InputTypeError,
    InvalidEmbeddingError,
    InvalidInputError,
    ProviderError,
    RetryableProviderError,
)
from polars_embed.kernels import l2_normalize
from polars_embed.metadata import remember
from polars_embed.provider import Embedded, Kind, Provider, check_kind
from polars_embed.registry import ProviderLike, resolve_provider
from polars_embed.reranker import Reranker, Scored
from polars_embed.stats import EmbedStats, Failure, record

__all__ = [
    "LONG_TEXT_RULES",
    "ON_ERROR_RULES",
    "POOLS",
    "REFUSAL_PROBE",
    "TRUNCATE_RULES",
    "EmbedJob",
    "Images",
    "LongTexts",
    "OnError",
    "Pool",
    "Truncate",
    "aembed",
    "as_input_series",
    "as_text_series",
    "check_accepts",
    "check_long_texts",
    "check_on_error",
    "embed",
    "embed_queries",
    "embed_series",
    "progress_bar",
    "rerank_scores",
    "resolve_truncate",
    "width_of",
]

log = logging.getLogger("polars_embed")

TextsLike = Sequence[str | None] | pl.Series | pa.Array | pa.ChunkedArray | np.ndarray
InputsLike = TextsLike | Sequence[bytes | None]

#: Exponential backoff between retries: BACKOFF_BASE * 2**attempt, at most BACKOFF_CAP
#: seconds, with jitter. A server's Retry-After is honoured up to RETRY_AFTER_CAP seconds.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 120.0

#: What to do with a text longer than the model reads: embed its beginning and warn
#: (counted in the stats), or refuse the call before any request.
Truncate = Literal["warn", "error"]
TRUNCATE_RULES: tuple[Truncate, ...] = ("warn", "error")

#: What to do when the provider refuses a text for what it says (an
#: :class:`~polars_embed.InputRefusedError`, a text over the service's token limit): fail
#: the call, or give that row a null vector, embed the rest and report it in the stats.
OnError = Literal["raise", "null"]
ON_ERROR_RULES: tuple[OnError, ...] = ("raise", "null")
#: What to do with a text longer than the model reads: embed its beginning (as ``truncate``
#: says), or embed every chunk of it (cut by the model's own tokens where it has a tokenizer)
#: and pool the chunks' vectors into the row's: their mean, or their elementwise max.
LongTexts = Literal["truncate", "chunk"]
LONG_TEXT_RULES: tuple[LongTexts, ...] = ("truncate", "chunk")
Pool = Literal["mean", "max"]
POOLS: tuple[Pool, ...] = ("mean", "max")


def check_long_texts(long_texts: object, pool: object) -> None:
    """A :class:`ConfigError` unless ``long_texts`` and ``pool`` are among the rules."""
    if long_texts not in LONG_TEXT_RULES:
        raise ConfigError(f"long_texts must be one of {LONG_TEXT_RULES}, got {long_texts!r}")
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}")


#: Sent alone when a provider refuses a batch before it has embedded anything for the
#: job: a service that refuses this refuses the request, whatever the texts.
REFUSAL_PROBE = "hello"


def check_on_error(on_error: object) -> None:
    """A :class:`ConfigError` unless ``on_error`` is one of :data:`ON_ERROR_RULES`."""
    if on_error not in ON_ERROR_RULES:
        raise ConfigError(f"on_error must be one of {ON_ERROR_RULES}, got {on_error!r}")


# Weak: a provider no one holds any more (a callable made for one call) takes its limit
# along, so the table does not grow with the calls a process has made.
_limits: weakref.WeakKeyDictionary[Provider, threading.BoundedSemaphore] = weakref.WeakKeyDictionary()
_limits_lock = threading.Lock()

_T = TypeVar("_T")


def embed(
    texts: InputsLike,
    provider: ProviderLike = None,
    *,
    kind: Kind = "document",
    progress: bool | None = None,
    truncate: Truncate = "warn",
    max_tokens: int | None = None,
    images: Images | None = None,
    on_error: OnError = "raise",
    long_texts: LongTexts = "truncate",
    pool: Pool = "mean",
    **options: Any,
) -> pl.Series:
    """Embed texts (or images), returning one vector per input row.

    Parameters
    ----------
    texts
        A list of strings, a Polars Series or an Arrow array of strings. Nulls
        and blank strings give null vectors and are never sent to the provider.
        Encoded images (``bytes``, a ``pl.Binary`` Series) are embedded as images,
        by a provider that embeds them (a CLIP model); identical images once.
    provider
        A registered name (``"hashing"``), ``"name:model"``, a
        :class:`~polars_embed.Provider`, or any callable from a list of strings
        to vectors. Default: the local ``sentence-transformers`` model.
    kind
        ``"document"`` or ``"query"``: many models embed the two differently.
    progress
        Show a progress bar: ``None`` shows one on long calls in a terminal or
        notebook (not under pytest, nor with ``POLARS_EMBED_PROGRESS=0``).
    truncate
        Texts longer than the model reads (e.g. 256 tokens for all-MiniLM-L6-v2):
        ``"warn"`` embeds their beginning, counts them in
        :func:`~polars_embed.last_stats` and logs one warning; ``"error"`` refuses
        the call before any request. A provider's own option of this name
        (Cohere's ``"START"``, ``"END"``, ``"NONE"``) is passed to the provider.
    max_tokens
        A budget: refuse to start when the texts not in the cache would cost more
        tokens (as :func:`polars_embed.estimate` counts them), and stop before a
        request that would take the tokens used past it. Either way a
        :class:`~polars_embed.BudgetExceededError`; what was embedded stays in the cache.
        Texts only: images are not counted in tokens.
    images
        ``Images(root="photos/")`` reads a String ``texts`` as paths of image files
        under that folder (relative, inside it, never a URL).
    on_error
        When the provider refuses texts for what they say (an HTTP 400 for one text, a
        text over the service's token limit): ``"raise"`` fails the call; ``"null"``
        splits the refused batch in halves until the texts at fault are found, embeds
        the rest, gives those rows null vectors and lists them in
        ``last_stats().failures``. Failures worth retrying (rate limits, server errors,
        timeouts) are retried either way and never become nulls. When a refusal comes
        before anything was embedded, one request with the text ``"hello"`` tells a
        refused request (a model the service does not know, say) from refused texts:
        if that is refused too, the call fails.
    long_texts
        Texts longer than the model reads: ``"truncate"`` (the default) embeds their
        beginning, as ``truncate`` says; ``"chunk"`` cuts every text into chunks the
        model reads whole (by the model's own tokenizer where it has one, see
        :meth:`~polars_embed.Provider.token_spans`, else by the estimate of
        ``polars_embed._tokens``), embeds each chunk (a short text is one chunk: its
        vector is as before) and pools them into the row's vector.
    pool
        How chunks' vectors make a row's, with ``long_texts="chunk"``: ``"mean"`` or
        ``"max"`` (elementwise), scaled to unit length when the provider's vectors are.
    **options
        Provider options, e.g. ``model="..."``, ``batch_size=64``.

    Returns
    -------
    pl.Series
        ``pl.Array(pl.Float32, d)``, aligned with ``texts``.

    Raises
    ------
    InvalidImageError
        An image that cannot be read, over Pillow's decompression-bomb limit, or a
        path out of the root; the message names its row.

    Examples
    --------
    >>> import polars_embed
    >>> vectors = polars_embed.embed(["a cat", None, "a cat", "  "], "hashing", dims=8)
    >>> vectors.dtype, vectors.null_count()
    (Array(Float32, shape=(8,)), 2)
    """
    resolved, rule = resolve_truncate(provider, truncate, **options)
    return embed_series(
        as_input_series(texts),
        resolved,
        kind=kind,
        progress=progress,
        truncate=rule,
        max_tokens=max_tokens,
        images=images,
        on_error=on_error,
        long_texts=long_texts,
        pool=pool,
    )


async def aembed(
    texts: TextsLike,
    provider: ProviderLike = None,
    *,
    kind: Kind = "document",
    progress: bool | None = None,
    truncate: Truncate = "warn",
    max_tokens: int | None = None,
    images: Images | None = None,
    on_error: OnError = "raise",
    long_texts: LongTexts = "truncate",
    pool: Pool = "mean",
    **options: Any,
) -> pl.Series:
    """:func:`embed` for code already running in an event loop.

    The work runs on a worker thread, so the loop stays responsive.
    """
    return await asyncio.to_thread(
        embed,
        texts,
        provider,
        kind=kind,
        progress=progress,
        truncate=truncate,
        max_tokens=max_tokens,
        images=images,
        on_error=on_error,
        long_texts=long_texts,
        pool=pool,
        **options,
    )


def resolve_truncate(provider: ProviderLike, truncate: str, **options: Any) -> tuple[Provider, Truncate]:
    """The provider, and the engine's rule for texts longer than the model reads.

    ``truncate`` is the engine's ``"warn"`` or ``"error"``; any other value goes to
    the provider's own option of that name (Cohere's ``"START"``, ``"END"``, ``"NONE"``),
    and the engine warns.
    """
    resolved = resolve_provider(provider, **options)
    if truncate in TRUNCATE_RULES:
        return resolved, truncate  # type: ignore[return-value]
    if "truncate" not in {field.name for field in dataclasses.fields(resolved)}:
        raise ConfigError(f"truncate must be one of {TRUNCATE_RULES}, got {truncate!r}")
    return resolved.with_options(truncate=truncate), "warn"


def width_of(provider: Provider) -> int:
    """The width of ``provider``'s vectors, for whatever must know it before embedding.

    Most providers read it from their configuration. One that must ask its service
    or function (an OpenAI-compatible server's model, a callable, neither with
    ``dims``) asks once, within the provider's concurrency limit and with the
    engine's retries, as a request to embed would.
    """
    width, _ = _with_retries(provider, lambda: provider.dimension, _concurrency_limit(provider))
    return width


def embed_queries(queries: Sequence[str], provider: Provider) -> np.ndarray:
    """Embed search queries as a ``(q, d)`` float32 array; a blank query is an error.

    Query vectors are not remembered as a vector column (:func:`~polars_embed.metadata.remember`):
    a process may run any number of searches.
    """
    blank = [i for i, query in enumerate(queries) if not isinstance(query, str) or not query.strip()]
    if blank:
        shown = repr(queries[blank[0]])
        raise InvalidInputError(
            f"search queries must be non-blank strings, but query {blank[0]} is "
            f"{shown if len(shown) <= 40 else shown[:40] + '...'}: leave it out or pass a vector instead"
        )
    vectors = embed_series(pl.Series("query", list(queries), dtype=pl.String), provider, kind="query")
    return vectors.to_numpy()


def as_input_series(values: InputsLike, name: str = "embedding") -> pl.Series:
    """Encoded images as a Binary Series (from ``bytes``, Binary or Arrow binary), anything
    else as :func:`as_text_series` takes it."""
    if isinstance(values, pa.Array | pa.ChunkedArray) and (
        pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)
    ):
        return pl.Series(name, values)
    if isinstance(values, pl.Series):
        return values if values.dtype == pl.Binary else as_text_series(values, name)
    if not isinstance(values, str | bytes | pa.Array | pa.ChunkedArray | np.ndarray):
        values = list(values)
        if any(isinstance(value, bytes | bytearray) for value in values):
            try:
                return pl.Series(name, values, dtype=pl.Binary, strict=True)
            except TypeError:
                raise InputTypeError(
                    "embed() got bytes mixed with other values: pass encoded images (bytes) "
                    "or texts (str), one kind per call"
                ) from None
    return as_text_series(values, name)


def as_text_series(texts: TextsLike, name: str = "embedding") -> pl.Series:
    """Texts as a Polars String Series; anything that is not text is an :class:`InputTypeError`."""
    if isinstance(texts, str):
        raise InputTypeError("embed() takes a sequence of texts, not one string: wrap it as [text]")
    if isinstance(texts, pa.Array | pa.ChunkedArray):
        series = pl.Series(name, texts)
    elif isinstance(texts, pl.Series):
        series = texts
    else:
        try:
            series = pl.Series(name, list(texts), dtype=pl.String, strict=True)
        except TypeError as error:
            raise InputTypeError(
                f"embed() needs a sequence of strings or None ({str(error).splitlines()[0]}); "
                "convert the texts to str first"
            ) from None
    if series.dtype in (pl.Null, pl.Categorical) or isinstance(series.dtype, pl.Enum):
        series = series.cast(pl.String)
    if series.dtype != pl.String:
        raise InputTypeError(
            f"embed() needs a String column, but {series.name!r} is {series.dtype}; convert it first, "
            f"e.g. pl.col({series.name!r}).cast(pl.String) (a Binary column embeds as images)"
        )
    return series


def embed_series(
    texts: pl.Series,
    provider: Provider,
    *,
    kind: Kind = "document",
    progress: bool | None = None,
    truncate: Truncate = "warn",
    max_tokens: int | None = None,
    images: Images | None = None,
    on_error: OnError = "raise",
    long_texts: LongTexts = "truncate",
    pool: Pool = "mean",
) -> pl.Series:
    """The engine's core: a String (or Binary) Series in, an aligned ``pl.Array(pl.Float32, d)`` out."""
    with EmbedJob(
        provider,
        kind=kind,
        progress=progress,
        truncate=truncate,
        max_tokens=max_tokens,
        images=images,
        on_error=on_error,
        long_texts=long_texts,
        pool=pool,
    ) as job:
        return job.embed(texts)


def distinct_texts(texts: pl.Series) -> tuple[pl.Series, int]:
    """The distinct texts worth embedding, in input order, and how many rows were null or blank."""
    keep = texts.is_not_null() & (texts.str.strip_chars() != "")
    return texts.filter(keep).unique(maintain_order=True), len(texts) - int(keep.sum())


class EmbedJob:
    """One column's worth of engine calls: one progress bar, one stats record, one log line.

    A front end that hands a column over in pieces (Polars' streaming engine calls
    once per morsel, from several threads at once) sends each piece through
    :meth:`embed` of one job. The job adds the pieces up: its bar's total grows as
    pieces arrive, its record (what :func:`~polars_embed.last_stats` gives, updated
    as each piece ends) covers every row, with the wall time from the first piece's
    start to the last one's end, and texts cut to the model's length are warned
    about once, when the job is closed. :func:`embed_series` is a job of one piece.

    Parameters
    ----------
    provider
        The provider that embeds every piece.
    kind, progress, truncate, on_error, long_texts, pool
        As for :func:`embed`.
    max_tokens
        As for :func:`embed`, for the whole job: every piece draws on one budget.
    images
        As for :func:`embed`: read String pieces as paths of images under a root.
        A Binary piece is always images.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        kind: Kind = "document",
        progress: bool | None = None,
        truncate: Truncate = "warn",
        max_tokens: int | None = None,
        images: Images | None = None,
        on_error: OnError = "raise",
        long_texts: LongTexts = "truncate",
        pool: Pool = "mean",
    ) -> None:
        check_kind(kind)
        check_long_texts(long_texts, pool)
        self.long_texts = long_texts
        self.pool = pool
        if truncate not in TRUNCATE_RULES:
            raise ConfigError(f"truncate must be one of {TRUNCATE_RULES}, got {truncate!r}")
        check_on_error(on_error)
        self.on_error = on_error
        self._rows_seen = 0  # rows of the pieces so far: where the next piece's rows start
        self._answered = threading.Event()  # some request of this job was answered
        self.budget = None if max_tokens is None else _TokenBudget(max_tokens)
        self.provider = provider
        self.kind = kind
        self.truncate = truncate
        self.images = images
        self._progress = progress
        self._lock = threading.Lock()
        self._bar: tqdm | None = None
        self._stats = EmbedStats(provider=provider.label)
        self._span: tuple[float, float] | None = None
        self._cut: tuple[int, str] | None = None  # (limit, text) of one truncated text
        self._closed = False

    def embed(self, texts: pl.Series) -> pl.Series:
        """Embed one piece of the column (any thread): its vectors, aligned with ``texts``."""
        started = time.perf_counter()
        with self._lock:
            first_row, self._rows_seen = self._rows_seen, self._rows_seen + len(texts)
        inputs = prepare(texts, self.images)
        check_accepts(self.provider, inputs.kind, texts.name)
        if inputs.kind != "text" and self.budget is not None:
            raise ConfigError("max_tokens counts the tokens of texts, and images have none: leave it out")
        distinct, skipped = distinct_texts(inputs.keys)
        stats = EmbedStats(
            provider=self.provider.label, rows=len(texts), skipped=skipped, distinct=len(distinct)
        )
        lookup = pl.DataFrame(
            {"text": distinct, "position": pl.int_range(len(distinct), dtype=pl.UInt32, eager=True)}
        )
        positions = pl.DataFrame({"text": inputs.keys}).join(
            lookup, on="text", how="left", maintain_order="left"
        )
        try:
            pooled = self.long_texts == "chunk" and inputs.kind == "text"  # an image has no length
            embed_distinct = _embed_pooled if pooled else _embed_distinct
            vectors, refused = embed_distinct(distinct.to_list(), self, stats, inputs)
            if refused:
                shown = texts if inputs.kind == "text" else inputs.keys
                stats.failures = _failures(shown, positions["position"], refused, first_row)
                stats.failed = len(stats.failures)
        finally:
            self._add(stats, started, time.perf_counter())
        distinct_vectors = pl.Series(texts.name, vectors)
        if refused:
            missing = pl.int_range(len(distinct), eager=True).is_in(list(refused))
            distinct_vectors = pl.select(pl.when(~missing).then(distinct_vectors)).to_series()
        if self.kind == "document":  # not queries: every search makes some, and the store must not grow
            remember(distinct_vectors, self.provider)
        return distinct_vectors.gather(positions["position"])

    def close(self) -> None:
        """Close the bar and log the job's line (and its truncation warning); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            bar, stats, cut = self._bar, dataclasses.replace(self._stats), self._cut
        if bar is not None:
            bar.close()
        if cut is not None:
            limit, text = cut
            log.warning(
                "%d texts were longer than the %d tokens %s reads, and only their beginnings were "
                "embedded (e.g. one starting %r); shorten or split them, or pass truncate='error' "
                "to refuse them",
                stats.truncated,
                limit,
                self.provider.label,
                text[:60],
            )
        if stats.failures:
            first = stats.failures[0]
            log.warning(
                "%s refused %d rows, which got null vectors (e.g. row %d, %r: %s); "
                "polars_embed.last_stats().failures lists them",
                self.provider.label,
                stats.failed,
                first.row,
                first.text,
                first.message,
            )
        log.log(logging.INFO if stats.embedded else logging.DEBUG, "embedded %s", stats)

    def __enter__(self) -> EmbedJob:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _add(self, call: EmbedStats, started: float, ended: float) -> None:
        with self._lock:
            first, last = self._span or (started, ended)
            self._span = (min(first, started), max(last, ended))
            self._stats.add(call)
            self._stats.seconds = self._span[1] - self._span[0]
            record(call, started, ended, last=self._stats)  # under the lock: records land in order

    def _plan(
        self, texts: list[str], stats: EmbedStats, tokens: list[int] | None = None, *, text: bool = True
    ) -> tuple[list[list[int]], dict[int, str]]:
        """Batches for ``texts`` (none from the cache), after the length rules: texts the
        service refuses are refused here (or, with ``on_error="null"``, set aside with why,
        by position), and texts the model cuts counted or refused.
        ``tokens``: the provider's own counts, where the budget has them already.
        Images (``text=False``, ``texts`` their keys) have no tokens to count."""
        if not texts:
            return [], {}
        if not text:
            return _plan_batches(texts, self.provider), {}
        provider = self.provider
        reads = provider.max_input_tokens
        if tokens is None and (provider.max_batch_tokens or provider.max_text_tokens or reads):
            tokens = provider.count_tokens(texts, kind=self.kind)
        set_aside: dict[int, str] = {}
        if tokens is not None:
            refused = provider.max_text_tokens
            over = f"{provider.label}'s limit of {refused} tokens per text"
            if self.on_error == "null":
                set_aside = {
                    i: f"about {count} tokens, over {over}"
                    for i, count in enumerate(tokens)
                    if refused and count > refused
                }
                if set_aside:
                    kept = [i for i in range(len(texts)) if i not in set_aside]
                    batches, _ = self._plan([texts[i] for i in kept], stats, [tokens[i] for i in kept])
                    return [[kept[i] for i in batch] for batch in batches], set_aside
            _refuse_over(texts, tokens, refused, over)
            if self.truncate == "error":
                _refuse_over(
                    texts,
                    tokens,
                    reads,
                    f"the {reads} tokens {provider.label} reads, and truncate='error' refuses them",
                    fix="shorten or split them, or pass truncate='warn' to embed their beginnings",
                    counted=False,  # a text over the limit may have been counted only that far
                )
            cut = [i for i, count in enumerate(tokens) if reads and count > reads]
            if cut:
                stats.truncated = len(cut)
                with self._lock:
                    self._cut = self._cut or (reads, texts[cut[0]])
        return _plan_batches(texts, provider, tokens), set_aside

    @contextmanager
    def _progress_of(self, pending: int) -> Iterator[tqdm]:
        """The job's bar, its total grown by ``pending`` texts."""
        with self._lock:
            if self._bar is None:
                self._bar = progress_bar(pending, self.provider.label, self._progress)
            elif pending:
                _grow(self._bar, pending)
            bar = self._bar
        yield bar


def _refuse_over(
    texts: list[str],
    tokens: list[int],
    limit: int | None,
    over: str,
    *,
    fix: str = "shorten them first",
    counted: bool = True,
) -> None:
    """Refuse texts of more than ``limit`` tokens with a :class:`ConfigError` naming how many, and one."""
    too_long = [i for i, count in enumerate(tokens) if limit and count > limit]
    if too_long:
        first = too_long[0]
        size = f"of about {tokens[first]} tokens " if counted else ""
        raise ConfigError(
            f"{len(too_long)} texts are over {over}, e.g. one {size}starting {texts[first][:60]!r}; {fix}"
        )


def _embed_distinct(
    texts: list[str], job: EmbedJob, stats: EmbedStats, inputs: Prepared
) -> tuple[np.ndarray, dict[int, str]]:
    """Embed distinct non-blank texts (or images, by their keys) into one ``(len(texts), d)``
    float32 array, and the positions of the texts refused under ``on_error="null"`` (their
    rows are garbage), with why.

    A text that another call in this process is already embedding (a parallel morsel of
    the same collect, another thread) is not sent again: this call embeds its own texts
    first, then takes the other call's vectors, and sends those itself only if that call
    failed or refused them (see :class:`~polars_embed.cache.InFlight`).
    """
    provider, kind = job.provider, job.kind
    limit = _concurrency_limit(provider)
    width, stats.retries = _width(provider, limit)
    vectors = np.empty((len(texts), width), dtype=np.float32)
    on_disk = cache_for(provider)
    cache = on_disk.session() if on_disk else None  # remembers a lock for the rest of this call
    # An image's key is its digest: the cache keeps it apart from a text that reads the same.
    cache_kind = kind if inputs.kind == "text" else f"{kind}:{inputs.kind}"
    keys = text_keys(provider, cache_kind, texts) if provider.cacheable else None  # type: ignore[arg-type]
    budget = job.budget
    tokens_of: dict[int, int] = {}
    refused: dict[int, str] = {}

    def send(batch: list[int]) -> tuple[Embedded, int]:
        if budget is None:
            return _request_with_retries(provider, inputs.load([texts[i] for i in batch]), kind, limit)
        estimated = sum(tokens_of[i] for i in batch)
        budget.reserve(estimated)
        try:
            answer = _request_with_retries(provider, inputs.load([texts[i] for i in batch]), kind, limit)
        except BaseException:
            budget.settle(estimated, 0, billed=False)
            raise
        budget.settle(estimated, answer[0].tokens)
        return answer

    def probe() -> None:
        _request_with_retries(provider, [REFUSAL_PROBE], kind, limit)

    def request(batch: list[int]) -> _Answers:
        if job.on_error == "null":
            return _isolate_refused(batch, send, probe, job._answered)
        return [(batch, send(batch))], {}, 0

    def store(batch: list[int], answers: _Answers) -> None:
        parts, refused_here, stats.retries = answers[0], answers[1], stats.retries + answers[2]
        for part, (embedded, retries) in parts:
            vectors[part] = _validated(embedded.vectors, provider, [texts[i] for i in part], width)
            if cache and keys:  # as each batch lands, so that a failed column resumes from here
                cache.put([keys[i] for i in part], vectors[part])
            in_flight.landed(part)
            stats.embedded += len(part)
            stats.requests += 1
            stats.retries += retries
            stats.tokens += embedded.tokens
        refused.update(refused_here)
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
            pending_texts = [texts[p] for p in pending]
            counts, provider_counts = budget.admit(pending_texts, provider, kind) if budget else (None, None)
            if counts is not None:
                tokens_of.update(zip(pending, counts, strict=True))
            plan, set_aside = job._plan(pending_texts, stats, provider_counts, text=inputs.kind == "text")
            batches = [[pending[i] for i in batch] for batch in plan]
            refused.update({pending[i]: f"{provider.label}: {why}" for i, why in set_aside.items()})
            with job._progress_of(len(pending)) as bar:
                bar.update(len(set_aside))  # set aside before any request
                try:
                    _run_batches(batches, request, store, provider.resolve("max_concurrency"))
                except ProviderError as error:
                    raise _incomplete(
                        error, provider, stats, len(texts), resumable=cache is not None
                    ) from error
                except _OverBudget as error:
                    done = stats.cache_hits + stats.shared + stats.embedded
                    kept = " What was embedded is in the cache: a rerun resumes from there." if cache else ""
                    raise BudgetExceededError(
                        f"{provider.label} stopped after {done} of {len(texts)} distinct texts: {error}; "
                        f"nothing was returned.{kept} Raise max_tokens to go on"
                    ) from None
            shared, todo = in_flight.wait()
            stats.shared += shared
    return vectors, refused


def _embed_pooled(
    texts: list[str], job: EmbedJob, stats: EmbedStats, inputs: Prepared
) -> tuple[np.ndarray, dict[int, str]]:
    """:func:`_embed_distinct` for ``long_texts="chunk"``: each text cut into chunks the
    model reads whole, every distinct chunk embedded once, and each text's chunks pooled.
    A text with a refused chunk is refused (with the chunk's message)."""
    provider = job.provider
    size = chunk_budget(provider, job.kind, None)
    offsets = chunk_texts(texts, provider, size)
    counts = np.array([len(chunks) for chunks in offsets], dtype=np.int64)
    chunks = [
        text[start:end] for text, spans in zip(texts, offsets, strict=True) for start, end in spans.tolist()
    ]
    distinct = {chunk: None for chunk in chunks}
    position = {chunk: i for i, chunk in enumerate(distinct)}
    of_chunk = np.array([position[chunk] for chunk in chunks], dtype=np.int64)
    vectors, refused_chunks = _embed_distinct(list(distinct), job, stats, inputs)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    each = vectors[of_chunk]
    pooled = (
        np.add.reduceat(each, firsts) / counts[:, None]
        if job.pool == "mean"
        else np.maximum.reduceat(each, firsts)
    )
    if provider.normalized:  # the kernels may rely on it
        pooled = l2_normalize(pooled)
    owner = np.repeat(np.arange(len(texts)), counts)
    refused = {
        int(owner[i]): refused_chunks[int(of_chunk[i])]
        for i in np.flatnonzero(np.isin(of_chunk, list(refused_chunks)))
    }
    return np.ascontiguousarray(pooled, dtype=np.float32), refused


#: A batch's answers: the parts the provider embedded (each with its answer and retries),
#: the texts it refused on their own, with its message, by position, and the retries
#: made by the requests it refused.
_Answers = tuple[list[tuple[list[int], tuple[Embedded, int]]], dict[int, str], int]


def _isolate_refused(
    batch: list[int],
    send: Callable[[list[int]], tuple[Embedded, int]],
    probe: Callable[[], None],
    answered: threading.Event,
) -> _Answers:
    """Send ``batch``; when the provider refuses it for its content, halve it until the
    texts at fault are alone, and embed everything else.

    A half sent after its sibling was embedded whole holds the fault, so it is halved
    without being sent: k bad texts in a batch of b cost about 2·k·log2(b) requests more.
    Until some request of the job has been answered, a refusal is first checked with
    ``probe()`` (:data:`REFUSAL_PROBE` alone): when that is refused too, the request is
    at fault, not its texts, and the refusal is raised.
    """
    parts: list[tuple[list[int], tuple[Embedded, int]]] = []
    refused: dict[int, str] = {}
    retries = 0

    def accepted(part: list[int]) -> bool:
        nonlocal retries
        try:
            parts.append((part, send(part)))
        except InputRefusedError as error:
            retries += getattr(error, "retries", 0)
            halve(part, error)
            return False
        answered.set()
        return True

    def halve(part: list[int], error: InputRefusedError) -> None:
        if not answered.is_set():
            try:
                probe()
            except InputRefusedError:
                raise InputRefusedError(
                    f"{error}; the text {REFUSAL_PROBE!r} alone was refused too, so the request "
                    "is refused rather than some of its texts: check the model and options"
                ) from None
            answered.set()
        if len(part) == 1:
            refused[part[0]] = str(error)
            return
        middle = len(part) // 2
        if accepted(part[:middle]):
            halve(part[middle:], error)  # the fault is in the other half: no need to send it whole
        else:
            accepted(part[middle:])

    accepted(batch)
    return parts, refused, retries


def _failures(
    texts: pl.Series, positions: pl.Series, refused: dict[int, str], first_row: int
) -> list[Failure]:
    """One :class:`Failure` per row whose distinct text (at ``positions``) was refused."""
    rows = positions.is_in(list(refused)).fill_null(False).arg_true().to_list()
    return [Failure(first_row + row, texts[row][:60], refused[positions[row]]) for row in rows]


def _incomplete(
    error: ProviderError, provider: Provider, stats: EmbedStats, total: int, *, resumable: bool
) -> EmbeddingIncompleteError:
    """The error for a column that failed part way. Its message alone says why, how far it
    got and what a rerun does: on the way out of a Polars expression nothing else survives."""
    # The provider's error is chained, so it must not show a secret either.
    error.args = tuple(provider.redact(arg) if isinstance(arg, str) else arg for arg in error.args)
    cause = str(error).removeprefix(f"{provider.label}: ")
    retries = provider.resolve("max_retries")
    if isinstance(error, RetryableProviderError) and retries:
        cause += f" (still failing after {retries} retries)"
    done = stats.cache_hits + stats.shared + stats.embedded
    rerun = (
        "finished batches are in the embedding cache, so a rerun resumes from there"
        if resumable
        else "without the embedding cache, a rerun starts over"
    )
    return EmbeddingIncompleteError(
        f"{provider.label} failed after {done} of {total} distinct texts were embedded "
        f"({stats.cache_hits} from the cache), so nothing was returned: {cause}; {rerun}",
        done=done,
        total=total,
    )


def _width(provider: Provider, limit: threading.BoundedSemaphore) -> tuple[int, int]:
    """The provider's width and the retries it took: some learn it from a request (a probe)."""
    return _with_retries(provider, lambda: provider.dimension, limit)


def _plan_batches(texts: list[str], provider: Provider, tokens: list[int] | None = None) -> list[list[int]]:
    """Group text positions into requests, by count and, where the provider says and
    ``tokens`` counts them, by tokens.

    Texts go longest first so that each batch holds texts of similar length, which
    keeps the padding a local model computes on small.
    """
    size = provider.resolve("batch_size")
    if provider.max_batch_size:
        size = min(size, provider.max_batch_size)
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    token_budget = provider.max_batch_tokens if tokens is not None else None
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
    futures: dict[Future[Any], list[int]] = {}
    stored: set[Future[Any]] = set()
    try:
        for batch in batches:  # one at a time: a Ctrl-C among the submissions keeps those made
            futures[pool.submit(request, batch)] = batch
        for future in as_completed(futures):
            try:
                store(futures[future], future.result())
                stored.add(future)
            except CancelledError:
                continue
            except Exception as error:
                if failure is None:
                    failure = error
                    for pending in futures:
                        pending.cancel()
    except KeyboardInterrupt:
        # Ctrl-C: the requests in flight are paid for, so wait for them and keep their answers.
        pool.shutdown(wait=True, cancel_futures=True)
        for future, batch in futures.items():
            if future not in stored and not future.cancelled() and future.exception() is None:
                store(batch, future.result())
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        raise failure


def _request_with_retries(
    provider: Provider, texts: list[Any], kind: Kind, limit: threading.BoundedSemaphore
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
        except InputRefusedError as error:
            error.retries = attempt  # the stats count them, though the request failed
            raise
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


def _grow(bar: tqdm, more: int) -> None:
    """Add ``more`` to a bar's total, in a terminal and in a notebook alike."""
    bar.total += more
    widget = getattr(bar, "container", None)  # tqdm.notebook draws an ipywidgets bar with its own max
    if widget is not None:
        widget.children[1].max = bar.total


def progress_bar(total: int, label: str, progress: bool | None) -> tqdm:
    """The progress bar of a long embedding job; ``progress=None`` decides as :func:`embed` documents."""
    if progress is None:
        progress = _progress_by_default()
    # A text bar in notebooks too (tqdm, not tqdm.auto): a saved notebook keeps a widget's
    # first frame but a text bar's last ("100% 3000/3000"); Jupyter redraws it in place.
    # delay: a call that ends within two seconds never draws a bar
    return tqdm(total=total, desc=f"embedding ({label})", unit="text", disable=not progress, delay=2.0)


def _progress_by_default() -> bool:
    setting = env_flag("POLARS_EMBED_PROGRESS")
    if setting is not None:
        return setting
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    return "ipykernel" in sys.modules or bool(sys.stderr and sys.stderr.isatty())


# --- Cost preview and token budget -------------------------------------------------------
# Public API of the engine, with distinct_texts above: polars_embed.estimate and the command
# line build on these. They reuse the engine's own width probe, cache lookup, token counting
# and batch planning, so a preview counts exactly what a run would send.


def count_tokens(
    texts: Sequence[str], provider: Provider, *, kind: Kind = "document"
) -> tuple[list[int], str, bool]:
    """Tokens per text, how they were counted, and whether the provider itself counted them.

    The provider's :meth:`~polars_embed.Provider.count_tokens` when it counts, else an
    approximation: tiktoken's cl100k_base when it loads, else UTF-8 bytes / 3.
    """
    counted = provider.count_tokens(texts, kind=kind)
    if counted is not None:
        return list(counted), provider.token_counter or f"{provider.name}'s own count", True
    return (
        approximate_tokens(texts),
        f"approximated by {approximate_token_counter()}; {provider.name} does not count tokens",
        False,
    )


@dataclass(frozen=True)
class RequestPlan:
    """What embedding some distinct texts would send, worked out without sending them.

    Attributes
    ----------
    cached
        Texts already in the embedding cache: they cost nothing.
    pending
        Texts that would be sent.
    requests
        Requests they would take, batched as a run batches them.
    tokens
        Tokens they would cost, counted as ``token_counter`` says.
    token_counter
        How the tokens were counted.
    """

    cached: int
    pending: int
    requests: int
    tokens: int
    token_counter: str


def plan_requests(texts: list[str], provider: Provider, *, kind: Kind = "document") -> RequestPlan:
    """The requests that embedding distinct non-blank ``texts`` would make, as a run makes them.

    Nothing is sent, except a width probe by a provider that can only learn its width
    from a request (an OpenAI-compatible model with no ``dims``).
    """
    check_kind(kind)
    width, _ = _width(provider, _concurrency_limit(provider))
    cache = cache_for(provider)
    cached = cache.get(text_keys(provider, kind, texts), width) if cache else {}
    pending = [text for position, text in enumerate(texts) if position not in cached]
    tokens, counter, by_provider = count_tokens(pending, provider, kind=kind)
    batches = _plan_batches(pending, provider, tokens if by_provider else None)
    return RequestPlan(len(cached), len(pending), len(batches), sum(tokens), counter)


class _OverBudget(Exception):
    """The next request would pass ``max_tokens``; the engine rewords this for the user."""


class _TokenBudget:
    """``max_tokens`` for one job: each piece's texts are checked against the estimate
    before its first request, then each request against the tokens counted so far (the
    provider's count where it reports one, else the estimate) and those in flight."""

    def __init__(self, max_tokens: int) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ConfigError(f"max_tokens must be a whole number of tokens, 0 or more; got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.spent = 0
        self.in_flight = 0
        self._lock = threading.Lock()

    def admit(self, texts: list[str], provider: Provider, kind: Kind) -> tuple[list[int], list[int] | None]:
        """Tokens per text, and the same when the provider counted them itself; a
        :class:`BudgetExceededError` before anything is sent when they would not fit."""
        counts, counter, by_provider = count_tokens(texts, provider, kind=kind)
        total = sum(counts)
        with self._lock:
            used = self.spent + self.in_flight
        if used + total > self.max_tokens:
            so_far, unsent = (
                (f" on top of the {used} used so far", "none of them") if used else ("", "nothing")
            )
            raise BudgetExceededError(
                f"{provider.label}: the {len(texts)} texts to embed would cost about {total} "
                f"tokens ({counter}){so_far}, over max_tokens={self.max_tokens}; {unsent} was sent. "
                "Raise max_tokens or embed fewer texts; polars_embed.estimate previews a run"
            )
        return counts, counts if by_provider else None

    def reserve(self, estimated: int) -> None:
        with self._lock:
            if self.spent + self.in_flight + estimated > self.max_tokens:
                raise _OverBudget(
                    f"the next request (about {estimated} tokens) would take the {self.spent} tokens "
                    f"used so far past max_tokens={self.max_tokens}"
                )
            self.in_flight += estimated

    def settle(self, estimated: int, counted: int, *, billed: bool = True) -> None:
        """A request of ``estimated`` tokens has ended: it cost what the provider ``counted``
        (else the estimate), or nothing when it was refused (``billed=False``)."""
        with self._lock:
            self.in_flight -= estimated
            if billed:
                self.spent += counted or estimated


# --- Reranking ---------------------------------------------------------------------------
# Public API of the engine: the search front ends rerank their candidates through it.


def rerank_scores(query: str, documents: Sequence[str | None], reranker: Reranker) -> np.ndarray:
    """How relevant each document is to ``query``, by ``reranker``: one float32 per document.

    The engine's rules for requests apply as for embedding: a null or blank
    document is never sent and scores NaN; the documents go in batches of the
    reranker's ``batch_size`` (at most its service's ``max_batch_size``),
    ``max_concurrency`` at a time, each retried on retryable failures only
    (honouring ``Retry-After``); the call is one record of
    :func:`~polars_embed.last_stats` (``embedded``: documents scored, ``tokens``:
    the units billed).
    """
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError(f"a reranked search needs a non-blank text query, got {query!r:.40}")
    started = time.perf_counter()
    positions = [i for i, text in enumerate(documents) if isinstance(text, str) and text.strip()]
    texts = [documents[i] for i in positions]
    stats = EmbedStats(
        provider=reranker.label,
        rows=len(documents),
        skipped=len(documents) - len(texts),
        distinct=len(texts),
    )
    scores = np.full(len(documents), np.nan, dtype=np.float32)
    limit = _concurrency_limit(reranker)

    def request(batch: list[int]) -> tuple[Any, int]:
        batch_texts = [texts[i] for i in batch]
        return _with_retries(reranker, lambda: reranker.score_batch(query, batch_texts), limit)

    def store(batch: list[int], answer: tuple[Any, int]) -> None:
        scored, retries = answer
        if not isinstance(scored, Scored):
            scored = Scored(scored)
        values = np.asarray(scored.scores, dtype=np.float32)
        if values.shape != (len(batch),) or not np.isfinite(values).all():
            raise ProviderError(
                f"{reranker.label} returned scores of shape {values.shape} (finite: "
                f"{bool(np.isfinite(values).all())}) for {len(batch)} documents; expected one finite "
                "number per document"
            )
        scores[[positions[i] for i in batch]] = values
        stats.embedded += len(batch)
        stats.requests += 1
        stats.retries += retries
        stats.tokens += scored.units

    try:
        _run_batches(_plan_batches(texts, reranker), request, store, reranker.resolve("max_concurrency"))
    finally:
        stats.seconds = time.perf_counter() - started
        record(stats, started, time.perf_counter())
        log.debug("reranked %s", stats)
    return scores
