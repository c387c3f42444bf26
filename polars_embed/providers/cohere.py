"""``cohere``: Cohere's embedding and rerank models, through the ``cohere`` SDK's v2 client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from polars_embed.errors import ConfigError, ProviderError
from polars_embed.hookspecs import hookimpl
from polars_embed.provider import MAX_DIMENSION, Embedded, Kind, Provider, option
from polars_embed.providers._remote import RemoteProvider
from polars_embed.reranker import Reranker, Scored

#: The width of each model's vectors (for embed-v4.0, when no output_dimension is asked for).
MODEL_WIDTHS = {
    "embed-english-v3.0": 1024,
    "embed-english-light-v3.0": 384,
    "embed-multilingual-v3.0": 1024,
    "embed-multilingual-light-v3.0": 384,
    "embed-v4.0": 1536,
}
#: The widths a model can be asked for with ``output_dimension``.
OUTPUT_DIMENSIONS = {"embed-v4.0": (256, 512, 1024, 1536)}
TRUNCATE_MODES = ("NONE", "START", "END")
INPUT_TYPES: dict[str, str] = {"document": "search_document", "query": "search_query"}


@dataclass(frozen=True, kw_only=True, repr=False)
class CohereProvider(RemoteProvider):
    """Embed with Cohere's API, documents and queries each with their own ``input_type``.

    Options
    -------
    model
        ``embed-english-v3.0`` by default: Cohere's long-standing English model, a
        stable choice for vectors that must stay comparable. Also known:
        ``embed-english-light-v3.0``, ``embed-multilingual-v3.0``,
        ``embed-multilingual-light-v3.0`` and ``embed-v4.0``; any other model needs ``dims``.
    output_dimension
        For ``embed-v4.0``: 256, 512, 1024 or 1536 (the default) numbers per vector.
    truncate
        What the service does with a text over the model's limit: ``"END"`` (the
        default) or ``"START"`` drops tokens from that end, ``"NONE"`` refuses the text.
    api_key, base_url, dims, timeout, max_concurrency
        See :class:`~polars_embed.providers._remote.RemoteProvider`. The key is read
        from ``CO_API_KEY``, else ``COHERE_API_KEY``, when ``api_key`` is not given.
    """

    name: ClassVar[str] = "cohere"
    extra: ClassVar[str | None] = "cohere"
    max_batch_size: ClassVar[int | None] = 96
    key_variables: ClassVar[tuple[str, ...]] = ("CO_API_KEY", "COHERE_API_KEY")
    default_base_url: ClassVar[str] = "https://api.cohere.com"

    model: str = "embed-english-v3.0"
    output_dimension: int | None = option(None, low=1, high=MAX_DIMENSION)
    truncate: str = "END"
    batch_size: int = option(96, runtime=True)

    @property
    def dimension(self) -> int:
        model, asked = self.resolve("model"), self.resolve("output_dimension")
        if asked is not None:
            choices = OUTPUT_DIMENSIONS.get(model)
            if model in MODEL_WIDTHS and choices is None:
                raise ConfigError(f"{self.label}: only embed-v4.0 and newer models take output_dimension")
            if choices is not None and asked not in choices:
                raise ConfigError(f"{self.label}: output_dimension must be one of {choices}, not {asked}")
            return asked
        width = self.resolve("dims") or MODEL_WIDTHS.get(model)
        if width is None:
            raise ConfigError(
                f"{self.label}: the width of model {model!r} is not known here; pass dims=<its width>"
            )
        return width

    def _connect(self, api_key: str | None, base_url: str, timeout: float) -> Any:
        if api_key is None:
            raise self._missing_key()
        cohere = self.require("cohere")
        import httpx  # what the cohere SDK is built on

        from polars_embed.providers._http import deadline_transport

        transport = deadline_transport(httpx, base_url, timeout)
        client = httpx.Client(transport=transport, timeout=timeout, follow_redirects=True)  # as the SDK's own
        return cohere.ClientV2(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0, httpx_client=client
        )

    def _request(self, client: Any, texts: list[str], kind: Kind) -> Embedded:
        truncate = self.resolve("truncate")
        if not isinstance(truncate, str) or truncate.upper() not in TRUNCATE_MODES:
            raise ConfigError(f"{self.label}: truncate must be one of {TRUNCATE_MODES}, got {truncate!r}")
        output_dimension = self.resolve("output_dimension")
        response = client.embed(
            texts=texts,
            model=self.resolve("model"),
            input_type=INPUT_TYPES[kind],
            embedding_types=["float"],
            truncate=truncate.upper(),
            **({} if output_dimension is None else {"output_dimension": output_dimension}),
        )
        vectors = response.embeddings.float_
        if vectors is None:
            raise self._unreadable("no float embeddings in it")
        billed = getattr(response.meta, "billed_units", None)
        return Embedded(vectors, tokens=int(getattr(billed, "input_tokens", None) or 0))

    def _failure(self, error: Exception) -> ProviderError | None:
        import httpx  # the cohere SDK raises httpx's own errors when no answer comes
        from cohere.core.api_error import ApiError

        if isinstance(error, ApiError) and error.status_code is not None:
            return self._http_failure(error.status_code, error.body, error.headers or {})
        if isinstance(error, httpx.TimeoutException):
            return self._no_answer()
        if isinstance(error, httpx.TransportError):
            return self._no_answer(error)
        return None


@dataclass(frozen=True, kw_only=True, repr=False)
class CohereReranker(Reranker, RemoteProvider):
    """Rerank with Cohere's rerank API (``POST /v2/rerank``).

    Options
    -------
    model
        ``rerank-v3.5`` by default; any rerank model Cohere serves.
    max_tokens_per_doc
        Tokens of each document the model reads (the service's default, 4096, when not set).
    batch_size
        Documents per request (the service advises at most 1,000). Scores are
        Cohere's absolute relevance, so they compare across requests.
    api_key, base_url, timeout, max_concurrency
        As for the ``cohere`` provider: the key is read from ``CO_API_KEY``, else
        ``COHERE_API_KEY``, and the SDK's client, timeouts and error handling are the same.
    """

    name: ClassVar[str] = "cohere"
    extra: ClassVar[str | None] = "cohere"
    max_batch_size: ClassVar[int | None] = 1_000
    key_variables: ClassVar[tuple[str, ...]] = CohereProvider.key_variables
    default_base_url: ClassVar[str] = CohereProvider.default_base_url

    model: str = "rerank-v3.5"
    max_tokens_per_doc: int | None = option(None, low=1, high=1_000_000)
    batch_size: int = option(1_000, runtime=True, low=1, high=1_000)

    # The same client and the same reading of failures as the embedding provider's.
    _connect = CohereProvider._connect
    _failure = CohereProvider._failure

    def score_batch(self, query: str, documents: list[str]) -> Scored:
        client = self._client()
        return self._send(lambda: self._rerank(client, query, documents))

    def _rerank(self, client: Any, query: str, documents: list[str]) -> Scored:
        limit = self.resolve("max_tokens_per_doc")
        response = client.rerank(
            model=self.resolve("model"),
            query=query,
            documents=documents,
            top_n=len(documents),
            **({} if limit is None else {"max_tokens_per_doc": limit}),
        )
        scores = [float("nan")] * len(documents)
        for result in response.results:
            scores[result.index] = result.relevance_score
        billed = getattr(response.meta, "billed_units", None)
        return Scored(scores, units=int(getattr(billed, "search_units", None) or 0))


@hookimpl
def polars_embed_providers() -> list[type[Provider]]:
    return [CohereProvider]


@hookimpl
def polars_embed_rerankers() -> list[type[Reranker]]:
    return [CohereReranker]
