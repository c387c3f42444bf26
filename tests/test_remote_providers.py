"""The Cohere and OpenAI providers, through the real SDKs, against fake services on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
import traceback
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import polars_embed
from polars_embed import (
    AuthenticationError,
    ConfigError,
    EmbeddingIncompleteError,
    InputRefusedError,
    InvalidEmbeddingError,
    Provider,
    ProviderError,
    RetryableProviderError,
    _tokens,
)
from polars_embed.engine import REFUSAL_PROBE
from polars_embed.providers import openai as openai_provider
from polars_embed.providers._remote import retry_after_seconds, service_message
from tests.fake_servers import FakeCohere, FakeOpenAI, FakeServer, Plan
from tests.providers import vector_for

pytest.importorskip("cohere")
pytest.importorskip("openai")

KEY = "test-key"
SECRET = "sk-secret-0123456789"  # a key that must never be shown
SDK_VARIABLES = ("CO_API_KEY", "COHERE_API_KEY", "CO_API_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")


@pytest.fixture(autouse=True)
def no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Service:
    """A fake service, and how a test builds a provider for it and predicts its vectors."""

    name: str
    server: FakeServer
    base_url: str
    key_variable: str
    width: int
    options: dict[str, Any] = field(default_factory=dict)

    def provider(self, **options: Any) -> Provider:
        settings = {"base_url": self.base_url, "api_key": KEY, **self.options, **options}
        return polars_embed.resolve_provider(self.name, **settings)

    def expected(self, texts: list[str | None], kind: str = "document") -> list[list[float] | None]:
        salt = f"search_{kind}:" if self.name == "cohere" else ""
        return [
            vector_for(salt + text, self.width).tolist() if text and text.strip() else None for text in texts
        ]


def cohere_service(server: FakeCohere) -> Service:
    return Service("cohere", server, server.url, "CO_API_KEY", 384, {"model": "embed-english-light-v3.0"})


def openai_service(server: FakeOpenAI) -> Service:
    options = {"model": "text-embedding-3-small", "dimensions": 16}
    return Service("openai", server, f"{server.url}/v1", "OPENAI_API_KEY", 16, options)


@pytest.fixture(params=["cohere", "openai"])
def service(request: pytest.FixtureRequest) -> Iterator[Service]:
    if request.param == "cohere":
        with FakeCohere() as server:
            yield cohere_service(server)
    else:
        with FakeOpenAI() as server:
            yield openai_service(server)


def failure(raised: pytest.ExceptionInfo[EmbeddingIncompleteError]) -> BaseException:
    """The provider's own error behind an incomplete call."""
    assert raised.value.__cause__ is not None
    return raised.value.__cause__


