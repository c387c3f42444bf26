"""DuckDB extensions loaded offline, from the files the ``duckdb-extension-<name>`` packages ship.

The vss and fts extensions are packaged on the package registry for one duckdb version
each (1.5.5 so far); the polars-embed extras that install them pin duckdb to it. Without
the package, ``INSTALL name; LOAD name`` is tried, which needs the network or an
extension already installed.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import duckdb

from duckdb_ext._catalog import one_row, quote_literal
from polars_embed.errors import MissingDependencyError

log = logging.getLogger(__name__)


def packaged_extension(name: str) -> Path | None:
    """The file of extension ``name`` shipped for this duckdb version by ``duckdb-extension-<name>``."""
    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError:
        return None
    folder = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = folder / f"{name}.duckdb_extension"
    if not path.is_file():
        log.debug("duckdb-extension-%s has no extension for duckdb %s at %s", name, duckdb.__version__, path)
        return None
    return path


def is_loaded(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether extension ``name`` is loaded into the connection's database."""
    (loaded,) = one_row(
        con, "SELECT bool_or(loaded) FROM duckdb_extensions() WHERE extension_name = ?", [name]
    )
    return bool(loaded)


def load_extension(
    con: duckdb.DuckDBPyConnection, name: str, packaged: Path | None, *, purpose: str, extra: str
) -> None:
    """Load extension ``name`` from the ``packaged`` file, else by ``INSTALL``; a
    :class:`MissingDependencyError` naming the extra ``extra`` when neither works."""
    if is_loaded(con, name):
        return
    if packaged is not None:
        con.execute(f"LOAD {quote_literal(str(packaged))}")
        return
    try:
        con.execute(f"INSTALL {name}")
        con.execute(f"LOAD {name}")
    except duckdb.Error as error:
        raise MissingDependencyError(
            f"DuckDB's {name} extension ({purpose}) is not available for duckdb {duckdb.__version__}: "
            f"install it with: pip install 'polars-embed[{extra}]' (it pins duckdb to the version the "
            f"extension is packaged for). INSTALL {name} failed too: {error}"
        ) from error
