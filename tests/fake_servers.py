"""Fake Cohere and OpenAI embedding services, and Cohere's rerank service: real HTTP on 127.0.0.1,
in the services' wire formats.

The real SDK clients talk to them as they would to the services. A vector is a pure
function of the text (for Cohere, of the input type too), so tests can check that
answers stay aligned through batching, deduplication and concurrency. Every request is
recorded, and a server can be told to fail the ways the services fail: see :class:`Plan`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np

from tests.providers import vector_for


@dataclass
class Plan:
    """How to answer one request, instead of answering it well.

    ``status`` and ``headers``: send this status (with the service's error body when it
    is not 2xx). ``raw``: send these bytes as the body. ``hang``: say nothing for this
    many seconds, then drop the connection. ``dribble``: send the whole answer, status
    line to last byte, in ``pieces`` pieces this many seconds apart. ``mangle``: answer
    with one vector too few (``"count"``) or vectors one number too short (``"width"``).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    hang: float = 0.0
    dribble: float = 0.0
    pieces: int = 8
    mangle: str = ""


@dataclass
class Request:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started: float
    texts: list[str]


class FakeServer:
    """A threaded HTTP server for one embedding API; use it as a context manager.

    Parameters
    ----------
    key
        The only key accepted (as ``Authorization: Bearer ...``); ``None`` accepts any
        request, like a local OpenAI-compatible server.
    delay
        Seconds each request takes, so that concurrent requests overlap.
    widths
        Extra models the service knows, and their widths.
    refuse_containing
        Answer 400 to every request with a text that contains this marker, naming the
        first such text's position, as a service refuses content it will not take.
    """

    path: ClassVar[str]
    #: The real service's models and widths.
    widths: ClassVar[dict[str, int]]

    def __init__(
        self,
        *,
        key: str | None = "test-key",
        delay: float = 0.0,
        widths: dict | None = None,
        refuse_containing: str | None = None,
    ) -> None:
        self.key = key
        self.refuse_containing = refuse_containing
        self.delay = delay
        self.models = {**self.widths, **(widths or {})}
        self.requests: list[Request] = []
        #: Every connection accepted, whatever came over it: a request of any method, or none.
        self.connections = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._plans: deque[Plan] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http = _CountingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.fake = self

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def texts(self) -> list[str]:
        return [text for request in self.requests for text in request.texts]

    def then(self, *plans: Plan, times: int = 1) -> FakeServer:
        """Answer the next requests by these plans (each ``times`` times), then well again."""
        with self._lock:
            self._plans.extend(plan for plan in plans for _ in range(times))
        return self

    def __enter__(self) -> FakeServer:
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()  # wakes hanging handlers
        self._http.shutdown()
        self._http.server_close()

    # --- one request ----------------------------------------------------------------------

    def handle(
        self, path: str, headers: dict[str, str], raw_body: bytes
    ) -> tuple[int, dict[str, str], bytes, Plan]:
        body = json.loads(raw_body)
        with self._lock:
            self.requests.append(Request(path, headers, body, time.monotonic(), self.texts_of(body)))
            plan = self._plans.popleft() if self._plans else Plan()
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if plan.hang:
                self._stopping.wait(plan.hang)
                return 0, {}, b"", plan
            time.sleep(self.delay)
            return (*self._answer(path, headers, body, plan), plan)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(
        self, path: str, headers: dict[str, str], body: dict[str, Any], plan: Plan
    ) -> tuple[int, dict[str, str], bytes]:
        if plan.raw is not None:
            return plan.status, plan.headers, plan.raw
        if plan.status >= 400:
            return plan.status, plan.headers, self.error(f"scripted failure {plan.status}")
        if path != self.path:
            return 404, {}, self.error(f"no route {path}")
        given = headers.get("authorization", "")
        if self.key is not None and given != f"Bearer {self.key}":
            # The worst case for leaks: the service quotes the key it refused.
            return 401, {}, self.error(f"invalid api token {given.removeprefix('Bearer ')}")
        refusal = self.refuse(body) or self.refuse_content(self.texts_of(body))
        if refusal:
            return 400, {}, self.error(refusal)
        return 200, plan.headers, json.dumps(self.success(body, plan.mangle)).encode()

    def refuse_content(self, texts: list[str]) -> str:
        marker = self.refuse_containing
        at = next((i for i, text in enumerate(texts) if marker and marker in text), None)
        return "" if at is None else f"invalid request: text {at} contains {marker!r}, which is not allowed"

    def vectors(self, texts: list[str], width: int, mangle: str, salt: str = "") -> np.ndarray:
        vectors = np.stack([vector_for(f"{salt}{text}", width) for text in texts])
        if mangle == "count":
            return vectors[:-1]
        if mangle == "width":
            return vectors[:, :-1]
        return vectors

    # --- what each API defines ------------------------------------------------------------

    def texts_of(self, body: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def refuse(self, body: dict[str, Any]) -> str:
        """Why the service would answer 400, or ``""``."""
        raise NotImplementedError

    def success(self, body: dict[str, Any], mangle: str) -> dict[str, Any]:
        raise NotImplementedError

    def error(self, message: str) -> bytes:
        raise NotImplementedError


class FakeCohere(FakeServer):
    """``POST /v2/embed``, as documented for Cohere's v2 API."""

    path = "/v2/embed"
    widths: ClassVar[dict[str, int]] = {
        "embed-english-v3.0": 1024,
        "embed-english-light-v3.0": 384,
        "embed-multilingual-v3.0": 1024,
        "embed-multilingual-light-v3.0": 384,
        "embed-v4.0": 1536,
    }

    def texts_of(self, body: dict[str, Any]) -> list[str]:
        return list(body.get("texts", []))

    def refuse(self, body: dict[str, Any]) -> str:
        if body.get("model") not in self.models:
            return f"model '{body.get('model')}' not found"
        if len(body["texts"]) > 96:
            return (
                f"invalid request: total number of texts must be at most 96 - received {len(body['texts'])}"
            )
        if body.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
            return "invalid request: input_type is required for embed models v3 and higher"
        if body.get("embedding_types") != ["float"]:
            return f"this fake only serves float embeddings, not {body.get('embedding_types')}"
        return ""

    def success(self, body: dict[str, Any], mangle: str) -> dict[str, Any]:
        width = body.get("output_dimension") or self.models[body["model"]]
        vectors = self.vectors(body["texts"], width, mangle, salt=f"{body['input_type']}:")
        return {
            "id": "5807ee2e-0cda-445a-9ec8-864c60a06606",
            "embeddings": {"float": vectors.tolist()},
            "texts": body["texts"],
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"input_tokens": sum(len(text.split()) for text in body["texts"])},
            },
            "response_type": "embeddings_by_type",
        }

    def error(self, message: str) -> bytes:
        return json.dumps({"id": "e0d6a3b1", "message": message}).encode()


