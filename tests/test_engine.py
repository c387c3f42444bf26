"""The engine: nulls, dedup, batching, validation, retries, concurrency, threads, stats."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import polars_embed
import polars_embed.engine as engine_module
from polars_embed import (
    ConfigError,
    EmbeddingIncompleteError,
    InvalidEmbeddingError,
    ProviderError,
    RetryableProviderError,
)
from polars_embed.engine import EmbedJob, resolve_truncate, width_of
from tests.providers import CountingProvider, LongTextsProvider, vector_for


def expected(texts: list[str | None], dims: int = 8, kind: str = "document") -> list[list[float] | None]:
    return [
        None if text is None or not text.strip() else vector_for(f"{kind}:{text}", dims).tolist()
        for text in texts
    ]


class TestNullsBlanksAndDuplicates:
    def test_nulls_and_blanks_become_null_vectors_and_are_never_sent(
        self, counting: CountingProvider
    ) -> None:
        texts = ["alpha", None, "", "   ", "\t\n", "beta", "\u3000", None]
        vectors = polars_embed.embed(texts, counting)
        assert vectors.to_list() == expected(texts)
        assert sorted(counting.recorder.texts) == ["alpha", "beta"]

    def test_each_distinct_text_is_embedded_once(self, counting: CountingProvider) -> None:
        texts = ["a", "b", "a", "c", "b", "a"] * 50
        vectors = polars_embed.embed(texts, counting.with_options(batch_size=2))
        assert sorted(counting.recorder.texts) == ["a", "b", "c"]
        assert vectors.to_list() == expected(texts)

    def test_texts_differing_only_in_whitespace_are_distinct(self, counting: CountingProvider) -> None:
        polars_embed.embed(["a", "a ", " a"], counting)
        assert sorted(counting.recorder.texts) == [" a", "a", "a "]

    def test_all_null_input_makes_no_call(self, counting: CountingProvider) -> None:
        vectors = polars_embed.embed([None, "  "], counting)
        assert vectors.to_list() == [None, None]
        assert vectors.dtype == pl.Array(pl.Float32, 8)
        assert counting.recorder.batches == []

    def test_empty_input(self, counting: CountingProvider) -> None:
        vectors = polars_embed.embed([], counting)
        assert len(vectors) == 0 and vectors.dtype == pl.Array(pl.Float32, 8)


class TestInputs:
    @pytest.mark.parametrize(
        "texts",
        [
            ["x", None, "y"],
            ("x", None, "y"),
            np.array(["x", None, "y"], dtype=object),
            pl.Series("t", ["x", None, "y"]),
            pl.Series("t", ["x", None, "y"], dtype=pl.Categorical),
            pa.array(["x", None, "y"]),
            pa.array(["x", None, "y"], pa.large_string()),
            pa.chunked_array([["x"], [None, "y"]], pa.string_view()),
        ],
        ids=["list", "tuple", "numpy", "series", "categorical", "arrow", "large", "chunked-view"],
    )
    def test_accepted_text_containers(self, texts: object, counting: CountingProvider) -> None:
        vectors = polars_embed.embed(texts, counting)
        assert vectors.to_list() == expected(["x", None, "y"])

    def test_the_series_name_is_kept(self, counting: CountingProvider) -> None:
        assert polars_embed.embed(pl.Series("body", ["x"]), counting).name == "body"

    @pytest.mark.parametrize(
        "texts",
        [pl.Series("n", [1, 2]), [1, 2], ["a", 3], pa.array([1.5])],
        ids=["int-series", "ints", "mixed", "arrow"],
    )
    def test_non_text_is_a_type_error_before_any_provider_call(
        self, texts: object, counting: CountingProvider
    ) -> None:
        with pytest.raises(TypeError, match="embed"):
            polars_embed.embed(texts, counting)
        assert counting.recorder.batches == []

    def test_a_single_string_is_refused_with_a_hint(self, counting: CountingProvider) -> None:
        with pytest.raises(TypeError, match=r"wrap it as \[text\]"):
            polars_embed.embed("one text", counting)

    def test_kind_is_checked(self, counting: CountingProvider) -> None:
        with pytest.raises(ConfigError, match="kind must be one of"):
            polars_embed.embed(["x"], counting, kind="passage")  # type: ignore[arg-type]

    def test_queries_and_documents_are_embedded_differently(self, counting: CountingProvider) -> None:
        document = polars_embed.embed(["x"], counting, kind="document").to_list()
        query = polars_embed.embed(["x"], counting, kind="query").to_list()
        assert document == expected(["x"]) and query == expected(["x"], kind="query")


class TestBatching:
    def test_batches_respect_the_batch_size(self, counting: CountingProvider) -> None:
        texts = [f"text {i}" for i in range(25)]
        polars_embed.embed(texts, counting.with_options(batch_size=10))
        assert [len(batch) for batch in counting.recorder.batches] == [10, 10, 5]

    def test_batches_respect_the_services_hard_limit(self) -> None:
        class LimitedProvider(CountingProvider):
            max_batch_size = 4

        provider = LimitedProvider(batch_size=100)
        polars_embed.embed([f"t{i}" for i in range(10)], provider)
        assert max(len(batch) for batch in provider.recorder.batches) == 4

    def test_batches_respect_token_budgets(self) -> None:
        class TokenLimited(CountingProvider):
            max_batch_tokens = 10

            def count_tokens(self, texts: list[str], *, kind: str = "document") -> list[int]:
                return [len(text.split()) for text in texts]

        texts = ["one two three four"] + [f"w{i} x y" for i in range(9)]
        provider = TokenLimited(batch_size=100)
        polars_embed.embed(texts, provider)
        for batch in provider.recorder.batches:
            assert sum(len(text.split()) for text in batch) <= 10
        assert sorted(provider.recorder.texts) == sorted(texts)

    def test_a_text_over_the_per_text_token_limit_is_named_before_any_request(self) -> None:
        class TextLimited(CountingProvider):
            max_text_tokens = 3

            def count_tokens(self, texts: list[str], *, kind: str = "document") -> list[int]:
                return [len(text.split()) for text in texts]

        provider = TextLimited()
        with pytest.raises(ConfigError, match=r"1 texts are over counting:counting-v1's limit of 3 tokens"):
            polars_embed.embed(["short", "this one is far too long"], provider)
        assert provider.recorder.batches == []

    def test_longest_texts_go_first_so_batches_hold_similar_lengths(self, counting: CountingProvider) -> None:
        texts = ["a", "bbbb", "cc", "ddddd", "eee", "ffffff"]
        polars_embed.embed(texts, counting.with_options(batch_size=2))
        assert counting.recorder.batches == [["ffffff", "ddddd"], ["bbbb", "eee"], ["cc", "a"]]


class TestValidation:
    @pytest.mark.parametrize(
        ("mangle", "message"),
        [
            ("width", "returned vectors of width 7 but declares width 8"),
            ("count", r"returned an array of shape \(2, 8\) for 3 texts"),
            ("nan", "returned NaN or infinite values for 1 of 3 texts"),
            ("strings", "returned <U.* values, not numbers"),
        ],
    )
    def test_a_broken_provider_is_caught_and_named(self, mangle: str, message: str) -> None:
        with pytest.raises(EmbeddingIncompleteError, match="counting:counting-v1 failed") as raised:
            polars_embed.embed(["a", "b", "c"], CountingProvider(mangle=mangle))
        assert isinstance(raised.value.__cause__, InvalidEmbeddingError)
        assert raised.value.__cause__.args[0].startswith("counting:counting-v1 returned")
        assert raised.match(message)

    def test_zero_vectors_are_kept_with_a_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        vectors = polars_embed.embed(["a", "b"], lambda texts: np.zeros((len(texts), 3)))
        assert vectors.to_list() == [[0.0, 0.0, 0.0]] * 2
        assert "2 all-zero vectors" in caplog.text

    def test_float64_answers_are_stored_as_float32(self) -> None:
        vectors = polars_embed.embed(["a"], lambda texts: np.full((len(texts), 2), 0.1, dtype=np.float64))
        assert vectors.dtype == pl.Array(pl.Float32, 2)


class TestFailures:
    def test_retryable_failures_are_retried(self) -> None:
        provider = CountingProvider(flaky=2)
        vectors = polars_embed.embed(["a", "b"], provider)
        assert vectors.to_list() == expected(["a", "b"])
        assert len(provider.recorder.batches) == 3
        assert polars_embed.last_stats().retries == 2

    def test_retries_give_up_after_max_retries(self) -> None:
        provider = CountingProvider(flaky=10, max_retries=2)
        with pytest.raises(EmbeddingIncompleteError, match="429 slow down") as raised:
            polars_embed.embed(["a"], provider)
        assert isinstance(raised.value.__cause__, RetryableProviderError)
        assert len(provider.recorder.batches) == 3

    def test_a_width_learned_from_a_request_is_retried_like_one(self) -> None:
        refused: list[str] = []

        class Probing(CountingProvider):
            """Learns its width from a request, as a remote provider does for a model in no table."""

            @property
            def dimension(self) -> int:
                if not refused:
                    refused.append("probe")
                    raise RetryableProviderError("429 slow down", retry_after=0.01)
                return self.dims

        provider = Probing()
        vectors = polars_embed.embed(["a"], provider)
        assert vectors.to_list() == expected(["a"])
        assert refused == ["probe"] and provider.recorder.batches == [["a"]]
        assert polars_embed.last_stats().retries == 1

    def test_non_retryable_failures_fail_at_once(self) -> None:
        provider = CountingProvider(fail_on=1)
        with pytest.raises(EmbeddingIncompleteError, match="400 bad request"):
            polars_embed.embed(["a"], provider)
        assert len(provider.recorder.batches) == 1

    def test_a_failure_mid_column_says_how_far_it_got_and_returns_nothing(self) -> None:
        provider = CountingProvider(fail_on=3, batch_size=2)
        with pytest.raises(
            EmbeddingIncompleteError, match="after 4 of 10 distinct texts were embedded"
        ) as raised:
            polars_embed.embed([f"t{i}" for i in range(10)], provider)
        assert (raised.value.done, raised.value.total) == (4, 10)

    def test_after_a_concurrent_failure_no_new_batch_starts(self) -> None:
        provider = CountingProvider(fail_on=1, batch_size=1, max_concurrency=2, delay=0.05)
        with pytest.raises(EmbeddingIncompleteError):
            polars_embed.embed([f"t{i}" for i in range(40)], provider)
        assert len(provider.recorder.batches) < 10

    def test_secrets_never_reach_messages_logs_or_tracebacks(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("PE_TEST_KEY", "sk-secret-value")
        provider = CountingProvider(fail_on=2, flaky=1, api_key="$env:PE_TEST_KEY")
        caplog.set_level(logging.DEBUG)
        with pytest.raises(EmbeddingIncompleteError) as raised:
            polars_embed.embed(["a"], provider)
        shown = "".join(traceback.format_exception(raised.value))
        assert "400 bad request (key ***)" in shown
        assert "sk-secret-value" not in shown + caplog.text + repr(provider)


class TestConcurrency:
    def test_requests_run_in_parallel_up_to_the_limit_and_stay_aligned(self) -> None:
        provider = CountingProvider(batch_size=3, max_concurrency=4, delay=0.02)
        texts = [f"text {i}" for i in range(60)]
        vectors = polars_embed.embed(texts, provider)
        assert vectors.to_list() == expected(texts)
        assert provider.recorder.most_in_flight == 4

    def test_the_limit_holds_across_calls_from_many_threads(self) -> None:
        provider = CountingProvider(batch_size=2, max_concurrency=3, delay=0.01)
        chunks = [[f"chunk {c} text {i}" for i in range(10)] for c in range(6)]
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda chunk: polars_embed.embed(chunk, provider), chunks))
        assert provider.recorder.most_in_flight <= 3

    @pytest.mark.parametrize("spec", ["hashing", "counting"])
    def test_eight_threads_at_once_give_the_same_vectors_as_one(self, spec: str) -> None:
        provider = CountingProvider() if spec == "counting" else polars_embed.resolve_provider("hashing")
        texts = [f"sentence {i % 37} about {i % 11}" for i in range(400)]
        alone = polars_embed.embed(texts, provider).to_numpy()
        barrier = threading.Barrier(8)

        def run(_: int) -> np.ndarray:
            barrier.wait()
            return polars_embed.embed(texts, provider).to_numpy()

        with ThreadPoolExecutor(8) as pool:
            for together in pool.map(run, range(8)):
                np.testing.assert_array_equal(together, alone)


class TestAsync:
    def test_aembed(self, counting: CountingProvider) -> None:
        vectors = asyncio.run(polars_embed.aembed(["a", None], counting))
        assert vectors.to_list() == expected(["a", None])

    def test_embed_inside_a_running_loop(self, counting: CountingProvider) -> None:
        async def notebook_cell() -> pl.Series:
            return polars_embed.embed(["a"], counting)

        assert asyncio.run(notebook_cell()).to_list() == expected(["a"])


class TestStatsAndProgress:
    def test_stats_of_a_call(self, counting: CountingProvider) -> None:
        polars_embed.embed(["a b", "a b", None, "c", " "], counting.with_options(batch_size=1))
        stats = polars_embed.last_stats()
        assert (stats.rows, stats.skipped, stats.distinct, stats.embedded, stats.requests) == (5, 2, 2, 2, 2)
        assert stats.tokens == 3
        assert stats.provider == "counting:counting-v1"

    def test_track_stats_adds_up_calls_from_every_thread(self, counting: CountingProvider) -> None:
        with polars_embed.track_stats() as totals, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: polars_embed.embed([f"x{i}", f"y{i}"], counting), range(4)))
        polars_embed.embed(["outside"], counting)
        assert (totals.rows, totals.embedded) == (8, 8)

    def test_each_call_logs_one_line(
        self, counting: CountingProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="polars_embed")
        polars_embed.embed(["a"], counting)
        assert "embedded counting:counting-v1: 1 rows" in caplog.text

    def test_progress_bar_can_be_forced_and_is_off_by_default_in_tests(
        self, counting: CountingProvider, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        polars_embed.embed(["a", "b"], counting)
        assert "embedding" not in capsys.readouterr().err
        monkeypatch.setattr("polars_embed.engine.tqdm", _undelayed_tqdm([]))
        polars_embed.embed(["c", "d"], counting, progress=True)
        assert "embedding (counting:counting-v1)" in capsys.readouterr().err


def _undelayed_tqdm(made: list) -> type:
    """A tqdm that draws at once (not after two seconds), and lists each bar in ``made``."""
    from tqdm import tqdm

    class Undelayed(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["delay"] = 0
            super().__init__(*args, **kwargs)
            made.append(self)

    return Undelayed


def test_provider_errors_are_polars_embed_errors() -> None:
    assert issubclass(EmbeddingIncompleteError, ProviderError)
    assert issubclass(ProviderError, polars_embed.PolarsEmbedError)


class TestTruncation:
    def test_texts_longer_than_the_model_reads_are_counted_and_warned_about_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="polars_embed")
        provider = LongTextsProvider(batch_size=2)
        texts = ["short", "one two three four", "five six seven eight nine", None, "a b c", "x y z w v u"]
        vectors = polars_embed.embed(texts, provider)
        assert vectors.to_list() == expected(texts)  # still embedded, from what the provider was sent
        assert polars_embed.last_stats().truncated == 3
        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        assert warnings == [
            "3 texts were longer than the 3 tokens counting:counting-v1 reads, and only their beginnings "
            "were embedded (e.g. one starting 'one two three four'); shorten or split them, or "
            "pass truncate='error' to refuse them"
        ]

    def test_truncate_error_refuses_them_before_any_request(self) -> None:
        provider = LongTextsProvider()
        with pytest.raises(ConfigError) as raised:
            polars_embed.embed(
                ["short", "one two three four", "five six seven eight"], provider, truncate="error"
            )
        assert str(raised.value) == (
            "2 texts are over the 3 tokens counting:counting-v1 reads, and truncate='error' refuses them, "
            "e.g. one starting 'one two three four'; shorten or split them, or pass truncate='warn' to "
            "embed their beginnings"
        )
        assert provider.recorder.batches == []
        assert polars_embed.embed(["a b c"], provider, truncate="error").null_count() == 0

    def test_an_unknown_rule_is_refused_and_a_providers_own_truncate_option_kept(self) -> None:
        with pytest.raises(ConfigError, match=r"truncate must be one of \('warn', 'error'\), got 'cut'"):
            polars_embed.embed(["a"], "hashing", truncate="cut")
        cohere, rule = resolve_truncate("cohere", "START")
        assert (cohere.resolve("truncate"), rule) == ("START", "warn")
        assert resolve_truncate("cohere", "error")[0].resolve("truncate") == "END"


class TestJobs:
    def test_pieces_from_many_threads_make_one_record_and_one_bar(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="polars_embed")
        made = []
        monkeypatch.setattr("polars_embed.engine.tqdm", _undelayed_tqdm(made))
        provider = CountingProvider(delay=0.01, batch_size=5)
        pieces = [pl.Series("text", [f"piece {p} text {i}" for i in range(10)] + [None]) for p in range(8)]
        started = time.perf_counter()
        with EmbedJob(provider, progress=True) as job, ThreadPoolExecutor(4) as pool:
            results = list(pool.map(job.embed, pieces))
            assert polars_embed.last_stats().rows == 88  # the job's record, as its pieces end
        wall = time.perf_counter() - started
        assert [result.to_list() for result in results] == [expected(piece.to_list()) for piece in pieces]
        stats = polars_embed.last_stats()
        assert (stats.rows, stats.skipped, stats.embedded, stats.requests) == (88, 8, 80, 16)
        assert 0 < stats.seconds <= wall
        assert len(made) == 1 and made[0].n == made[0].total == 80
        assert len([record for record in caplog.records if record.message.startswith("embedded")]) == 1

    def test_track_stats_counts_overlapping_calls_once(self) -> None:
        provider = CountingProvider(delay=0.02, max_concurrency=4)
        started = time.perf_counter()
        with polars_embed.track_stats() as totals, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: polars_embed.embed([f"x{i}", f"y{i}"], provider), range(8)))
        wall = time.perf_counter() - started
        assert totals.rows == 16 and 0 < totals.seconds <= wall

    def test_the_width_of_a_provider_is_probed_within_its_concurrency_limit(self) -> None:
        class Probing(CountingProvider):
            """Learns its width from a request, as a compatible server's model does."""

            @property
            def dimension(self) -> int:
                self.embed_batch(["probe"], kind="document")
                return self.dims

        provider = Probing(max_concurrency=1, delay=0.01)
        with ThreadPoolExecutor(4) as pool:
            widths = list(pool.map(lambda _: width_of(provider), range(4)))
            list(pool.map(lambda i: polars_embed.embed([f"t{i}"], provider), range(4)))
        assert widths == [8] * 4 and provider.recorder.most_in_flight == 1


