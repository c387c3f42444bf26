"""The embedding cache: hits, resume after failure, limits, processes, and damaged files."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
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


def test_a_locked_file_warns_and_the_work_goes_on(
    cache_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "_BUSY_TIMEOUT_S", 0.05)
    polars_embed.configure_cache(path=cache_file.with_name("locked.sqlite3"))
    polars_embed.embed(["create the file"], CountingProvider())
    holder = sqlite3.connect(cache_file.with_name("locked.sqlite3"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        caplog.set_level(logging.WARNING)
        vectors = polars_embed.embed(["a", "b"], CountingProvider())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    np.testing.assert_array_equal(vectors.to_numpy(), expected(["a", "b"]))
    assert "is locked" in caplog.text


def test_on_by_default_in_the_user_cache_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLARS_EMBED_CACHE", raising=False)
    monkeypatch.delenv("POLARS_EMBED_CACHE_DIR", raising=False)
    monkeypatch.setattr(cache, "_overrides", {})
    settings = cache.cache_settings()
    assert settings.enabled and settings.max_bytes == cache.DEFAULT_MAX_BYTES
    assert "polars-embed" in str(settings.path)
