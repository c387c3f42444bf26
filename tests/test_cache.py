"""The embedding cache: hits, resume after failure, limits, processes, and damaged files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import polars_embed
from polars_embed import EmbeddingIncompleteError, cache
from tests.providers import CountingProvider, vector_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_overrides", {})
    return tmp_path / cache.FILE_NAME


def expected(texts: list[str], kind: str = "document") -> np.ndarray:
    return np.stack([vector_for(f"{kind}:{text}", 8) for text in texts])


def test_a_rerun_embeds_nothing_new(cache_file: Path) -> None:
    texts = [f"text {i}" for i in range(50)]
    first, second = CountingProvider(), CountingProvider()
    polars_embed.embed(texts, first)
    vectors = polars_embed.embed([*texts, None, "one more"], second)
    assert second.recorder.texts == ["one more"]
    assert polars_embed.last_stats().cache_hits == 50
    np.testing.assert_array_equal(vectors.to_numpy()[:50], expected(texts))
    assert cache_file.exists()


def test_kind_and_identity_options_are_part_of_the_key(cache_file: Path) -> None:
    provider = CountingProvider()
    polars_embed.embed(["x"], provider, kind="document")
    polars_embed.embed(["x"], provider, kind="query")
    polars_embed.embed(["x"], provider.with_options(dims=4))
    polars_embed.embed(["x"], provider.with_options(batch_size=7))  # runtime: same vectors, same key
    assert len(provider.recorder.batches) == 3


def test_a_failed_column_resumes_and_pays_only_for_the_rest(cache_file: Path) -> None:
    texts = [f"row {i}" for i in range(10)]
    with pytest.raises(EmbeddingIncompleteError, match="a rerun resumes"):
        polars_embed.embed(texts, CountingProvider(fail_on=3, batch_size=2))
    rerun = CountingProvider(batch_size=2)
    vectors = polars_embed.embed(texts, rerun)
    assert len(rerun.recorder.texts) == 6
    assert polars_embed.last_stats().cache_hits == 4
    np.testing.assert_array_equal(vectors.to_numpy(), expected(texts))


def test_off_by_switch_and_never_for_hashing_or_callables(
    cache_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polars_embed.embed(["a"], "hashing")
    polars_embed.embed(["a"], lambda texts: np.ones((len(texts), 2)))
    assert not cache_file.exists()
    monkeypatch.setenv("POLARS_EMBED_CACHE", "off")
    polars_embed.embed(["a"], CountingProvider())
    assert not cache_file.exists()
    polars_embed.configure_cache(enabled=True)
    polars_embed.embed(["a"], CountingProvider())
    assert cache_file.exists()


def test_configure_cache_moves_the_file(cache_file: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "vectors.sqlite3"
    settings = polars_embed.configure_cache(path=elsewhere)
    assert settings.path == elsewhere
    polars_embed.embed(["a"], CountingProvider())
    assert elsewhere.exists() and not cache_file.exists()


def test_the_size_limit_drops_the_least_recently_used(cache_file: Path) -> None:
    provider = CountingProvider(dims=64)
    old = [f"old {i}" for i in range(600)]
    recent = [f"recent {i}" for i in range(300)]
    new = [f"new {i}" for i in range(600)]
    polars_embed.embed(old, provider)
    bytes_per_vector = cache.cache_for(provider).size_bytes() / 600
    limit = int(bytes_per_vector * 1000)  # room for recent and new, not for old as well
    polars_embed.configure_cache(max_bytes=limit)
    polars_embed.embed(recent, provider)
    polars_embed.embed(new, provider)
    assert cache.cache_for(provider).size_bytes() <= limit
    polars_embed.embed(recent, provider)
    assert polars_embed.last_stats().cache_hits == 300
    polars_embed.embed(old, provider)
    assert polars_embed.last_stats().cache_hits < 300


def test_threads_share_one_cache(cache_file: Path) -> None:
    provider = CountingProvider()
    texts = [f"shared {i % 40}" for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: polars_embed.embed(texts, provider).to_numpy(), range(8)))
    for result in results:
        np.testing.assert_array_equal(result, expected(texts))


WRITER = textwrap.dedent(
    """
    import sys
    import polars_embed
    from tests.providers import CountingProvider
    start = int(sys.argv[1])
    texts = [f"text {i}" for i in range(start, start + 3000)]
    for chunk in range(0, 3000, 100):
        polars_embed.embed(texts[chunk : chunk + 100], CountingProvider(batch_size=10))
    """
)


def test_two_processes_writing_at_once_lose_and_corrupt_nothing(cache_file: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(start)], env=environment, stderr=subprocess.PIPE, text=True
        )
        for start in (0, 1500)
    ]
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
        assert "cache" not in errors, errors
    texts = [f"text {i}" for i in range(4500)]
    never_called = CountingProvider(fail_on=1)
    vectors = polars_embed.embed(texts, never_called)
    assert never_called.recorder.batches == []
    np.testing.assert_array_equal(vectors.to_numpy(), expected(texts))


def test_a_corrupt_file_warns_and_the_work_goes_on(
    cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_file.write_bytes(b"this is not a database, just bytes " * 100)
    vectors = polars_embed.embed(["a", "b"], CountingProvider())
    np.testing.assert_array_equal(vectors.to_numpy(), expected(["a", "b"]))
    assert "is unusable" in caplog.text


def test_a_truncated_file_never_gives_a_wrong_vector(
    cache_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [f"long enough text number {i}" for i in range(3000)]
    polars_embed.embed(texts, CountingProvider(dims=64))
    with sqlite3.connect(cache_file) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    truncated = tmp_path / "truncated.sqlite3"
    truncated.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])
    polars_embed.configure_cache(path=truncated)
    vectors = polars_embed.embed(texts, CountingProvider(dims=64))
    np.testing.assert_array_equal(
        vectors.to_numpy(), np.stack([vector_for(f"document:{t}", 64) for t in texts])
    )
    assert "is unusable (database disk image is malformed" in caplog.text


def test_a_damaged_row_is_a_miss_not_a_wrong_vector(
    cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    polars_embed.embed(["a"], CountingProvider())
    with sqlite3.connect(cache_file) as connection:
        (blob,) = connection.execute("SELECT vector FROM vectors").fetchone()
        damaged = bytes([blob[0] ^ 0xFF]) + blob[1:]
        connection.execute("UPDATE vectors SET vector = ?", (damaged,))
    again = CountingProvider()
    vectors = polars_embed.embed(["a"], again)
    assert again.recorder.texts == ["a"]
    np.testing.assert_array_equal(vectors.to_numpy(), expected(["a"]))
    assert "damaged vector was ignored" in caplog.text


def hold_the_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection that takes the write lock and keeps it until it is closed."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_held_write_lock_costs_one_short_wait_per_call_and_no_cached_text(
    cache_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "LOCK_WAIT_S", 0.05)
    cached = [f"cached {i}" for i in range(6)]
    new = [f"new {i}" for i in range(6)]
    polars_embed.embed(cached, CountingProvider())
    holder = hold_the_write_lock(cache_file)
    provider = CountingProvider(batch_size=2)  # three batches to store
    try:
        caplog.set_level(logging.WARNING)
        vectors = polars_embed.embed(cached + new, provider)
        locked_warnings = len(caplog.records)
        polars_embed.embed(["another call"], provider)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    np.testing.assert_array_equal(vectors.to_numpy(), expected(cached + new))
    assert sorted(provider.recorder.texts) == sorted([*new, "another call"])  # the reads were served
    assert locked_warnings == 1  # the first batch met the lock; the other two did not wait for it
    assert len(caplog.records) == 2 and all("is locked" in r.getMessage() for r in caplog.records)


def test_reads_never_write_and_use_is_stamped_at_the_next_write(
    cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [f"text {i}" for i in range(20)]
    polars_embed.embed(texts, CountingProvider())
    with sqlite3.connect(cache_file) as connection:
        connection.execute("UPDATE vectors SET used = 0")  # last used long ago
    holder = hold_the_write_lock(cache_file)
    try:
        caplog.set_level(logging.WARNING)
        again = CountingProvider()
        vectors = polars_embed.embed(texts, again)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    np.testing.assert_array_equal(vectors.to_numpy(), expected(texts))
    assert again.recorder.texts == [] and caplog.text == ""
    with sqlite3.connect(cache_file) as connection:
        assert connection.execute("SELECT max(used) FROM vectors").fetchone()[0] == 0
    polars_embed.embed(["a new text"], again)
    with sqlite3.connect(cache_file) as connection:
        stamps = connection.execute("SELECT min(used) FROM vectors").fetchone()[0]
    assert stamps > 0  # every hit was re-stamped in the same write


def test_a_hit_keeps_its_vector_when_newer_unread_ones_are_dropped(
    cache_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "RESTAMP_AFTER_S", 0.0)  # re-stamp every hit, not only old ones
    provider = CountingProvider(dims=64)
    read = [f"read {i}" for i in range(300)]
    unread = [f"unread {i}" for i in range(300)]
    polars_embed.embed(read, provider)
    polars_embed.embed(unread, provider)
    polars_embed.embed(read, provider)  # used again: newer than the unread ones
    bytes_per_vector = cache.cache_for(provider).size_bytes() / 600
    polars_embed.configure_cache(max_bytes=int(bytes_per_vector * 500))
    polars_embed.embed([f"new {i}" for i in range(10)], provider)  # one write, which evicts
    polars_embed.embed(read, provider)
    assert polars_embed.last_stats().cache_hits == 300
    polars_embed.embed(unread, provider)
    assert polars_embed.last_stats().cache_hits < 300


# How a child process's script starts: every warning it logs or issues lands in `records`.
RECORDING_WARNINGS = textwrap.dedent(
    """
    import json, logging, sys, threading, time, warnings
    from pathlib import Path
    import numpy as np
    import polars_embed
    from tests.providers import CountingProvider, vector_for
    logging.captureWarnings(True)
    warnings.simplefilter("always")
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    """
)

READ_ONLY_CALLS = RECORDING_WARNINGS + textwrap.dedent(
    """
    polars_embed.configure_cache(path=sys.argv[1])
    provider = CountingProvider(batch_size=2)
    texts = [f"cached {i}" for i in range(4)]
    if sys.argv[2] == "write":
        polars_embed.embed(texts, provider)
        sys.exit()
    texts += [f"new {i}" for i in range(6)]
    vectors = polars_embed.embed(texts, provider).to_numpy()
    hits = polars_embed.last_stats().cache_hits
    second = polars_embed.embed(["one more", "cached 0"], provider).to_numpy()
    right = np.array_equal(vectors, np.stack([vector_for("document:" + t, 8) for t in texts]))
    print(json.dumps({"sent": provider.recorder.texts, "hits": hits, "right": right,
                      "warnings": [record.getMessage() for record in records]}))
    """
)


def without_write_permission() -> list[str]:
    """A command prefix under which the file permissions bind: root ignores them unless
    its capability to override them is dropped."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to bind")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_read_only_cache_still_serves_hits_and_warns_once(tmp_path: Path, read_only: str) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    path = folder / cache.FILE_NAME
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "POLARS_EMBED_CACHE": "1"}

    subprocess.run([sys.executable, "-c", READ_ONLY_CALLS, str(path), "write"], env=environment, check=True)
    assert sorted(os.listdir(folder)) == [cache.FILE_NAME]  # no -wal or -shm file left beside it
    path.chmod(0o444)
    if read_only == "folder":
        folder.chmod(0o555)
    try:
        command = [*without_write_permission(), sys.executable, "-c", READ_ONLY_CALLS, str(path), "read"]
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["right"] and result["hits"] == 4
    assert result["sent"] == [*(f"new {i}" for i in range(6)), "one more"]
    assert len(result["warnings"]) == 1 and "is read-only" in result["warnings"][0], result["warnings"]


