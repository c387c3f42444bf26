"""``embed()`` in SQL, and backfilling a table's vector column through the engine."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from duckdb_ext._catalog import (
    Column,
    Table,
    TableName,
    registered,
    resolve_table,
    set_comment,
)
from polars_embed.engine import (
    EmbedJob,
    OnError,
    Truncate,
    as_input_series,
    check_accepts,
    check_on_error,
    embed_series,
    progress_bar,
    resolve_truncate,
    width_of,
)
from polars_embed.errors import ConfigError
from polars_embed.metadata import VectorSpec, check_same_provider, check_width
from polars_embed.provider import Kind, Provider
from polars_embed.registry import ProviderLike, resolve_provider

log = logging.getLogger(__name__)

#: Rows per round trip in :func:`embed_table`: each batch is one engine call (so texts
#: repeated within it are embedded once) and one committed UPDATE (so a rerun resumes there).
DEFAULT_BATCH_ROWS = 10_000


def register(
    con: duckdb.DuckDBPyConnection,
    provider: ProviderLike = "sentence-transformers",
    *,
    name: str = "embed",
    on_error: OnError = "raise",
    **options: Any,
) -> Provider:
    """Add ``<name>(text)`` and ``<name>_query(text)`` SQL functions to a connection.

    Both return ``FLOAT[d]`` vectors made by ``provider`` through the polars-embed
    engine: ``<name>`` embeds documents, ``<name>_query`` search queries. NULL
    and blank texts give NULL; DuckDB hands the functions 2,048 rows at a time,
    and within those each distinct text is embedded once. Registering a name
    again on the same connection replaces the earlier functions, so several
    providers can live on one connection under different names.

    A provider that embeds images (a CLIP model) also gets ``<name>_image(blob)``:
    a ``BLOB`` of an encoded image (PNG, JPEG, ...) to a vector in the space of
    ``<name>_query``, so a text query finds images. NULL gives NULL; an image that
    cannot be read is an error naming its row.

    DuckDB may run the function on one of its worker threads while the calling
    thread waits busily for results, taking a core from a local model: on 2
    cores, 2,000 texts then took 15 s instead of 7.8 s (DuckDB 1.5.5, MiniLM).
    :func:`embed_table` always runs the model on the calling thread.

    Parameters
    ----------
    con
        The connection to add the functions to (functions belong to a connection).
    provider
        A registered name (``"hashing"``), ``"name:model"``, a Provider or a callable.
    name
        The SQL name of the document function; the query function adds ``_query``.
    on_error
        ``"null"``: a text the provider refuses (see :func:`polars_embed.embed`) gives
        NULL, and ``polars_embed.last_stats().failures`` lists it; ``"raise"`` (the
        default) fails the statement. The query function always raises.
    **options
        Provider options, e.g. ``dims=64`` or ``device="cpu"``.

    Returns
    -------
    Provider
        The provider behind the functions, e.g. for :func:`record_provider`.

    Examples
    --------
    >>> import duckdb, duckdb_ext
    >>> con = duckdb.connect()
    >>> _ = duckdb_ext.register(con, "hashing", name="hashed", dims=8)
    >>> con.sql("SELECT typeof(hashed('a cat')), hashed(NULL) IS NULL").fetchall()
    [('FLOAT[8]', True)]
    """
    check_on_error(on_error)
    resolved = resolve_provider(provider, **options)
    vector_type = f"FLOAT[{width_of(resolved)}]"
    functions = [(name, "document", "VARCHAR"), (f"{name}_query", "query", "VARCHAR")]
    if "image" in resolved.input_kinds:
        functions.append((f"{name}_image", "document", "BLOB"))
    for function_name, kind, argument in functions:
        with contextlib.suppress(duckdb.Error):  # nothing registered by that name yet
            con.remove_function(function_name)
        con.create_function(
            function_name,
            _sql_function(resolved, kind, on_error if kind == "document" else "raise"),
            [argument],
            vector_type,
            type="arrow",
            # DuckDB 1.5's default NULL handling misaligns FLOAT[d] results after a NULL
            # row; the engine already turns NULL texts into NULL vectors itself.
            null_handling="special",
            # Pure, so that DuckDB folds embed_query('constant') into a constant while
            # planning (not once per row), which an HNSW index can then match.
            side_effects=False,
        )
    log.debug("registered SQL functions %s and %s_query for %s", name, name, resolved.label)
    return resolved


def _sql_function(provider: Provider, kind: Kind, on_error: OnError) -> Callable[[pa.ChunkedArray], pa.Array]:
    def embed_chunk(texts: pa.ChunkedArray) -> pa.Array:
        return embed_series(as_input_series(texts), provider, kind=kind, on_error=on_error).to_arrow()

    return embed_chunk


def record_provider(
    con: duckdb.DuckDBPyConnection, table: TableName, column: str, provider: ProviderLike
) -> None:
    """Store which provider made a vector column, as the column's comment.

    :func:`search` reads it back, in this process or any later one, to embed a
    text query with the same model. :func:`embed_table` records it itself; call
    this after filling a column another way, e.g. ``CREATE TABLE ... AS SELECT
    embed(text) ...``. The comment is a :class:`~polars_embed.metadata.VectorSpec`:
    the provider's name, identity options and width, never a secret.

    Examples
    --------
    >>> import duckdb, duckdb_ext
    >>> con = duckdb.connect()
    >>> hashing = duckdb_ext.register(con, "hashing", dims=8)
    >>> _ = con.sql("CREATE TABLE docs AS SELECT 'a cat' AS body, embed('a cat') AS vector")
    >>> duckdb_ext.record_provider(con, "docs", "vector", hashing)
    >>> duckdb_ext.search(con, "docs", "vector", "a cat", k=1).select("body").fetchall()  # no provider=
    [('a cat',)]
    """
    resolved = resolve_provider(provider)
    target = resolve_table(con, table)
    vectors = target.require_column(column)
    check_width(resolved, vectors.width, column=vectors.name)
    set_comment(con, target, vectors, VectorSpec.of(resolved).to_json())


def embed_table(
    con: duckdb.DuckDBPyConnection,
    table: TableName,
    column: str,
    *,
    into: str | None = None,
    provider: ProviderLike = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool | None = None,
    truncate: Truncate = "warn",
    on_error: OnError = "raise",
    **options: Any,
) -> int:
    """Fill a table's vector column from a text column (or a BLOB column of images), in large batches.

    Use this rather than ``UPDATE ... SET v = embed(text)`` for a backfill: the
    engine sees ``batch_rows`` rows per call instead of DuckDB's 2,048, there
    is one progress bar for the whole table, and each batch is committed as it
    finishes. Only rows whose vector is NULL are embedded, so a rerun after a
    failure (or after new rows arrive) does only what is left. To re-embed a
    row, set its vector to NULL. The provider's description is stored as the
    vector column's comment (see :func:`record_provider`).

    Parameters
    ----------
    con
        The connection.
    table
        The table: a name, or a (schema, name) or (database, schema, name) tuple.
    column
        The text column (VARCHAR), or a BLOB column of encoded images for a
        provider that embeds images (a CLIP model).
    into
        The vector column; ``<column>_embedding`` by default. Added as
        ``FLOAT[d]`` if missing.
    provider
        The provider. By default the one recorded on ``into`` (so a rerun needs
        no arguments), else the local sentence-transformers model. One that
        differs from the recorded provider is an error.
    batch_rows
        Rows per engine call and per committed UPDATE.
    progress
        Show a progress bar (``None``: on long runs in a terminal or notebook).
    truncate
        Texts longer than the model reads: ``"warn"`` embeds their beginning and
        warns, ``"error"`` refuses them (see :func:`polars_embed.embed`).
    on_error
        ``"null"``: rows whose text the provider refuses keep a NULL vector (a rerun
        tries them again) and are listed in ``polars_embed.last_stats().failures``, by
        their position among the rows this call embeds; ``"raise"`` (the default) stops
        at the batch (earlier batches stay committed).
    **options
        Provider options, e.g. ``device="cpu"``.

    Returns
    -------
    int
        The number of rows given a vector.

    Examples
    --------
    >>> import duckdb, duckdb_ext
    >>> con = duckdb.connect()
    >>> _ = con.sql("CREATE TABLE docs AS SELECT * FROM (VALUES ('a cat'), (NULL), ('a dog')) t(body)")
    >>> duckdb_ext.embed_table(con, "docs", "body", provider="hashing", dims=8)
    2
    >>> duckdb_ext.embed_table(con, "docs", "body")  # nothing left to do
    0
    """
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ConfigError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    check_on_error(on_error)
    target = resolve_table(con, table)
    target.check_row_ids()
    texts = target.require_column(column)
    if texts.data_type not in ("VARCHAR", "BLOB"):
        raise ConfigError(
            f"column {column!r} of {target} is {texts.data_type}, not VARCHAR text or a BLOB of images"
        )
    vectors_name = into or f"{texts.name}_embedding"
    existing = target.column(vectors_name)
    given = None if provider is None else resolve_provider(provider, **options)
    stored = _stored_provider(existing, given)
    if given is None:
        chosen, rule = resolve_truncate(stored, truncate, **options)
    else:
        chosen, rule = resolve_truncate(given, truncate)
    if stored is not None:
        check_same_provider(chosen, stored, column=vectors_name)
    if texts.data_type == "BLOB":
        check_accepts(chosen, "image", texts.name)
    vectors = _vector_column(con, target, vectors_name, existing, chosen)
    # Described before any row is written, so that a partial fill is described too.
    try:
        set_comment(con, target, vectors, VectorSpec.of(chosen).to_json())
    except ConfigError as error:  # a plain callable has no name another process could look up
        log.warning("column %r of %s is filled without a description: %s", vectors.name, target, error)
    return _fill(con, target, texts, vectors, chosen, batch_rows, progress, rule, on_error)


def _stored_provider(column: Column | None, given: Provider | None) -> Provider | None:
    spec = column.stored_spec() if column else None
    return spec.provider_for(given) if spec else None


def _vector_column(
    con: duckdb.DuckDBPyConnection, table: Table, name: str, existing: Column | None, provider: Provider
) -> Column:
    """The ``FLOAT[d]`` column to fill, added when missing; a foreign comment on it is an error."""
    if existing is None:
        added = Column(name, f"FLOAT[{width_of(provider)}]", None)
        con.execute(f"ALTER TABLE {table.sql} ADD COLUMN {added.sql} {added.data_type}")
        return added
    check_width(provider, existing.width, column=existing.name)
    if existing.comment and existing.stored_spec() is None:
        raise ConfigError(
            f"column {name!r} of {table} has a comment that does not describe its vectors "
            f"({existing.comment[:60]!r}); embed_table keeps the provider there. Clear it with "
            f"COMMENT ON COLUMN ... IS NULL, or use another column"
        )
    return existing


def _fill(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    texts: Column,
    vectors: Column,
    provider: Provider,
    batch_rows: int,
    progress: bool | None,
    truncate: Truncate,
    on_error: OnError,
) -> int:
    pending = f"{vectors.sql} IS NULL AND {texts.sql} IS NOT NULL"
    # Row ids first, then each batch by its row-id range: a result set left open on the
    # connection would be closed by the batch's UPDATE.
    row_ids = con.sql(f"SELECT rowid FROM {table.sql} WHERE {pending} ORDER BY rowid").pl().to_series()
    written = 0
    # One job for the table: one stats record and one truncation warning, however many batches.
    with (
        progress_bar(len(row_ids), provider.label, progress) as bar,
        EmbedJob(provider, progress=False, truncate=truncate, on_error=on_error) as job,
    ):
        for start in range(0, len(row_ids), batch_rows):
            first, last = row_ids[start], row_ids[min(start + batch_rows, len(row_ids)) - 1]
            batch = con.sql(
                f"SELECT rowid, {texts.sql} FROM {table.sql} WHERE rowid BETWEEN ? AND ? AND {pending}",
                params=[first, last],
            ).pl()
            embedded = job.embed(batch.to_series(1))
            update = pl.DataFrame({"row": batch.to_series(0), "vector": embedded}).filter(
                embedded.is_not_null()
            )
            with registered(con, update.to_arrow()) as staging:
                con.execute(
                    f"UPDATE {table.sql} AS target SET {vectors.sql} = staged.vector "
                    f"FROM {staging} AS staged WHERE target.rowid = staged.row"
                )
            written += update.height
            bar.update(batch.height)
    log.info(
        "embedded %d rows of %s.%s into %s with %s", written, table, texts.name, vectors.name, provider.label
    )
    return written
