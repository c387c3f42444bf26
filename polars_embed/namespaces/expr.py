"""The ``embed`` namespace on Polars expressions: text to vectors, and vector arithmetic.

Each method builds one expression and does no work beyond resolving the provider
and its width: the work happens when a query runs, batch by batch, in the
in-memory and the streaming engine alike. Every expression passes its
``return_dtype``, so Polars never calls a provider to learn a schema.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import numpy as np
import polars as pl

from polars_embed._chunks import CHUNK_DTYPE, check_overlap, chunk_budget, chunks_column
from polars_embed._project import Method, check_projection, fit_projection, kmeans
from polars_embed.engine import (
    Images,
    LongTexts,
    OnError,
    Pool,
    Truncate,
    as_text_series,
    check_accepts,
    check_long_texts,
    check_on_error,
    resolve_truncate,
    width_of,
)
from polars_embed.errors import InvalidInputError
from polars_embed.kernels import Metric, l2_normalize, pairwise_scores
from polars_embed.namespaces._column_jobs import ColumnEmbedder
from polars_embed.namespaces._vectors import (
    VectorsLike,
    as_matrix,
    as_query_vectors,
    check_same_width,
    null_where,
)
from polars_embed.provider import Kind, Provider, check_kind
from polars_embed.registry import ProviderLike, resolve_provider

__all__ = ["EmbedExprNamespace"]

VectorOrColumn = VectorsLike | pl.Expr | str


@pl.api.register_expr_namespace("embed")
class EmbedExprNamespace:
    """Namespace for embedding text (and images) and comparing vectors, as ``pl.col(...).embed``."""

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = expr

    def with_provider(
        self,
        provider: ProviderLike = None,
        *,
        kind: Kind = "document",
        progress: bool | None = None,
        truncate: Truncate = "warn",
        max_tokens: int | None = None,
        on_error: OnError = "raise",
        long_texts: LongTexts = "truncate",
        pool: Pool = "mean",
        **options: Any,
    ) -> pl.Expr:
        """Embed a text column, one vector per row.

        Null and blank texts give null vectors and are never sent to the provider;
        each distinct text in a batch is embedded once. A column that is not text
        fails with an :class:`~polars_embed.InputTypeError` before any provider call.
        Building the expression embeds nothing and loads no model: the width comes
        from the provider's configuration. However many batches (morsels) a query
        hands over, each column it embeds shows one progress bar and gives one
        :func:`~polars_embed.last_stats` record.

        Parameters
        ----------
        provider
            A registered name (``"hashing"``), ``"name:model"``, a
            :class:`~polars_embed.Provider` or a callable from a list of strings to
            vectors. Default: the local ``sentence-transformers`` model.
        kind
            ``"document"`` or ``"query"``: many models embed the two differently.
        progress
            Show a progress bar: ``None`` shows one on long queries in a terminal
            or notebook (not under pytest, nor with ``POLARS_EMBED_PROGRESS=0``).
        truncate
            Texts longer than the model reads: ``"warn"`` embeds their beginning,
            counts them and logs one warning per column; ``"error"`` refuses them.
        max_tokens
            A token budget, as for :func:`polars_embed.embed`, for the whole column,
            however many batches Polars hands over (preview it with ``lf.embed.estimate``).
        on_error
            ``"raise"`` (the default) fails the column when the provider refuses a
            text; ``"null"`` gives the refused rows null vectors, embeds the rest and
            lists the rows in ``polars_embed.last_stats().failures``, as for
            :func:`polars_embed.embed`.
        long_texts, pool
            ``long_texts="chunk"`` embeds every chunk of a text longer than the model
            reads (see :meth:`chunks`) and pools them per row, ``pool="mean"`` or
            ``"max"``, as for :func:`polars_embed.embed`; ``"truncate"`` (the default)
            embeds its beginning.
        **options
            Provider options, e.g. ``model="..."``, ``batch_size=64``.

        Returns
        -------
        pl.Expr
            ``pl.Array(pl.Float32, d)``, named like the text column.

        Raises
        ------
        UnknownProviderError, ConfigError, MissingDependencyError
            At once, if the provider or an option is not known or not installed.
        InputTypeError
            When the expression runs, if the column is not text.
        EmbeddingIncompleteError
            When the expression runs, if the provider failed; its message says
            why, how far the column got and whether a rerun resumes.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame({"text": ["a cat", None, "a dog"]})
        >>> df = df.with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=4))
        >>> df.with_columns(pl.col("vec").arr.eval(pl.element().round(3)))  # rounded to print
        shape: (3, 2)
        ┌───────┬─────────────────────────┐
        │ text  ┆ vec                     │
        │ ---   ┆ ---                     │
        │ str   ┆ array[f32, 4]           │
        ╞═══════╪═════════════════════════╡
        │ a cat ┆ [0.521, 0.651, … 0.391] │
        │ null  ┆ null                    │
        │ a dog ┆ [0.356, 0.119, … 0.712] │
        └───────┴─────────────────────────┘
        """
        check_kind(kind)
        check_on_error(on_error)
        check_long_texts(long_texts, pool)
        resolved, rule = resolve_truncate(provider, truncate, **options)
        return self._expr.map_batches(
            ColumnEmbedder(resolved, kind, progress, rule, max_tokens, on_error, long_texts, pool),
            return_dtype=pl.Array(pl.Float32, width_of(resolved)),
            is_elementwise=True,
        )

    def images(
        self,
        provider: ProviderLike = None,
        *,
        root: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        **options: Any,
    ) -> pl.Expr:
        """Embed a column of images, one vector per row, in the space its model gives texts.

        The column holds encoded images (``pl.Binary``: PNG, JPEG, WebP, GIF, BMP,
        TIFF) or, with ``root``, paths of image files relative to that folder (a
        path that is absolute, a URL or leads out of ``root`` is refused). A null
        gives a null vector; identical images are embedded once, and the cache
        keeps them by a digest of their bytes. Images are decoded a batch at a time,
        and those with a side over 1,024 pixels downscaled first; one over Pillow's
        ``PIL.Image.MAX_IMAGE_PIXELS`` is refused as a decompression bomb. A Binary
        column also embeds as images with :meth:`with_provider`. Search the vectors
        with a text: ``df.embed.search("a red shoe", on="vec")``.

        Parameters
        ----------
        provider
            A provider that embeds images, such as ``"sentence-transformers"`` with a
            CLIP model (``model="clip-ViT-B-32"``), or a callable from a list of RGB
            ``PIL.Image`` images to vectors with ``images=True``. Default: the local
            ``sentence-transformers`` model, which embeds only text unless ``model``
            names a CLIP model.
        root
            The folder that a String column's paths are relative to.
        progress
            Show a progress bar, as for :meth:`with_provider`.
        **options
            Provider options, e.g. ``model="clip-ViT-B-32"``, ``batch_size=64``.

        Returns
        -------
        pl.Expr
            ``pl.Array(pl.Float32, d)``, named like the image column.

        Raises
        ------
        InputTypeError
            At once, if the provider embeds no images; when the expression runs, if
            the column is neither Binary nor (with ``root``) String.
        InvalidImageError
            When the expression runs, for an image that cannot be read, is refused,
            or a path out of ``root``; the message names the row.

        Examples
        --------
        >>> import io
        >>> import numpy as np
        >>> import polars as pl
        >>> import polars_embed
        >>> from PIL import Image
        >>> def png(colour):
        ...     encoded = io.BytesIO()
        ...     Image.new("RGB", (8, 8), colour).save(encoded, format="PNG")
        ...     return encoded.getvalue()
        >>> def mean_colour(images):  # a stand-in for an image model: mean red, green, blue
        ...     return np.stack([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) for image in images])
        >>> df = pl.DataFrame({"photo": [png("red"), None, png("blue")]})
        >>> df.select(pl.col("photo").embed.images(mean_colour, dims=3, images=True))
        shape: (3, 1)
        ┌───────────────────┐
        │ photo             │
        │ ---               │
        │ array[f32, 3]     │
        ╞═══════════════════╡
        │ [255.0, 0.0, 0.0] │
        │ null              │
        │ [0.0, 0.0, 255.0] │
        └───────────────────┘
        """
        resolved = resolve_provider(provider, **options)
        check_accepts(resolved, "image")
        images = Images(root)
        return self._expr.map_batches(
            ColumnEmbedder(resolved, "document", progress, "warn", images=images),
            return_dtype=pl.Array(pl.Float32, width_of(resolved)),
            is_elementwise=True,
        )

    def chunks(
        self,
        *,
        max_tokens: int | None = None,
        overlap: int = 0,
        provider: ProviderLike = None,
        kind: Kind = "document",
        **options: Any,
    ) -> pl.Expr:
        """Cut each text into chunks of at most ``max_tokens`` tokens, with their offsets.

        Chunks are cut where a token starts: by the provider's own tokenizer where it
        has one (sentence-transformers models), else by an estimate (a word and the
        spaces after it, of b UTF-8 bytes, is ceil(b / 3) tokens), at the start of a
        word unless one word is longer than a chunk. The first chunk starts at 0 and
        the last ends at the text's end; without overlap each ends where the next
        starts, so ``"".join`` of a row's chunk texts is its text.

        Parameters
        ----------
        max_tokens
            Tokens of text per chunk. Default: what the provider's model reads (or its
            service takes) less the tokens it adds to every text; required without a
            provider, or with one that reads texts of any length.
        overlap
            Tokens each chunk repeats from the end of the one before, 0 to ``max_tokens - 1``.
        provider
            Whose tokens to count: a name, ``"name:model"`` or a Provider (with
            ``**options``); by default none, and the estimate counts.
        kind
            ``"document"`` or ``"query"``: the prompt the default ``max_tokens`` leaves room for.

        Returns
        -------
        pl.Expr
            ``pl.List(pl.Struct({"text": pl.String, "start": pl.UInt32, "end": pl.UInt32}))``:
            character offsets, ``text[start:end]`` being the chunk's text; null for a null
            text, no chunks for a blank one. ``.explode()`` gives one row per chunk.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame({"body": ["one two three four five", None]})  # 2 tokens a word
        >>> df.select(pl.col("body").embed.chunks(max_tokens=4).explode()).unnest("body")
        shape: (4, 3)
        ┌─────────────┬───────┬──────┐
        │ text        ┆ start ┆ end  │
        │ ---         ┆ ---   ┆ ---  │
        │ str         ┆ u32   ┆ u32  │
        ╞═════════════╪═══════╪══════╡
        │ one two     ┆ 0     ┆ 8    │
        │ three four  ┆ 8     ┆ 19   │
        │ five        ┆ 19    ┆ 23   │
        │ null        ┆ null  ┆ null │
        └─────────────┴───────┴──────┘
        """
        check_kind(kind)
        resolved = None if provider is None and not options else resolve_provider(provider, **options)
        if max_tokens is not None or resolved is None:  # checked now, without loading a model
            check_overlap(overlap, chunk_budget(resolved, kind, max_tokens))
        return self._expr.map_batches(
            partial(_chunked, provider=resolved, kind=kind, max_tokens=max_tokens, overlap=overlap),
            return_dtype=CHUNK_DTYPE,
            is_elementwise=True,
        )

    def cosine_similarity(self, other: VectorOrColumn) -> pl.Expr:
        """Cosine similarity of each vector with a query vector or, row by row, another column.

        Parameters
        ----------
        other
            One vector (a list of numbers, a 1-D numpy array, a numeric Series, or
            a batch of one such as ``polars_embed.embed(["a query"])``), converted
            once to float32; or a vector column, by name or expression.

        Returns
        -------
        pl.Expr
            ``pl.Float32``: null where either vector is null, NaN where either is zero.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame(
        ...     {"vec": [[3.0, 4.0], None, [1.0, 0.0]]}, schema={"vec": pl.Array(pl.Float32, 2)}
        ... )
        >>> df.select(pl.col("vec").embed.cosine_similarity([1.0, 0.0]))
        shape: (3, 1)
        ┌──────┐
        │ vec  │
        │ ---  │
        │ f32  │
        ╞══════╡
        │ 0.6  │
        │ null │
        │ 1.0  │
        └──────┘
        """
        return self._score(other, "cosine")

    def dot(self, other: VectorOrColumn) -> pl.Expr:
        """Dot product of each vector with a query vector or, row by row, another column.

        Parameters
        ----------
        other
            As for :meth:`cosine_similarity`.

        Returns
        -------
        pl.Expr
            ``pl.Float32``: null where either vector is null.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame(
        ...     {"a": [[3.0, 4.0], None], "b": [[1.0, 2.0], [1.0, 1.0]]},
        ...     schema={"a": pl.Array(pl.Float32, 2), "b": pl.Array(pl.Float32, 2)},
        ... )
        >>> df.select(pl.col("a").embed.dot(pl.col("b")))
        shape: (2, 1)
        ┌──────┐
        │ a    │
        │ ---  │
        │ f32  │
        ╞══════╡
        │ 11.0 │
        │ null │
        └──────┘
        """
        return self._score(other, "dot")

    def l2_distance(self, other: VectorOrColumn) -> pl.Expr:
        """Euclidean distance of each vector to a query vector or, row by row, another column.

        Parameters
        ----------
        other
            As for :meth:`cosine_similarity`.

        Returns
        -------
        pl.Expr
            ``pl.Float32``: null where either vector is null.

        Examples
        --------
        >>> import numpy as np
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame({"vec": [[3.0, 4.0], None]}, schema={"vec": pl.Array(pl.Float32, 2)})
        >>> df.select(pl.col("vec").embed.l2_distance(np.zeros(2)))
        shape: (2, 1)
        ┌──────┐
        │ vec  │
        │ ---  │
        │ f32  │
        ╞══════╡
        │ 5.0  │
        │ null │
        └──────┘
        """
        return self._score(other, "l2")

    def normalize(self) -> pl.Expr:
        """Scale each vector to unit length; null and zero vectors stay as they are.

        Returns
        -------
        pl.Expr
            Vectors of the column's own dtype.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame(
        ...     {"vec": [[3.0, 4.0], None, [0.0, 0.0]]}, schema={"vec": pl.Array(pl.Float32, 2)}
        ... )
        >>> df.select(pl.col("vec").embed.normalize())
        shape: (3, 1)
        ┌───────────────┐
        │ vec           │
        │ ---           │
        │ array[f32, 2] │
        ╞═══════════════╡
        │ [0.6, 0.8]    │
        │ null          │
        │ [0.0, 0.0]    │
        └───────────────┘
        """
        return self._expr.map_batches(_normalized, return_dtype=pl.self_dtype(), is_elementwise=True)

    def _score(self, other: VectorOrColumn, metric: Metric) -> pl.Expr:
        if isinstance(other, pl.Expr | str):
            return pl.map_batches(
                [self._expr, other],
                partial(_column_scores, metric=metric),
                return_dtype=pl.Float32,
                is_elementwise=True,
            )
        vectors, _ = as_query_vectors(other)
        if len(vectors) != 1:  # a batch of one, such as embed(["a query"]), is one vector
            raise InvalidInputError(
                f"got {len(vectors)} vectors, but a column is compared with one vector, "
                "or row by row with a column: pass one vector, or a column by name or expression"
            )
        query = pl.Series("query", vectors)
        return self._expr.map_batches(
            partial(_scores, other=query, metric=metric), return_dtype=pl.Float32, is_elementwise=True
        )

    def project(self, n: int = 2, *, method: Method = "pca", seed: int = 0) -> pl.Expr:
        """Coordinates of each vector in ``n`` dimensions, for a picture of the space.

        The projection is fitted on the whole column (not row by row), so use it in
        ``select``/``with_columns`` on the frame to draw.

        Parameters
        ----------
        n
            1, 2 or 3 coordinates per row.
        method
            ``"pca"`` (numpy; each axis signed so that its largest loading is
            positive: the same vectors give the same picture in any order) or
            ``"umap"`` (cosine UMAP, the ``umap`` extra).
        seed
            For UMAP's random start; PCA has none.

        Returns
        -------
        pl.Expr
            ``pl.Array(pl.Float32, n)``; null where the vector is null.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame(
        ...     {"vec": [[1.0, 1.0, 0.0], None, [3.0, 3.0, 0.0], [2.0, 2.0, 0.0]]},
        ...     schema={"vec": pl.Array(pl.Float32, 3)},
        ... )
        >>> df.select(pl.col("vec").embed.project(n=1).arr.first().round(3))
        shape: (4, 1)
        ┌────────┐
        │ vec    │
        │ ---    │
        │ f32    │
        ╞════════╡
        │ -1.414 │
        │ null   │
        │ 1.414  │
        │ 0.0    │
        └────────┘
        """
        check_projection(n, method)
        return self._expr.map_batches(
            partial(_projected, n=n, method=method, seed=seed), return_dtype=pl.Array(pl.Float32, n)
        )

    def cluster(self, k: int, *, seed: int = 0, max_iter: int = 300) -> pl.Expr:
        """Label each vector with one of ``k`` k-means clusters, fitted on the whole column.

        Lloyd's algorithm from greedy k-means++ seeds, on the vectors as they are
        (for unit vectors, such as the default model's, near in cosine is near here).
        Clusters are numbered in order of first appearance: the first row's is 0.

        Parameters
        ----------
        k
            The number of clusters.
        seed
            Seeds the k-means++ start: the same data and seed give the same labels.
        max_iter
            Most rounds of Lloyd's algorithm.

        Returns
        -------
        pl.Expr
            ``pl.UInt32`` labels; null where the vector is null.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame(
        ...     {"vec": [[0.0, 1.0], [5.0, 5.0], None, [0.1, 0.9], [5.1, 4.9]]},
        ...     schema={"vec": pl.Array(pl.Float32, 2)},
        ... )
        >>> df.select(pl.col("vec").embed.cluster(2))
        shape: (5, 1)
        ┌──────┐
        │ vec  │
        │ ---  │
        │ u32  │
        ╞══════╡
        │ 0    │
        │ 1    │
        │ null │
        │ 0    │
        │ 1    │
        └──────┘
        """
        return self._expr.map_batches(
            partial(_clustered, k=k, seed=seed, max_iter=max_iter), return_dtype=pl.UInt32
        )


def _chunked(
    texts: pl.Series, provider: Provider | None, kind: Kind, max_tokens: int | None, overlap: int
) -> pl.Series:
    size = chunk_budget(provider, kind, max_tokens)
    check_overlap(overlap, size)
    return chunks_column(as_text_series(texts, texts.name), provider, size, overlap)


def _column_scores(columns: list[pl.Series], metric: Metric) -> pl.Series:
    vectors, other = columns
    return _scores(vectors, other, metric)


def _scores(vectors: pl.Series, other: pl.Series, metric: Metric) -> pl.Series:
    """Row-aligned scores; ``other`` of one row is compared with every row."""
    check_same_width(vectors, other)
    other_matrix = as_matrix(other)
    scores = pairwise_scores(as_matrix(vectors), other_matrix[0] if len(other) == 1 else other_matrix, metric)
    missing = vectors.is_null().to_numpy() | other.is_null().to_numpy()
    return null_where(pl.Series(vectors.name, scores), missing)


def _normalized(vectors: pl.Series) -> pl.Series:
    unit = pl.Series(vectors.name, l2_normalize(as_matrix(vectors))).cast(vectors.dtype)
    return null_where(unit, vectors.is_null().to_numpy())


def _non_null_matrix(vectors: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The non-null rows of a vector column as ``(m, d)``, and which rows they are."""
    valid = vectors.is_not_null().to_numpy()
    return as_matrix(vectors)[valid], valid


def _projected(vectors: pl.Series, n: int, method: Method, seed: int) -> pl.Series:
    matrix, valid = _non_null_matrix(vectors)
    coordinates = np.zeros((len(vectors), n), dtype=np.float32)
    if valid.any():
        coordinates[valid] = fit_projection(matrix, n, method=method, seed=seed).transform(matrix)
    return null_where(pl.Series(vectors.name, coordinates), ~valid)


def _clustered(vectors: pl.Series, k: int, seed: int, max_iter: int) -> pl.Series:
    matrix, valid = _non_null_matrix(vectors)
    labels = np.zeros(len(vectors), dtype=np.uint32)
    labels[valid], _ = kmeans(matrix, k, seed=seed, max_iter=max_iter)
    return null_where(pl.Series(vectors.name, labels), ~valid)
