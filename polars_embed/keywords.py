"""Keyword ranking by BM25, and its fusion with a vector ranking, for hybrid search.

Vectors blur exact identifiers (an error code, a part number, a SKU): a query for
``"error E1234"`` finds texts about errors, not necessarily the one that names
E1234. BM25 finds exactly those. A hybrid search ranks the rows both ways and
fuses the two rankings:

- ``"rrf"``, reciprocal rank fusion (the default): a row's score is the sum of
  ``1 / (rrf_k + rank)`` over the rankings it is in (``rrf_k`` = 60, as in
  Cormack et al. 2009). Only ranks count, so the two scales never need to agree.
- ``"weighted"``: each ranking's scores are scaled to [0, 1] over its candidates
  (best 1, worst 0), and a row's score is ``weight * vector + (1 - weight) * keyword``,
  0 for a ranking it is not in.

BM25 is `bm25s <https://github.com/xhluca/bm25s>`_'s (Lucene's variant, k1 = 1.5,
b = 0.75), with its tokenizer: lower-cased words of two or more letters and digits,
English stop words removed. The index over a column is built once and kept by the
front end that asked for it (see ``cached_keyword_index`` in the frame namespace).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import polars as pl

from polars_embed.engine import rerank_scores
from polars_embed.errors import ConfigError, MissingDependencyError
from polars_embed.kernels import check_k
from polars_embed.registry import RerankerLike, resolve_reranker
from polars_embed.reranker import Reranker

__all__ = [
    "CANDIDATES",
    "FUSIONS",
    "KEYWORD_RANK",
    "RRF_K",
    "VECTOR_RANK",
    "Fused",
    "Fusion",
    "KeywordIndex",
    "Ranking",
    "check_fusion",
    "fuse",
    "reranked",
]

log = logging.getLogger(__name__)

Fusion = Literal["rrf", "weighted"]
FUSIONS: tuple[Fusion, ...] = get_args(Fusion)
#: The constant of reciprocal rank fusion: larger values flatten the gap between ranks.
RRF_K = 60
#: Rows each ranking contributes to a fusion, at the least (more when ``k`` or ``rerank_top`` is larger).
CANDIDATES = 50
#: The columns a hybrid or reranked search adds: each row's rank by the vectors and by keywords.
VECTOR_RANK, KEYWORD_RANK = "vector_rank", "keyword_rank"


def check_fusion(fusion: str, weight: float) -> Fusion:
    """``fusion`` if it is one of :data:`FUSIONS` and ``weight`` is in [0, 1], else a :class:`ConfigError`."""
    if fusion not in FUSIONS:
        raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise ConfigError(
            f"weight (the vector ranking's share of a weighted fusion) must be in [0, 1], got {weight!r}"
        )
    return fusion  # type: ignore[return-value]


class KeywordIndex:
    """A BM25 index over a column of texts; a null or blank text matches nothing.

    Parameters
    ----------
    texts
        The texts, one per row; the row numbers of :meth:`ranking` are positions in it.

    Examples
    --------
    >>> index = KeywordIndex(["error E1234 on login", None, "login failed", "refund"])
    >>> rows, scores = index.ranking("login E1234", depth=10)
    >>> rows.tolist(), [round(float(score), 2) for score in scores]
    ([0, 2], [0.57, 0.26])
    """

    def __init__(self, texts: Sequence[str | None] | pl.Series) -> None:
        bm25s = _bm25s()
        documents = [text or "" for text in (texts.to_list() if isinstance(texts, pl.Series) else texts)]
        self._tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
        tokens = self._tokenizer.tokenize(documents, return_as="ids", show_progress=False)
        self._vocabulary = self._tokenizer.get_vocab_dict()
        self._bm25 = bm25s.BM25()
        self._bm25.index((tokens, self._vocabulary), show_progress=False)
        self._size = len(documents)
        log.debug("BM25 index of %d texts, %d distinct words", self._size, len(self._vocabulary))

    def __len__(self) -> int:
        return self._size

    def scores(self, query: str) -> np.ndarray:
        """Every row's BM25 score for ``query``, float32; 0 for a row with none of its words."""
        (ids,) = self._tokenizer.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)
        empty = self._vocabulary.get("")
        known = [token for token in ids if token != empty]  # a word the corpus lacks is the empty token
        if not known or not self._size:
            return np.zeros(self._size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(known), dtype=np.float32)

    def ranking(self, query: str, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` best rows that have a word of ``query`` (row numbers, int64) and their
        scores, best first, ties to the lower row."""
        scores = self.scores(query)
        matching = np.flatnonzero(scores > 0)
        return _best(matching, scores[matching], depth)


@dataclass(frozen=True)
class Fused:
    """A fused ranking: rows best first, their fused scores, and each row's 1-based rank
    in the vector and in the keyword ranking (0 where it is not in that one)."""

    rows: np.ndarray
    scores: np.ndarray
    vector_ranks: np.ndarray
    keyword_ranks: np.ndarray

    @classmethod
    def of_vectors(cls, rows: np.ndarray, scores: np.ndarray) -> Fused:
        """A vector ranking alone, as a fused one: no keyword ranks."""
        return cls(rows, scores, np.arange(1, len(rows) + 1), np.zeros(len(rows), dtype=np.int64))

    @classmethod
    def padded(cls, rankings: Sequence[Fused], width: int) -> Fused:
        """Several rankings, each padded to ``width`` (row -1, score NaN, ranks 0), end to end."""
        parts = []
        for ranking in rankings:
            missing = width - len(ranking.rows)
            parts.append(
                (
                    np.concatenate([ranking.rows, np.full(missing, -1, dtype=np.int64)]),
                    np.concatenate([ranking.scores, np.full(missing, np.nan, dtype=np.float32)]),
                    np.concatenate([ranking.vector_ranks, np.zeros(missing, dtype=np.int64)]),
                    np.concatenate([ranking.keyword_ranks, np.zeros(missing, dtype=np.int64)]),
                )
            )
        if not parts:
            return cls(
                np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
            )
        return cls(*(np.concatenate(columns) for columns in zip(*parts, strict=True)))

    def take(self, count: int) -> Fused:
        """The first ``count`` rows."""
        return Fused(
            *(part[:count] for part in (self.rows, self.scores, self.vector_ranks, self.keyword_ranks))
        )

    def rank_columns(self, vector_rank: str, keyword_rank: str) -> list[pl.Series]:
        """The two rank columns (``pl.UInt32``), null where a row is not in that ranking."""
        return [
            pl.Series(
                name, [int(rank) or None for rank in ranks], dtype=pl.UInt32
            )  # k values: a list is cheap
            for name, ranks in ((vector_rank, self.vector_ranks), (keyword_rank, self.keyword_ranks))
        ]


@dataclass(frozen=True)
class Ranking:
    """How a search ranks beyond the vectors: BM25 keywords fused in, and a reranker.

    What the front ends share; each one ranks the vectors and the keywords its own way
    and hands both to :meth:`combine`.
    """

    text: str
    keywords: bool
    fusion: Fusion
    weight: float
    reranker: Reranker | None
    rerank_top: int

    @classmethod
    def check(
        cls,
        *,
        text: str | None,
        hybrid: bool,
        fusion: Fusion,
        weight: float,
        rerank: RerankerLike | None,
        rerank_top: int,
    ) -> Ranking | None:
        """The ranking asked for, checked; ``None`` for a search by vectors only."""
        fusion = check_fusion(fusion, weight)
        rerank_top = check_k(rerank_top)
        if not hybrid and rerank is None:
            if text is not None:
                raise ConfigError("text= is for hybrid=True or rerank=: pass one of them, or leave text out")
            return None
        if text is None:
            raise ConfigError(
                f"{'hybrid=True' if hybrid else 'rerank='} needs text=, the text column the vectors "
                "were made from"
            )
        reranker = None if rerank is None else resolve_reranker(rerank)
        return cls(text, bool(hybrid), fusion, weight, reranker, rerank_top)

    @property
    def columns(self) -> list[str]:
        """The rank columns the search adds."""
        return [VECTOR_RANK, KEYWORD_RANK] if self.keywords else [VECTOR_RANK]

    def depth(self, k: int) -> int:
        """How many rows each ranking contributes, for ``k`` results."""
        return max(k, self.rerank_top if self.reranker else 0, CANDIDATES)

    def combine(
        self,
        query: str,
        vector: tuple[np.ndarray, np.ndarray],
        keyword: tuple[np.ndarray, np.ndarray] | None,
        *,
        k: int,
        higher_is_better: bool,
        texts_of: Callable[[np.ndarray], Sequence[str | None]],
    ) -> Fused:
        """The ``k`` best rows for ``query``: the two rankings fused (the vector one alone
        without keywords), then the best ``rerank_top`` reranked, their texts by ``texts_of``."""
        if keyword is None:
            ranked = Fused.of_vectors(*vector)
        else:
            ranked = fuse(
                vector, keyword, fusion=self.fusion, weight=self.weight, higher_is_better=higher_is_better
            )
        if self.reranker is not None:
            candidates = ranked.take(self.rerank_top)
            ranked = reranked(candidates, query, texts_of(candidates.rows), self.reranker)
        return ranked.take(k)

    def rank_columns(self, ranked: Fused) -> list[pl.Series]:
        """The rank columns of ``ranked``, as :attr:`columns` names them."""
        return ranked.rank_columns(VECTOR_RANK, KEYWORD_RANK)[: len(self.columns)]


def fuse(
    vector: tuple[np.ndarray, np.ndarray],
    keyword: tuple[np.ndarray, np.ndarray],
    *,
    fusion: Fusion = "rrf",
    weight: float = 0.5,
    higher_is_better: bool = True,
    rrf_k: int = RRF_K,
) -> Fused:
    """Fuse a vector ranking and a keyword ranking, each ``(rows, scores)`` best first.

    Parameters
    ----------
    vector, keyword
        The two rankings: row numbers (no repeats) and their scores, best first.
    fusion
        ``"rrf"`` or ``"weighted"``, as the module describes.
    weight
        The vector ranking's share of a weighted fusion.
    higher_is_better
        Whether a higher vector score is better (cosine, dot) or a lower one (L2).
    rrf_k
        The constant of reciprocal rank fusion.

    Returns
    -------
    Fused
        Every row of either ranking, best fused score first, ties to the lower row.

    Examples
    --------
    >>> import numpy as np
    >>> vector = (np.array([3, 1, 2]), np.array([0.9, 0.8, 0.1], dtype=np.float32))
    >>> keyword = (np.array([2]), np.array([7.5], dtype=np.float32))
    >>> fused = fuse(vector, keyword)
    >>> fused.rows.tolist(), fused.vector_ranks.tolist(), fused.keyword_ranks.tolist()
    ([2, 3, 1], [3, 1, 2], [1, 0, 0])
    """
    rows = np.unique(np.concatenate([vector[0], keyword[0]]).astype(np.int64))
    ranks = [_ranks_of(rows, ranking[0]) for ranking in (vector, keyword)]
    if fusion == "rrf":
        parts = [np.where(rank > 0, 1.0 / (rrf_k + rank), 0.0) for rank in ranks]
        scores = parts[0] + parts[1]
    elif fusion == "weighted":
        scaled = [
            _scaled(rows, vector[0], vector[1], higher_is_better),
            _scaled(rows, keyword[0], keyword[1], True),
        ]
        scores = weight * scaled[0] + (1 - weight) * scaled[1]
    else:
        raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    order, fused_scores = _best(np.arange(len(rows)), scores.astype(np.float32), len(rows))
    return Fused(rows[order], fused_scores, ranks[0][order], ranks[1][order])


def reranked(candidates: Fused, query: str, texts: Sequence[str | None], reranker: Reranker) -> Fused:
    """``candidates`` in the order of ``reranker``'s relevance of their ``texts`` to ``query``
    (best first, ties kept in the candidates' order), which becomes their score; a null text
    scores NaN and goes last. The ranks stay those before reranking."""
    relevance = rerank_scores(query, texts, reranker)
    key = np.where(np.isnan(relevance), -np.inf, relevance)
    order = np.lexsort((np.arange(len(key)), -key))
    return Fused(
        candidates.rows[order],
        relevance[order],
        candidates.vector_ranks[order],
        candidates.keyword_ranks[order],
    )


def _ranks_of(rows: np.ndarray, ranking: np.ndarray) -> np.ndarray:
    """Each of ``rows``' 1-based position in ``ranking``, 0 where it is not there."""
    ranks = np.zeros(len(rows), dtype=np.int64)
    ranks[np.searchsorted(rows, ranking)] = np.arange(1, len(ranking) + 1)
    return ranks


def _scaled(rows: np.ndarray, ranked: np.ndarray, scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """``scores`` scaled to [0, 1] (best 1, worst 0; all 1 when they are equal), 0 for the rows
    of ``rows`` not ranked."""
    values = np.asarray(scores, dtype=np.float64) if higher_is_better else -np.asarray(scores, np.float64)
    out = np.zeros(len(rows))
    if len(values):
        spread = values.max() - values.min()
        out[np.searchsorted(rows, ranked)] = (values - values.min()) / spread if spread > 0 else 1.0
    return out


def _best(rows: np.ndarray, scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``depth`` highest-scoring ``rows`` with their scores, best first, ties to the lower row
    (the rule of :func:`~polars_embed.kernels.topk`)."""
    if len(scores) > depth:  # a common word matches most rows: sort only those that can make it
        keep = scores >= np.partition(scores, len(scores) - depth)[len(scores) - depth]
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:depth]
    return rows[order].astype(np.int64), scores[order]


def _bm25s() -> Any:
    try:
        return importlib.import_module("bm25s")
    except ImportError:
        raise MissingDependencyError(
            "hybrid search ranks keywords with the 'bm25s' package, which is not installed; "
            "install it with: pip install 'polars-embed[hybrid]'"
        ) from None
