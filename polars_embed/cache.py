"""The embedding cache: no text is paid for twice.

A vector is stored under a key made of the provider's spec (its identity options,
as :meth:`Provider.spec` gives them, and where that is not all that decides them,
its :meth:`Provider.cache_scope`, such as a compatible server's endpoint), the kind
(query or document) and the text, so any change to what makes the vectors is a
different key. Batches are stored
as they finish, so a column that failed half way resumes where it stopped.

The store is one SQLite file in WAL mode: several threads and processes may read
and write it at once. It is on by default for every provider whose vectors are
worth keeping: remote ones because each request costs money and time, local
models because rerunning a notebook cell should not recompute a column (a
lookup is hundreds of times faster than MiniLM on a CPU). The hashing provider
and plain callables are never cached: hashing is cheaper to recompute than to
look up, and a callable has no stable identity to key on.

Settings, from :func:`configure_cache` or the environment:

- ``POLARS_EMBED_CACHE=0`` turns it off;
- ``POLARS_EMBED_CACHE_DIR`` moves it (default: the user cache directory);
- ``max_bytes`` bounds its size (default 2 GiB); least recently used vectors go first.

A cache file that is corrupt, truncated or locked gives a warning and the work
goes on without it. Every vector carries a checksum, so a damaged row is a miss,
never a wrong vector.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from polars_embed.provider import Kind, Provider

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 1024**3
FILE_NAME = "embeddings.sqlite3"
_QUERY_CHUNK = 500  # well under SQLite's limit on bound parameters
_BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    key BLOB PRIMARY KEY,
    vector BLOB NOT NULL,
    checksum INTEGER NOT NULL,
    used REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vectors_by_use ON vectors (used);
"""


@dataclass(frozen=True)
class CacheSettings:
    """Where the cache lives and how large it may grow; ``enabled=False`` turns it off."""

    enabled: bool
    path: Path
    max_bytes: int


_overrides: dict[str, object] = {}
_caches: dict[tuple[int, Path], EmbeddingCache] = {}
_caches_lock = threading.Lock()


def configure_cache(
    *, enabled: bool | None = None, path: str | os.PathLike[str] | None = None, max_bytes: int | None = None
) -> CacheSettings:
    """Change the cache settings for this process; returns the settings now in force.

    Parameters
    ----------
    enabled
        Turn the cache on or off.
    path
        The SQLite file to use.
    max_bytes
        The size past which least recently used vectors are dropped.
    """
    for name, value in (("enabled", enabled), ("path", path), ("max_bytes", max_bytes)):
        if value is not None:
            _overrides[name] = Path(value) if name == "path" else value
    return cache_settings()


def cache_settings() -> CacheSettings:
    """The settings in force: :func:`configure_cache` first, then the environment."""
    switch = os.environ.get("POLARS_EMBED_CACHE", "1").strip().lower()
    directory = os.environ.get("POLARS_EMBED_CACHE_DIR") or platformdirs.user_cache_dir("polars-embed")
    return CacheSettings(
        enabled=bool(_overrides.get("enabled", switch not in ("0", "false", "no", "off"))),
        path=Path(_overrides.get("path", Path(directory) / FILE_NAME)),  # type: ignore[arg-type]
        max_bytes=int(_overrides.get("max_bytes", DEFAULT_MAX_BYTES)),  # type: ignore[call-overload]
    )


def cache_for(provider: Provider) -> EmbeddingCache | None:
    """The cache to use for ``provider``, or ``None`` when it is off or does not apply."""
    settings = cache_settings()
    if not (settings.enabled and provider.cacheable):
        return None
    with _caches_lock:
        key = (os.getpid(), settings.path)  # a connection must not cross a fork
        if key not in _caches:
            _caches[key] = EmbeddingCache(settings.path)
        cache = _caches[key]
    cache.max_bytes = settings.max_bytes
    return cache


def fingerprint(provider: Provider) -> bytes:
    """What makes the vectors, as bytes: equal for providers that give equal vectors."""
    identity = provider.spec()
    scope = provider.cache_scope()
    if scope is not None:  # beside the options, under a name no option has; other keys stay as they were
        identity["@scope"] = scope
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).digest()


