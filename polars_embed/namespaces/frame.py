"""The ``embed`` namespace on DataFrames and LazyFrames: search, k-nearest-neighbour join, Parquet.

Each method validates its arguments against the frame's schema and builds a plan:
a DataFrame runs it at once; a LazyFrame hands it to ``LazyFrame.map_batches``
with the output schema, so nothing runs and no provider is called until the
query is collected. Top-k selection is always :func:`polars_embed.kernels.topk`,
which walks the corpus in blocks: memory grows with the results, never with
``queries x rows``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import numpy as np
import polars as pl

from polars_embed import metadata
from polars_embed._estimate import Estimate, estimate
from polars_embed._project import Method
from polars_embed.engine import embed_queries
from polars_embed.errors import (
    ColumnNotFoundError,
    ConfigError,
    DuplicateColumnError,
    InputTypeError,
)
from polars_embed.kernels import Metric, check_k, check_metric, topk
from polars_embed.keywords import Fused, Fusion, Ranking
from polars_embed.metadata import provider_for_query, provider_of
from polars_embed.namespaces._dedup import Dedup, check_threshold
from polars_embed.namespaces._plot import plot_chart
from polars_embed.namespaces._vectors import (
    QueryLike,
    as_matrix,
    cached_keyword_index,
    cached_squared_norms,
    cached_twin,
    check_same_width,
    null_where,
    parse_query,
    unit_length,
    valid_rows,
    vector_chunks,
    vector_width,
)
from polars_embed.provider import Kind, Provider
from polars_embed.quantization import Quantization, QuantizedSearch, quantized_topk
from polars_embed.registry import ProviderLike, RerankerLike, resolve_provider

if TYPE_CHECKING:
    import altair as alt

__all__ = ["EmbedFrameNamespace", "EmbedLazyFrameNamespace"]

_NO_PROVIDER_HINT = (
    "pass provider= (the column's own provider), or read the vectors with "
    "polars_embed.read_parquet/scan_parquet from a file written by df.embed.write_parquet"
)
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


class _EmbedNamespace(Generic[FrameT]):
    """What the DataFrame and LazyFrame namespaces share: everything but how a plan runs."""

    def __init__(self, frame: FrameT) -> None:
        self._frame = frame

    def search(
        self,
        query: QueryLike,
        *,
        on: str = "vec",
        k: int = 10,
        provider: ProviderLike = None,
        metric: Metric = "cosine",
        normalized: bool | None = None,
        score: str = "score",
        query_index: str = "query_index",
        quantized: Quantization | None = None,
        oversample: int | None = None,
        text: str | None = None,
        hybrid: bool = False,
        fusion: Fusion = "rrf",
        weight: float = 0.5,
        rerank: RerankerLike | None = None,
        rerank_top: int = 50,
        **options: Any,
    ) -> FrameT:
        """The ``k`` rows whose vectors best match a query, best first, with a score column.

        Parameters
        ----------
        query
            A string, embedded as a query; a vector (a list of numbers or a 1-D
            array); or a batch: a list of strings, a 2-D array, a list of vectors.
        on
            The vector column to search.
        k
            Results per query; more than the searchable rows returns them all.
        provider
            Embeds text queries. Default: the provider that made column ``on``,
            when this process knows it (it made the vectors, or read them from a
            file written by :meth:`write_parquet`); otherwise this is required.
            A provider that is not the column's own is an error.
        metric
            ``"cosine"`` or ``"dot"`` (higher is better) or ``"l2"`` (lower is better).
        normalized
            Promise that the vectors have unit length, so cosine skips the norms.
            Default: what the column's provider says, when it is known.
        score
            Name of the score column (``pl.Float32``).
        query_index
            For a batch of queries only: name of the first column, the position
            (``pl.UInt32``) of the query each row answers.
        quantized
            ``"int8"`` or ``"binary"``: rank every row on a compact twin of the
            column (a quarter or a thirty-second of its bytes), then rescore
            the best ``oversample * k`` exactly; cosine only. The twin is made
            on the first such search of a DataFrame's column and kept with the
            frame. Scores are exact; a true match may be missed:
            :func:`polars_embed.recall_at_k` measures how often.
        oversample
            Candidates rescored per result with ``quantized`` (default 4 for
            int8, 200 for binary).
        text
            The text column the vectors were made from, for ``hybrid`` and ``rerank``.
        hybrid
            Also rank the rows of ``text`` by BM25 keyword relevance to the query,
            and fuse the two rankings: what vectors blur (an error code, a part
            number) the keywords find. The best ``max(k, rerank_top, 50)`` rows of
            each ranking are fused; ``score`` is then the fused score, and the
            columns ``vector_rank`` and ``keyword_rank`` (``pl.UInt32``, 1 for the
            best, null where a row is not in that ranking) say which contributed.
            The keyword index is built on the first hybrid search of a
            DataFrame's column and kept with the frame (a LazyFrame builds it
            each time it is collected). Needs the ``hybrid`` extra (bm25s).
        fusion
            How the rankings are fused: ``"rrf"``, reciprocal rank fusion (ranks only),
            or ``"weighted"``, a weighted sum of each ranking's scores scaled to [0, 1].
        weight
            The vector ranking's share of a ``"weighted"`` fusion, from 0 to 1.
        rerank
            A reranker (``"cohere:rerank-v3.5"``, a ``"sentence-transformers:..."``
            cross-encoder, or a :class:`~polars_embed.Reranker`) that reads the
            query with the text of each of the best ``rerank_top`` rows and puts them
            in its order; ``score`` is then its relevance, and ``vector_rank`` (and,
            with ``hybrid``, ``keyword_rank``) says where each row was before.
        rerank_top
            Candidates sent to the reranker per query.
        **options
            Options of ``provider``, e.g. ``dims=64``; only with ``provider``.

        Returns
        -------
        DataFrame or LazyFrame
            The matching rows, all columns kept. A batch gives each query's rows in
            turn. Null vectors never match; ties go to the earlier row.

        Raises
        ------
        ColumnNotFoundError
            If the frame has no column ``on``.
        InputTypeError
            If column ``on`` is not a vector column, a query is neither text nor
            numbers, or ``k`` is not an integer.
        DuplicateColumnError
            If the frame already has a column named ``score`` or ``query_index``.
        ConfigError
            If ``k <= 0``, the metric is unknown, a text query has no provider to
            embed it, or ``provider`` is not the one that made the column.
        InvalidInputError
            If there is no query, a text query is blank, or a vector has no width.
        DimensionMismatchError
            If the query's width is not the column's.
        EmbeddingIncompleteError
            If the provider failed to embed a text query.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame({"text": ["a cat sat", "stock prices fell", None, "the cat slept"]})
        >>> df = df.with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=64))
        >>> df.embed.search("cat", k=2).select("text", pl.col("score").round(3))
        shape: (2, 2)
        ┌───────────────┬───────┐
        │ text          ┆ score │
        │ ---           ┆ ---   │
        │ str           ┆ f32   │
        ╞═══════════════╪═══════╡
        │ a cat sat     ┆ 0.484 │
        │ the cat slept ┆ 0.398 │
        └───────────────┴───────┘

        A hybrid search also ranks the words of ``text``, and says which ranking
        found each row (a row with a null text is never a keyword match):

        >>> df.embed.search("cat", text="text", k=3, hybrid=True).select(
        ...     "text", "vector_rank", "keyword_rank", pl.col("score").round(4)
        ... )
        shape: (3, 4)
        ┌───────────────────┬─────────────┬──────────────┬────────┐
        │ text              ┆ vector_rank ┆ keyword_rank ┆ score  │
        │ ---               ┆ ---         ┆ ---          ┆ ---    │
        │ str               ┆ u32         ┆ u32          ┆ f32    │
        ╞═══════════════════╪═════════════╪══════════════╪════════╡
        │ a cat sat         ┆ 1           ┆ 1            ┆ 0.0328 │
        │ the cat slept     ┆ 2           ┆ 2            ┆ 0.0323 │
        │ stock prices fell ┆ 3           ┆ null         ┆ 0.0159 │
        └───────────────────┴─────────────┴──────────────┴────────┘

        A LazyFrame searches when collected, and a batch of queries says which
        query each row answers:

        >>> df.lazy().embed.search(["cat", "prices"], k=1).select("query_index", "text").collect()
        shape: (2, 2)
        ┌─────────────┬───────────────────┐
        │ query_index ┆ text              │
        │ ---         ┆ ---               │
        │ u32         ┆ str               │
        ╞═════════════╪═══════════════════╡
        │ 0           ┆ a cat sat         │
        │ 1           ┆ stock prices fell │
        └─────────────┴───────────────────┘
        """
        search = _Search.plan(
            self._schema(),
            query,
            on=on,
            k=k,
            provider=provider,
            metric=metric,
            normalized=normalized,
            score=score,
            query_index=query_index,
            quantized=QuantizedSearch.check(quantized, oversample, metric),
            options=options,
            ranking=Ranking.check(
                text=text,
                hybrid=hybrid,
                fusion=fusion,
                weight=weight,
                rerank=rerank,
                rerank_top=rerank_top,
            ),
        )
        return self._run(search)

    def knn_join(
        self,
        other: pl.DataFrame | pl.LazyFrame,
        *,
        on: str | None = None,
        left_on: str | None = None,
        right_on: str | None = None,
        k: int = 5,
        metric: Metric = "cosine",
        normalized: bool | None = None,
        how: Literal["inner", "left"] = "inner",
        suffix: str = "_right",
        score: str = "score",
        quantized: Quantization | None = None,
        oversample: int | None = None,
    ) -> FrameT:
        """Join each row to the ``k`` rows of ``other`` whose vectors match its own best.

        Computed by exact top-k search in blocks, never by a cross join: the
        memory it takes grows with ``k`` times the rows of this frame.

        Parameters
        ----------
        other
            The frame to search; a LazyFrame is collected when this join runs.
        on
            The vector column, when it has the same name in both frames.
        left_on, right_on
            The vector columns of this frame and of ``other``.
        k
            Matches per row; fewer when ``other`` has fewer non-null vectors.
        metric
            ``"cosine"``, ``"dot"`` or ``"l2"``, as in :meth:`search`.
        normalized
            Promise that ``other``'s vectors have unit length (default: what
            their provider says, when it is known).
        how
            What becomes of a row whose vector is null (or cannot match, such as
            a zero vector under cosine): ``"inner"`` drops it, like an inner join;
            ``"left"`` keeps it once, with nulls for ``other``'s columns and the score.
        suffix
            Added to the name of each column of ``other`` that this frame has too.
        score
            Name of the score column (``pl.Float32``).
        quantized, oversample
            Search ``other`` through a compact twin of its vectors, as in
            :meth:`search`.

        Returns
        -------
        DataFrame or LazyFrame
            This frame's columns, ``other``'s, and the score: each row's matches
            in turn, best first, ties to the earlier row of ``other``.

        Raises
        ------
        ColumnNotFoundError
            If a frame has no such vector column.
        InputTypeError
            If a column is not a vector column, or ``k`` is not an integer.
        DuplicateColumnError
            If an output column would take a name this frame has (change ``suffix``
            or ``score``).
        ConfigError
            If no vector column is named, ``k <= 0``, ``metric`` or ``how`` is
            unknown, or the two columns were made by different models.
        DimensionMismatchError
            If the two columns' widths differ.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> embed = pl.col("text").embed.with_provider("hashing", dims=64)
        >>> questions = pl.DataFrame({"text": ["where is the cat", None]}).with_columns(vec=embed)
        >>> answers = pl.DataFrame({"text": ["the cat is on the mat", "prices fell"]}).with_columns(
        ...     vec=embed
        ... )
        >>> questions.embed.knn_join(answers, on="vec", k=1, how="left").select(
        ...     "text", "text_right", pl.col("score").round(3)
        ... )
        shape: (2, 3)
        ┌──────────────────┬───────────────────────┬───────┐
        │ text             ┆ text_right            ┆ score │
        │ ---              ┆ ---                   ┆ ---   │
        │ str              ┆ str                   ┆ f32   │
        ╞══════════════════╪═══════════════════════╪═══════╡
        │ where is the cat ┆ the cat is on the mat ┆ 0.719 │
        │ null             ┆ null                  ┆ null  │
        └──────────────────┴───────────────────────┴───────┘
        """
        right_schema = other.collect_schema() if isinstance(other, pl.LazyFrame) else other.schema
        join = _KnnJoin.plan(
            self._schema(),
            other,
            right_schema,
            left_on=left_on or on,
            right_on=right_on or on,
            k=k,
            metric=metric,
            normalized=normalized,
            how=how,
            suffix=suffix,
            score=score,
            quantized=QuantizedSearch.check(quantized, oversample, metric),
        )
        return self._run(join)

    def estimate(
        self,
        column: str,
        provider: ProviderLike = None,
        *,
        kind: Kind = "document",
        price_per_million_tokens: float | None = None,
        **options: Any,
    ) -> Estimate:
        """Preview embedding a text column: rows, distinct texts, cache hits, requests, tokens.

        Nothing is sent to the provider; a LazyFrame reads only ``column``. See
        :func:`polars_embed.estimate`.

        Parameters
        ----------
        column
            The text column.
        provider
            As for ``pl.col(column).embed.with_provider``.
        kind
            ``"document"`` or ``"query"``.
        price_per_million_tokens
            The provider's price, to get the cost.
        **options
            Provider options.

        Returns
        -------
        Estimate

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> lf = pl.LazyFrame({"text": ["a cat", "a cat", None, "a dog"]})
        >>> preview = lf.embed.estimate("text", "openai:text-embedding-3-small")
        >>> preview.rows, preview.skipped, preview.distinct, preview.requests
        (4, 1, 2, 1)
        """
        return estimate(
            self._frame,
            provider,
            column=column,
            kind=kind,
            price_per_million_tokens=price_per_million_tokens,
            **options,
        )

    def dedup(
        self,
        *,
        on: str,
        threshold: float = 0.92,
        k: int = 10,
        normalized: bool | None = None,
        name: str = "cluster_id",
    ) -> FrameT:
        """Group near-duplicate rows: add ``name``, the same id for rows whose vectors match.

        Each row is linked to those of its ``k`` nearest rows (exact cosine top-k in
        blocks, never an ``n x n`` matrix) whose similarity is at least ``threshold``,
        and rows joined by any chain of links share a group. Groups are numbered in
        order of first appearance; keep one row of each with
        ``.unique("cluster_id", keep="first", maintain_order=True)``.

        Parameters
        ----------
        on
            The vector column.
        threshold
            The least cosine similarity of a link, from -1 to 1.
        k
            Links looked for per row: a group larger than ``k + 1`` is still found
            whole when its rows link up through one another.
        normalized
            Promise that the vectors have unit length (default: what their provider says).
        name
            The name of the new column.

        Returns
        -------
        DataFrame or LazyFrame
            This frame with ``name`` (``pl.UInt32``): null where the vector is null
            or cannot match (all zeros).

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame(
        ...     {"vec": [[1.0, 0.0], [0.0, 1.0], [0.99, 0.05], None, [0.05, 1.0]]},
        ...     schema={"vec": pl.Array(pl.Float32, 2)},
        ... )
        >>> df.embed.dedup(on="vec", threshold=0.95)["cluster_id"].to_list()
        [0, 1, 0, None, 1]
        """
        _check_column(self._schema(), on)
        _check_new_names(self._schema(), [name])
        return self._run(Dedup.plan(on=on, threshold=threshold, k=k, normalized=normalized, name=name))

    def match(
        self,
        other: pl.DataFrame | pl.LazyFrame,
        *,
        on: str | None = None,
        left_on: str | None = None,
        right_on: str | None = None,
        threshold: float = 0.85,
        k: int = 1,
        normalized: bool | None = None,
        suffix: str = "_right",
        similarity: str = "similarity",
    ) -> FrameT:
        """Pair each row with the rows of ``other`` that are the same thing written otherwise.

        The ``k`` nearest rows of ``other`` by cosine similarity (as :meth:`knn_join`
        finds them) that reach ``threshold``: for entity matching, such as "MS Hex
        Bolt M12 x 50" against "Mild Steel Hex Bolt M12x50". A row with no match
        (or no vector) is left out.

        Parameters
        ----------
        other
            The frame to match against; a LazyFrame is collected when this runs.
        on, left_on, right_on
            The vector columns, as for :meth:`knn_join`.
        threshold
            The least cosine similarity of a pair, from -1 to 1.
        k
            Most matches per row, best first.
        normalized, suffix
            As for :meth:`knn_join`.
        similarity
            The name of the similarity column (``pl.Float32``).

        Returns
        -------
        DataFrame or LazyFrame
            One row per pair: this frame's columns, ``other``'s and the similarity.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> embed = pl.col("name").embed.with_provider("hashing", dims=256)
        >>> ours = pl.DataFrame({"name": ["hex bolt m12 x 50 steel", "rubber washer", None]})
        >>> theirs = pl.DataFrame({"name": ["steel hex bolt m12 x 50", "copper pipe"]})
        >>> ours, theirs = ours.with_columns(vec=embed), theirs.with_columns(vec=embed)
        >>> ours.embed.match(theirs, on="vec", threshold=0.5).select("name", "name_right")
        shape: (1, 2)
        ┌─────────────────────────┬─────────────────────────┐
        │ name                    ┆ name_right              │
        │ ---                     ┆ ---                     │
        │ str                     ┆ str                     │
        ╞═════════════════════════╪═════════════════════════╡
        │ hex bolt m12 x 50 steel ┆ steel hex bolt m12 x 50 │
        └─────────────────────────┴─────────────────────────┘
        """
        least = check_threshold(threshold)
        pairs = self.knn_join(
            other,
            on=on,
            left_on=left_on,
            right_on=right_on,
            k=k,
            metric="cosine",
            normalized=normalized,
            suffix=suffix,
            score=similarity,
        )
        return pairs.filter(pl.col(similarity) >= least)

    def search_chunks(
        self,
        query: QueryLike,
        *,
        by: str,
        on: str = "vec",
        k: int = 10,
        query_index: str = "query_index",
        **search: Any,
    ) -> FrameT:
        """The ``k`` documents whose best chunk best matches a query: each once, with that chunk.

        For a frame of chunks, one row per chunk (such as
        ``df.with_columns(chunk=pl.col("body").embed.chunks(...)).explode("chunk").unnest("chunk")``
        with the chunks' vectors): rows of one document share ``by``. This is
        :meth:`search` asked for more rows until ``k`` distinct documents are among
        them, keeping each document's best row.

        Parameters
        ----------
        query, on, k, query_index
            As for :meth:`search`; ``k`` counts documents.
        by
            The column that says which document a row (chunk) is of.
        **search
            Any other option of :meth:`search` (``provider=``, ``score=``, ...).

        Returns
        -------
        DataFrame or LazyFrame
            The best row (chunk) of each of the ``k`` best documents, best first, with
            the score column; for a batch of queries, ``k`` per query.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> docs = pl.DataFrame({"id": [1, 2], "body": ["cats purr. dogs bark. cats nap.", "stocks fell"]})
        >>> chunks = docs.with_columns(chunk=pl.col("body").embed.chunks(max_tokens=5))
        >>> chunks = chunks.explode("chunk").unnest("chunk")
        >>> chunks = chunks.with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=64))
        >>> chunks.embed.search_chunks("cats nap", by="id", k=2).select("id", "text", "start", "end")
        shape: (2, 4)
        ┌─────┬─────────────┬───────┬─────┐
        │ id  ┆ text        ┆ start ┆ end │
        │ --- ┆ ---         ┆ ---   ┆ --- │
        │ i64 ┆ str         ┆ u32   ┆ u32 │
        ╞═════╪═════════════╪═══════╪═════╡
        │ 1   ┆ cats nap.   ┆ 22    ┆ 31  │
        │ 2   ┆ stocks fell ┆ 0     ┆ 11  │
        └─────┴─────────────┴───────┴─────┘
        """
        schema = self._schema()
        if by not in schema:
            raise ColumnNotFoundError(
                f"no column {by!r} says which document a chunk is of: "
                f"pass by= one of {', '.join(map(repr, schema))}"
            )
        k = check_k(k)
        if isinstance(self._frame, pl.LazyFrame):
            shape = self._frame.embed.search(query, on=on, k=k, query_index=query_index, **search)
            return self._frame.map_batches(
                lambda frame: frame.embed.search_chunks(
                    query, by=by, on=on, k=k, query_index=query_index, **search
                ),
                schema=shape.collect_schema(),
            )
        depth = k * 4  # documents usually have several chunks
        while True:
            depth = min(depth, max(self._frame.height, 1))
            hits = self.search(query, on=on, k=depth, query_index=query_index, **search)
            batch = query_index in hits.columns and query_index not in schema
            best = hits.unique([query_index, by] if batch else [by], keep="first", maintain_order=True)
            if batch:
                best = best.group_by(query_index, maintain_order=True).head(k)
                found = best.group_by(query_index).len()["len"].min() or 0
            else:
                best = best.head(k)
                found = best.height
            if found >= k or depth >= self._frame.height:
                return best
            depth *= 4

    def _schema(self) -> pl.Schema:
        raise NotImplementedError

    def _run(self, plan: _Search | _KnnJoin | Dedup) -> FrameT:
        raise NotImplementedError


@pl.api.register_dataframe_namespace("embed")
class EmbedFrameNamespace(_EmbedNamespace[pl.DataFrame]):
    """Namespace for searching and joining on vector columns, as ``df.embed``."""

    def write_parquet(self, path: str | PathLike[str], **options: Any) -> None:
        """``DataFrame.write_parquet``, storing which provider made each vector column.

        A later :func:`polars_embed.read_parquet` or :func:`polars_embed.scan_parquet`
        of the file, in any process, lets :meth:`search` embed text queries with
        that provider without being told.

        Parameters
        ----------
        path
            Where to write.
        **options
            Passed to ``DataFrame.write_parquet``, e.g. ``row_group_size``.
        """
        metadata.write_parquet(self._frame, path, **options)

    def plot(
        self,
        *,
        on: str = "vec",
        color: str | None = None,
        tooltip: str | Sequence[str] | None = None,
        query: QueryLike | None = None,
        k: int = 5,
        method: Method = "pca",
        seed: int = 0,
        max_points: int | None = 5000,
        provider: ProviderLike = None,
        **options: Any,
    ) -> alt.LayerChart:
        """An interactive scatter of the embedding space (Altair): pan, zoom, hover.

        Each row with a vector is a point, placed by ``pl.col(on).embed.project(2,
        method=method)``; rows whose vector is null are left out. With ``query``,
        each query is drawn as a cross where it falls, and its ``k`` nearest rows
        (as :meth:`search` finds them) are ringed.

        Parameters
        ----------
        on
            The vector column.
        color
            A column to colour points by, e.g. ``pl.col(on).embed.cluster(8)``.
        tooltip
            Column(s) shown on hover.
        query
            Text or vector queries to highlight, as :meth:`search` takes them.
        k
            Neighbours ringed per query.
        method
            ``"pca"`` or ``"umap"``, as for ``project``.
        seed
            For UMAP, and for choosing ``max_points`` rows to draw.
        max_points
            Draw at most this many rows (a seeded sample; the projection still uses
            them all); ``None`` draws every row.
        provider, **options
            Embed text queries, as for :meth:`search`.

        Returns
        -------
        altair.LayerChart
            Display it in a notebook, or ``.save("chart.html")``. Needs the
            ``plot`` extra.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed
        >>> df = pl.DataFrame({"text": ["a cat", "a dog", None, "stock prices fell"]})
        >>> df = df.with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=32))
        >>> chart = df.embed.plot(tooltip="text", query="cat", k=1)
        >>> [(layer.mark.type, len(layer.data)) for layer in chart.layer]  # rows, rings, crosses
        [('circle', 3), ('point', 1), ('point', 1)]
        """
        _check_column(self._frame.schema, on)
        search = None
        if query is not None:
            search = _Search.plan(
                self._frame.schema,
                query,
                on=on,
                k=k,
                provider=provider,
                metric="cosine",
                normalized=None,
                score="score",
                query_index="query",
                quantized=None,
                options=options,
            )
        return plot_chart(
            self._frame,
            on=on,
            color=color,
            tooltip=tooltip,
            search=search,
            method=method,
            seed=seed,
            max_points=max_points,
        )

    def _schema(self) -> pl.Schema:
        return self._frame.schema

    def _run(self, plan: _Search | _KnnJoin | Dedup) -> pl.DataFrame:
        return plan(self._frame)


@pl.api.register_lazyframe_namespace("embed")
class EmbedLazyFrameNamespace(_EmbedNamespace[pl.LazyFrame]):
    """Namespace for searching and joining on vector columns, as ``lf.embed``; lazy until collected."""

    def _schema(self) -> pl.Schema:
        return self._frame.collect_schema()

    def _run(self, plan: _Search | _KnnJoin | Dedup) -> pl.LazyFrame:
        # Not streamable: top-k needs every row before it can answer. No pushdown
        # either: a filter or slice after a search must not change what it searched.
        return self._frame.map_batches(plan, schema=plan.output_schema(self._schema()))


@dataclass(frozen=True, eq=False)
class _Search:
    """A validated search, run on a DataFrame holding the column to search."""

    on: str
    k: int
    metric: Metric
    normalized: bool | None
    score: str
    query_index: str | None  # None for a single query: no query column
    texts: tuple[str, ...] | None  # text queries, embedded when the search runs
    vectors: np.ndarray | None  # (q, d) float32 vector queries
    provider: Provider | None
    quantized: QuantizedSearch | None
    ranking: Ranking | None = None  # hybrid and reranked searches

    @classmethod
    def plan(
        cls,
        schema: pl.Schema,
        query: QueryLike,
        *,
        on: str,
        k: int,
        provider: ProviderLike,
        metric: Metric,
        normalized: bool | None,
        score: str,
        query_index: str,
        quantized: QuantizedSearch | None,
        options: dict[str, Any],
        ranking: Ranking | None = None,
    ) -> _Search:
        _check_column(schema, on)
        texts, vectors, single = parse_query(query)
        if ranking is not None:
            _check_text_search(ranking, schema, texts)
        if texts is None and provider is not None:
            raise ConfigError(
                "provider= embeds text queries, but these queries are vectors already: leave it out"
            )
        if options and provider is None:
            raise ConfigError(
                f"options {sorted(options)} are for provider=, which is not given: pass the provider too"
            )
        search = cls(
            on=on,
            k=check_k(k),
            metric=check_metric(metric),
            normalized=normalized,
            score=score,
            query_index=None if single else query_index,
            texts=texts,
            vectors=vectors,
            provider=None if provider is None else resolve_provider(provider, **options),
            quantized=quantized,
            ranking=ranking,
        )
        ranks = ranking.columns if ranking is not None else []
        _check_new_names(schema, [name for name in (search.query_index, score, *ranks) if name is not None])
        return search

    def output_schema(self, schema: pl.Schema) -> pl.Schema:
        query_column = {self.query_index: pl.UInt32} if self.query_index else {}
        ranks = {name: pl.UInt32 for name in self.ranking.columns} if self.ranking is not None else {}
        return pl.Schema({**query_column, **schema, self.score: pl.Float32, **ranks})

    def __call__(self, frame: pl.DataFrame) -> pl.DataFrame:
        return self.answer(frame, self.query_vectors(frame[self.on]))

    def query_vectors(self, column: pl.Series) -> np.ndarray:
        """The queries as a ``(q, d)`` float32 array, text ones embedded for ``column``."""
        if self.texts is None:
            return self.queries_for(column, None)  # nothing to embed: no provider is looked up
        if column.null_count() == len(column):
            # nothing can match: spare the provider a call
            return np.zeros((len(self.texts), column.dtype.shape[0]), dtype=np.float32)
        return self.queries_for(column, provider_of(column))

    def queries_for(
        self, column: pl.Series, stored: Provider | None, *, unknown: str = _NO_PROVIDER_HINT
    ) -> np.ndarray:
        """The queries as ``(q, d)`` float32 vectors for ``column`` (its rows are not read), text
        embedded by ``stored``, the provider that made the column, unless one was given;
        ``unknown`` tells the user what to do when no provider is known."""
        if self.texts is None:
            check_same_width(column, pl.Series("query", self.vectors))
            return self.vectors
        provider = provider_for_query(
            self.provider, stored, column=self.on, width=column.dtype.shape[0], unknown=unknown
        )
        return embed_queries(list(self.texts), provider)

    def answer(self, frame: pl.DataFrame, queries: np.ndarray) -> pl.DataFrame:
        """The rows of ``frame`` that best match each of ``queries``, with their scores."""
        if self.ranking is None:
            indices, scores = self.vector_ranking(frame, queries, self.k)
            ranks: list[pl.Series] = []
        else:
            indices, scores, ranks = _ranked_search(self.ranking, self, frame, queries)
        return self.found(frame, indices, scores, ranks)

    def found(
        self, frame: pl.DataFrame, indices: np.ndarray, scores: np.ndarray, ranks: Sequence[pl.Series] = ()
    ) -> pl.DataFrame:
        """The rows of ``frame`` that a search found, with the score, rank and query columns;
        ``indices`` are rows of ``frame``, -1 for none."""
        found = indices.ravel() >= 0
        hits = _gather(frame, indices.ravel()[found], self.on).with_columns(
            pl.Series(self.score, scores.ravel()[found]), *(rank.filter(found) for rank in ranks)
        )
        if self.query_index is not None:
            query_numbers = np.repeat(np.arange(len(indices), dtype=np.uint32), indices.shape[1])
            hits.insert_column(0, pl.Series(self.query_index, query_numbers[found]))
        return hits

    def vector_ranking(
        self, frame: pl.DataFrame, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each query by the vectors, and their scores (:func:`topk`'s layout)."""
        # A twin keeps its rows' norms and a promise needs no provider: only an exact search
        # without one looks up the column's provider, whose rows it reads.
        needs_provider = self.quantized is None and self.normalized is None
        stored = provider_of(frame[self.on]) if needs_provider else None
        normalized = unit_length(self.normalized, stored)
        return _search_frame(queries, frame, self.on, k, self.metric, normalized, self.quantized)


