"""Embed and search text inside Polars and DuckDB.

>>> import polars_embed
>>> "hashing" in polars_embed.list_providers()
True
"""

from importlib.metadata import PackageNotFoundError, version

from polars_embed import namespaces  # noqa: F401  (registers .embed on expressions and frames)
from polars_embed.cache import cache_settings, configure_cache
from polars_embed.engine import aembed, embed
from polars_embed.errors import (
    AuthenticationError,
    ConfigError,
    DimensionMismatchError,
    DuplicateProviderError,
    EmbeddingIncompleteError,
    InvalidEmbeddingError,
    MissingDependencyError,
    PolarsEmbedError,
    ProviderError,
    RetryableProviderError,
    UnknownProviderError,
)
from polars_embed.hookspecs import hookimpl
from polars_embed.kernels import l2_normalize, pairwise_scores, squared_norms, topk, topk_merge
from polars_embed.metadata import read_parquet, scan_parquet
from polars_embed.provider import CallableProvider, Embedded, Provider, option
from polars_embed.quantization import Quantization, QuantizedVectors, quantize, quantized_topk, recall_at_k
from polars_embed.registry import Registry, get_registry, list_providers, resolve_provider
from polars_embed.stats import EmbedStats, last_stats, track_stats

try:
    __version__ = version("polars-embed")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AuthenticationError",
    "CallableProvider",
    "ConfigError",
    "DimensionMismatchError",
    "DuplicateProviderError",
    "EmbedStats",
    "Embedded",
    "EmbeddingIncompleteError",
    "InvalidEmbeddingError",
    "MissingDependencyError",
    "PolarsEmbedError",
    "Provider",
    "ProviderError",
    "Quantization",
    "QuantizedVectors",
    "Registry",
    "RetryableProviderError",
    "UnknownProviderError",
    "__version__",
    "aembed",
    "cache_settings",
    "configure_cache",
    "embed",
    "get_registry",
    "hookimpl",
    "l2_normalize",
    "last_stats",
    "list_providers",
    "option",
    "pairwise_scores",
    "quantize",
    "quantized_topk",
    "read_parquet",
    "recall_at_k",
    "resolve_provider",
    "scan_parquet",
    "squared_norms",
    "topk",
    "topk_merge",
    "track_stats",
]