class FakeCohereRerank(FakeServer):
    """``POST /v2/rerank``, as documented for Cohere's v2 API.

    A document's relevance is a pure function of the query and the document: the share
    of the query's words that the document has, nudged below 1 by its length, so tests
    know the order the service gives. Results come best first, as the service sends them.
    """

    path = "/v2/rerank"
    widths: ClassVar[dict[str, int]] = {"rerank-v3.5": 0, "rerank-english-v3.0": 0, "rerank-v4.0-pro": 0}

    @staticmethod
    def relevance(query: str, document: str) -> float:
        asked = set(query.lower().split())
        words = document.lower().split()
        shared = len(asked & set(words)) / max(len(asked), 1)
        return 0.9 * shared + 0.1 / (1 + len(words))

    def texts_of(self, body: dict[str, Any]) -> list[str]:
        return list(body.get("documents", []))

    def refuse(self, body: dict[str, Any]) -> str:
        if body.get("model") not in self.models:
            return f"model '{body.get('model')}' not found"
        if not isinstance(body.get("query"), str) or not body["query"]:
            return "invalid request: query must be a non-empty string"
        documents = body.get("documents")
        if not isinstance(documents, list) or not documents:
            return "invalid request: documents must be a non-empty list"
        if len(documents) > 1000:
            return f"invalid request: at most 1000 documents are allowed, received {len(documents)}"
        return ""

    def success(self, body: dict[str, Any], mangle: str) -> dict[str, Any]:
        scores = [self.relevance(body["query"], document) for document in body["documents"]]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.get("top_n") or len(scores)]
        if mangle == "count":
            order = order[:-1]
        return {
            "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
            "results": [{"index": i, "relevance_score": scores[i]} for i in order],
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"search_units": -(-len(scores) // 100)},
            },
        }

    def error(self, message: str) -> bytes:
        return json.dumps({"id": "e0d6a3b1", "message": message}).encode()