def _check_text_search(ranking: Ranking, schema: pl.Schema, texts: tuple[str, ...] | None) -> None:
    """A hybrid or reranked search needs text queries and a text column."""
    if texts is None:
        raise ConfigError(
            "hybrid and reranked searches need text queries (their words are ranked and read), "
            "not vectors: pass the query text"
        )
    if ranking.text not in schema:
        raise ColumnNotFoundError(
            f"no text column {ranking.text!r}: pass text= one of the columns, {', '.join(map(repr, schema))}"
        )
    if schema[ranking.text] != pl.String:
        raise InputTypeError(
            f"text= names column {ranking.text!r}, which is {schema[ranking.text]}, not text (pl.String): "
            f"pass the text column the vectors were made from"
        )


def _ranked_search(
    ranking: Ranking, search: _Search, frame: pl.DataFrame, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[pl.Series]]:
    """Each query's best ``k`` rows and their scores (``topk``'s layout), and the rank columns."""
    assert search.texts is not None  # checked by _check_text_search
    depth = ranking.depth(search.k)
    indices, scores = search.vector_ranking(frame, queries, depth)
    index = cached_keyword_index(frame, ranking.text) if ranking.keywords else None
    texts = frame[ranking.text]
    answers = []
    for number, query in enumerate(search.texts):
        found = indices[number] >= 0
        answers.append(
            ranking.combine(
                query,
                (indices[number][found], scores[number][found]),
                None if index is None else index.ranking(query, depth),
                k=search.k,
                higher_is_better=search.metric != "l2",
                texts_of=lambda rows: texts.gather(rows).to_list(),
            )
        )
    width = max((len(answer.rows) for answer in answers), default=0)
    padded = Fused.padded(answers, width)
    shape = (len(answers), width)
    return padded.rows.reshape(shape), padded.scores.reshape(shape), ranking.rank_columns(padded)


