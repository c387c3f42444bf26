"""The HTTP transport the remote providers give their SDKs: ``timeout`` is a deadline per request.

httpx's own timeout bounds each network operation, not the request: a server that sends
a few bytes now and then keeps a request open as long as it likes (a body dribbled in 8
pieces 0.45 s apart kept a ``timeout=1.0`` request open 3.7 s). Through this transport
every connect, write and read of a request waits at most what is left of its deadline,
from the status line to the last byte of the body; past it, the request fails as the
SDK's timeout, which the engine retries like any other.

The SDKs build their requests with httpx (cohere) or its fork httpx2 (openai 3 and later);
the transport is made for whichever the SDK uses. This module imports neither itself.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

#: The monotonic time by which the request this thread is working on must be done.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "polars_embed_deadline", default=None
)


def deadline_transport(http: ModuleType, base_url: str, seconds: float) -> Any:
    """An ``http.HTTPTransport`` whose every request, body included, ends within ``seconds``.

    ``http`` is the module the SDK's client comes from (``httpx`` or ``httpx2``). Requests
    go through the proxy the environment names for ``base_url`` (``HTTPS_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``...), as the SDK's own client would choose it: a client
    given a transport no longer reads those variables itself.
    """
    url = urllib.parse.urlsplit(base_url)
    proxies = urllib.request.getproxies()
    proxy = (
        None
        if urllib.request.proxy_bypass(url.hostname or "")
        else proxies.get(url.scheme, proxies.get("all"))
    )
    return _transport_class(http)(seconds, proxy=proxy)


def sdk_http_module(client_class: type) -> ModuleType:
    """The httpx module (``httpx`` or ``httpx2``) that an SDK's client class derives from."""
    for base in client_class.__mro__:
        root = base.__module__.split(".")[0]
        if base.__name__ == "Client" and root.startswith("httpx"):
            return importlib.import_module(root)
    raise TypeError(f"{client_class.__qualname__} is not an httpx client")


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of this request's deadline, or ``expired`` raised."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the request took longer than its timeout")
    return left if timeout is None else min(timeout, left)


@functools.cache
def _transport_class(http: ModuleType) -> type:
    """The deadline transport for one httpx family, built on its own base classes."""
    core = importlib.import_module(http.__name__.replace("httpx", "httpcore"))

    class DeadlineStream(core.NetworkStream):  # type: ignore[name-defined, misc]
        def __init__(self, stream: Any) -> None:
            self._stream = stream

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self._stream.read(max_bytes, _time_left(timeout, core.ReadTimeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._stream.write(buffer, _time_left(timeout, core.WriteTimeout))

        def close(self) -> None:
            self._stream.close()

        def start_tls(
            self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
        ) -> Any:
            timeout = _time_left(timeout, core.ConnectTimeout)
            return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

        def get_extra_info(self, info: str) -> Any:
            return self._stream.get_extra_info(info)

    class DeadlineBackend(core.NetworkBackend):  # type: ignore[name-defined, misc]
        def __init__(self, backend: Any) -> None:
            self._backend = backend

        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> Any:
            timeout = _time_left(timeout, core.ConnectTimeout)
            return DeadlineStream(
                self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
            )

        def connect_unix_socket(
            self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
        ) -> Any:
            timeout = _time_left(timeout, core.ConnectTimeout)
            return DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

        def sleep(self, seconds: float) -> None:
            self._backend.sleep(seconds)

    class BodyWithin(http.SyncByteStream):  # type: ignore[name-defined, misc]
        """A response body whose reads keep to the request's deadline."""

        def __init__(self, stream: Any, deadline: float) -> None:
            self._stream = stream
            self._deadline = deadline

        def __iter__(self) -> Iterator[bytes]:
            chunks = iter(self._stream)
            while True:
                token = _deadline.set(self._deadline)
                try:
                    chunk = next(chunks, None)
                finally:
                    _deadline.reset(token)
                if chunk is None:
                    return
                yield chunk

        def close(self) -> None:
            self._stream.close()

    class DeadlineTransport(http.HTTPTransport):  # type: ignore[name-defined, misc]
        def __init__(self, seconds: float, **options: Any) -> None:
            super().__init__(**options)
            self.seconds = seconds
            # httpx offers no public way to choose the network backend of the pool it builds
            # (encode/httpx#3180); the pool makes its connections lazily, through this one.
            self._pool._network_backend = DeadlineBackend(self._pool._network_backend)

        def handle_request(self, request: Any) -> Any:
            deadline = time.monotonic() + self.seconds
            token = _deadline.set(deadline)
            try:
                response = super().handle_request(request)
            finally:
                _deadline.reset(token)
            response.stream = BodyWithin(response.stream, deadline)
            return response

    return DeadlineTransport
