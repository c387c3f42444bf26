"""The vss extension: loading it offline, opening files safely, and building HNSW indexes.

What is and is not safe with an HNSW index in a database file
--------------------------------------------------------------
DuckDB only creates an HNSW index in a database file when
``hnsw_enable_experimental_persistence`` is on (``create_hnsw_index(...,
persistent=True)`` turns it on for that statement). The index is then written
whole at each checkpoint and read back whole when its table is first used.

The unsafe part is the write-ahead log. Changes committed since the last
checkpoint (all of them, after a crash or a killed process) are replayed when
the file is next opened, and the index only hears of them once it is bound,
which needs vss. A process that opens the file without vss, or loads vss but
closes before the index is bound, checkpoints the replayed rows into the table
but not into the index, which then silently misses them for good (measured with
DuckDB 1.5.5 and vss 1.5.5: after a crash, one plain ``duckdb.connect(path)``
and close, search never returns the rows in the log). So:

- open such files with :func:`connect`, which loads vss before attaching the
  file and checkpoints it straight away, so the log reaches the index;
- never open them with a tool that lacks vss (the DuckDB CLI, a plain
  ``duckdb.connect``) after an unclean exit;
- run ``CHECKPOINT`` after writing to an indexed table, so the log stays empty;
- if a file was opened without vss after a crash, drop and re-create the index.

An in-memory database has none of these problems (and no index after it closes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import duckdb

from duckdb_ext._catalog import TableName, one_row, quote_identifier, quote_literal, resolve_table
from duckdb_ext._extensions import load_extension, packaged_extension
from polars_embed.errors import ConfigError

log = logging.getLogger(__name__)

HnswMetric = Literal["cosine", "l2sq", "ip"]
_METRICS = ("cosine", "l2sq", "ip")
_PERSISTENCE = "hnsw_enable_experimental_persistence"
#: Search-time candidates of the indexes this package builds (see create_hnsw_index).
DEFAULT_EF_SEARCH = 400


def load_vss(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckDB's vss extension into the connection's database, without the network.

    The extension file comes from the ``duckdb-extension-vss`` package (the
    ``vss`` extra of polars-embed); without it, ``INSTALL vss; LOAD vss`` is
    tried, which needs the network or an extension already installed.

    Raises
    ------
    MissingDependencyError
        When neither way works.
    """
    load_extension(con, "vss", _packaged_extension(), purpose="HNSW indexes", extra="vss")


def _packaged_extension() -> Path | None:
    """The vss extension file shipped for this duckdb version by ``duckdb-extension-vss``."""
    return packaged_extension("vss")


def connect(
    database: str | Path = ":memory:", *, read_only: bool = False, config: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Open a database with vss loaded before the file is read, and make it current.

    ``duckdb.connect(path)`` replays the write-ahead log before any extension
    can be loaded, and rows replayed into an HNSW-indexed table reach the index
    only if it is bound before the file is closed (see the module notes). This
    opens an in-memory database, loads vss, ``ATTACH``-es the file, checkpoints
    it (which binds the indexes and writes the replayed rows into them; it is
    nearly free when the log is empty) and ``USE``-s it.

    Parameters
    ----------
    database
        A database file, or ``":memory:"``.
    read_only
        Attach the file read-only (nothing is written, so nothing is checkpointed).
    config
        DuckDB configuration, as for ``duckdb.connect``.
    """
    con = duckdb.connect(config=config or {})
    load_vss(con)
    if str(database) == ":memory:":
        return con
    attached = "SELECT database_name FROM duckdb_databases()"
    before = set(con.sql(attached).fetchall())
    mode = " (READ_ONLY)" if read_only else ""
    con.execute(f"ATTACH {quote_literal(str(database))}{mode}")
    # ATTACH names the database after the file; the new name is the one that was not there.
    ((name,),) = set(con.sql(attached).fetchall()) - before
    if not read_only:
        con.execute(f"CHECKPOINT {quote_identifier(name)}")
    con.execute(f"USE {quote_identifier(name)}")
    return con


def create_hnsw_index(
    con: duckdb.DuckDBPyConnection,
    table: TableName,
    column: str,
    *,
    metric: HnswMetric = "cosine",
    m: int | None = None,
    ef_construction: int | None = None,
    ef_search: int = DEFAULT_EF_SEARCH,
    name: str | None = None,
    persistent: bool = False,
) -> str:
    """Build a vss HNSW index on a ``FLOAT[d]`` column; :func:`search` then uses it.

    Parameters
    ----------
    con
        The connection; vss is loaded into it (see :func:`load_vss`).
    table
        The table: a name, or a (schema, name) or (database, schema, name) tuple.
    column
        The vector column.
    metric
        ``"cosine"`` (what :func:`search` ranks by), ``"l2sq"`` or ``"ip"``.
    m, ef_construction
        HNSW's neighbours per node and build-time candidate list (vss defaults 16 and 128).
    ef_search
        The candidate list of a search (at least ``k``), stored with the index;
        ``SET hnsw_ef_search`` overrides it per connection. On 100,000 MiniLM
        vectors of short sentences (M=16), recall@10 was 0.82 with 100, 0.93
        with 200 and 0.97 with 400, at 6, 9 and 12 ms a query; vss's default
        is 64.
    name
        The index name; ``<table>_<column>_hnsw`` by default.
    persistent
        Allow the index in a database file, which vss calls experimental: read
        the notes of :mod:`duckdb_ext.vss` on crash recovery first. Without it
        an index in a file is refused (unless the setting is already on).

    Returns
    -------
    str
        The index name.
    """
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}")
    settings = [f"metric = {quote_literal(metric)}"]
    for option, value in (("M", m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"{option} must be an integer of at least 2, got {value!r}")
            settings.append(f"{option} = {value}")
    target = resolve_table(con, table)
    vectors = target.require_column(column)
    width = vectors.width
    index_name = name or f"{target.name}_{vectors.name}_hnsw"
    load_vss(con)
    (in_file,) = one_row(
        con,
        "SELECT path IS NOT NULL AND path <> ':memory:' FROM duckdb_databases() WHERE database_name = ?",
        [target.database],
    )
    (enabled,) = one_row(con, f"SELECT current_setting('{_PERSISTENCE}')")
    if in_file and not enabled and not persistent:
        raise ConfigError(
            f"table {target} is in a database file, where an HNSW index is experimental in vss: after a "
            f"crash, rows replayed from the write-ahead log can be missing from the index for good. Pass "
            f"persistent=True to create it anyway, open the file with duckdb_ext.connect(), and "
            f"CHECKPOINT after writes (see duckdb_ext.vss)."
        )
    statement = (
        f"CREATE INDEX {quote_identifier(index_name)} ON {target.sql} "
        f"USING HNSW ({vectors.sql}) WITH ({', '.join(settings)})"
    )
    if in_file and not enabled:
        # Only index creation checks the setting; turn it back off so nothing else changes.
        con.execute(f"SET {_PERSISTENCE} = true")
        try:
            con.execute(statement)
        finally:
            con.execute(f"RESET {_PERSISTENCE}")
    else:
        con.execute(statement)
    log.info(
        "created HNSW index %s on %s.%s, FLOAT[%d] (%s)",
        index_name,
        target,
        vectors.name,
        width,
        ", ".join(settings),
    )
    return index_name
