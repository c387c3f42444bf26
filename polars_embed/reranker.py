"""The reranker base class: scores how well each of some documents answers a query.

A search ranks by vectors (and keywords, with ``hybrid=True``); a reranker then
reads the query and each of the best candidates together, which is slower and
more exact, and the candidates are put in its order. Rerankers come from the
registry like providers (``"cohere:rerank-v3.5"``,
``"sentence-transformers:cross-encoder/ms-marco-MiniLM-L6-v2"``) and are
configured like them: options with roles and bounds, ``$env:`` references,
secrets masked in reprs and errors. The engine batches, retries and counts
their requests (:func:`polars_embed.engine.rerank_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from polars_embed.errors import InputTypeError
from polars_embed.provider import Kind, Provider

__all__ = ["Reranker", "Scored"]


@dataclass(frozen=True)
class Scored:
    """What a reranker may return instead of a bare array, to report usage.

    Attributes
    ----------
    scores
        One relevance score per document, in the order the documents were given;
        higher is more relevant.
    units
        What the service billed for this batch (Cohere's ``search_units``).
    """

    scores: Any
    units: int = 0


@dataclass(frozen=True, kw_only=True, repr=False)
class Reranker(Provider):
    """Base class of every reranker.

    A reranker shares the providers' configuration machinery (it is built,
    checked, pickled and shown as a provider is) but embeds nothing: a subclass
    sets ``name`` and implements :meth:`score_batch`. Scores from different
    batches of one query must be comparable (a service's absolute relevance, a
    cross-encoder's logit), since the engine splits many documents into batches.
    It must be safe to use from several threads at once.
    """

    cacheable: ClassVar[bool] = False

    def score_batch(self, query: str, documents: list[str]) -> np.ndarray | Scored:
        """One relevance score per document of ``documents`` for ``query``."""
        raise NotImplementedError

    @property
    def dimension(self) -> int:
        raise self._not_a_provider()

    def embed_batch(self, texts: list[str], *, kind: Kind) -> np.ndarray:
        raise self._not_a_provider()

    def _not_a_provider(self) -> InputTypeError:
        return InputTypeError(
            f"{self.label} is a reranker: it scores documents and makes no vectors; "
            "pass it as rerank=, and an embedding provider as provider="
        )
