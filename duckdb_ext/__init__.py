"""DuckDB SQL functions over the polars-embed engine, and the vss HNSW index helpers."""
