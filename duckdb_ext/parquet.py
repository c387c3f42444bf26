"""Parquet files from polars-embed as DuckDB tables: ``FLOAT[d]`` vectors that remember their model.

``df.embed.write_parquet(path)`` stores each vector column as a list of floats
and what made it in the file's metadata. DuckDB's ``read_parquet`` reads such a
column as ``FLOAT[]`` (which neither an HNSW index nor :func:`~duckdb_ext.search`
takes) and ignores the metadata; :func:`load_parquet` does both steps.
"""

from __future__ import annotations

import logging
import os
from os import PathLike

import duckdb
import polars as pl

from duckdb_ext._catalog import (
    TableName,
    one_row,
    quote_identifier,
    quote_literal,
    resolve_table,
    set_comment,
    table_parts,
)
from polars_embed.errors import ConfigError
from polars_embed.metadata import VectorSpec, specs_in

log = logging.getLogger(__name__)

_FLOAT_LIST = "FLOAT[]"


def load_parquet(
    con: duckdb.DuckDBPyConnection,
    path: str | PathLike[str],
    *,
    table: TableName,
    replace: bool = False,
) -> int:
    """Create a table from a Parquet file, with ``FLOAT[d]`` vectors and their providers recorded.

    Every column the file's metadata describes (``df.embed.write_parquet``,
    ``polars_embed`` metadata) becomes ``FLOAT[d]`` of the described width and
    gets the description as its comment, as :func:`record_provider` stores it,
    so :func:`search` embeds a text query with the same model and no
    ``provider=``. The description is read by polars-embed's own rules for
    untrusted files: an unknown provider, an unknown or runtime option, or a
    literal secret is an error, and then no table is created. A ``FLOAT[]``
    column that is not described becomes ``FLOAT[d]`` when all its vectors
    have the same width ``d``; other columns are copied as they are.

    Parameters
    ----------
    con
        The connection to create the table in.
    path
        One Parquet file.
    table
        The new table: a name, or a (schema, name) or (database, schema, name) tuple.
    replace
        Replace a table of that name instead of refusing to.

    Returns
    -------
    int
        The number of rows loaded.

    Examples
    --------
    >>> import tempfile, duckdb, duckdb_ext, polars as pl, polars_embed
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = f"{folder.name}/pets.parquet"
    >>> df = pl.DataFrame({"body": ["a black cat", None, "a small dog"]})
    >>> df = df.with_columns(vec=pl.col("body").embed.with_provider("hashing", dims=32))
    >>> df.embed.write_parquet(path)
    >>> con = duckdb.connect()
    >>> duckdb_ext.load_parquet(con, path, table="pets")
    3
    >>> con.sql("SELECT body, typeof(vec) FROM pets").fetchall()
    [('a black cat', 'FLOAT[32]'), (None, 'FLOAT[32]'), ('a small dog', 'FLOAT[32]')]
    >>> duckdb_ext.search(con, "pets", "vec", "black cat", k=1).select("body").fetchall()  # no provider=
    [('a black cat',)]
    >>> folder.cleanup()
    """
    source = os.fspath(path)
    specs = specs_in(pl.read_parquet_metadata(source))
    scan = f"read_parquet({quote_literal(source)})"
    file = con.sql(f"SELECT * FROM {scan}")
    types = dict(zip(file.columns, map(str, file.types), strict=True))
    described = {name: spec for name, spec in specs.items() if name in types}
    for name, spec in described.items():
        if types[name] not in (_FLOAT_LIST, f"FLOAT[{spec.dimension}]"):
            raise ConfigError(
                f"column {name!r} of {source} is {types[name]}, but its metadata says "
                f"{spec.dimension}-wide float32 vectors"
            )
        spec.create_provider()  # refuses what a file may not say, before anything is created
    casts = _casts(con, scan, source, types, described)
    target = ".".join(map(quote_identifier, table_parts(table)))
    replaced = ", ".join(
        f"CAST({quote_identifier(name)} AS {to}) AS {quote_identifier(name)}" for name, to in casts
    )
    columns = f"* REPLACE ({replaced})" if casts else "*"
    try:
        con.execute(
            f"CREATE {'OR REPLACE ' if replace else ''}TABLE {target} AS SELECT {columns} FROM {scan}"
        )
    except duckdb.CatalogException as error:
        raise ConfigError(
            f"cannot create table {target} from {source}: {error} (replace=True replaces an existing table)"
        ) from None
    created = resolve_table(con, table)
    for name, spec in described.items():
        set_comment(con, created, created.require_column(name), spec.to_json())
    (rows,) = one_row(con, f"SELECT count(*) FROM {created.sql}")
    log.info("loaded %d rows of %s into %s, vector columns %s", rows, source, created, dict(casts))
    return rows


def _casts(
    con: duckdb.DuckDBPyConnection,
    scan: str,
    source: str,
    types: dict[str, str],
    described: dict[str, VectorSpec],
) -> list[tuple[str, str]]:
    """``(column, FLOAT[d])`` for each ``FLOAT[]`` column to cast, from its widths in the data."""
    lists = [name for name, data_type in types.items() if data_type == _FLOAT_LIST]
    if not lists:
        return []
    lengths = (f"len({quote_identifier(name)})" for name in lists)
    widths = one_row(con, f"SELECT {', '.join(f'min({n}), max({n})' for n in lengths)} FROM {scan}")
    casts = []
    for name, shortest, longest in zip(lists, widths[::2], widths[1::2], strict=True):
        spec = described.get(name)
        if spec is not None:
            if (shortest, longest) not in ((None, None), (spec.dimension, spec.dimension)):
                found = shortest if shortest == longest else f"{shortest} to {longest}"
                raise ConfigError(
                    f"column {name!r} of {source} holds vectors of width {found}, but its metadata says "
                    f"{spec.dimension}: the file is not what polars-embed wrote"
                )
            casts.append((name, f"FLOAT[{spec.dimension}]"))
        elif shortest is not None and shortest == longest:
            casts.append((name, f"FLOAT[{shortest}]"))
        else:
            log.debug(
                "column %r of %s keeps FLOAT[]: its lists are %s to %s long", name, source, shortest, longest
            )
    return casts
