"""``openai``: OpenAI's embedding models, and any server that copies its API, through the ``openai`` SDK.

Ollama, vLLM, LM Studio, TEI and others serve ``/v1/embeddings`` too: point
``base_url`` at one (e.g. ``"http://localhost:11434/v1"``). Such a server may need no
key, and its model's width comes from ``dims`` or from one probe request.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from polars_embed._tokens import approximate_token_counter, approximate_tokens
from polars_embed.errors import ConfigError, InvalidEmbeddingError, ProviderError
from polars_embed.hookspecs import hookimpl
from polars_embed.provider import MAX_DIMENSION, Embedded, Kind, Provider, option
from polars_embed.providers._remote import RemoteProvider

log = logging.getLogger(__name__)

MODEL_WIDTHS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
#: Models that can shorten their vectors to ``dimensions`` numbers.
SHORTENABLE = frozenset({"text-embedding-3-small", "text-embedding-3-large"})
#: Sent to a server at ``base_url`` when no key is configured: the SDK insists on one.
NO_KEY = "no-key"
PROBE_TEXT = "dimension probe"

_probe_lock = threading.Lock()


@dataclass(frozen=True, kw_only=True, repr=False)
class OpenAIProvider(RemoteProvider):
    """Embed with OpenAI's API or an OpenAI-compatible server.

    Options
    -------
    model
        ``text-embedding-3-small`` by default; ``text-embedding-3-large`` and
        ``text-embedding-ada-002`` are known too, or any model a server at ``base_url`` serves.
    dimensions
        Ask for shorter vectors (``text-embedding-3-*``, and servers that support it).
    api_key, base_url, dims, timeout, max_concurrency
        See :class:`~polars_embed.providers._remote.RemoteProvider`. The key is read from
        ``OPENAI_API_KEY`` when ``api_key`` is not given; with a ``base_url`` it may be absent.
    batch_size
        Texts per request, 512 by default (the service takes up to 2,048 and 300,000
        tokens): smaller requests finish well within ``timeout`` and spread over
        concurrent connections.

    Notes
    -----
    Texts are batched by tokens, counted by tiktoken when it is installed and its
    encoding loads (fetched once, then cached), else estimated as UTF-8 bytes / 3,
    rounded up. The estimate exceeds the true count for English, code and most European
    text (about 4 bytes a token), so requests stay within the limits, though it refuses
    English texts of about 24,500 to 32,000 bytes that the service would take; for some
    scripts it can fall short.
    """

    name: ClassVar[str] = "openai"
    extra: ClassVar[str | None] = "openai"
    max_batch_size: ClassVar[int | None] = 2048
    max_batch_tokens: ClassVar[int | None] = 300_000
    max_text_tokens: ClassVar[int | None] = 8191
    key_variables: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"

    model: str = "text-embedding-3-small"
    dimensions: int | None = option(None, low=1, high=MAX_DIMENSION)
    batch_size: int = option(512, runtime=True)

    @property
    def dimension(self) -> int:
        model, asked = self.resolve("model"), self.resolve("dimensions")
        if asked is not None:
            if model in MODEL_WIDTHS and model not in SHORTENABLE:
                raise ConfigError(f"{self.label} does not take dimensions")
            if not 1 <= asked <= MODEL_WIDTHS.get(model, asked):
                raise ConfigError(
                    f"{self.label}: dimensions must be from 1 to the model's width, not {asked}"
                )
            return asked
        return self.resolve("dims") or MODEL_WIDTHS.get(model) or self._probed_width()

    def _probed_width(self) -> int:
        """Ask the server once for a vector and remember its width (a compatible server's
        model is in no table here). Pass ``dims`` to skip this request."""
        asked = (self._endpoint(), self.resolve("model"))  # references may read differently later
        with _probe_lock:
            probed = self.__dict__.get("_width_from_probe")
            if probed is None or probed[0] != asked:
                probe = np.asarray(self.embed_batch([PROBE_TEXT], kind="document").vectors)
                if probe.ndim != 2 or probe.shape[0] != 1 or probe.shape[1] == 0:
                    raise InvalidEmbeddingError(f"{self.label}: the width probe got shape {probe.shape}")
                probed = (asked, probe.shape[1])
                object.__setattr__(self, "_width_from_probe", probed)
                log.info("%s: the server gives vectors of width %d", self.label, probed[1])
        return probed[1]

    def count_tokens(self, texts: Sequence[str], *, kind: Kind = "document") -> list[int]:
        return approximate_tokens(texts)

    @property
    def token_counter(self) -> str:
        return approximate_token_counter()

    def _connect(self, api_key: str | None, base_url: str, timeout: float) -> Any:
        if api_key is None:
            if self.resolve("base_url") is None:
                raise self._missing_key()
            api_key = NO_KEY
        openai = self.require("openai")
        from polars_embed.providers._http import deadline_transport, sdk_http_module

        transport = deadline_transport(sdk_http_module(openai.DefaultHttpxClient), base_url, timeout)
        client = openai.DefaultHttpxClient(transport=transport, timeout=timeout)
        return openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0, http_client=client
        )

    def _request(self, client: Any, texts: list[str], kind: Kind) -> Embedded:
        dimensions = self.resolve("dimensions")
        # base64 is a quarter the bytes of JSON numbers and decodes without a float per
        # number; a server that ignores it sends floats, and those are read too.
        response = client.embeddings.create(
            input=texts,
            model=self.resolve("model"),
            encoding_format="base64",
            **({} if dimensions is None else {"dimensions": dimensions}),
        )
        items = sorted(response.data, key=lambda item: item.index)
        if [item.index for item in items] != list(range(len(items))):
            raise InvalidEmbeddingError(
                f"{self.label} returned vectors for positions {[item.index for item in items][:10]}, "
                f"not 0 to {len(items) - 1}"
            )
        vectors = [_decoded(item.embedding) for item in items]
        return Embedded(vectors, tokens=int(getattr(response.usage, "prompt_tokens", None) or 0))

    def _failure(self, error: Exception) -> ProviderError | None:
        openai = self.require("openai")
        if isinstance(error, openai.APIStatusError):
            return self._http_failure(error.status_code, error.body, error.response.headers)
        if isinstance(error, openai.APITimeoutError):
            return self._no_answer()
        if isinstance(error, openai.APIConnectionError):
            return self._no_answer(error.__cause__ or error)
        return None


def _decoded(embedding: str | list[float]) -> np.ndarray:
    """One vector as sent: base64 of little-endian float32, or a list of numbers."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
    if not isinstance(embedding, list):
        raise TypeError(f"an embedding is {type(embedding).__name__}, not base64 or a list")
    return np.asarray(embedding, dtype=np.float32)


@hookimpl
def polars_embed_providers() -> list[type[Provider]]:
    return [OpenAIProvider]