@dataclass(frozen=True, eq=False)
class _KnnJoin:
    """A validated k-nearest-neighbour join, run on the left DataFrame."""

    right: pl.DataFrame | pl.LazyFrame | None  # None where the caller searches (polars_embed.ray)
    right_schema: pl.Schema
    left_on: str
    right_on: str
    k: int
    metric: Metric
    normalized: bool | None
    keep_unmatched: bool
    score: str
    right_names: dict[str, str]  # right column -> output name
    quantized: QuantizedSearch | None

    @classmethod
    def plan(
        cls,
        left_schema: pl.Schema,
        right: pl.DataFrame | pl.LazyFrame | None,
        right_schema: pl.Schema,
        *,
        left_on: str | None,
        right_on: str | None,
        k: int,
        metric: Metric,
        normalized: bool | None,
        how: str,
        suffix: str,
        score: str,
        quantized: QuantizedSearch | None,
    ) -> _KnnJoin:
        if left_on is None or right_on is None:
            raise ConfigError("knn_join needs the vector columns: pass on=, or left_on= and right_on=")
        if how not in ("inner", "left"):
            raise ConfigError(f"how must be 'inner' or 'left', got {how!r}")
        _check_column(left_schema, left_on)
        _check_column(right_schema, right_on)
        right_names = {name: name + suffix if name in left_schema else name for name in right_schema}
        _check_new_names(left_schema, [*right_names.values(), score])
        return cls(
            right=right,
            right_schema=right_schema,
            left_on=left_on,
            right_on=right_on,
            k=check_k(k),
            metric=check_metric(metric),
            normalized=normalized,
            keep_unmatched=how == "left",
            score=score,
            right_names=right_names,
            quantized=quantized,
        )

    def output_schema(self, left_schema: pl.Schema) -> pl.Schema:
        renamed = {self.right_names[name]: dtype for name, dtype in self.right_schema.items()}
        return pl.Schema({**left_schema, **renamed, self.score: pl.Float32})

    def __call__(self, left: pl.DataFrame) -> pl.DataFrame:
        right = self.right.collect() if isinstance(self.right, pl.LazyFrame) else self.right
        queries, corpus = left[self.left_on], right[self.right_on]
        check_same_width(queries, corpus)
        right_provider = provider_of(corpus)
        self.check_comparable(provider_of(queries), right_provider)
        normalized = unit_length(self.normalized, right_provider)
        # The left side is the queries, one array (a BLAS multiply rounds a score differently
        # with another number of queries); the right side is searched in its chunks.
        indices, scores = _search_frame(
            as_matrix(queries), right, self.right_on, self.k, self.metric, normalized, self.quantized
        )
        return self.joined(left, right, indices, scores)

    def check_comparable(self, left_provider: Provider | None, right_provider: Provider | None) -> None:
        """Fail when the two vector columns are known to come from different models."""
        if left_provider and right_provider and left_provider.spec() != right_provider.spec():
            raise ConfigError(
                f"column {self.left_on!r} was embedded with {left_provider.label} and column "
                f"{self.right_on!r} with {right_provider.label}: vectors from different models "
                "cannot be compared"
            )

    def joined(
        self, left: pl.DataFrame, right: pl.DataFrame, indices: np.ndarray, scores: np.ndarray
    ) -> pl.DataFrame:
        """Each row of ``left`` beside the rows of ``right`` that :func:`~polars_embed.topk` found
        for it; ``indices`` are rows of ``right``, -1 for none."""
        if indices.shape[1] == 0:  # no row of other can match: one empty slot per row
            indices = np.full((len(left), 1), -1, dtype=np.int64)
            scores = np.full((len(left), 1), np.nan, dtype=np.float32)
        found = indices >= 0
        keep = found.copy()
        if self.keep_unmatched:
            keep[:, 0] |= ~found.any(axis=1)
        left_rows = np.repeat(np.arange(len(left)), indices.shape[1])[keep.ravel()]
        unmatched = ~found[keep]
        right_rows = np.where(unmatched, -1, indices[keep])
        return pl.concat(
            [
                left.gather(pl.Series(left_rows)),
                _gather(right, right_rows, self.right_on).rename(self.right_names),
                null_where(pl.Series(self.score, scores[keep]), unmatched).to_frame(),
            ],
            how="horizontal",
        )


