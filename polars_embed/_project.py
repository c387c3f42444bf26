"""Pictures of an embedding space: 2-D or 3-D projections, and k-means clusters.

- PCA is numpy only: the top right singular vectors of the centred vectors (taken from
  the small ``d x d`` scatter matrix, accumulated in blocks so memory stays bounded),
  each signed so that its largest loading is positive. The same vectors give the same
  picture in any row order, on any run.
- UMAP comes from ``umap-learn`` (the ``umap`` extra), seeded, on cosine distances.
- k-means is Lloyd's algorithm from k-means++ seeds, in numpy, seeded; a test holds it
  to scikit-learn's on the same data and the same seeds.

Null vectors take no part and get null coordinates and labels.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from polars_embed.errors import ConfigError, MissingDependencyError

Method = Literal["pca", "umap"]
METHODS: tuple[Method, ...] = ("pca", "umap")

_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class Projection:
    """A fitted projection: :meth:`transform` places vectors in the same picture."""

    method: Method
    mean: np.ndarray | None  # PCA: (d,) centre
    components: np.ndarray | None  # PCA: (n, d) unit directions
    model: object | None = None  # UMAP: the fitted reducer

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """``(m, d)`` vectors as ``(m, n)`` float32 coordinates."""
        if self.model is not None:
            return np.asarray(self.model.transform(vectors), dtype=np.float32)
        assert self.mean is not None and self.components is not None
        coordinates = np.empty((len(vectors), len(self.components)), dtype=np.float32)
        for start in range(0, len(vectors), _BLOCK_ROWS):
            block = vectors[start : start + _BLOCK_ROWS].astype(np.float64) - self.mean
            coordinates[start : start + _BLOCK_ROWS] = block @ self.components.T
        return coordinates


def check_projection(n: int, method: str) -> Method:
    """``method``, after checking it and ``n``; a :class:`ConfigError` otherwise."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 3:
        raise ConfigError(f"project() gives 1, 2 or 3 coordinates per row; n={n!r}")
    if method not in METHODS:
        raise ConfigError(f"unknown projection method {method!r}; expected one of {METHODS}")
    return method  # type: ignore[return-value]


def fit_projection(vectors: np.ndarray, n: int = 2, *, method: Method = "pca", seed: int = 0) -> Projection:
    """Fit a projection of ``(m, d)`` vectors (no nulls) to ``n`` dimensions."""
    check_projection(n, method)
    if len(vectors) == 0:
        raise ConfigError("nothing to project: every vector is null")
    if method == "umap":
        return _fit_umap(vectors, n, seed)
    return _fit_pca(vectors, n)


def _fit_pca(vectors: np.ndarray, n: int) -> Projection:
    width = vectors.shape[1]
    if n > width:
        raise ConfigError(f"cannot project vectors of width {width} onto {n} dimensions")
    mean = vectors.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((width, width), dtype=np.float64)
    for start in range(0, len(vectors), _BLOCK_ROWS):
        block = vectors[start : start + _BLOCK_ROWS].astype(np.float64) - mean
        scatter += block.T @ block
    # The right singular vectors of the centred rows are those of their scatter matrix.
    _, _, directions = np.linalg.svd(scatter, hermitian=True)
    components = directions[:n]
    largest = np.argmax(np.abs(components), axis=1)
    components = components * np.sign(components[np.arange(n), largest])[:, None]
    return Projection("pca", mean, components)


def _fit_umap(vectors: np.ndarray, n: int, seed: int) -> Projection:
    try:
        umap = importlib.import_module("umap")
    except ImportError:
        raise MissingDependencyError(
            "method='umap' needs the 'umap-learn' package, which is not installed; "
            "install it with: pip install 'polars-embed[umap]'"
        ) from None
    neighbours = min(15, max(len(vectors) - 1, 1))
    reducer = umap.UMAP(n_components=n, n_neighbors=neighbours, metric="cosine", random_state=seed)
    reducer.fit(vectors)
    return Projection("umap", None, None, reducer)


def kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 300,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of ``(m, d)`` vectors: ``(m,)`` labels and ``(k, d)`` centres.

    Seeds are chosen by greedy k-means++ from ``seed`` unless ``init`` gives them.
    Labels are renumbered in order of first appearance, so the first row is in
    cluster 0: the same data and seed give the same labels.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number of clusters, 1 or more; got {k!r}")
    if k > len(vectors):
        raise ConfigError(f"cannot make {k} clusters of {len(vectors)} non-null vectors; pass a smaller k")
    points = vectors.astype(np.float64)
    squared_norms = np.einsum("ij,ij->i", points, points)
    centres = (
        _kmeans_plus_plus(points, squared_norms, k, np.random.default_rng(seed)) if init is None else init
    )
    centres = np.array(centres, dtype=np.float64)
    labels = np.full(len(points), -1)
    for _ in range(max_iter):
        new_labels, distances = _nearest(points, squared_norms, centres)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        for empty in np.flatnonzero(counts == 0):  # reseed on the point worst served
            far = int(np.argmax(distances))
            sums[empty], counts[empty], distances[far] = points[far], 1, 0.0
        centres = sums / counts[:, None]
    _, first_rows = np.unique(labels, return_index=True)
    order = np.unique(labels)[np.argsort(first_rows)]
    renumbered = np.empty(k, dtype=np.int64)
    renumbered[order] = np.arange(len(order))
    unused = np.setdiff1d(np.arange(k), order)
    renumbered[unused] = np.arange(len(order), k)
    reordered = np.empty_like(centres)
    reordered[renumbered] = centres
    return renumbered[labels].astype(np.uint32), reordered.astype(np.float32)


def _nearest(
    points: np.ndarray, squared_norms: np.ndarray, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each point's nearest centre and its squared distance to it, in blocks of rows."""
    labels = np.empty(len(points), dtype=np.int64)
    distances = np.empty(len(points), dtype=np.float64)
    for start in range(0, len(points), _BLOCK_ROWS):
        block = slice(start, start + _BLOCK_ROWS)
        squared = _squared_distances(points[block], squared_norms[block], centres)
        labels[block] = np.argmin(squared, axis=1)
        distances[block] = squared[np.arange(len(squared)), labels[block]]
    return labels, distances


def _kmeans_plus_plus(
    points: np.ndarray, squared_norms: np.ndarray, k: int, generator: np.random.Generator
) -> np.ndarray:
    """Greedy k-means++ seeds (as scikit-learn picks them): of 2 + log(k) candidates drawn
    by squared distance, each round keeps the one that lowers the total the most."""
    trials = 2 + int(np.log(k))
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[generator.integers(len(points))]
    closest = _squared_distances(points, squared_norms, centres[:1])[:, 0]
    for index in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            centres[index] = points[generator.integers(len(points))]
            continue
        cumulative = np.cumsum(closest)
        candidates = np.searchsorted(cumulative, generator.uniform(size=trials) * total)
        candidates = np.clip(candidates, None, len(points) - 1)
        to_candidates = _squared_distances(points, squared_norms, points[candidates])
        totals = np.minimum(closest[:, None], to_candidates).sum(axis=0)
        best = int(np.argmin(totals))
        centres[index] = points[candidates[best]]
        closest = np.minimum(closest, to_candidates[:, best])
    return centres


def _squared_distances(points: np.ndarray, squared_norms: np.ndarray, centres: np.ndarray) -> np.ndarray:
    squared = squared_norms[:, None] - 2 * points @ centres.T + np.einsum("ij,ij->i", centres, centres)
    return np.maximum(squared, 0.0)
