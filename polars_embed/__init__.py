"""Embed and search text inside Polars and DuckDB."""
