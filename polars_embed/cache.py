"""The embedding cache: no text is paid for twice.

A vector is stored under a key made of the provider's spec (its identity options,
as :meth:`Provider.spec` gives them, and where that is not all that decides them,
its :meth:`Provider.cache_scope`, such as a compatible server's endpoint), the kind
(query or document) and the text, so any change to what makes the vectors is a
different key. Batches are stored
as they finish, so a column that failed half way resumes where it stopped.

The store is one SQLite file in WAL mode, shared by every thread and process that
uses it. It is on by default for every provider whose vectors are worth keeping:
remote ones because each request costs money and time, local models because
rerunning a notebook cell should not recompute a column (a lookup is hundreds of
times faster than MiniLM on a CPU). The hashing provider and plain callables are
never cached: hashing is cheaper to recompute than to look up, and a callable has
no stable identity to key on.

The cache never makes a call slower or dearer than no cache would:

- **Reads never write**, so they never wait for a writer (in WAL mode a reader sees
  the last commit while another connection writes). Use is recorded coarsely: a
  hit whose stamp is more than :data:`RESTAMP_AFTER_S` old is re-stamped in this
  process's next write, in the same transaction, so the size bound still drops
  the least recently used vectors first.
- **A lock is waited for briefly, once**: this process's writers take turns, and a
  write waits at most :data:`LOCK_WAIT_S` for another process's write lock. A call
  that meets a lock held longer goes on without the cache for the rest of that call
  (one warning), so no later batch of the call waits again; for the next
  :data:`LOCK_WAIT_S`, the process's other calls do not wait for it either.
- **A first run waits**: creating the file, switching it to WAL and creating its
  table wait up to :data:`FIRST_RUN_WAIT_S` for one another, so many threads and
  processes starting on an empty folder at once all get the cache.
- **A read-only file still serves hits** (a file without write permission, or
  one in a read-only folder); its new vectors are not stored, with one warning.
- **Texts in flight are shared**: a call that needs a text another call in this
  process is already embedding (parallel morsels of one Polars collect, several
  threads) waits for that vector instead of paying for it again; see
  :class:`InFlight`. This holds with the cache on or off.

Settings, from :func:`configure_cache` or the environment:

- ``POLARS_EMBED_CACHE=0`` turns it off;
- ``POLARS_EMBED_CACHE_DIR`` moves it (default: the user cache directory);
- ``max_bytes`` bounds its size (default 2 GiB); least recently used vectors go first.

A cache file that is corrupt or truncated gives a warning and the work goes on
without it. Every vector carries a checksum, so a damaged row is a miss, never a
wrong vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import platformdirs

from polars_embed._env import env_flag
from polars_embed.provider import Kind, Provider

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_MAX_BYTES = 2 * 1024**3
FILE_NAME = "embeddings.sqlite3"
_QUERY_CHUNK = 500  # well under SQLite's limit on bound parameters

#: Seconds a write waits for another process's write lock before its call goes on without
#: the cache (this process's own writers queue behind a Python lock instead). A write holds
#: the lock for one batch: about 10 ms for 32 vectors of 384 numbers and 0.1 to 0.4 s for
#: 512 of 1,536 here, so a second covers a queue of other processes' batches; a lock held
#: longer is a long transaction elsewhere, and waiting for it would cost more than the
#: cache saves. A second is also about what one remote request takes.
LOCK_WAIT_S = 1.0
#: Seconds that creating the file, its WAL mode and its table may wait for one another.
FIRST_RUN_WAIT_S = 30.0
#: A hit whose stamp is older than this is re-stamped at the next write.
RESTAMP_AFTER_S = 3600.0
_MAX_RESTAMPS = 100_000  # keys waiting for a new stamp; beyond this, use goes unrecorded
_MAX_WRITE_BYTES = 4 * 1024**2  # vectors one write stores for other calls of this process too

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS vectors (
        key BLOB PRIMARY KEY,
        vector BLOB NOT NULL,
        checksum INTEGER NOT NULL,
        used REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS vectors_by_use ON vectors (used)",
)


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
    directory = os.environ.get("POLARS_EMBED_CACHE_DIR") or platformdirs.user_cache_dir("polars-embed")
    return CacheSettings(
        enabled=bool(_overrides.get("enabled", env_flag("POLARS_EMBED_CACHE") is not False)),
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


def text_keys(provider: Provider, kind: Kind, texts: Sequence[str]) -> list[bytes]:
    """One key per text: what the cache stores a vector under, and what :class:`InFlight` shares."""
    prefix = hashlib.sha256(fingerprint(provider) + kind.encode())
    keys = []
    for text in texts:
        digest = prefix.copy()
        digest.update(text.encode("utf-8", "surrogatepass"))
        keys.append(digest.digest())
    return keys


class EmbeddingCache:
    """Vectors in a SQLite file, by key. Every failure degrades to a miss, with a warning."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._local = threading.local()
        self._broken = False
        self._read_only = False
        self._restamps: set[bytes] = set()
        self._queued: dict[int, list[tuple]] = {}  # rows waiting for this process's next write
        self._lock = threading.Lock()  # guards _restamps, _queued and _read_only
        # This process's writers queue here, so that SQLite's lock is only contended by
        # other processes, and LOCK_WAIT_S bounds a wait for them, not for our own queue.
        self._write_lock = threading.Lock()
        self._locked_until = 0.0  # after a write lock was not had in time, skip writes till then

    def session(self) -> CacheSession:
        """A handle for one engine call, which remembers a lock it met."""
        return CacheSession(self)

    def get(
        self, keys: Sequence[bytes], width: int, session: CacheSession | None = None
    ) -> dict[int, np.ndarray]:
        """The stored vectors among ``keys``, by position in ``keys``. Never writes."""
        found: dict[int, np.ndarray] = {}
        position_of = {key: position for position, key in enumerate(keys)}
        stale_before = time.time() - RESTAMP_AFTER_S
        stale = []
        with self._connection("read", session) as connection:
            if connection is None:
                return found
            for start in range(0, len(keys), _QUERY_CHUNK):
                chunk = list(keys[start : start + _QUERY_CHUNK])
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, vector, checksum, used FROM vectors WHERE key IN ({marks})"
                rows = _patiently(LOCK_WAIT_S, _fetch_all, connection, query, chunk)
                for key, blob, checksum, used in rows:
                    if len(blob) == 4 * width and zlib.crc32(blob) == checksum:
                        found[position_of[key]] = np.frombuffer(blob, dtype=np.float32)
                        if used < stale_before:
                            stale.append(key)
                    else:
                        log.warning("embedding cache %s: a damaged vector was ignored", self.path)
        if stale and not self._read_only:
            with self._lock:
                self._restamps.update(stale[: max(_MAX_RESTAMPS - len(self._restamps), 0)])
        return found

    def put(self, keys: Sequence[bytes], vectors: np.ndarray, session: CacheSession | None = None) -> None:
        """Store one vector per key, re-stamp the hits read since the last write, then drop
        the least recently used past ``max_bytes``.

        Writers of this process take turns, and the one whose turn it is also stores what
        the others queued meanwhile (up to a few MiB), in one transaction: fewer
        transactions leave the lock free more often for other processes' writers.
        """
        now = time.time()
        rows = []
        for key, vector in zip(keys, np.ascontiguousarray(vectors, dtype=np.float32), strict=True):
            blob = vector.tobytes()
            rows.append((key, blob, zlib.crc32(blob), now))
        with self._lock:
            self._queued[id(rows)] = rows
        with self._connection("write", session, writes=True) as connection:
            with self._lock:
                mine = self._queued.pop(id(rows), None)
                if connection is None or mine is None:  # not writing; or stored by the writer before
                    return
                taken, size = [mine], _blob_bytes(mine)
                for key in list(self._queued):  # in the order they came, up to a bounded transaction
                    size += _blob_bytes(self._queued[key])
                    if size > _MAX_WRITE_BYTES:
                        break
                    taken.append(self._queued.pop(key))
                restamps, self._restamps = self._restamps, set()
            # A failed write loses these stamps, and the next read of those rows asks again.
            with connection:
                _patiently(LOCK_WAIT_S, connection.execute, "BEGIN IMMEDIATE")
                for batch in taken:
                    connection.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", batch)
                connection.executemany(
                    "UPDATE vectors SET used = ? WHERE key = ?", [(now, key) for key in restamps]
                )
                self._evict(connection)

    def clear(self) -> None:
        """Drop every stored vector."""
        with self._connection("clear", writes=True) as connection:
            if connection is not None:
                with connection:
                    _patiently(LOCK_WAIT_S, connection.execute, "BEGIN IMMEDIATE")
                    connection.execute("DELETE FROM vectors")

    def size_bytes(self) -> int:
        """Bytes in use by stored vectors (pages in use, not the file's size)."""
        with self._connection("measure") as connection:
            return 0 if connection is None else _patiently(LOCK_WAIT_S, _used_bytes, connection)

    def _evict(self, connection: sqlite3.Connection) -> None:
        """Drop the least recently used vectors past ``max_bytes``, inside the caller's transaction."""
        used = _used_bytes(connection)
        if used <= self.max_bytes:
            return
        count = connection.execute("SELECT count(*) FROM vectors").fetchone()[0]
        # Drop a tenth more than needed so that eviction is not re-run on every put.
        excess = used - 0.9 * self.max_bytes
        drop = max(1, int(count * excess / used))
        connection.execute(
            "DELETE FROM vectors WHERE key IN (SELECT key FROM vectors ORDER BY used LIMIT ?)", (drop,)
        )
        log.info("embedding cache %s: dropped %d least recently used vectors", self.path, drop)

    @contextlib.contextmanager
    def _connection(
        self, action: str, session: CacheSession | None = None, *, writes: bool = False
    ) -> Iterator[sqlite3.Connection | None]:
        """This thread's connection, or ``None`` when the file cannot be used right now.
        With ``writes``, this process's other writers wait until the block ends."""
        skip = self._broken or (session is not None and session.locked) or (writes and self._read_only)
        connection = None if skip else self._connect(action, session)
        if connection is None:
            yield None
            return
        with self._write_lock if writes else contextlib.nullcontext():
            if writes and self._skips_writes(action, session):
                yield None
                return
            try:
                yield connection
            except sqlite3.Error as error:
                self._failed(action, error, session)

    def _connect(self, action: str, session: CacheSession | None) -> sqlite3.Connection | None:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = self._open()
            except (OSError, sqlite3.Error) as error:
                self._failed(action, error, session)
                return None
            self._local.connection = connection
        return connection

    def _open(self) -> sqlite3.Connection:
        """A prepared connection: the file exists, in WAL mode, with its table."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No busy handler: SQLite's sleeps up to 100 ms between tries, and another process's
        # writers, back to back, keep the lock through most of them. _patiently tries often.
        connection = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            _patiently(FIRST_RUN_WAIT_S, self._prepare, connection)
        except sqlite3.OperationalError as error:
            connection.close()
            if _code(error) != "SQLITE_READONLY_DIRECTORY":
                raise
            # No -wal or -shm file can be made beside it: read the file as it stands.
            uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
            connection = sqlite3.connect(uri, uri=True, isolation_level=None)
            connection.execute("SELECT 1 FROM vectors LIMIT 1").fetchall()
            self._read_only_found(error)
        connection.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable at checkpoints, never corrupt
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL and create the table, unless another connection did.

        Retried as a whole while another connection holds a lock (see :meth:`_open`): a
        busy timeout would not cover every lock met here, since a switch to WAL while
        another connection writes to the new file fails at once, whatever the timeout.
        """
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                connection.execute("PRAGMA journal_mode=WAL").fetchall()
            except sqlite3.OperationalError as error:
                if _code(error) != "SQLITE_READONLY":
                    raise
                self._read_only_found(error)  # readable in its own journal mode
        found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vectors'")
        if found.fetchone() is None:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    connection.execute(statement)

    def _read_only_found(self, error: sqlite3.Error) -> None:
        with self._lock:
            if self._read_only:
                return
            self._read_only = True
            self._restamps.clear()
        log.warning(
            "embedding cache %s is read-only (%s): its vectors are used, new ones are not stored. "
            "Make the file and its folder writable, or move the cache with POLARS_EMBED_CACHE_DIR.",
            self.path,
            error,
        )

    def _skips_writes(self, action: str, session: CacheSession | None) -> bool:
        """Whether a lock that another call of this process waited for in vain a moment ago
        should be taken as still held: then this call does not wait for it again either."""
        if time.monotonic() >= self._locked_until:
            return False
        self._locked(action, "another call of this process just waited for it in vain", session)
        return True

    def _locked(self, action: str, detail: object, session: CacheSession | None) -> None:
        if session is not None:
            session.locked = True
        log.warning(
            "embedding cache %s is locked by another connection; could not %s, so this call "
            "goes on without the cache: %s",
            self.path,
            action,
            detail,
        )

    def _failed(self, action: str, error: Exception, session: CacheSession | None) -> None:
        """A lock ends this call's use of the cache; a read-only file stops writes;
        anything else turns the cache off for this process."""
        if isinstance(error, sqlite3.Error) and _is_lock(error):
            self._locked_until = time.monotonic() + LOCK_WAIT_S
            self._locked(action, error, session)
            return
        if isinstance(error, sqlite3.Error) and _code(error).startswith("SQLITE_READONLY"):
            self._read_only_found(error)
            return
        self._broken = True
        log.warning(
            "embedding cache %s is unusable (%s while trying to %s); going on without it. "
            "Delete the file to start a fresh cache.",
            self.path,
            error,
            action,
        )


