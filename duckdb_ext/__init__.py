"""DuckDB front end: ``embed()`` in SQL, table backfills, and vector search with vss HNSW indexes.

>>> import duckdb, duckdb_ext
>>> con = duckdb.connect()
>>> _ = duckdb_ext.register(con, "hashing", dims=64)
>>> con.sql("SELECT len(embed('a cat')), embed_query(NULL)").fetchall()
[(64, None)]

Every vector goes through the polars-embed engine, so SQL gets the same NULL
and blank handling, deduplication, batching, retries and checks as Polars.
Table and column names are always quoted; ``where=`` in :func:`search` is SQL
written by the caller. vss (HNSW indexes) is optional: everything but
:func:`load_vss`, :func:`connect` and :func:`create_hnsw_index` works without it.
It is packaged for duckdb 1.5.5 only (the ``vss`` extra); on duckdb 2.x,
:func:`search` ranks every row: exactly (by DuckDB, or with ``in_memory=True`` by
:func:`polars_embed.topk` on a copy of the vectors), or on a quantised twin with
exact rescoring (``quantized=``). fts, which ``search(..., hybrid=True)`` ranks
keywords with (the ``fts`` extra), is packaged for duckdb 1.5.5 only too; without it
a hybrid search on a table is refused, and everything else works.
"""

from duckdb_ext._catalog import TableName
from duckdb_ext.fts import create_fts_index, load_fts
from duckdb_ext.functions import embed_table, record_provider, register
from duckdb_ext.parquet import load_parquet
from duckdb_ext.search import recall_at_k, search
from duckdb_ext.vss import connect, create_hnsw_index, load_vss

__all__ = [
    "TableName",
    "connect",
    "create_fts_index",
    "create_hnsw_index",
    "embed_table",
    "load_fts",
    "load_parquet",
    "load_vss",
    "recall_at_k",
    "record_provider",
    "register",
    "search",
]
