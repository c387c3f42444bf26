"""The ``embed`` namespaces on Polars expressions, DataFrames and LazyFrames.

Importing this package registers them; ``import polars_embed`` does.
"""

from polars_embed.namespaces.expr import EmbedExprNamespace
from polars_embed.namespaces.frame import EmbedFrameNamespace, EmbedLazyFrameNamespace

__all__ = ["EmbedExprNamespace", "EmbedFrameNamespace", "EmbedLazyFrameNamespace"]
