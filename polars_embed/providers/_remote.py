"""What the remote providers share: their key, a lazily built SDK client, and HTTP error mapping.

The engine retries :class:`~polars_embed.RetryableProviderError` and nothing else, so
this module decides, once for every web API, which failures are worth retrying:
answers 408, 409, 429 and 5xx, timeouts and dropped connections, waiting as long as the
server's ``Retry-After`` asks. Any other failure ends the call at once with the
service's own message; a refused key (401, 403) also says where to put a valid one, and
a refused input (400, 413, 422) is an :class:`~polars_embed.InputRefusedError`, which
``on_error="null"`` narrows down to the texts at fault.
The SDKs' own retries are off, so the two never multiply.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import textwrap
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, ClassVar, TypeVar

from polars_embed.errors import (
    AuthenticationError,
    ConfigError,
    InputRefusedError,
    PolarsEmbedError,
    ProviderError,
    RetryableProviderError,
)
from polars_embed.provider import (
    MAX_DIMENSION,
    Embedded,
    Kind,
    Provider,
    is_reference,
    option,
    parse_reference,
    secret_digest,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 429})  # and every 5xx
AUTHENTICATION_STATUSES = frozenset({401, 403})
#: Answers that refuse what was sent (a text too long, content refused), not how or by whom.
REFUSED_INPUT_STATUSES = frozenset({400, 413, 422})

_T = TypeVar("_T")

# Clients are built rarely (once per provider), so one lock for all of them costs nothing.
_clients_lock = threading.Lock()


@dataclass(frozen=True, kw_only=True, repr=False)
class RemoteProvider(Provider):
    """Base of the providers that call a web API through its vendor's SDK.

    Options
    -------
    api_key
        The key, or a reference such as ``"$env:TEAM_KEY"``; by default the first of
        the provider's ``key_variables`` that is set. Never shown or persisted.
    base_url
        Where the API is served; the vendor's own service by default. A runtime
        option: never stored with the vectors nor read from a file, so a search over
        a file goes where your own configuration says (set it for every provider of
        this name with ``get_registry().configure(name, base_url=...)``). The SDKs'
        environment variables for this (``CO_API_URL``, ``OPENAI_BASE_URL``) are not
        read: write ``base_url="$env:OPENAI_BASE_URL"`` to use one.
    dims
        The width of the vectors, for a model this provider has no table entry for.
    timeout
        Seconds one request may take as a whole (connecting, sending, and reading the
        whole answer, however slowly it comes) before it counts as failed and is retried.
    max_concurrency
        Requests in flight at once, across every thread using this provider.
    """

    #: Environment variables searched, in order, for the key when ``api_key`` is not set.
    key_variables: ClassVar[tuple[str, ...]] = ()
    #: The vendor's endpoint, used when ``base_url`` is not set.
    default_base_url: ClassVar[str] = ""

    api_key: str | None = option(None, secret=True)
    base_url: str | None = option(None, runtime=True, max_length=2_048)
    dims: int | None = option(None, runtime=True, low=1, high=MAX_DIMENSION)
    timeout: float = option(60.0, runtime=True, low=0.001, high=86_400)
    max_concurrency: int = option(4, runtime=True)

    # --- what a subclass implements -------------------------------------------------------

    def _connect(self, api_key: str | None, base_url: str, timeout: float) -> Any:
        """Build the SDK client, with the SDK's own retries off."""
        raise NotImplementedError

    def _request(self, client: Any, texts: list[str], kind: Kind) -> Embedded:
        """Send one request and read the answer."""
        raise NotImplementedError

    def _failure(self, error: Exception) -> ProviderError | None:
        """The error to raise for an SDK exception (via :meth:`_http_failure` or
        :meth:`_no_answer`), or ``None`` when it is not a failure of the request."""
        raise NotImplementedError

    # --- the shared part ------------------------------------------------------------------

    def embed_batch(self, texts: list[str], *, kind: Kind) -> Embedded:
        client = self._client()
        return self._send(lambda: self._request(client, texts, kind))

    def _send(self, request: Callable[[], _T]) -> _T:
        """``request()``, any failure of the SDK's read as this provider's own error."""
        try:
            return request()
        except PolarsEmbedError:
            raise
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as error:
            # Missing fields, bad JSON, wrong types: the SDKs surface each as one of these.
            failure = self._unreadable(f"{type(error).__name__}: {error}")
        except Exception as error:
            failure = self._failure(error)
            if failure is None:
                raise
        # Raised outside the except blocks: the SDK's exception, whose request carries
        # the key in a header, is not even kept as __context__.
        raise failure from None

    def _client(self) -> Any:
        """The SDK client, built on first use and then shared by every thread and call,
        until a reference among its settings (the key's variable, say) reads differently."""
        api_key, base_url, timeout = self._api_key(), self._endpoint(), float(self.resolve("timeout"))
        settings = (secret_digest(api_key), base_url, timeout)
        built = self.__dict__.get("_sdk_client")
        if built is None or built[0] != settings:
            with _clients_lock:
                built = self.__dict__.get("_sdk_client")
                if built is None or built[0] != settings:
                    built = (settings, self._connect(api_key, base_url, timeout))
                    object.__setattr__(self, "_sdk_client", built)
                    log.debug("%s: client created for %s", self.label, base_url)
        return built[1]

    def _endpoint(self) -> str:
        """Where requests go: ``base_url``, else the vendor's own service."""
        return self.resolve("base_url") or self.default_base_url

    def cache_scope(self) -> str | None:
        """The endpoint, when it is not the vendor's own: two servers may serve different
        models under one name (the key is no part of it)."""
        endpoint = self._endpoint().rstrip("/")
        return None if endpoint == self.default_base_url.rstrip("/") else endpoint

    def _api_key(self) -> str | None:
        """The ``api_key`` option, else the first key variable that is set, else ``None``."""
        if self.api_key is not None:
            return self.resolve("api_key")
        return next((os.environ[name] for name in self.key_variables if os.environ.get(name)), None)

    def _missing_key(self) -> ConfigError:
        return ConfigError(f"{self.label} needs an API key: {self._key_hint()}")

    def _key_hint(self) -> str:
        """Where a valid key goes, for messages about a missing or refused key."""
        configured = self.api_key
        if is_reference(configured):
            source, name, _ = parse_reference(configured)
            return f"set the {'environment' if source == 'env' else 'registry'} variable {name}"
        if configured is not None:
            return "pass a valid api_key"
        return f"set {' or '.join(self.key_variables)}, or pass api_key=..."

    def redact(self, message: str) -> str:
        """Also hide a key read from the environment, not only one given as an option."""
        message = super().redact(message)
        if self.api_key is None:
            for name in self.key_variables:
                key = os.environ.get(name)
                if key and len(key) >= 4:
                    message = message.replace(key, "***")
        return message

    def _http_failure(self, status: int, body: object, headers: Mapping[str, str]) -> ProviderError:
        """The error for an answer with this status; ``body`` holds the service's own words."""
        words = service_message(body)
        if status < 400:
            return self._unreadable(f"HTTP {status} with {words!r}")
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "error"
        message = self.redact(f"{self.label}: HTTP {status} {reason}: {words}")
        if status in RETRYABLE_STATUSES or status >= 500:
            return RetryableProviderError(message, retry_after=retry_after_seconds(headers))
        if status in AUTHENTICATION_STATUSES:
            return AuthenticationError(f"{message}. The key was refused: {self._key_hint()}")
        if status in REFUSED_INPUT_STATUSES:
            return InputRefusedError(message)
        return ProviderError(message)

    def _no_answer(self, error: BaseException | None = None) -> RetryableProviderError:
        """The error for a request that got no answer: timed out (``error`` None) or unreachable."""
        where = self._endpoint()
        if error is None:
            message = f"{self.label}: no answer from {where} within {self.resolve('timeout')} s"
        else:
            message = f"{self.label}: could not reach {where}: {type(error).__name__}: {error}"
        return RetryableProviderError(self.redact(message))

    def _unreadable(self, detail: str) -> ProviderError:
        return ProviderError(
            self.redact(f"{self.label}: the answer is not what the API documents ({detail[:300]})")
        )


def service_message(body: object) -> str:
    """The service's own words in an error body: Cohere's ``message``, OpenAI's
    ``error.message``, a compatible server's ``error`` or ``detail``, else the text."""
    if isinstance(body, Mapping):
        inner = next((body[key] for key in ("message", "error", "detail") if body.get(key)), None)
        return str(body) if inner is None else service_message(inner)
    return textwrap.shorten(str(body), 300) if body else "(no message)"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long the server asked us to wait: ``retry-after-ms``, else ``Retry-After``
    in seconds or as an HTTP date; ``None`` when it did not say (or said nonsense)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    seconds: float | None = None
    try:
        if "retry-after-ms" in lowered:
            seconds = float(lowered["retry-after-ms"]) / 1000
        elif "retry-after" in lowered:
            value = lowered["retry-after"].strip()
            try:
                seconds = float(value)
            except ValueError:
                when = email.utils.parsedate_to_datetime(value)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                seconds = (when - datetime.now(UTC)).total_seconds()
    except (ValueError, TypeError):
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
