"""Rerankers: the registry's ``rerankers`` hook, Cohere's rerank API through the real SDK against a
fake service, and a local cross-encoder that the tests build themselves."""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import polars_embed
from polars_embed import (
    AuthenticationError,
    DuplicateProviderError,
    InputTypeError,
    InvalidInputError,
    ProviderError,
    Registry,
    Reranker,
    RetryableProviderError,
    UnknownProviderError,
    hookimpl,
)
from polars_embed.engine import rerank_scores
from tests.fake_servers import FakeCohereRerank, Plan

KEY = "test-key"
SECRET = "sk-secret-0123456789"
DOCUMENTS = ["the login failed", None, "error E1234 on login", "  ", "refund not received", "login error"]


@pytest.fixture(autouse=True)
def no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CO_API_KEY", "COHERE_API_KEY", "CO_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeCohereRerank]:
    pytest.importorskip("cohere")
    with FakeCohereRerank(key=KEY) as fake:
        yield fake


def cohere(server: FakeCohereRerank, **options: object) -> Reranker:
    settings = {"model": "rerank-v3.5", "base_url": server.url, "api_key": KEY, **options}
    return polars_embed.resolve_reranker("cohere", **settings)


def expected(query: str, documents: list[str | None]) -> list[float]:
    return [
        FakeCohereRerank.relevance(query, text) if text and text.strip() else float("nan")
        for text in documents
    ]


@dataclass(frozen=True, kw_only=True, repr=False)
class WordCountReranker(Reranker):
    """Scores a document by how many words of the query it has: a third party's reranker."""

    name: ClassVar[str] = "word-count"
    model: str = "v1"

    def score_batch(self, query: str, documents: list[str]) -> np.ndarray:
        asked = set(query.split())
        return np.array([len(asked & set(document.split())) for document in documents], dtype=np.float32)


class WordCountPlugin:
    @hookimpl
    def polars_embed_rerankers(self) -> list[type[Reranker]]:
        return [WordCountReranker]


class TestRegistry:
    def test_the_built_in_rerankers(self) -> None:
        assert {"cohere", "sentence-transformers"} <= set(polars_embed.list_rerankers())
        assert polars_embed.resolve_reranker("cohere").label == "cohere:rerank-v3.5"
        assert polars_embed.resolve_reranker("sentence-transformers").model == (
            "cross-encoder/ms-marco-MiniLM-L6-v2"
        )

    def test_a_reranker_named_by_a_string_is_built_once_and_reused(self) -> None:
        first = polars_embed.resolve_reranker("cohere", max_retries=2)
        assert polars_embed.resolve_reranker("cohere", max_retries=2) is first  # its SDK client too
        assert polars_embed.resolve_reranker("cohere", max_retries=3) is not first

    def test_a_plugin_adds_a_reranker_in_a_namespace_of_its_own(self) -> None:
        registry = Registry(entry_points=False)
        registry.register_plugin(WordCountPlugin(), origin="tests")
        assert "word-count" in registry.reranker_names()
        assert "word-count" not in registry.names()
        reranker = registry.create_reranker("word-count:v2")
        assert reranker.model == "v2"
        with pytest.raises(UnknownProviderError, match="no embedding provider named 'word-count'"):
            registry.get("word-count")

    def test_a_taken_name_is_refused(self) -> None:
        registry = Registry(entry_points=False)
        registry.register_reranker(WordCountReranker)
        with pytest.raises(DuplicateProviderError, match="reranker name 'word-count' is registered twice"):
            registry.register_plugin(WordCountPlugin(), origin="tests")
        # nothing of the refused plugin stays registered
        assert registry.get_reranker("word-count").origin == "user"

    def test_an_unknown_reranker_lists_the_installed_ones(self) -> None:
        with pytest.raises(UnknownProviderError, match=r"no reranker named 'cohre'.*Did you mean 'cohere'"):
            polars_embed.resolve_reranker("cohre")

    def test_rerankers_and_providers_are_not_interchangeable(self) -> None:
        with pytest.raises(InputTypeError, match="is a reranker"):
            polars_embed.resolve_provider(WordCountReranker())
        with pytest.raises(InputTypeError, match=r"not a polars_embed\.Provider subclass"):
            Registry(entry_points=False).register(WordCountReranker)
        with pytest.raises(InputTypeError, match="rerank= takes"):
            polars_embed.resolve_reranker(polars_embed.resolve_provider("hashing"))  # type: ignore[arg-type]


class TestEngine:
    def test_nulls_and_blanks_are_never_sent_and_score_nan(self) -> None:
        scores = rerank_scores("login error", DOCUMENTS, WordCountReranker())
        assert scores.dtype == np.float32
        np.testing.assert_array_equal(scores, [1, np.nan, 2, np.nan, 0, 2])

    def test_batches_of_batch_size_and_one_stats_record(self) -> None:
        scores = rerank_scores("login error", DOCUMENTS, WordCountReranker(batch_size=2))
        np.testing.assert_array_equal(scores, [1, np.nan, 2, np.nan, 0, 2])
        stats = polars_embed.last_stats()
        assert (stats.provider, stats.rows, stats.skipped, stats.embedded, stats.requests) == (
            "word-count:v1",
            6,
            2,
            4,
            2,
        )

    def test_a_blank_query_is_refused(self) -> None:
        with pytest.raises(InvalidInputError, match="non-blank text query"):
            rerank_scores(" ", ["a"], WordCountReranker())