def _search_frame(
    queries: np.ndarray,
    frame: pl.DataFrame,
    on: str,
    k: int,
    metric: Metric,
    normalized: bool,
    quantized: QuantizedSearch | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk` over the chunks of ``frame[on]``, with what it derives from them kept for the next
    search: the row norms, or the quantised twin."""
    column = frame[on]
    chunks = vector_chunks(column)
    if quantized is not None:
        twin = cached_twin(frame, on, chunks, quantized.kind)
        return quantized_topk(queries, chunks, twin, k, oversample=quantized.oversample)
    needs_norms = metric == "l2" or (metric == "cosine" and not normalized)
    return topk(
        queries,
        chunks,
        k,
        metric=metric,
        valid=valid_rows(column),
        normalized=normalized,
        squared_norms=cached_squared_norms(frame, on, chunks) if needs_norms else None,
    )


def _gather(frame: pl.DataFrame, rows: np.ndarray, column: str) -> pl.DataFrame:
    """``frame.gather(rows)``, row -1 giving a row of nulls, without copying a chunked frame whole.

    Polars rechunks a column of many chunks to gather from it; here each chunk
    of ``column`` (the vectors, by far the largest) gives its rows from a
    zero-copy slice of the frame, and one small gather puts them in order.
    """
    lengths = frame[column].chunk_lengths()
    missing = rows < 0
    if frame.height == 0:  # every row is missing
        return frame.clear(len(rows))
    rows = np.where(missing, 0, rows)
    if len(lengths) <= 1 or len(rows) == 0:
        gathered = frame.gather(pl.Series(rows, dtype=pl.Int64))
    else:
        starts = np.cumsum([0, *lengths])
        chunk_of = np.searchsorted(starts, rows, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        edges = np.searchsorted(chunk_of[order], np.arange(len(lengths) + 1))
        parts = [
            frame.slice(int(starts[i]), lengths[i]).gather(pl.Series(rows[order[low:high]] - starts[i]))
            for i, (low, high) in enumerate(itertools.pairwise(edges))
            if high > low
        ]
        gathered = pl.concat(parts).gather(pl.Series(np.argsort(order)))
    if not missing.any():
        return gathered
    return gathered.select(pl.when(pl.Series(~missing)).then(pl.all()).name.keep())


def _check_column(schema: pl.Schema, column: str) -> None:
    if column not in schema:
        raise ColumnNotFoundError(
            f"no vector column {column!r}: pass on= one of the columns, {', '.join(map(repr, schema))}"
        )
    vector_width(schema[column], column=column)


def _check_new_names(schema: pl.Schema, names: list[str]) -> None:
    """Output columns must not take a name the frame already has, nor each other's."""
    taken = [name for name in names if name in schema]
    if taken:
        raise DuplicateColumnError(
            f"the output would have two columns named {taken[0]!r}: pass another name "
            "(score=, query_index= or suffix=)"
        )
    if len(set(names)) < len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise DuplicateColumnError(
            f"the output would have two columns named {repeated!r}: pass another name (score= or suffix=)"
        )