class FakeOpenAI(FakeServer):
    """``POST /v1/embeddings``, as documented for OpenAI (and copied by compatible servers).

    ``floats_only``: ignore ``encoding_format`` and always send floats, as some
    compatible servers do. ``shuffled``: list the vectors in reverse order (each still
    carries its ``index``). ``count_tokens``: how ``usage.prompt_tokens`` counts one
    text; by default, as its whitespace-separated words. ``salt``: make other vectors
    than another server does for the same model and text, as a server with another
    model of that name would.
    """

    path = "/v1/embeddings"
    widths: ClassVar[dict[str, int]] = {
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "text-embedding-ada-002": 1536,
    }

    def __init__(
        self,
        *,
        floats_only: bool = False,
        shuffled: bool = False,
        count_tokens: Callable[[str], int] | None = None,
        salt: str = "",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.salt = salt
        self.floats_only = floats_only
        self.shuffled = shuffled
        self.count_tokens = count_tokens or (lambda text: len(text.split()))

    @property
    def billed_tokens(self) -> int:
        """The tokens of every request received so far, counted as ``usage`` counts them."""
        return sum(self.count_tokens(text) for text in self.texts)

    def texts_of(self, body: dict[str, Any]) -> list[str]:
        given = body.get("input", [])
        return [given] if isinstance(given, str) else list(given)

    def refuse(self, body: dict[str, Any]) -> str:
        texts = self.texts_of(body)
        if body.get("model") not in self.models:
            return f"The model `{body.get('model')}` does not exist or you do not have access to it."
        if len(texts) > 2048:
            return "'$.input' is invalid: an array must have at most 2048 items"
        if not all(texts):
            return "'$.input' is invalid: every string must be non-empty"
        if "dimensions" in body and body["model"] == "text-embedding-ada-002":
            return "This model does not support specifying dimensions."
        return ""

    def success(self, body: dict[str, Any], mangle: str) -> dict[str, Any]:
        texts = self.texts_of(body)
        width = body.get("dimensions") or self.models[body["model"]]
        vectors = self.vectors(texts, width, mangle, salt=self.salt)
        as_base64 = body.get("encoding_format") == "base64" and not self.floats_only
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if as_base64
                else vector.tolist(),
            }
            for index, vector in enumerate(vectors)
        ]
        tokens = sum(self.count_tokens(text) for text in texts)
        return {
            "object": "list",
            "data": data[::-1] if self.shuffled else data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def error(self, message: str) -> bytes:
        return json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        ).encode()


class _CountingHTTPServer(ThreadingHTTPServer):
    """Counts each connection as it is accepted, before a byte of it is read."""

    fake: FakeServer

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.fake._lock:
            self.fake.connections += 1
        return True


def _handler_for(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect

        def do_POST(self) -> None:
            raw_body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            path = urllib.parse.urlsplit(self.path).path  # a proxy is sent the whole URL
            status, reply_headers, reply, plan = server.handle(path, headers, raw_body)
            if status == 0:  # hung up without a word
                self.close_connection = True
                return
            if plan.dribble:
                self.dribble(status, reply_headers, reply, plan)
                return
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            for name, value in reply_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply)

        def dribble(self, status: int, reply_headers: dict[str, str], reply: bytes, plan: Plan) -> None:
            lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json"]
            lines += [f"content-length: {len(reply)}", *(f"{n}: {v}" for n, v in reply_headers.items())]
            answer = "\r\n".join([*lines, "", ""]).encode() + reply
            size = -(-len(answer) // plan.pieces)
            try:
                for start in range(0, len(answer), size):
                    if start and server._stopping.wait(plan.dribble):
                        break
                    self.wfile.write(answer[start : start + size])
                    self.wfile.flush()
            except OSError:  # the client gave up on it
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests read server.requests instead

    return Handler