class TestEveryRemoteProvider:
    def test_vectors_stay_aligned_through_nulls_duplicates_batches_and_concurrency(
        self, service: Service
    ) -> None:
        texts = [None if i % 17 == 0 else "  " if i % 13 == 0 else f"text {i % 90}" for i in range(300)]
        vectors = polars_embed.embed(texts, service.provider(batch_size=20, max_concurrency=3))
        assert vectors.to_list() == service.expected(texts)
        sent = service.server.texts
        assert sorted(sent) == sorted({text for text in texts if text and text.strip()})
        assert all(len(request.texts) <= 20 for request in service.server.requests)

    def test_several_requests_in_flight_but_never_more_than_max_concurrency(self, service: Service) -> None:
        service.server.delay = 0.05
        texts = [f"text {i}" for i in range(40)]
        vectors = polars_embed.embed(texts, service.provider(batch_size=4, max_concurrency=3))
        assert vectors.to_list() == service.expected(texts)
        assert 1 < service.server.most_in_flight <= 3

    def test_the_billed_tokens_reach_the_stats(self, service: Service) -> None:
        polars_embed.embed(["one two three", "four five", None], service.provider())
        stats = polars_embed.last_stats()
        assert (stats.tokens, stats.requests, stats.embedded) == (5, 1, 2)

    def test_aembed(self, service: Service) -> None:
        texts = ["a", None, "b"]
        vectors = asyncio.run(polars_embed.aembed(texts, service.provider(), kind="query"))
        assert vectors.to_list() == service.expected(texts, kind="query")

    @pytest.mark.parametrize(
        ("header", "value", "wait"), [("retry-after-ms", "250", 0.25), ("Retry-After", "1", 1.0)]
    )
    def test_a_rate_limit_is_retried_after_the_wait_the_server_asks_for(
        self, service: Service, header: str, value: str, wait: float
    ) -> None:
        service.server.then(Plan(status=429, headers={header: value}))
        vectors = polars_embed.embed(["a", "b"], service.provider())
        assert vectors.to_list() == service.expected(["a", "b"])
        first, second = service.server.requests
        assert second.started - first.started >= wait  # the engine's own backoff is 1 ms here
        assert polars_embed.last_stats().retries == 1

    @pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
    def test_retryable_statuses_are_retried(self, service: Service, status: int) -> None:
        service.server.then(Plan(status=status), times=2)
        vectors = polars_embed.embed(["a"], service.provider())
        assert vectors.to_list() == service.expected(["a"])
        assert len(service.server.requests) == 3

    def test_the_sdk_does_not_retry_on_its_own(self, service: Service) -> None:
        service.server.then(Plan(status=503))
        with pytest.raises(EmbeddingIncompleteError) as raised:
            polars_embed.embed(["a"], service.provider(max_retries=0))
        assert isinstance(failure(raised), RetryableProviderError)
        assert len(service.server.requests) == 1

    @pytest.mark.parametrize("status", [400, 404, 413, 422])
    def test_other_client_errors_fail_at_once_with_the_services_words(
        self, service: Service, status: int
    ) -> None:
        service.server.then(Plan(status=status))
        with pytest.raises(
            EmbeddingIncompleteError, match=f"HTTP {status} .*scripted failure {status}"
        ) as raised:
            polars_embed.embed(["a"], service.provider())
        # 400, 413 and 422 refuse what was sent, which on_error="null" can narrow down
        expected = ProviderError if status == 404 else InputRefusedError
        assert type(failure(raised)) is expected
        assert len(service.server.requests) == 1

    def test_a_refused_key_fails_at_once_and_names_the_variable_to_set(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(service.key_variable, "not-the-key")
        with pytest.raises(
            EmbeddingIncompleteError, match=f"HTTP 401 .*set {service.key_variable}"
        ) as raised:
            polars_embed.embed(["a"], service.provider(api_key=None))
        assert isinstance(failure(raised), AuthenticationError)
        assert len(service.server.requests) == 1

    def test_a_refused_key_from_a_reference_names_that_variable(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TEAM_EMBEDDING_KEY", "not-the-key")
        with pytest.raises(EmbeddingIncompleteError, match="set the environment variable TEAM_EMBEDDING_KEY"):
            polars_embed.embed(["a"], service.provider(api_key="$env:TEAM_EMBEDDING_KEY"))

    @pytest.mark.parametrize("configured", ["environment", "reference", "value"])
    def test_the_key_never_shows_in_errors_logs_repr_or_spec(
        self,
        service: Service,
        configured: str,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        monkeypatch.setenv(service.key_variable, SECRET)
        monkeypatch.setenv("TEAM_EMBEDDING_KEY", SECRET)
        api_key = {"environment": None, "reference": "$env:TEAM_EMBEDDING_KEY", "value": SECRET}[configured]
        provider = service.provider(api_key=api_key)
        service.server.then(Plan(status=429, headers={"retry-after-ms": "1"}))
        # The fake service quotes the key it refuses, as a careless service might.
        with pytest.raises(EmbeddingIncompleteError) as raised:
            polars_embed.embed(["a"], provider)
        assert isinstance(failure(raised), AuthenticationError)
        assert service.server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
        shown = "".join(traceback.format_exception(raised.value))
        assert "invalid api token ***" in shown
        for where in (shown, caplog.text, repr(provider), str(provider.spec())):
            assert SECRET not in where

    def test_a_request_that_times_out_is_retried_then_reported_with_how_far_it_got(
        self, service: Service
    ) -> None:
        service.server.then(Plan(), Plan(hang=5), Plan(hang=5))
        provider = service.provider(timeout=0.2, max_retries=1, batch_size=2, max_concurrency=1)
        started = time.monotonic()
        with pytest.raises(EmbeddingIncompleteError, match="after 2 of 4 distinct texts") as raised:
            polars_embed.embed(["a", "b", "c", "d"], provider)
        assert time.monotonic() - started < 2
        assert (raised.value.done, raised.value.total) == (2, 4)
        assert isinstance(failure(raised), RetryableProviderError)
        assert "no answer from" in str(failure(raised)) and "within 0.2 s" in str(failure(raised))
        assert len(service.server.requests) == 3

    @pytest.mark.parametrize("gap", [0.45, 0.05])
    def test_timeout_is_a_deadline_for_the_whole_answer_not_for_each_read(
        self, service: Service, gap: float
    ) -> None:
        # Eight pieces 0.45 s apart: each read comes well within timeout=1, the whole answer
        # does not, so the request times out and is retried. 0.05 s apart, it is in time.
        service.server.then(Plan(dribble=gap))
        texts = ["a", "b"]
        vectors = polars_embed.embed(texts, service.provider(timeout=1.0, max_retries=1))
        assert vectors.to_list() == service.expected(texts)
        retried = 1 if gap == 0.45 else 0
        assert len(service.server.requests) == 1 + retried
        assert polars_embed.last_stats().retries == retried

    def test_an_answer_dribbled_past_every_retry_is_reported_as_a_timeout(self, service: Service) -> None:
        service.server.then(Plan(dribble=0.2, pieces=4), times=2)
        with pytest.raises(EmbeddingIncompleteError, match="no answer from") as raised:
            polars_embed.embed(["a"], service.provider(timeout=0.3, max_retries=1))
        assert isinstance(failure(raised), RetryableProviderError)
        assert len(service.server.requests) == 2

    def test_requests_go_through_the_proxy_the_environment_names(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", service.server.url)  # the fake service acts as the proxy
        nowhere = "http://embeddings.invalid" + ("/v1" if service.name == "openai" else "")
        vectors = polars_embed.embed(["a"], service.provider(base_url=nowhere))
        assert vectors.to_list() == service.expected(["a"])
        monkeypatch.setenv("NO_PROXY", "embeddings.invalid")
        with pytest.raises(EmbeddingIncompleteError, match="could not reach"):
            polars_embed.embed(["b"], service.provider(base_url=nowhere, max_retries=0))
        assert service.server.texts == ["a"]

    def test_an_unreachable_server_is_retried_then_reported(self, service: Service) -> None:
        with socket.socket() as probe:  # a port with nothing listening on it
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        provider = service.provider(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
        with pytest.raises(EmbeddingIncompleteError, match=r"could not reach http://127\.0\.0\.1") as raised:
            polars_embed.embed(["a"], provider)
        assert isinstance(failure(raised), RetryableProviderError)

    @pytest.mark.parametrize(
        "body", [b"this is not JSON", b'{"id": "only an id"}', b'{"embeddings": 3, "data": 3}', b"[]"]
    )
    def test_a_malformed_answer_is_a_clear_provider_error(self, service: Service, body: bytes) -> None:
        service.server.then(Plan(raw=body))
        with pytest.raises(
            EmbeddingIncompleteError, match="the answer is not what the API documents"
        ) as raised:
            polars_embed.embed(["a"], service.provider())
        assert type(failure(raised)) is ProviderError
        assert len(service.server.requests) == 1

    @pytest.mark.parametrize(("mangle", "message"), [("count", r"shape \(1, "), ("width", "width")])
    def test_the_wrong_number_or_width_of_vectors_is_caught(
        self, service: Service, mangle: str, message: str
    ) -> None:
        service.server.then(Plan(mangle=mangle))
        with pytest.raises(EmbeddingIncompleteError, match=message) as raised:
            polars_embed.embed(["a", "b"], service.provider())
        assert isinstance(failure(raised), InvalidEmbeddingError)

    def test_options_are_typed_and_only_identity_is_in_the_spec(self, service: Service) -> None:
        provider = service.provider(api_key="$env:TEAM_EMBEDDING_KEY", timeout=5)
        for runtime in ("api_key", "base_url", "timeout", "max_concurrency"):
            assert runtime not in provider.spec()
        assert provider.spec()["model"] == service.options["model"]
        assert provider.max_concurrency == 4
        with pytest.raises(ConfigError, match="timeout"):
            service.provider(timeout="soon")


@pytest.fixture
def cohere_server() -> Iterator[FakeCohere]:
    with FakeCohere() as server:
        yield server


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


class TestCohere:
    def test_never_more_than_96_texts_a_request(self, cohere_server: FakeCohere) -> None:
        service = cohere_service(cohere_server)
        texts = [f"text {i}" for i in range(250)]
        vectors = polars_embed.embed(texts, service.provider(batch_size=1000))
        assert vectors.to_list() == service.expected(texts)
        assert sorted(len(request.texts) for request in cohere_server.requests) == [58, 96, 96]

    @pytest.mark.parametrize(
        ("kind", "input_type"), [("document", "search_document"), ("query", "search_query")]
    )
    def test_the_request(self, cohere_server: FakeCohere, kind: str, input_type: str) -> None:
        service = cohere_service(cohere_server)
        vectors = polars_embed.embed(["a"], service.provider(truncate="start"), kind=kind)
        assert vectors.to_list() == service.expected(["a"], kind=kind)
        (request,) = cohere_server.requests
        assert request.path == "/v2/embed"
        assert request.body == {
            "texts": ["a"],
            "model": "embed-english-light-v3.0",
            "input_type": input_type,
            "embedding_types": ["float"],
            "truncate": "START",
        }

    @pytest.mark.parametrize(
        ("model", "width"),
        [
            ("embed-english-v3.0", 1024),
            ("embed-english-light-v3.0", 384),
            ("embed-multilingual-v3.0", 1024),
            ("embed-multilingual-light-v3.0", 384),
            ("embed-v4.0", 1536),
        ],
    )
    def test_widths_are_known_without_a_request(self, model: str, width: int) -> None:
        provider = polars_embed.resolve_provider(f"cohere:{model}")
        assert provider.dimension == width

    def test_the_default_model(self) -> None:
        assert polars_embed.resolve_provider("cohere").label == "cohere:embed-english-v3.0"

    def test_embed_v4_output_dimension(self, cohere_server: FakeCohere) -> None:
        provider = cohere_service(cohere_server).provider(model="embed-v4.0", output_dimension=256)
        assert provider.dimension == 256
        vectors = polars_embed.embed(["a"], provider)
        assert vectors.to_list() == [vector_for("search_document:a", 256).tolist()]
        assert cohere_server.requests[0].body["output_dimension"] == 256

    @pytest.mark.parametrize(
        ("model", "message"),
        [
            ("embed-v4.0", r"one of \(256, 512, 1024, 1536\), not 300"),
            ("embed-english-v3.0", "only embed-v4.0"),
        ],
    )
    def test_a_wrong_output_dimension_is_refused_before_any_request(
        self, cohere_server: FakeCohere, model: str, message: str
    ) -> None:
        provider = cohere_service(cohere_server).provider(model=model, output_dimension=300)
        with pytest.raises(ConfigError, match=message):
            polars_embed.embed(["a"], provider)
        assert cohere_server.requests == []

    def test_another_model_needs_dims(self, cohere_server: FakeCohere) -> None:
        cohere_server.models["embed-custom"] = 8
        service = cohere_service(cohere_server)
        with pytest.raises(ConfigError, match="pass dims="):
            polars_embed.embed(["a"], service.provider(model="embed-custom"))
        assert cohere_server.requests == []
        vectors = polars_embed.embed(["a"], service.provider(model="embed-custom", dims=8))
        assert vectors.to_list() == [vector_for("search_document:a", 8).tolist()]

    def test_a_wrong_truncate_is_refused_before_any_request(self, cohere_server: FakeCohere) -> None:
        with pytest.raises(ConfigError, match="truncate must be one of"):
            polars_embed.embed(["a"], cohere_service(cohere_server).provider(truncate="middle"))
        assert cohere_server.requests == []

    @pytest.mark.parametrize(
        ("environment", "sent"),
        [({"CO_API_KEY": KEY, "COHERE_API_KEY": "other"}, KEY), ({"COHERE_API_KEY": KEY}, KEY)],
    )
    def test_the_key_comes_from_co_api_key_else_cohere_api_key(
        self, cohere_server: FakeCohere, monkeypatch: pytest.MonkeyPatch, environment: dict, sent: str
    ) -> None:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        polars_embed.embed(["a"], cohere_service(cohere_server).provider(api_key=None))
        assert cohere_server.requests[0].headers["authorization"] == f"Bearer {sent}"

    def test_no_key_is_a_clear_error_before_any_request(self, cohere_server: FakeCohere) -> None:
        with pytest.raises(ConfigError, match="needs an API key: set CO_API_KEY or COHERE_API_KEY"):
            polars_embed.embed(["a"], cohere_service(cohere_server).provider(api_key=None))
        assert cohere_server.requests == []

    def test_an_unset_key_reference_is_named_before_any_request(self, cohere_server: FakeCohere) -> None:
        provider = cohere_service(cohere_server).provider(api_key="$env:TEAM_EMBEDDING_KEY")
        with pytest.raises(ConfigError, match="'TEAM_EMBEDDING_KEY' is not set"):
            polars_embed.embed(["a"], provider)
        assert cohere_server.requests == []


class TestOpenAI:
    def test_the_request_asks_for_base64_and_the_vectors_decode(self, openai_server: FakeOpenAI) -> None:
        service = openai_service(openai_server)
        vectors = polars_embed.embed(["a", "b"], service.provider(dimensions=None), kind="query")
        assert vectors.to_list() == [vector_for(text, 1536).tolist() for text in ["a", "b"]]
        (request,) = openai_server.requests
        assert request.path == "/v1/embeddings"
        assert request.body == {
            "model": "text-embedding-3-small",
            "input": ["a", "b"],
            "encoding_format": "base64",
        }

    @pytest.mark.parametrize(
        ("model", "width"),
        [
            ("text-embedding-3-small", 1536),
            ("text-embedding-3-large", 3072),
            ("text-embedding-ada-002", 1536),
        ],
    )
    def test_widths_are_known_without_a_request(self, model: str, width: int) -> None:
        provider = polars_embed.resolve_provider(f"openai:{model}")
        assert provider.dimension == width

    def test_dimensions_shorten_the_vectors(self, openai_server: FakeOpenAI) -> None:
        provider = openai_service(openai_server).provider(model="text-embedding-3-large", dimensions=256)
        assert provider.dimension == 256
        polars_embed.embed(["a"], provider)
        assert openai_server.requests[0].body["dimensions"] == 256

    @pytest.mark.parametrize(
        ("model", "dimensions", "message"),
        [
            ("text-embedding-ada-002", 256, "does not take dimensions"),
            ("text-embedding-3-small", 2000, "from 1 to the model's width, not 2000"),
            ("text-embedding-3-large", 0, "from 1 to 65536, got 0"),
            ("my-server-model", 0, "from 1 to 65536, got 0"),
        ],
    )
    def test_impossible_dimensions_are_refused_before_any_request(
        self, openai_server: FakeOpenAI, model: str, dimensions: int, message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            polars_embed.embed(
                ["a"], openai_service(openai_server).provider(model=model, dimensions=dimensions)
            )
        assert openai_server.requests == []

    def test_never_more_than_2048_texts_a_request(self, openai_server: FakeOpenAI) -> None:
        service = openai_service(openai_server)
        texts = [f"t{i}" for i in range(5000)]
        vectors = polars_embed.embed(texts, service.provider(dimensions=2, batch_size=10_000))
        assert vectors.to_list() == [vector_for(text, 2).tolist() for text in texts]
        assert sorted(len(request.texts) for request in openai_server.requests) == [904, 2048, 2048]

    def test_requests_stay_under_the_token_budget(self, openai_server: FakeOpenAI) -> None:
        texts = [f"{i:05d}" + "x" * 23_995 for i in range(80)]  # 8,000 estimated tokens each
        polars_embed.embed(texts, openai_service(openai_server).provider())
        requests = openai_server.requests
        assert len(requests) == 3
        assert all(sum(len(text) for text in request.texts) / 3 <= 300_000 for request in requests)
        assert sorted(openai_server.texts) == texts

    def test_a_text_over_the_token_limit_is_refused_before_any_request(
        self, openai_server: FakeOpenAI
    ) -> None:
        with pytest.raises(ConfigError, match=r"1 texts are over .* limit of 8191 tokens"):
            polars_embed.embed(["short", "y" * 30_000], openai_service(openai_server).provider())
        assert openai_server.requests == []

    def test_token_estimate_is_utf8_bytes_over_3_rounded_up(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "tiktoken", None)  # not installed
        _tokens.tiktoken_encoding.cache_clear()
        provider = polars_embed.resolve_provider("openai")
        assert provider.count_tokens(["abc", "abcd", "日本", ""]) == [1, 2, 2, 0]
        _tokens.tiktoken_encoding.cache_clear()

    @pytest.mark.parametrize("loads", [True, False])
    def test_tiktoken_counts_when_its_encoding_loads(
        self, monkeypatch: pytest.MonkeyPatch, loads: bool
    ) -> None:
        class Encoding:
            def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
                return [list(range(len(text.split()))) for text in texts]

        def get_encoding(name: str) -> Encoding:
            assert name == "cl100k_base"
            if not loads:
                raise OSError("cannot fetch https://openaipublic.blob.core.windows.net/... offline")
            return Encoding()

        monkeypatch.setitem(sys.modules, "tiktoken", types.SimpleNamespace(get_encoding=get_encoding))
        _tokens.tiktoken_encoding.cache_clear()
        counts = polars_embed.resolve_provider("openai").count_tokens(["one two three four"])
        _tokens.tiktoken_encoding.cache_clear()
        assert counts == ([4] if loads else [6])

    def test_no_key_for_the_openai_service_is_a_clear_error(self) -> None:
        # No base_url, so a request would go to OpenAI: the error comes before the client exists.
        with pytest.raises(ConfigError, match="needs an API key: set OPENAI_API_KEY"):
            polars_embed.embed(["a"], "openai")


class TestOpenAICompatibleServers:
    @pytest.fixture
    def local_server(self) -> Iterator[FakeOpenAI]:
        with FakeOpenAI(key=None, widths={"nomic-embed-text": 12}) as server:
            yield server

    def provider(self, server: FakeOpenAI, **options: Any) -> Provider:
        return polars_embed.resolve_provider(
            "openai:nomic-embed-text", base_url=f"{server.url}/v1", **options
        )

    def test_no_key_needed_and_the_width_is_probed_once(self, local_server: FakeOpenAI) -> None:
        provider = self.provider(local_server)
        for texts in (["a", "b"], ["c"], ["a", "d", None]):
            vectors = polars_embed.embed(texts, provider)
            assert vectors.to_list() == [vector_for(t, 12).tolist() if t else None for t in texts]
        assert provider.dimension == 12
        assert [request.texts for request in local_server.requests] == [
            [openai_provider.PROBE_TEXT],
            ["a", "b"],
            ["c"],
            ["a", "d"],
        ]
        assert local_server.requests[0].headers["authorization"] == f"Bearer {openai_provider.NO_KEY}"

    def test_the_probe_is_made_once_when_many_threads_start_together(self, local_server: FakeOpenAI) -> None:
        local_server.delay = 0.05
        provider = self.provider(local_server)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: polars_embed.embed([f"text {i}"], provider), range(4)))
        probes = [
            request for request in local_server.requests if request.texts == [openai_provider.PROBE_TEXT]
        ]
        assert len(probes) == 1 and len(local_server.requests) == 5

    def test_a_rate_limited_probe_is_retried(self, local_server: FakeOpenAI) -> None:
        local_server.then(Plan(status=429, headers={"retry-after-ms": "1"}))
        vectors = polars_embed.embed(["a"], self.provider(local_server))
        assert vectors.to_list() == [vector_for("a", 12).tolist()]
        assert len(local_server.requests) == 3  # the refused probe, the probe, the batch
        assert polars_embed.last_stats().retries == 1

    def test_a_rate_limited_probe_when_an_expression_or_sql_function_is_made_is_retried(
        self, local_server: FakeOpenAI
    ) -> None:
        import duckdb

        import duckdb_ext

        local_server.then(Plan(status=429, headers={"retry-after-ms": "1"}))
        expression = pl.col("text").embed.with_provider(self.provider(local_server))
        assert pl.LazyFrame({"text": ["a"]}).select(expression).collect_schema()["text"] == pl.Array(
            pl.Float32, 12
        )
        local_server.then(Plan(status=429, headers={"retry-after-ms": "1"}))
        # Another provider (the same one would reuse its probe): this one probes too.
        duckdb_ext.register(duckdb.connect(), self.provider(local_server, timeout=30.0))
        assert [request.texts for request in local_server.requests] == [[openai_provider.PROBE_TEXT]] * 4

    def test_dims_skips_the_probe(self, local_server: FakeOpenAI) -> None:
        polars_embed.embed(["a"], self.provider(local_server, dims=12))
        assert [request.texts for request in local_server.requests] == [["a"]]

    def test_a_server_that_sends_floats_in_any_order_is_read_right(self) -> None:
        with FakeOpenAI(key=None, widths={"nomic-embed-text": 12}, floats_only=True, shuffled=True) as server:
            texts = [f"text {i}" for i in range(10)]
            vectors = polars_embed.embed(texts, self.provider(server, dims=12))
        assert vectors.to_list() == [vector_for(text, 12).tolist() for text in texts]

    def test_a_key_is_sent_when_given(
        self, local_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        polars_embed.embed(["a"], self.provider(local_server, dims=12))
        assert local_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            ({"Retry-After": "3"}, 3.0),
            ({"retry-after": "1.5"}, 1.5),
            ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
            ({"retry-after": "-4"}, 0.0),
            ({"retry-after": "soon"}, None),
            ({"retry-after": "nan"}, None),
            ({"retry-after-ms": "inf"}, None),
            ({}, None),
        ],
    )
    def test_seconds_milliseconds_and_nonsense(self, headers: dict[str, str], seconds: float | None) -> None:
        assert retry_after_seconds(headers) == seconds

    def test_an_http_date(self) -> None:
        later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        assert 28 <= retry_after_seconds({"Retry-After": later}) <= 30
        earlier = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
        assert retry_after_seconds({"Retry-After": earlier}) == 0.0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"message": "invalid model"}, "invalid model"),  # Cohere
        ({"message": "Rate limit reached", "type": "requests", "code": None}, "Rate limit reached"),  # OpenAI
        ({"error": "model 'x' not found"}, "model 'x' not found"),  # Ollama
        ({"error": {"message": "bad input"}}, "bad input"),
        ({"detail": "Not Found"}, "Not Found"),  # FastAPI-based servers
        ("<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (None, "(no message)"),
    ],
)
def test_the_services_own_words_are_found_in_its_error_body(body: object, words: str) -> None:
    assert service_message(body) == words


