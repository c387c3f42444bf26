"""Embedding tables: DuckDB tables whose vector columns are embedded on write and searched by text.

>>> import polars_embed as pe
>>> class Doc(pe.Model):
...     id: str = pe.Id()
...     body: str | None = pe.Source()
...     body_vec: pe.Vector = pe.VectorOf("body", provider="hashing", dims=64)
>>> docs = pe.connect().create_table("docs", Doc)
>>> docs.add([Doc(id="a", body="the cat sat"), Doc(id="b", body="stock prices fell"), Doc(id="c", body=None)])
3
>>> docs.search("a cat", k=1).to_polars()["id"].to_list()
['a']
"""

from polars_embed.errors import (
    ConflictError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    ReadOnlyError,
    RecordNotFoundError,
    TableExistsError,
    TableNotFoundError,
    ValidationError,
    WriteError,
)
from polars_embed.tables._database import Database, connect
from polars_embed.tables._declaration import Id, Model, Source, Vector, VectorOf
from polars_embed.tables._search import Agreement, Filter, Search
from polars_embed.tables._table import Table

__all__ = [
    "Agreement",
    "ConflictError",
    "Database",
    "DatabaseLockedError",
    "DatabaseNotFoundError",
    "Filter",
    "Id",
    "Model",
    "ReadOnlyError",
    "RecordNotFoundError",
    "Search",
    "Source",
    "Table",
    "TableExistsError",
    "TableNotFoundError",
    "ValidationError",
    "Vector",
    "VectorOf",
    "WriteError",
    "connect",
]