def test_a_first_run_waits_while_another_connection_is_creating_the_file(
    cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process has just created the file (not yet in WAL mode) and is writing to it:
    # SQLite fails a switch to WAL at once then, whatever the busy timeout.
    creator = hold_the_write_lock(cache_file)
    threading.Timer(0.3, creator.rollback).start()
    caplog.set_level(logging.WARNING)
    vectors = polars_embed.embed(["a", "b"], CountingProvider())
    creator.close()
    np.testing.assert_array_equal(vectors.to_numpy(), expected(["a", "b"]))
    assert caplog.text == ""
    never_called = CountingProvider(fail_on=1)
    polars_embed.embed(["a", "b"], never_called)
    assert never_called.recorder.batches == []


FIRST_RUN = RECORDING_WARNINGS + textwrap.dedent(
    """
    process, folder = sys.argv[1], Path(sys.argv[2])
    (folder.parent / f"ready {process}").touch()
    while not (folder.parent / "go").exists():
        time.sleep(0.001)
    barrier = threading.Barrier(8)

    def run(thread):
        barrier.wait()
        texts = [f"shared {i}" for i in range(40)] + [f"{process} {thread} {i}" for i in range(40)]
        polars_embed.embed(texts, CountingProvider(batch_size=4))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps([record.getMessage() for record in records]))
    """
)


def test_many_threads_and_processes_starting_on_an_empty_folder_all_get_the_cache(
    tmp_path: Path, cache_file: Path
) -> None:
    folder = tmp_path / "new cache folder"  # not there yet: the first run creates it
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "POLARS_EMBED_CACHE_DIR": str(folder)}
    environment["POLARS_EMBED_CACHE"] = "1"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_RUN, name, str(folder)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready {name}").exists() for name in ("a", "b")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for process in processes:
        output, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
        assert json.loads(output) == [], output
        assert "cache" not in errors, errors
    polars_embed.configure_cache(path=folder / cache.FILE_NAME)
    texts = [f"shared {i}" for i in range(40)]
    texts += [f"{name} {thread} {i}" for name in ("a", "b") for thread in range(8) for i in range(40)]
    never_called = CountingProvider(fail_on=1)
    vectors = polars_embed.embed(texts, never_called)
    assert never_called.recorder.batches == []
    np.testing.assert_array_equal(vectors.to_numpy(), expected(texts))


