"""The cost preview and the token budget: counted as a run counts, and nothing sent before a run."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import polars_embed
from polars_embed import BudgetExceededError, ConfigError, _tokens, cache
from tests.fake_servers import FakeOpenAI
from tests.providers import CountingProvider


def bytes_over_3(text: str) -> int:
    """How OpenAI's provider estimates tokens without tiktoken (the fake server's rule here)."""
    return math.ceil(len(text.encode()) / 3)


@pytest.fixture(autouse=True)
def no_tiktoken(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Count as a machine without tiktoken does, whatever this one has."""
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    _tokens.tiktoken_encoding.cache_clear()
    yield
    _tokens.tiktoken_encoding.cache_clear()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_overrides", {})
    return tmp_path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(key=None, count_tokens=bytes_over_3) as fake:
        yield fake


def openai(server: FakeOpenAI, **options: object) -> polars_embed.Provider:
    return polars_embed.resolve_provider(
        "openai:text-embedding-3-small", base_url=f"{server.url}/v1", dimensions=8, **options
    )


CORPUS = [f"document number {i} " + "word " * (i % 7) for i in range(60)]


def test_the_estimate_is_what_the_server_then_bills(server: FakeOpenAI, cache_dir: Path) -> None:
    provider = openai(server, batch_size=16)
    polars_embed.embed(CORPUS[:10], provider)  # already paid for: in the cache
    server.requests.clear()
    texts = [*CORPUS, *CORPUS[:20], None, "   "]

    preview = polars_embed.estimate(texts, provider, price_per_million_tokens=0.02)

    assert server.requests == []  # a preview sends nothing
    assert (preview.rows, preview.skipped, preview.distinct, preview.cached) == (82, 2, 60, 10)
    assert preview.to_embed == 50 and preview.requests == 4  # 50 texts, 16 a request
    polars_embed.embed(texts, provider)
    assert len(server.texts) == preview.to_embed
    assert len(server.requests) == preview.requests
    assert preview.tokens == server.billed_tokens == polars_embed.last_stats().tokens
    assert preview.cost == pytest.approx(preview.tokens * 0.02 / 1e6)
    assert preview.token_counter == "UTF-8 bytes / 3, tiktoken not loaded"
    assert f"{preview.tokens} tokens" in str(preview)


def test_a_lazy_frame_is_estimated_from_its_text_column(server: FakeOpenAI) -> None:
    frame = pl.LazyFrame({"id": range(4), "body": ["a b", None, "a b", "c"]})
    preview = frame.embed.estimate("body", openai(server))
    assert (preview.rows, preview.skipped, preview.distinct, preview.requests) == (4, 1, 2, 1)
    assert preview.tokens == bytes_over_3("a b") + bytes_over_3("c")
    assert polars_embed.estimate(frame, openai(server)).distinct == 2  # the one String column
    assert server.requests == []


def test_a_provider_that_does_not_count_gets_an_approximation_that_says_so() -> None:
    preview = polars_embed.estimate(["abcdef", "ab"], CountingProvider())
    assert preview.tokens == 3
    assert preview.token_counter.startswith("approximated by UTF-8 bytes / 3")
    assert "counting does not count tokens" in preview.token_counter


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ConfigError, match="which column holds the texts"):
        polars_embed.estimate(pl.DataFrame({"a": ["x"], "b": ["y"]}), "hashing")
    with pytest.raises(ConfigError, match="no column 'c'"):
        polars_embed.estimate(pl.DataFrame({"a": ["x"]}), "hashing", column="c")
    with pytest.raises(ConfigError, match="price_per_million_tokens must be 0 or more"):
        polars_embed.estimate(["x"], "hashing", price_per_million_tokens=-1)
    with pytest.raises(ConfigError, match="max_tokens must be a whole number"):
        polars_embed.embed(["x"], "hashing", max_tokens=-5)


def test_max_tokens_refuses_a_run_over_budget_before_any_request(server: FakeOpenAI) -> None:
    needed = sum(map(bytes_over_3, CORPUS))
    with pytest.raises(BudgetExceededError, match=f"would cost about {needed} tokens .* nothing was sent"):
        polars_embed.embed(CORPUS, openai(server), max_tokens=needed - 1)
    assert server.requests == []
    polars_embed.embed(CORPUS, openai(server), max_tokens=needed)
    assert server.billed_tokens == needed


def test_max_tokens_stops_a_run_whose_counted_usage_would_pass_it(cache_dir: Path) -> None:
    # The provider bills a token per word; the estimate counts 3 bytes a token, fewer for
    # these texts, so the run starts within budget and the counted usage then runs out.
    texts = [f"w{i} x y z" for i in range(40)]  # 9 bytes (3 estimated), 4 words (4 billed)
    provider = CountingProvider(batch_size=10)
    with pytest.raises(BudgetExceededError, match=r"stopped after 30 of 40 .* cache: a rerun resumes"):
        polars_embed.embed(texts, provider, max_tokens=125)
    assert len(provider.recorder.batches) == 3  # 120 billed; a fourth request would pass 125
    rerun = CountingProvider(batch_size=10)
    polars_embed.embed(texts, rerun, max_tokens=40)
    assert sorted(rerun.recorder.texts) == sorted(set(texts) - set(provider.recorder.texts))


def test_a_budget_error_survives_a_polars_expression(server: FakeOpenAI) -> None:
    frame = pl.DataFrame({"text": CORPUS})
    with pytest.raises(BudgetExceededError, match="over max_tokens=5"):
        frame.with_columns(vec=pl.col("text").embed.with_provider(openai(server), max_tokens=5))
    assert server.requests == []


def test_a_streaming_collect_draws_every_morsel_from_one_budget() -> None:
    # 3,000 rows come in several morsels, and a budget that covers only half of them
    # must stop the column, not each morsel alone.
    texts = [f"t{i:04d} x y" for i in range(3_000)]  # 9 bytes, 3 words: 3 tokens estimated and billed
    provider = CountingProvider(batch_size=100)
    lazy = pl.LazyFrame({"text": texts}).with_columns(
        vec=pl.col("text").embed.with_provider(provider, max_tokens=4_500)
    )
    with pytest.raises(BudgetExceededError, match="max_tokens=4500"):
        lazy.collect(engine="streaming")
    assert len(provider.recorder.texts) <= 1_500
    whole = CountingProvider(batch_size=100)
    frame = pl.LazyFrame({"text": texts}).with_columns(
        vec=pl.col("text").embed.with_provider(whole, max_tokens=9_000)
    )
    assert frame.collect(engine="streaming")["vec"].null_count() == 0
