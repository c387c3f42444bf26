"""Embed and search text inside Polars and DuckDB.

>>> import polars_embed
>>> "hashing" in polars_embed.list_providers()
True
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from polars_embed import namespaces  # noqa: F401  (registers .embed on expressions and frames)
from polars_embed._estimate import Estimate, estimate
from polars_embed.cache import cache_settings, configure_cache
from polars_embed.engine import Images, aembed, embed
from polars_embed.errors import (
    AuthenticationError,
    BudgetExceededError,
    ColumnNotFoundError,
    ConfigError,
    ConflictError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    DimensionMismatchError,
    DuplicateColumnError,
    DuplicateProviderError,
    EmbeddingIncompleteError,
    InputRefusedError,
    InputTypeError,
    InvalidEmbeddingError,
    InvalidImageError,
    InvalidInputError,
    MissingDependencyError,
    PolarsEmbedError,
    ProviderError,
    ReadOnlyError,
    RecordNotFoundError,
    RetryableProviderError,
    TableExistsError,
    TableNotFoundError,
    UnknownProviderError,
    ValidationError,
    WriteError,
)
from polars_embed.hookspecs import hookimpl
from polars_embed.kernels import l2_normalize, pairwise_scores, squared_norms, topk, topk_merge
from polars_embed.metadata import read_parquet, scan_parquet
from polars_embed.provider import CallableProvider, Embedded, Provider, option
from polars_embed.quantization import Quantization, QuantizedVectors, quantize, quantized_topk, recall_at_k
from polars_embed.registry import (
    Registry,
    get_registry,
    list_providers,
    list_rerankers,
    resolve_provider,
    resolve_reranker,
)
from polars_embed.reranker import Reranker, Scored
from polars_embed.stats import EmbedStats, last_stats, track_stats

if TYPE_CHECKING:
    from polars_embed.tables import (
        Agreement,
        Database,
        Id,
        Model,
        Search,
        Source,
        Table,
        Vector,
        VectorOf,
        connect,
    )


def __getattr__(name: str) -> Any:
    # Embedding tables load on first use: they build on duckdb_ext, which imports this package.
    tables = importlib.import_module("polars_embed.tables")
    if name in tables.__all__:
        return getattr(tables, name)
    raise AttributeError(f"module 'polars_embed' has no attribute {name!r}")


try:
    __version__ = version("polars-embed")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Agreement",
    "AuthenticationError",
    "BudgetExceededError",
    "CallableProvider",
    "ColumnNotFoundError",
    "ConfigError",
    "ConflictError",
    "Database",
    "DatabaseLockedError",
    "DatabaseNotFoundError",
    "DimensionMismatchError",
    "DuplicateColumnError",
    "DuplicateProviderError",
    "EmbedStats",
    "Embedded",
    "EmbeddingIncompleteError",
    "Estimate",
    "Id",
    "Images",
    "InputRefusedError",
    "InputTypeError",
    "InvalidEmbeddingError",
    "InvalidImageError",
    "InvalidInputError",
    "MissingDependencyError",
    "Model",
    "PolarsEmbedError",
    "Provider",
    "ProviderError",
    "Quantization",
    "QuantizedVectors",
    "ReadOnlyError",
    "RecordNotFoundError",
    "Registry",
    "Reranker",
    "RetryableProviderError",
    "Scored",
    "Search",
    "Source",
    "Table",
    "TableExistsError",
    "TableNotFoundError",
    "UnknownProviderError",
    "ValidationError",
    "Vector",
    "VectorOf",
    "WriteError",
    "__version__",
    "aembed",
    "cache_settings",
    "configure_cache",
    "connect",
    "embed",
    "estimate",
    "get_registry",
    "hookimpl",
    "l2_normalize",
    "last_stats",
    "list_providers",
    "list_rerankers",
    "option",
    "pairwise_scores",
    "quantize",
    "quantized_topk",
    "read_parquet",
    "recall_at_k",
    "resolve_provider",
    "resolve_reranker",
    "scan_parquet",
    "squared_norms",
    "topk",
    "topk_merge",
    "track_stats",
]