def test_on_by_default_in_the_user_cache_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLARS_EMBED_CACHE", raising=False)
    monkeypatch.delenv("POLARS_EMBED_CACHE_DIR", raising=False)
    monkeypatch.setattr(cache, "_overrides", {})
    settings = cache.cache_settings()
    assert settings.enabled and settings.max_bytes == cache.DEFAULT_MAX_BYTES
    assert "polars-embed" in str(settings.path)


# --- texts in flight, shared between concurrent calls ---------------------------------------


@pytest.fixture(params=["cache on", "cache off"])
def either_cache(request: pytest.FixtureRequest, cache_file: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cache off":
        monkeypatch.setenv("POLARS_EMBED_CACHE", "0")
    return request.param


def test_concurrent_calls_send_each_distinct_text_once(
    either_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"text {i}" for i in range(120)]
    # No answer lands before all eight calls have claimed their texts, so each either owns a
    # text or waits for its owner, and the test does not depend on how threads are scheduled.
    claimed = threading.Semaphore(0)
    claim = cache.InFlight.claim

    def counted_claim(self: cache.InFlight, positions: list[int]) -> list[int]:
        owned = claim(self, positions)
        claimed.release()
        return owned

    monkeypatch.setattr(cache.InFlight, "claim", counted_claim)
    all_claimed = threading.Event()
    # Room for every call's requests (8 calls of up to 10 batches) and width checks: the limit
    # is shared, and the gate holds requests open, so with fewer slots the first calls' held
    # requests could take them all before a later call has claimed its texts.
    provider = CountingProvider(batch_size=5, delay=0.01, max_concurrency=100)
    embed_batch = CountingProvider.embed_batch

    def gated(self: CountingProvider, batch: list[str], *, kind: str) -> object:
        all_claimed.wait()
        return embed_batch(self, batch, kind=kind)

    monkeypatch.setattr(CountingProvider, "embed_batch", gated)

    def run(thread: int) -> np.ndarray:
        return polars_embed.embed(texts[thread * 10 : thread * 10 + 50], provider).to_numpy()  # overlapping

    with polars_embed.track_stats() as totals, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(run, thread) for thread in range(8)]
        for _ in range(8):
            claimed.acquire()
        all_claimed.set()
        results = [future.result(timeout=60) for future in futures]
    for thread, result in enumerate(results):
        np.testing.assert_array_equal(result, expected(texts[thread * 10 : thread * 10 + 50]))
    assert sorted(provider.recorder.texts) == sorted(texts)  # each distinct text once: none twice
    assert (totals.embedded, totals.shared, totals.cache_hits) == (120, 8 * 50 - 120, 0)


