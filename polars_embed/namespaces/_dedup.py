"""Near-duplicate groups of a vector column: a k-nearest self-join, then connected components.

Each row is linked to those of its ``k`` nearest rows (by exact cosine top-k, the
kernels' blocked search, so memory grows with ``n x k``, never ``n x n``) at or above
the threshold, and rows joined by any chain of links form one group. A group of
more than ``k + 1`` near-duplicates is still found whole as long as its rows link up
through their neighbours, as they do unless it is much larger than ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from polars_embed.errors import ConfigError
from polars_embed.kernels import check_k, squared_norms, topk
from polars_embed.metadata import provider_of
from polars_embed.namespaces._vectors import null_where, valid_rows, vector_chunks

__all__ = ["Dedup", "check_threshold", "connected_components", "near_duplicate_groups"]


def check_threshold(threshold: float) -> float:
    """A cosine similarity from -1 to 1, as a float; a :class:`ConfigError` otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1 <= threshold <= 1:
        raise ConfigError(f"threshold must be a cosine similarity from -1 to 1, got {threshold!r}")
    return float(threshold)


def near_duplicate_groups(
    chunks: list[np.ndarray], valid: np.ndarray | None, threshold: float, k: int, normalized: bool
) -> np.ndarray:
    """Each row's group: the smallest row number in it (so groups are numbered in order
    of first appearance); -1 for a row that cannot match (null, zero)."""
    rows = sum(len(chunk) for chunk in chunks)
    if rows == 0:
        return np.empty(0, dtype=np.int64)
    # The rows are their own queries, chunk by chunk: the top-k of each query block is
    # computed against the whole corpus in blocks, so nothing n x n is ever held.
    norms = None if normalized else squared_norms(chunks)
    neighbours, scores = [], []
    for chunk in chunks:
        found, similarity = topk(
            chunk, chunks, k + 1, valid=valid, normalized=normalized, squared_norms=norms
        )  # k + 1: a row finds itself
        neighbours.append(found)
        scores.append(similarity)
    found = np.concatenate(neighbours)
    linked = (found >= 0) & (np.concatenate(scores) >= np.float32(threshold))
    sources = np.repeat(np.arange(rows), found.shape[1])[linked.ravel()]
    groups = connected_components(rows, sources, found[linked])
    matchable = linked.any(axis=1)  # a row that can match finds itself
    return np.where(matchable, groups, -1)


def connected_components(n: int, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Label each of ``n`` nodes with the smallest node of its component, given its edges.

    Hooks the larger of each edge's two roots under the smaller, then halves every
    path by pointer jumping, until no edge joins two roots: a few vectorised rounds.
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        first, second = parent[sources], parent[targets]
        apart = first != second
        if not apart.any():
            return parent
        np.minimum.at(parent, np.maximum(first, second)[apart], np.minimum(first, second)[apart])
        while True:
            grandparent = parent[parent]
            if np.array_equal(grandparent, parent):
                break
            parent = grandparent


@dataclass(frozen=True, eq=False)
class Dedup:
    """A validated dedup: adds ``name``, the group of each row's vector in ``on``."""

    on: str
    threshold: float
    k: int
    normalized: bool | None
    name: str

    def output_schema(self, schema: pl.Schema) -> pl.Schema:
        return pl.Schema({**schema, self.name: pl.UInt32})

    def __call__(self, frame: pl.DataFrame) -> pl.DataFrame:
        column = frame[self.on]
        normalized = self.normalized
        if normalized is None:
            stored = provider_of(column)
            normalized = stored is not None and stored.normalized
        groups = near_duplicate_groups(
            vector_chunks(column), valid_rows(column), self.threshold, self.k, normalized
        )
        missing = groups < 0
        ids = np.zeros(len(groups), dtype=np.uint32)
        ids[~missing] = np.unique(groups[~missing], return_inverse=True)[1]
        return frame.with_columns(null_where(pl.Series(self.name, ids), missing))

    @classmethod
    def plan(cls, *, on: str, threshold: float, k: int, normalized: bool | None, name: str) -> Dedup:
        return cls(on, check_threshold(threshold), check_k(k), normalized, name)