class EmbeddingCache:
    """Vectors in a SQLite file, by key. Every failure degrades to a miss, with a warning."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._local = threading.local()
        self._broken = False

    def keys(self, provider: Provider, kind: Kind, texts: Sequence[str]) -> list[bytes]:
        """One key per text."""
        prefix = hashlib.sha256(fingerprint(provider) + kind.encode())
        keys = []
        for text in texts:
            digest = prefix.copy()
            digest.update(text.encode("utf-8", "surrogatepass"))
            keys.append(digest.digest())
        return keys

    def get(self, keys: Sequence[bytes], width: int) -> dict[int, np.ndarray]:
        """The stored vectors among ``keys``, by position in ``keys``."""
        found: dict[int, np.ndarray] = {}
        position_of = {key: position for position, key in enumerate(keys)}
        with self._connection("read") as connection:
            if connection is None:
                return found
            now = time.time()
            for start in range(0, len(keys), _QUERY_CHUNK):
                chunk = list(keys[start : start + _QUERY_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = connection.execute(
                    f"SELECT key, vector, checksum FROM vectors WHERE key IN ({marks})", chunk
                ).fetchall()
                for key, blob, checksum in rows:
                    if len(blob) == 4 * width and zlib.crc32(blob) == checksum:
                        found[position_of[key]] = np.frombuffer(blob, dtype=np.float32)
                    else:
                        log.warning("embedding cache %s: a damaged vector was ignored", self.path)
                with connection:
                    connection.executemany(
                        "UPDATE vectors SET used = ? WHERE key = ?", [(now, key) for key, _, _ in rows]
                    )
        return found

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store one vector per key, then drop the least recently used past ``max_bytes``."""
        now = time.time()
        rows = []
        for key, vector in zip(keys, np.ascontiguousarray(vectors, dtype=np.float32), strict=True):
            blob = vector.tobytes()
            rows.append((key, blob, zlib.crc32(blob), now))
        with self._connection("write") as connection:
            if connection is None:
                return
            with connection:
                connection.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
            self._evict(connection)

    def clear(self) -> None:
        """Drop every stored vector."""
        with self._connection("clear") as connection:
            if connection is not None:
                with connection:
                    connection.execute("DELETE FROM vectors")

    def size_bytes(self) -> int:
        """Bytes in use by stored vectors (pages in use, not the file's size)."""
        with self._connection("measure") as connection:
            return 0 if connection is None else _used_bytes(connection)

    def _evict(self, connection: sqlite3.Connection) -> None:
        used = _used_bytes(connection)
        if used <= self.max_bytes:
            return
        count = connection.execute("SELECT count(*) FROM vectors").fetchone()[0]
        # Drop a tenth more than needed so that eviction is not re-run on every put.
        excess = used - 0.9 * self.max_bytes
        drop = max(1, int(count * excess / used))
        with connection:
            connection.execute(
                "DELETE FROM vectors WHERE key IN (SELECT key FROM vectors ORDER BY used LIMIT ?)", (drop,)
            )
        log.info("embedding cache %s: dropped %d least recently used vectors", self.path, drop)

    @contextmanager
    def _connection(self, action: str) -> Iterator[sqlite3.Connection | None]:
        """This thread's connection, or ``None`` when the file cannot be used right now."""
        connection = None if self._broken else self._connect(action)
        if connection is None:
            yield None
            return
        try:
            yield connection
        except sqlite3.Error as error:
            self._failed(action, error)

    def _connect(self, action: str) -> sqlite3.Connection | None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "PRAGMA synchronous=NORMAL"
            )  # in WAL mode: durable at checkpoints, never corrupt
            connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            self._failed(action, error)
            return None
        connection.isolation_level = "DEFERRED"
        self._local.connection = connection
        return connection

    def _failed(self, action: str, error: Exception) -> None:
        """A locked file is skipped this once; anything else turns the cache off for this process."""
        if isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error)):
            log.warning(
                "embedding cache %s is locked; could not %s, going on without it: %s",
                self.path,
                action,
                error,
            )
            return
        self._broken = True
        log.warning(
            "embedding cache %s is unusable (%s while trying to %s); going on without it. "
            "Delete the file to start a fresh cache.",
            self.path,
            error,
            action,
        )


def _used_bytes(connection: sqlite3.Connection) -> int:
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size