def test_a_waiting_call_sends_the_texts_itself_when_their_owner_fails(either_cache: str) -> None:
    texts = [f"text {i}" for i in range(6)]
    failing = CountingProvider(fail_on=1, delay=0.3)
    good = CountingProvider()
    with ThreadPoolExecutor(1) as pool:
        owner = pool.submit(polars_embed.embed, texts, failing)
        while not failing.recorder.batches:  # the owner has claimed every text and sent them
            time.sleep(0.001)
        vectors = polars_embed.embed([*texts, "one of its own"], good)
        with pytest.raises(EmbeddingIncompleteError, match="400 bad request"):
            owner.result()
    np.testing.assert_array_equal(vectors.to_numpy(), expected([*texts, "one of its own"]))
    assert sorted(good.recorder.texts) == sorted([*texts, "one of its own"])


def test_calls_that_wait_on_each_other_crosswise_all_finish(either_cache: str) -> None:
    generator = np.random.default_rng(7)
    pool_of_texts = [f"text {i}" for i in range(60)]
    calls = [list(generator.choice(pool_of_texts, size=30, replace=False)) for _ in range(16)]
    providers = [
        CountingProvider(batch_size=3, delay=0.005, fail_on=2 if i % 5 == 0 else 0) for i in range(16)
    ]
    barrier = threading.Barrier(16)

    def run(i: int) -> np.ndarray | None:
        barrier.wait()
        try:
            return polars_embed.embed(calls[i], providers[i]).to_numpy()
        except EmbeddingIncompleteError:
            assert providers[i].fail_on
            return None

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(run, i) for i in range(16)]
        results = [future.result(timeout=60) for future in futures]  # a deadlock would hang here
    for i, result in enumerate(results):
        if result is not None:
            np.testing.assert_array_equal(result, expected(calls[i]))
    assert all(results[i] is not None for i in range(16) if not providers[i].fail_on)