class TestCohere:
    def test_the_request_and_the_scores(self, server: FakeCohereRerank) -> None:
        scores = rerank_scores("login error", DOCUMENTS, cohere(server, max_tokens_per_doc=512))
        np.testing.assert_allclose(scores, expected("login error", DOCUMENTS), rtol=1e-6)
        (request,) = server.requests
        assert request.path == "/v2/rerank"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.body == {
            "model": "rerank-v3.5",
            "query": "login error",
            "documents": ["error E1234 on login", "refund not received", "the login failed", "login error"],
            "top_n": 4,
            "max_tokens_per_doc": 512,
        }
        assert polars_embed.last_stats().tokens == 1  # search units billed

    def test_batches_of_batch_size_compare_across_requests(self, server: FakeCohereRerank) -> None:
        documents = [f"document {i} about login" for i in range(7)]
        scores = rerank_scores("login", documents, cohere(server, batch_size=3))
        np.testing.assert_allclose(scores, expected("login", documents), rtol=1e-6)
        assert sorted(len(request.texts) for request in server.requests) == [1, 3, 3]

    def test_a_rate_limit_is_retried_after_the_wait_the_server_asks_for(
        self, server: FakeCohereRerank
    ) -> None:
        server.then(Plan(status=429, headers={"Retry-After": "1"}))
        scores = rerank_scores("login", ["login", "refund"], cohere(server))
        np.testing.assert_allclose(scores, expected("login", ["login", "refund"]), rtol=1e-6)
        first, second = server.requests
        assert second.started - first.started >= 1.0  # the engine's own backoff is 1 ms in tests
        assert polars_embed.last_stats().retries == 1

    def test_retries_give_up_after_max_retries(self, server: FakeCohereRerank) -> None:
        server.then(Plan(status=503), times=3)
        with pytest.raises(RetryableProviderError, match="HTTP 503"):
            rerank_scores("login", ["login"], cohere(server, max_retries=2))
        assert len(server.requests) == 3

    def test_a_client_error_fails_at_once_with_the_services_words(self, server: FakeCohereRerank) -> None:
        with pytest.raises(ProviderError, match=r"HTTP 400 .*model 'rerank-nope' not found"):
            rerank_scores("login", ["login"], cohere(server, model="rerank-nope"))
        assert len(server.requests) == 1

    def test_an_answer_missing_a_document_is_an_error(self, server: FakeCohereRerank) -> None:
        server.then(Plan(mangle="count"))
        with pytest.raises(ProviderError, match="expected one finite number per document"):
            rerank_scores("login", ["login", "refund"], cohere(server))

    def test_the_key_never_shows_in_errors_logs_repr_or_pickles(
        self, server: FakeCohereRerank, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        monkeypatch.setenv("CO_API_KEY", SECRET)
        reranker = polars_embed.resolve_reranker("cohere", base_url=server.url)
        server.then(Plan(status=429, headers={"retry-after-ms": "1"}))
        # The fake service quotes the key it refuses, as a careless service might.
        with pytest.raises(AuthenticationError, match="set CO_API_KEY or COHERE_API_KEY") as raised:
            rerank_scores("login", ["login"], reranker)
        assert server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
        shown = "".join(traceback.format_exception(raised.value))
        assert "invalid api token ***" in shown
        for where in (shown, caplog.text, repr(reranker), str(pickle.dumps(reranker))):
            assert SECRET not in where
        referenced = polars_embed.resolve_reranker("cohere", api_key="$env:CO_API_KEY")
        assert pickle.loads(pickle.dumps(referenced)).api_key == "$env:CO_API_KEY"


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT cross-encoder, made here: no download."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("sentence_transformers")
    folder = tmp_path_factory.mktemp("cross-encoder")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat"]
    words += ["error", "e1234", "login", "failed", "refund", "not", "received"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=1,
        initializer_range=0.3,  # scores far enough apart to tell
    )
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class TestCrossEncoder:
    def test_scores_are_the_models_relevance_for_each_pair(self, cross_encoder_dir: Path) -> None:
        import torch
        import transformers

        documents = ["a cat sat on the mat", "error e1234", None, "login failed", "refund not received"]
        reranker = polars_embed.resolve_reranker(
            "sentence-transformers", model=str(cross_encoder_dir), device="cpu", batch_size=2
        )
        scores = rerank_scores("cat on a mat", documents, reranker)
        model = transformers.BertForSequenceClassification.from_pretrained(cross_encoder_dir).eval()
        tokenizer = transformers.BertTokenizerFast.from_pretrained(cross_encoder_dir)
        sent = [text for text in documents if text]
        with torch.no_grad():
            encoded = tokenizer(["cat on a mat"] * len(sent), sent, padding=True, return_tensors="pt")
            reference = torch.sigmoid(model(**encoded).logits).ravel().numpy()
        assert np.isnan(scores[2])
        np.testing.assert_allclose(np.delete(scores, 2), reference, atol=1e-5)
        assert np.ptp(reference) > 1e-3  # scores the test can tell apart
        assert polars_embed.last_stats().requests == 2  # batch_size=2, four documents

    def test_a_model_that_is_not_here_is_a_clear_error(self, tmp_path: Path) -> None:
        pytest.importorskip("sentence_transformers")
        reranker = polars_embed.resolve_reranker("sentence-transformers", model=str(tmp_path / "missing"))
        with pytest.raises(polars_embed.ConfigError, match="could not be loaded"):
            rerank_scores("cat", ["a cat"], reranker)
