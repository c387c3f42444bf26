"""The same engine and kernels on Ray Data, when one machine is not enough.

::

    import ray
    import polars_embed.ray as per

    ds = ray.data.read_parquet("s3://bucket/tickets/")            # any Ray Dataset
    ds = per.embed(ds, "body", provider="sentence-transformers", into="vec",
                   concurrency=8, num_gpus=1, batch_size=1024)    # an actor pool, one model each
    ds.write_parquet("out/")                                      # every file describes its vectors
    hits = per.search(ds, "vec", ["refund not received"], k=10)   # exact top-k: a Polars DataFrame
    pairs = per.knn_join(left, right, on="vec", k=5)              # exact k-NN join: a Ray Dataset

How it runs
-----------
:func:`embed` is one ``map_batches`` on a pool of actors. Each actor unpickles the
provider once (so a local model loads once per actor, on the actor's GPU when
``num_gpus`` is given) and sends every batch of rows through
:mod:`polars_embed.engine`, as a single process would: nulls and blanks, deduplication
within the batch, batching by count and tokens, retries honouring Retry-After,
validation, and the embedding cache of the worker's machine. The vector of a row is
appended to that row, so rows and vectors never part; the order of rows across blocks
is Ray's (set ``DataContext.get_current().execution_options.preserve_order = True`` to
keep the input order). A provider travels as its class and options: an ``$env:``
reference stays a reference and is read from each worker's environment, a literal
key is refused before any worker starts. Ray restarts an actor that dies and retries
its batch, so every row comes back once.

:func:`search` and :func:`knn_join` number the rows of the searched dataset in the
order of its blocks, run :func:`polars_embed.topk` on each block as a Ray task (which
Ray schedules where the block lives), and merge the blocks' top-k into the global top-k
with ``topk``'s tie rule (the lower row number wins). The result is the one ``topk``
gives over the concatenated blocks, and a worker never holds more than a block of
vectors. Both materialize the searched dataset in Ray's object store (spilling to disk
as Ray does): materialize an embedded dataset once (``ds.materialize()``) before
searching it several times.

Progress is Ray's own. Each embedding actor logs one line with its counters (rows,
distinct texts, cache hits, requests, retries, tokens) at INFO on the
``polars_embed.ray`` logger when it shuts down: start Ray with
``ray.init(logging_config=ray.LoggingConfig(log_level="INFO"))`` to see them.

Ray is an optional dependency (``pip install 'polars-embed[ray]'``); nothing else in
polars-embed imports it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from polars_embed.engine import Images, as_input_series, embed_series
from polars_embed.errors import ConfigError, MissingDependencyError
from polars_embed.kernels import Metric, topk, topk_merge
from polars_embed.metadata import (
    METADATA_KEY,
    VectorSpec,
    checked_provider,
    describable,
    parquet_metadata,
    specs_in,
)
from polars_embed.namespaces._vectors import QueryLike, as_matrix, check_same_width, unit_length, valid_rows
from polars_embed.namespaces.frame import _KnnJoin, _Search
from polars_embed.provider import Kind, Provider, check_kind
from polars_embed.registry import ProviderLike, resolve_provider
from polars_embed.stats import EmbedStats, track_stats

try:
    import ray
    import ray.cloudpickle
    import ray.data
except ImportError as error:
    raise MissingDependencyError(
        "polars_embed.ray needs Ray Data, which is not installed; install it with: "
        "pip install 'polars-embed[ray]'"
    ) from error

__all__ = ["embed", "knn_join", "search"]

log = logging.getLogger(__name__)

_NO_PROVIDER_HINT = (
    "pass provider= (the column's own provider), or search a dataset embedded by "
    "polars_embed.ray.embed or read from files it wrote (their schema names the provider)"
)


def embed(
    ds: ray.data.Dataset,
    column: str,
    provider: ProviderLike = None,
    *,
    into: str = "vec",
    kind: Kind = "document",
    images: Images | None = None,
    batch_size: int = 1024,
    concurrency: int | tuple[int, int] | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    runtime_env: dict[str, Any] | None = None,
    **options: Any,
) -> ray.data.Dataset:
    """Embed a text or image column of a Ray Dataset on a pool of actors.

    Parameters
    ----------
    ds
        Any Ray Dataset with a string column.
    column
        The text column, or a binary column of encoded images for a provider that
        embeds them. Nulls and blank strings get null vectors and are never sent.
    provider
        As in :func:`polars_embed.embed`: a registered name, ``"name:model"``, a
        :class:`~polars_embed.Provider` or a callable. It travels to every actor as its
        class and options; keys must be references (``api_key="$env:NAME"``), which each
        worker resolves from its own environment.
    into
        The name of the new vector column, ``FixedSizeList<float32, d>`` in Arrow.
    kind
        ``"document"`` or ``"query"``.
    images
        As in :func:`polars_embed.embed`: ``polars_embed.Images(root)`` reads a string
        column as paths of images under ``root``, which every worker must see.
    batch_size
        Rows per call to an actor: deduplication works within a call, and the engine
        splits it into requests of the provider's own ``batch_size``.
    concurrency
        Actors in the pool: ``n`` for a fixed pool, ``(min, max)`` to autoscale; by
        default Ray's autoscaling pool.
    num_cpus, num_gpus
        Resources of each actor (Ray's defaults when not given). Ray sets
        ``OMP_NUM_THREADS`` from ``num_cpus``, so a local model uses that many threads.
    runtime_env
        Ray's runtime environment of the actors, e.g.
        ``{"env_vars": {"POLARS_EMBED_CACHE_DIR": "/local/cache"}}``.
    **options
        Provider options, e.g. ``model="..."``, ``max_concurrency=4``.

    Returns
    -------
    ray.data.Dataset
        ``ds`` with the vector column; its Arrow schema metadata describes the vectors,
        so ``write_parquet`` writes files that :func:`polars_embed.read_parquet` reads
        back with their provider.

    Raises
    ------
    ConfigError
        If a provider option is wrong, a key is given as a value, ``column`` is missing
        or ``into`` is taken (when the schema is known before running), or ``concurrency``
        is malformed.

    Examples
    --------
    On a running cluster (the README has an example that runs)::

        ds = ray.data.from_items([{"text": "a cat"}, {"text": None}])
        per.embed(ds, "text", "hashing", dims=8).take_all()
        # [{'text': 'a cat', 'vec': array([...], dtype=float32)}, {'text': None, 'vec': None}]
    """
    check_kind(kind)
    resolved = resolve_provider(provider, **options)
    ray.cloudpickle.dumps(resolved)  # a key given as a value is refused here, before any worker starts
    schema = _known_schema(ds)
    described: dict[str, VectorSpec] = {}
    if schema is not None:
        _require_column(schema, column)
        if into in schema.names:
            raise ConfigError(f"the dataset already has a column {into!r}: pass another name as into=")
        described = _specs(schema)
    return ds.map_batches(
        _EmbedBatches,
        fn_constructor_kwargs={
            "provider": resolved,
            "column": column,
            "into": into,
            "kind": kind,
            "images": images,
            "described": described,
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=_actor_pool(concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        runtime_env=runtime_env,
        udf_modifying_row_count=False,
    )


def search(
    ds: ray.data.Dataset,
    on: str,
    query: QueryLike,
    *,
    k: int = 10,
    provider: ProviderLike = None,
    metric: Metric = "cosine",
    normalized: bool | None = None,
    score: str = "score",
    query_index: str = "query_index",
    **options: Any,
) -> pl.DataFrame:
    """The ``k`` rows of a Ray Dataset whose vectors best match a query, exactly.

    Each block is searched by :func:`polars_embed.topk` where it lives, and the
    blocks' results are merged, so the answer is the one ``topk`` gives over all the
    vectors in the order of the dataset's blocks (ties go to the earlier row).

    Parameters
    ----------
    ds
        A Ray Dataset with a vector column (``FixedSizeList<float32, d>``); it is
        materialized in the object store.
    on
        The vector column.
    query
        A string, embedded as a query on this machine; a vector; or a batch of either.
    k, provider, metric, normalized, score, query_index, **options
        As in :meth:`DataFrame.embed.search <polars_embed.namespaces.frame.EmbedFrameNamespace.search>`;
        the column's provider is found in the dataset's schema when it was embedded
        by :func:`embed` or read from files that describe it.

    Returns
    -------
    pl.DataFrame
        The matching rows, all columns, best first, with the score (and, for a batch,
        the query each row answers).

    Examples
    --------
    ::

        hits = per.search(ds, "vec", ["refund not received", "cancel my order"], k=10)
    """
    schema = _searched_schema(ds)
    columns = _polars_schema(schema)
    plan = _Search.plan(
        columns,
        query,
        on=on,
        k=k,
        provider=provider,
        metric=metric,
        normalized=normalized,
        score=score,
        query_index=query_index,
        quantized=None,
        options=options,
    )
    stored = _stored_provider(schema, on, columns)
    queries = plan.queries_for(pl.Series(on, [], dtype=columns[on]), stored, unknown=_NO_PROVIDER_HINT)
    blocks = ds.to_arrow_refs()
    indices, scores, offsets = _search_blocks(
        blocks, on, queries, plan.k, plan.metric, unit_length(plan.normalized, stored)
    )
    rows, positions = _gather(blocks, offsets, indices, columns)
    return plan.found(rows, positions, scores)


def knn_join(
    left: ray.data.Dataset,
    right: ray.data.Dataset,
    *,
    on: str | None = None,
    left_on: str | None = None,
    right_on: str | None = None,
    k: int = 5,
    metric: Metric = "cosine",
    normalized: bool | None = None,
    how: Literal["inner", "left"] = "inner",
    suffix: str = "_right",
    score: str = "score",
    batch_size: int = 1024,
    concurrency: int | None = None,
) -> ray.data.Dataset:
    """Join each row of ``left`` to the ``k`` rows of ``right`` whose vectors match its own best.

    ``right`` is materialized in the object store; each batch of ``left`` is searched
    against every block of ``right`` where that block lives (one Ray task per block) and
    the results merged, exactly as :func:`polars_embed.topk` over all of ``right``.

    Parameters
    ----------
    left, right
        Ray Datasets with vector columns of one width.
    on, left_on, right_on, k, metric, normalized, how, suffix, score
        As in :meth:`DataFrame.embed.knn_join <polars_embed.namespaces.frame.EmbedFrameNamespace.knn_join>`.
    batch_size
        Rows of ``left`` searched together: each block task multiplies this many
        queries by a block, so larger batches mean fewer, fuller tasks.
    concurrency
        At most this many batches of ``left`` at once (Ray's default when not given).

    Returns
    -------
    ray.data.Dataset
        ``left``'s columns, ``right``'s (renamed with ``suffix`` where taken) and the
        score: each row's matches in turn, best first, ties to the earlier row of ``right``.

    Examples
    --------
    ::

        pairs = per.knn_join(questions, answers, on="vec", k=5)
        pairs.write_parquet("pairs/")
    """
    right_schema = _searched_schema(right)
    left_schema = _schema(left)
    left_columns, right_columns = _polars_schema(left_schema), _polars_schema(right_schema)
    plan = _KnnJoin.plan(
        left_columns,
        None,
        right_columns,
        left_on=left_on or on,
        right_on=right_on or on,
        k=k,
        metric=metric,
        normalized=normalized,
        how=how,
        suffix=suffix,
        score=score,
        quantized=None,
    )
    check_same_width(
        pl.Series(plan.left_on, [], dtype=left_columns[plan.left_on]),
        pl.Series(plan.right_on, [], dtype=right_columns[plan.right_on]),
    )
    right_provider = _stored_provider(right_schema, plan.right_on, right_columns)
    plan.check_comparable(_stored_provider(left_schema, plan.left_on, left_columns), right_provider)
    described = {
        **_specs(left_schema),
        **{plan.right_names[name]: spec for name, spec in _specs(right_schema).items()},
    }
    return left.map_batches(
        _join_batch,
        fn_kwargs={
            "plan": plan,
            "blocks": right.to_arrow_refs(),  # inside a list, Ray passes the references, not the blocks
            "normalized": unit_length(plan.normalized, right_provider),
            "metadata": parquet_metadata(described) if described else {},
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.TaskPoolStrategy(size=concurrency) if concurrency else None,
    )


class _EmbedBatches:
    """One actor of :func:`embed`'s pool: its provider, built once, and its counters."""

    def __init__(
        self,
        provider: Provider,
        column: str,
        into: str,
        kind: Kind,
        images: Images | None,
        described: Mapping[str, VectorSpec],
    ) -> None:
        self._provider = provider
        self._column, self._into, self._kind, self._images = column, into, kind, images
        self._stats = EmbedStats(provider=provider.label)
        self._where = f"{socket.gethostname()} pid {os.getpid()}"
        # The spec needs the width: a local model loads here, once per actor.
        own = describable(provider, into)
        self._specs = {**described, **({into: own} if own is not None else {})}

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = batch.column_names
        if self._column not in names:
            raise ConfigError(f"the dataset has no column {self._column!r}; its columns are {names}")
        if self._into in names:
            raise ConfigError(f"the dataset already has a column {self._into!r}: pass another name as into=")
        inputs = as_input_series(batch.column(self._column), self._column)
        with track_stats() as stats:
            vectors = embed_series(
                inputs, self._provider, kind=self._kind, progress=False, images=self._images
            )
        self._stats.add(stats)
        self._stats.seconds += stats.seconds  # an actor embeds one batch at a time
        embedded = batch.append_column(self._into, vectors.to_arrow())
        # Blocks read from files may have lost the description their dataset's schema has.
        specs = {**_specs(batch.schema), **self._specs}
        return embedded.replace_schema_metadata({**(batch.schema.metadata or {}), **parquet_metadata(specs)})

    def __del__(self) -> None:  # Ray Data deletes the callable when the actor shuts down
        log.info("polars_embed.ray actor on %s: %s", self._where, self._stats)


def _join_batch(
    batch: pa.Table,
    *,
    plan: _KnnJoin,
    blocks: list[ray.ObjectRef],
    normalized: bool,
    metadata: Mapping[str, str],
) -> pa.Table:
    """One batch of :func:`knn_join`'s left side, joined to its matches in every block of the right."""
    left = _frame(batch)
    indices, scores, offsets = _search_blocks(
        blocks, plan.right_on, as_matrix(left[plan.left_on]), plan.k, plan.metric, normalized
    )
    rows, positions = _gather(blocks, offsets, indices, plan.right_schema)
    joined = plan.joined(left, rows, positions, scores).to_arrow()
    return joined.replace_schema_metadata({**(joined.schema.metadata or {}), **metadata})


def _search_blocks(
    blocks: list[ray.ObjectRef],
    column: str,
    queries: np.ndarray,
    k: int,
    metric: Metric,
    normalized: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~polars_embed.topk` over the concatenated blocks, one task per block.

    Returns the indices (row numbers in the concatenation, -1 for none), the scores,
    and the row number of each block's first row (with the total last).
    """
    queries_ref = ray.put(queries)  # sent once, read by every task from the object store
    answers = ray.get(
        [_block_topk.remote(block, column, queries_ref, k, metric, normalized) for block in blocks]
    )
    offsets = np.cumsum([0] + [rows for rows, _, _ in answers])
    if not answers:  # a dataset of no blocks: nothing to find
        return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), offsets
    indices, scores = topk_merge(
        [
            np.where(indices >= 0, indices + offset, -1)
            for (_, indices, _), offset in zip(answers, offsets, strict=False)
        ],
        [scores for _, _, scores in answers],
        k,
        metric=metric,
    )
    return indices, scores, offsets


@ray.remote
def _block_topk(
    block: pa.Table, column: str, queries: np.ndarray, k: int, metric: Metric, normalized: bool
) -> tuple[int, np.ndarray, np.ndarray]:
    """One block's rows and its top-k for each query, in row numbers of the block."""
    vectors = _frame(block.select([column]))[column]
    indices, scores = topk(
        queries, as_matrix(vectors), k, metric=metric, valid=valid_rows(vectors), normalized=normalized
    )
    return block.num_rows, indices, scores


@ray.remote
def _block_rows(block: pa.Table, rows: np.ndarray) -> pa.Table:
    return block.take(pa.array(rows))


def _gather(
    blocks: list[ray.ObjectRef], offsets: np.ndarray, indices: np.ndarray, schema: pl.Schema
) -> tuple[pl.DataFrame, np.ndarray]:
    """The rows ``indices`` name, each fetched once from its block, and where each index's
    row is among them (-1 stays -1)."""
    found = indices >= 0
    wanted = np.unique(indices[found])
    owners = np.searchsorted(offsets, wanted, side="right") - 1
    tables = ray.get(
        [
            _block_rows.remote(blocks[owner], wanted[owners == owner] - offsets[owner])
            for owner in np.unique(owners)
        ]
    )
    positions = np.where(found, np.searchsorted(wanted, indices), -1)
    if not tables:
        return pl.DataFrame(schema=schema), positions
    return pl.from_arrow(pa.concat_tables(tables, promote_options="default")), positions


def _frame(table: pa.Table) -> pl.DataFrame:
    """``table`` as a Polars DataFrame, column by column.

    Polars 2.1 refuses a fixed-size list array with a validity bitmap whose child holds
    more values than its rows (a slice, as Ray's batches and blocks often are): such a
    column is copied first. Converting the whole table at once would slice columns at
    each other's chunk boundaries.
    """
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_fixed_size_list(column.type) and any(
            chunk.offset or len(chunk.values) != len(chunk) * chunk.type.list_size for chunk in column.chunks
        ):
            column = column.combine_chunks()
        columns.append(pl.Series(name, column))
    return pl.DataFrame(columns)


def _actor_pool(concurrency: int | tuple[int, int] | None) -> ray.data.ActorPoolStrategy | None:
    if concurrency is None:
        return None
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return ray.data.ActorPoolStrategy(size=concurrency)
    if (
        isinstance(concurrency, tuple)
        and len(concurrency) == 2
        and all(isinstance(size, int) and not isinstance(size, bool) for size in concurrency)
        and 1 <= concurrency[0] <= concurrency[1]
    ):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    raise ConfigError(
        f"concurrency must be a number of actors n >= 1 or a range (min, max), got {concurrency!r}"
    )


def _known_schema(ds: ray.data.Dataset) -> pa.Schema | None:
    """The dataset's Arrow schema when Ray knows it without running anything, else ``None``."""
    schema = ds.schema(fetch_if_missing=False)
    return None if schema is None else _arrow(schema)


def _searched_schema(ds: ray.data.Dataset) -> pa.Schema:
    """The schema of a dataset about to be searched: when learning it would run the dataset,
    the dataset is run now, once, and its blocks kept for the search."""
    schema = _known_schema(ds)
    if schema is None:
        ds.to_arrow_refs()
        schema = _schema(ds)
    return schema


def _schema(ds: ray.data.Dataset) -> pa.Schema:
    """The dataset's Arrow schema (running it, if need be, to learn it)."""
    schema = ds.schema()
    if schema is None:
        raise ConfigError("the dataset is empty: it has no columns to search")
    return _arrow(schema)


def _arrow(schema: ray.data.Schema) -> pa.Schema:
    if not isinstance(schema.base_schema, pa.Schema):
        raise ConfigError(
            "the dataset's blocks are not Arrow tables; convert them first, e.g. "
            "ds.map_batches(lambda batch: batch, batch_format='pyarrow')"
        )
    return schema.base_schema


def _polars_schema(schema: pa.Schema) -> pl.Schema:
    return pl.from_arrow(schema.empty_table()).schema


def _require_column(schema: pa.Schema, column: str) -> None:
    if column not in schema.names:
        raise ConfigError(f"the dataset has no column {column!r}; its columns are {schema.names}")


def _specs(schema: pa.Schema) -> dict[str, VectorSpec]:
    """The vector columns an Arrow schema's metadata describes (read as untrusted data)."""
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    return specs_in({METADATA_KEY: raw.decode("utf-8", "replace")}) if raw is not None else {}


def _stored_provider(schema: pa.Schema, column: str, columns: pl.Schema) -> Provider | None:
    """The provider that made ``column``, when the schema describes it."""
    spec = _specs(schema).get(column)
    return None if spec is None else checked_provider(spec, columns[column], column)