def test_the_overlapping_morsels_of_a_streaming_collect_send_each_text_once(
    cache_file: Path, tmp_path: Path
) -> None:
    texts = [f"text {i % 700}" for i in range(6000)]
    path = tmp_path / "texts.parquet"
    pl.DataFrame({"text": texts}).write_parquet(path, row_group_size=500)
    provider = CountingProvider(batch_size=50, delay=0.01)
    query = pl.scan_parquet(path).with_columns(vec=pl.col("text").embed.with_provider(provider))
    with polars_embed.track_stats() as totals:
        frame = query.collect(engine="streaming")
    np.testing.assert_array_equal(frame["vec"].to_numpy(), expected(texts))
    assert totals.distinct > 700  # several morsels met the same texts
    assert sorted(provider.recorder.texts) == sorted({f"text {i}" for i in range(700)})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_does_not_wait_for_texts_its_parent_has_in_flight() -> None:
    keys = [b"a" * 32, b"b" * 32]
    with cache.InFlight(keys, np.zeros((2, 4), dtype=np.float32)) as parent:
        assert parent.claim([0, 1]) == [0, 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Polars warns about forking a threaded process
            pid = os.fork()
        if pid == 0:  # the child has no thread sending them: it must own them itself
            child = cache.InFlight(keys, np.zeros((2, 4), dtype=np.float32))
            os._exit(0 if child.claim([0, 1]) == [0, 1] else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