def test_a_ctrl_c_among_the_submissions_keeps_the_answers_of_those_already_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Requests already sent are paid for: their answers must reach ``store`` (and so the
    # cache) even when Ctrl-C lands before the last batch is submitted.
    sent = threading.Semaphore(0)

    class InterruptedPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.submitted == 2:
                assert sent.acquire(timeout=30) and sent.acquire(timeout=30)  # both on the wire
                raise KeyboardInterrupt
            self.submitted += 1
            return super().submit(*args, **kwargs)

    def request(batch: list[int]) -> int:
        sent.release()
        return batch[0] * 10

    stored: list[int] = []
    monkeypatch.setattr(engine_module, "ThreadPoolExecutor", InterruptedPool)
    with pytest.raises(KeyboardInterrupt):
        engine_module._run_batches(
            [[0], [1], [2], [3]], request, lambda batch, answer: stored.append(answer), concurrency=4
        )
    assert sorted(stored) == [0, 10]


@pytest.mark.parametrize(
    ("value", "flag"),
    [("0", False), (" No ", False), ("OFF", False), ("false", False), ("1", True), ("yes", True), ("", None)],
)
def test_every_switch_reads_its_environment_variable_alike(
    monkeypatch: pytest.MonkeyPatch, value: str, flag: bool | None
) -> None:
    from polars_embed import cache
    from polars_embed._env import env_flag

    monkeypatch.setattr(cache, "_overrides", {})  # configure_cache's settings would come first
    for name in ("POLARS_EMBED_CACHE", "POLARS_EMBED_PROGRESS", "POLARS_EMBED_TORCH_MATMUL"):
        monkeypatch.setenv(name, value)
        assert env_flag(name) is flag
    # Empty is unset: the cache's default is on, progress's is off under pytest.
    assert cache.cache_settings().enabled is (flag is not False)
    assert engine_module._progress_by_default() is bool(flag)
    monkeypatch.delenv("POLARS_EMBED_CACHE")
    assert env_flag("POLARS_EMBED_CACHE") is None