def test_both_are_registered() -> None:
    assert {"cohere", "openai"} <= set(polars_embed.list_providers())


POLARS_ENGINES = ["eager", "in-memory", "streaming"]


def embedded_through_polars(engine: str, provider: Provider) -> None:
    """Embed a column with ``provider`` in an eager frame, or a lazy one collected by ``engine``."""
    frame = pl.DataFrame({"text": ["a", "b", None, "a"]})
    vectors = pl.col("text").embed.with_provider(provider)
    if engine == "eager":
        frame.with_columns(vec=vectors)
    else:
        frame.lazy().with_columns(vec=vectors).collect(engine=engine)


class TestErrorsThroughPolars:
    """Polars rebuilds an exception raised in an expression from its message: class and words must survive."""

    @pytest.fixture(autouse=True)
    def cache_in(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
        monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))

    @pytest.mark.parametrize("engine", POLARS_ENGINES)
    def test_a_refused_key(self, service: Service, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(service.key_variable, SECRET)
        with pytest.raises(EmbeddingIncompleteError) as raised:
            embedded_through_polars(engine, service.provider(api_key=None))
        message = str(raised.value)
        assert type(raised.value) is EmbeddingIncompleteError
        assert f"{service.provider().label} failed after 0 of" in message
        assert (
            f"HTTP 401 Unauthorized: invalid api token ***. The key was refused: set {service.key_variable}"
            in (message)
        )
        assert "a rerun resumes" in message
        assert SECRET not in message
        assert raised.value.done == 0 and f"after 0 of {raised.value.total} distinct texts" in message

    # The streaming engine may split the column into morsels, each a call of its own:
    # the server fails every request, so that each morsel fails.

    @pytest.mark.parametrize("engine", POLARS_ENGINES)
    def test_server_errors_that_outlast_the_retries(self, service: Service, engine: str) -> None:
        service.server.then(Plan(status=503), times=100)
        with pytest.raises(EmbeddingIncompleteError) as raised:
            embedded_through_polars(engine, service.provider(max_retries=2))
        message = str(raised.value)
        assert type(raised.value) is EmbeddingIncompleteError
        assert "HTTP 503 Service Unavailable: scripted failure 503 (still failing after 2 retries)" in message
        assert "a rerun resumes" in message
        assert raised.value.done == 0 and f"after 0 of {raised.value.total} distinct texts" in message

    @pytest.mark.parametrize("engine", POLARS_ENGINES)
    def test_vectors_of_the_wrong_width(self, service: Service, engine: str) -> None:
        service.server.then(Plan(mangle="width"), times=100)
        with pytest.raises(EmbeddingIncompleteError) as raised:
            embedded_through_polars(engine, service.provider())
        message = str(raised.value)
        assert type(raised.value) is EmbeddingIncompleteError
        assert f"returned vectors of width {service.width - 1} but declares width {service.width}" in message
        assert raised.value.done == 0 and f"after 0 of {raised.value.total} distinct texts" in message

    @pytest.mark.parametrize("engine", POLARS_ENGINES)
    def test_a_key_variable_that_is_not_set(self, service: Service, engine: str) -> None:
        with pytest.raises(ConfigError) as raised:
            embedded_through_polars(engine, service.provider(api_key="$env:TEAM_EMBEDDING_KEY"))
        assert type(raised.value) is ConfigError
        assert "'TEAM_EMBEDDING_KEY' is not set (used by option 'api_key'); set it with export" in str(
            raised.value
        )
        assert service.server.requests == []


MARKER = "<<refused>>"


@pytest.fixture(params=["cohere", "openai"])
def refusing_service(request: pytest.FixtureRequest) -> Iterator[Service]:
    """A service that answers 400 to any request with a text containing MARKER."""
    if request.param == "cohere":
        with FakeCohere(refuse_containing=MARKER) as server:
            yield cohere_service(server)
    else:
        with FakeOpenAI(refuse_containing=MARKER) as server:
            yield openai_service(server)


def marked_texts(n: int, bad: set[int]) -> list[str | None]:
    return [None if i == 3 else f"row {i} {MARKER}" if i in bad else f"row {i}" for i in range(n)]


class TestRefusedRows:
    """on_error="null": the rows a service refuses get null vectors, and only those."""

    BAD = frozenset({5, 77, 78, 450, 999})

    @pytest.mark.parametrize("concurrency", [1, 3])
    def test_only_the_refused_rows_are_null_and_reported(
        self, refusing_service: Service, concurrency: int
    ) -> None:
        texts = marked_texts(1000, self.BAD)
        batch_size = 32
        provider = refusing_service.provider(batch_size=batch_size, max_concurrency=concurrency)
        vectors = polars_embed.embed(texts, provider, on_error="null")
        expected = refusing_service.expected(
            [None if i in self.BAD else text for i, text in enumerate(texts)]
        )
        assert vectors.to_list() == expected
        stats = polars_embed.last_stats()
        assert stats.failed == len(self.BAD) and stats.embedded == 999 - len(self.BAD)
        assert [failure.row for failure in stats.failures] == sorted(self.BAD)
        assert [failure.text for failure in stats.failures] == [texts[i][:60] for i in sorted(self.BAD)]
        assert all(
            f"contains {MARKER!r}, which is not allowed" in failure.message for failure in stats.failures
        )
        # every good text was embedded once; the refused ones cost a few halvings each
        sent = [text for request in refusing_service.server.requests for text in request.texts]
        assert set(sent) - {REFUSAL_PROBE} == {text for text in texts if text}
        # A refusal before anything was embedded is checked by a probe, at most one per batch in
        # flight; with one at a time the refused first batch is answered first, so it is probed.
        probes = sent.count(REFUSAL_PROBE)
        assert probes == 1 if concurrency == 1 else probes <= concurrency
        fewest = -(-999 // batch_size)  # 32 requests; each refused row costs at most 2 * log2(32) more
        assert len(refusing_service.server.requests) <= fewest + 2 * 5 * len(self.BAD) <= 3 * fewest

    def test_the_default_still_fails_the_call(self, refusing_service: Service) -> None:
        with pytest.raises(
            EmbeddingIncompleteError, match="HTTP 400 Bad Request: invalid request: text"
        ) as raised:
            polars_embed.embed(marked_texts(20, {7}), refusing_service.provider())
        assert isinstance(failure(raised), InputRefusedError)
        assert len(refusing_service.server.requests) == 1

    def test_retryable_failures_are_retried_not_nulled(self, refusing_service: Service) -> None:
        refusing_service.server.then(Plan(status=429), Plan(status=503))
        texts = marked_texts(10, {2})
        vectors = polars_embed.embed(texts, refusing_service.provider(), on_error="null")
        assert vectors.to_list() == refusing_service.expected(
            [None if i == 2 else t for i, t in enumerate(texts)]
        )
        stats = polars_embed.last_stats()
        assert stats.retries == 2 and [failure.row for failure in stats.failures] == [2]

    def test_a_refused_request_is_raised_not_nulled(self, refusing_service: Service) -> None:
        # every text is refused, whatever it says: the request is at fault (a wrong model), not the rows
        provider = refusing_service.provider(model="no-such-model", dims=refusing_service.width)
        with pytest.raises(
            EmbeddingIncompleteError, match="the text 'hello' alone was refused too"
        ) as raised:
            polars_embed.embed([f"text {i}" for i in range(50)], provider, on_error="null")
        assert isinstance(failure(raised), InputRefusedError)
        assert len(refusing_service.server.requests) == 2

    @pytest.mark.parametrize("engine", POLARS_ENGINES)
    def test_a_polars_column(self, refusing_service: Service, engine: str) -> None:
        texts = marked_texts(60, {10, 41})
        frame = pl.DataFrame({"text": texts})
        vectors = pl.col("text").embed.with_provider(refusing_service.provider(batch_size=8), on_error="null")
        if engine == "eager":
            out = frame.with_columns(vec=vectors)
        else:
            out = frame.lazy().with_columns(vec=vectors).collect(engine=engine)
        assert out["vec"].to_list() == refusing_service.expected(
            [None if i in (10, 41) else t for i, t in enumerate(texts)]
        )
        failures = polars_embed.last_stats().failures
        assert sorted(failure.text for failure in failures) == [texts[10], texts[41]]
        if engine != "streaming":  # morsels arrive in any order: rows count over them as they come
            assert [failure.row for failure in failures] == [10, 41]

    def test_a_text_over_the_token_limit_is_nulled_without_a_request(self) -> None:
        with FakeOpenAI() as server:
            service = openai_service(server)
            too_long = "word " * 30_000  # over text-embedding-3-small's 8,191 tokens, however counted
            vectors = polars_embed.embed(["short", too_long], service.provider(), on_error="null")
        assert vectors.to_list() == [service.expected(["short"])[0], None]
        (refused,) = polars_embed.last_stats().failures
        assert (
            refused.row == 1
            and "over openai:text-embedding-3-small's limit of 8191 tokens" in refused.message
        )
        assert server.texts == ["short"]


def test_long_texts_are_chunked_within_the_services_limit() -> None:
    text = " ".join(["the"] * 20_000)  # about 26,700 tokens by bytes / 3: OpenAI refuses it whole
    with FakeOpenAI() as server:
        service = openai_service(server)
        with pytest.raises(ConfigError, match="over openai:text-embedding-3-small's limit of 8191"):
            polars_embed.embed([text], service.provider())
        vectors = polars_embed.embed([text, "short"], service.provider(), long_texts="chunk")
    sent = server.texts
    assert all(count <= 8191 for count in _tokens.approximate_tokens(sent))
    chunks = pl.select(pl.lit(text).embed.chunks(provider=service.provider())).item()
    pieces = chunks.struct.field("text").to_list()
    assert len(pieces) >= 4 and "".join(pieces) == text
    assert sorted(sent) == sorted({*pieces, "short"})  # each distinct chunk once
    expected = np.mean(service.expected(pieces), axis=0)
    np.testing.assert_allclose(vectors[0].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert vectors[1].to_list() == service.expected(["short"])[0]
