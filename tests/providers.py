"""Test providers: real Provider subclasses whose vectors are a pure function of the text.

They count what they are sent, so tests can prove what reached a provider, and can be
told to fail in the ways real services fail.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from polars_embed import Embedded, InputRefusedError, Provider, ProviderError, RetryableProviderError, option
from polars_embed.providers.hashing import HashingProvider


def vector_for(text: str, dims: int) -> np.ndarray:
    """A unit vector that depends only on the text."""
    generator = np.random.default_rng(zlib.crc32(text.encode()))
    vector = generator.standard_normal(dims).astype(np.float32)
    return vector / np.linalg.norm(vector)


class Recorder:
    """What a provider was sent, safe to update from several threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    @property
    def texts(self) -> list[str]:
        return [text for batch in self.batches for text in batch]


@dataclass(frozen=True, kw_only=True, repr=False)
class CountingProvider(Provider):
    """Deterministic vectors; records every batch; fails on request.

    ``flaky``: the first N requests raise a retryable error. ``fail_on``: request
    number N (1-based) raises a non-retryable error. ``mangle``: return a bad answer
    ("width", "count", "nan", "strings"). ``delay``: seconds each request takes.
    ``refuse_containing``: refuse any batch with a text that contains it, as a service
    refuses content.
    """

    name: ClassVar[str] = "counting"

    model: str = "counting-v1"
    dims: int = 8
    flaky: int = option(0, runtime=True)
    fail_on: int = option(0, runtime=True)
    mangle: str = option("", runtime=True)
    delay: float = option(0.0, runtime=True)
    refuse_containing: str = option("", runtime=True)
    api_key: str | None = option(None, secret=True)
    recorder: Recorder = option(default_factory=Recorder, runtime=True)

    @property
    def dimension(self) -> int:
        return self.resolve("dims")

    def embed_batch(self, texts: list[str], *, kind: str) -> Embedded:
        recorder = self.recorder
        with recorder.lock:
            recorder.batches.append(list(texts))
            request_number = len(recorder.batches)
            recorder.in_flight += 1
            recorder.most_in_flight = max(recorder.most_in_flight, recorder.in_flight)
        try:
            time.sleep(self.delay)
            if request_number <= self.flaky:
                raise RetryableProviderError("429 slow down", retry_after=0.01)
            if request_number == self.fail_on:
                raise ProviderError(f"400 bad request (key {self.resolve('api_key')})")
            marker = self.refuse_containing
            if marker and any(marker in text for text in texts):
                raise InputRefusedError(f"counting:counting-v1: 400 a text contains {marker!r}")
            vectors = np.stack([vector_for(f"{kind}:{text}", self.resolve("dims")) for text in texts])
            return Embedded(_mangled(vectors, self.mangle), tokens=sum(len(t.split()) for t in texts))
        finally:
            with recorder.lock:
                recorder.in_flight -= 1


@dataclass(frozen=True, kw_only=True, repr=False)
class ExitingProvider(HashingProvider):
    """Hashing vectors, except that the first process to embed a batch dies on the spot, as a
    worker killed mid-job does: ``marker`` is a file path that only that first call creates."""

    name: ClassVar[str] = "exiting"

    marker: str = option("", runtime=True)

    def embed_batch(self, texts: list[str], *, kind: str) -> np.ndarray:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return super().embed_batch(texts, kind=kind)
        os._exit(1)


@dataclass(frozen=True, kw_only=True, repr=False)
class RefusingProvider(HashingProvider):
    """Hashing's options, but every request is refused with the key quoted, as a careless
    service might; unlike :class:`CountingProvider` it pickles, so it can run on workers."""

    name: ClassVar[str] = "refusing"

    api_key: str | None = option(None, secret=True)

    def embed_batch(self, texts: list[str], *, kind: str) -> np.ndarray:
        raise ProviderError(f"400 bad request (key {self.resolve('api_key')})")


class LongTextsProvider(CountingProvider):
    """Reads 3 words of a text, as a model reads a fixed number of tokens."""

    @property
    def max_input_tokens(self) -> int:
        return 3

    def count_tokens(self, texts: list[str], *, kind: str = "document") -> list[int]:
        return [len(text.split()) for text in texts]


class RefusesFirstCall:
    """A plain embedding function, with no declared width, whose first call (the width
    probe) is rate limited; ``calls`` holds the first text of each call."""

    def __init__(self, width: int = 6) -> None:
        self.width = width
        self.calls: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts[0])
        if len(self.calls) == 1:
            raise RetryableProviderError("429 slow down", retry_after=0.001)
        return np.ones((len(texts), self.width))


def _mangled(vectors: np.ndarray, how: str) -> object:
    if how == "width":
        return vectors[:, :-1]
    if how == "count":
        return vectors[:-1]
    if how == "nan":
        vectors[-1, 0] = np.nan
    if how == "strings":
        return vectors.astype(str)
    return vectors


def mean_colour(images: list) -> np.ndarray:
    """An image embedding function that pickles by reference (for Ray's workers): each RGB
    image's mean colour, plus one so that no vector is zero."""
    return np.stack([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) / 255 + 1 for image in images])