@dataclass
class CacheSession:
    """One engine call's use of the cache: after a lock is met once, nothing waits for it again."""

    cache: EmbeddingCache
    locked: bool = False

    def get(self, keys: Sequence[bytes], width: int) -> dict[int, np.ndarray]:
        """See :meth:`EmbeddingCache.get`."""
        return self.cache.get(keys, width, self)

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """See :meth:`EmbeddingCache.put`."""
        self.cache.put(keys, vectors, self)


_in_flight: dict[bytes, tuple[_Claim, int]] = {}
_in_flight_lock = threading.Lock()


def _forget_in_flight() -> None:
    """In a forked child: the claims are those of threads it does not have, so none will land."""
    global _in_flight_lock
    _in_flight.clear()
    _in_flight_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_in_flight)


class _Claim:
    """The texts one call has undertaken to embed: its vectors, which rows have landed, and
    whether it is finished (a row that had not landed by then never will)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.landed = np.zeros(len(vectors), dtype=bool)
        self.finished = False
        self.changed = threading.Condition()

    def wait_for(self, row: int) -> bool:
        """Wait until ``row`` lands (``True``) or the call finishes without it (``False``)."""
        with self.changed:
            self.changed.wait_for(lambda: self.landed[row] or self.finished)
            return bool(self.landed[row])


class InFlight:
    """One call's part in sharing texts in flight between the calls of this process.

    Keys are :func:`text_keys`: the provider's identity, the kind and the text, so only
    calls that would get the same vector share it. A call claims, at once, every text
    that no other call has claimed; the others it waits for. It embeds what it claimed,
    marking rows as they land, and only then waits for the rest. Because claims are
    taken at once under one lock and a call waits only after all it owns has landed (or
    it has failed and finished), no two calls ever wait for each other. When the owner
    fails, :meth:`wait` hands those texts back, to be claimed again and sent by the
    caller itself. With ``keys=None`` (providers that are never cached) nothing is shared.
    """

    def __init__(self, keys: Sequence[bytes] | None, vectors: np.ndarray) -> None:
        self._keys = keys
        self._mine = _Claim(vectors)
        self._owned: list[int] = []
        self._awaited: dict[int, tuple[_Claim, int]] = {}

    def __enter__(self) -> InFlight:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Finish: whatever this call owned and did not land is left to its waiters."""
        if self._keys is None:
            return
        with self._mine.changed:
            self._mine.finished = True
            self._mine.changed.notify_all()
        with _in_flight_lock:
            for position in self._owned:
                key = self._keys[position]
                if _in_flight.get(key, (None, 0))[0] is self._mine:
                    del _in_flight[key]

    def claim(self, positions: Sequence[int]) -> list[int]:
        """Take on the texts at ``positions`` that no other call is embedding; return those.
        The others are waited for by :meth:`wait`."""
        if self._keys is None:
            return list(positions)
        owned = []
        width = self._mine.vectors.shape[1]
        with _in_flight_lock:
            for position in positions:
                claim, row = _in_flight.setdefault(self._keys[position], (self._mine, position))
                if claim is self._mine or claim.vectors.shape[1] != width:
                    owned.append(position)
                else:
                    self._awaited[position] = (claim, row)
        self._owned.extend(owned)
        return owned

    def landed(self, positions: Sequence[int]) -> None:
        """The vectors at ``positions`` are in place: calls waiting for them may take them."""
        if self._keys is None or not len(positions):
            return
        with self._mine.changed:
            self._mine.landed[positions] = True
            self._mine.changed.notify_all()

    def wait(self) -> tuple[int, list[int]]:
        """Wait for the texts other calls were embedding, and copy their vectors in.

        Returns how many came that way, and the positions whose owner failed: claim
        and embed those again.
        """
        arrived, failed = 0, []
        for position, (claim, row) in self._awaited.items():
            if claim.wait_for(row):
                self._mine.vectors[position] = claim.vectors[row]
                arrived += 1
            else:
                failed.append(position)
        self._awaited = {}
        return arrived, failed


def _used_bytes(connection: sqlite3.Connection) -> int:
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size


def _patiently(seconds: float, attempt: Callable[..., _T], *args: Any) -> _T:
    """``attempt(*args)``, tried again every few milliseconds while the database is locked,
    for at most ``seconds``; then the lock error is raised."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return attempt(*args)
        except sqlite3.OperationalError as error:
            if not _is_lock(error) or time.monotonic() >= deadline:
                raise
        time.sleep(random.uniform(0.001, 0.004))


def _fetch_all(connection: sqlite3.Connection, query: str, parameters: Sequence[Any]) -> list[Any]:
    return connection.execute(query, parameters).fetchall()


def _blob_bytes(rows: list[tuple]) -> int:
    return len(rows) * len(rows[0][1]) if rows else 0


def _code(error: sqlite3.Error) -> str:
    """SQLite's name for the error, such as ``"SQLITE_BUSY"`` or ``"SQLITE_READONLY_DIRECTORY"``."""
    return getattr(error, "sqlite_errorname", None) or ""


def _is_lock(error: sqlite3.Error) -> bool:
    return _code(error).startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
