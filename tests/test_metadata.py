"""Vectors that remember their model: in this process, and through Parquet files."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import duckdb_ext
import polars_embed
from polars_embed import CallableProvider, ConfigError, DuplicateProviderError, UnknownProviderError, metadata
from polars_embed.metadata import (
    METADATA_KEY,
    VectorSpec,
    provider_of,
    read_parquet,
    scan_parquet,
    write_parquet,
)
from tests.providers import CountingProvider

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def counting_is_registered() -> None:
    with contextlib.suppress(DuplicateProviderError):
        polars_embed.get_registry().register(CountingProvider, origin="tests")


@pytest.fixture
def frame() -> pl.DataFrame:
    texts = ["alpha", None, "beta", "gamma", "alpha"]
    return pl.DataFrame({"text": texts, "vec": polars_embed.embed(texts, "hashing", dims=32)})


class TestInThisProcess:
    def test_a_column_knows_its_provider_through_filters_sorts_and_renames(self, frame: pl.DataFrame) -> None:
        changed = frame.filter(pl.col("text") != "alpha").sort("text", descending=True).rename({"vec": "v"})
        found = provider_of(changed["v"])
        assert found is not None and found.label == "hashing:words+chars" and found.dimension == 32
        joined = pl.DataFrame({"text": ["gamma", "beta"], "n": [1, 2]}).join(frame, on="text")
        assert provider_of(joined["vec"]) == found

    def test_vectors_it_never_saw_are_unknown(self) -> None:
        assert provider_of(pl.Series(np.random.default_rng(0).random((4, 32), dtype=np.float32))) is None
        assert provider_of(pl.Series([None, None], dtype=pl.Array(pl.Float32, 3))) is None
        assert provider_of(pl.Series(["not", "vectors"])) is None

    def test_the_same_text_from_two_providers_is_told_apart(self) -> None:
        narrow = polars_embed.embed(["x"], "hashing", dims=8)
        other = polars_embed.embed(["x"], "hashing", dims=8, model="chars")
        assert provider_of(narrow).model == "words+chars"
        assert provider_of(other).model == "chars"


class TestTheStoreStaysBounded:
    """The store that recognises vector columns grows with the vectors made, never with the calls."""

    @pytest.fixture
    def store(self, monkeypatch: pytest.MonkeyPatch) -> metadata._Remembered:
        """An empty store in place of the process's own, which other tests fill."""
        fresh = metadata._Remembered()
        monkeypatch.setattr(metadata, "_remembered", fresh)
        return fresh

    def test_searches_leave_the_store_as_it_was(self, frame: pl.DataFrame) -> None:
        store = metadata._remembered
        before = (len(store), store.chunk_count, store.provider_count)
        con = duckdb.connect()
        duckdb_ext.register(con, "hashing", dims=32)
        con.register("frame", frame)
        for i in range(250):
            assert frame.embed.search(f"query {i}", k=1).height == 1
            assert frame.lazy().embed.search([f"lazy {i}", "alpha"], k=1).collect().height == 2
            polars_embed.embed([f"a query {i}"], "hashing", dims=32, kind="query")
            con.sql(f"SELECT embed_query('sql {i}') FROM frame").fetchall()
        assert (len(store), store.chunk_count, store.provider_count) == before

    def test_many_small_calls_make_few_chunks_and_are_all_recognised(
        self, store: metadata._Remembered
    ) -> None:
        providers = [polars_embed.resolve_provider("hashing", dims=8, model=m) for m in ("words", "chars")]
        calls = [random_vectors(1 + call % 5, seed=call) for call in range(5000)]
        for call, vectors in enumerate(calls):
            store.add(vectors, providers[call % 2])
        assert len(store) == sum(map(len, calls))
        assert store.chunk_count <= 24  # one chunk per call would be 5,000
        for call in (0, 1, 1234, 4999):
            assert store.find(calls[call]) == providers[call % 2]

    def test_it_answers_like_a_plain_dict_of_each_rows_latest_maker(
        self, store: metadata._Remembered
    ) -> None:
        rng = np.random.default_rng(1)
        pool = random_vectors(200, seed=1)
        providers = [polars_embed.resolve_provider("hashing", dims=4, model=m) for m in ("words", "chars")]
        providers.append(providers[0].with_options(batch_size=7))
        latest = {}
        for call in range(400):
            rows = rng.choice(len(pool), size=int(rng.integers(1, 20)), replace=False)
            store.add(pool[rows], providers[call % 3])
            latest.update(dict.fromkeys(rows.tolist(), providers[call % 3]))
        assert store.provider_count == 3  # a row made again may be held twice until its chunks merge
        for row, provider in latest.items():
            assert store.find(pool[row : row + 1]) is provider

    def test_past_the_cap_the_oldest_are_forgotten_first(
        self, store: metadata._Remembered, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(metadata, "_REMEMBERED_ROWS", 1000)
        monkeypatch.setattr(metadata, "_CHUNK_ROWS", 1000 // 16)
        provider = polars_embed.resolve_provider("hashing", dims=8)
        calls = [random_vectors(10, seed=call) for call in range(300)]
        for vectors in calls:
            store.add(vectors, provider)
        assert 1000 - 1000 // 16 <= len(store) <= 1000
        assert store.find(calls[0]) is None and store.find(calls[150]) is None
        assert store.find(calls[-1]) == provider and store.find(calls[-90]) == provider

    def test_a_provider_whose_vectors_are_all_forgotten_or_remade_is_let_go(
        self, store: metadata._Remembered, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(metadata, "_REMEMBERED_ROWS", 1000)
        monkeypatch.setattr(metadata, "_CHUNK_ROWS", 1000 // 16)
        vectors = random_vectors(3, seed=0)
        for _ in range(500):  # a new function each time, as `lambda batch: model(batch)` in a loop makes
            store.add(vectors, CallableProvider(function=lambda batch: batch, dims=4))
        assert len(store) == 3 and store.provider_count <= 2
        for call in range(300):
            store.add(random_vectors(10, seed=call), CallableProvider(function=lambda batch: batch, dims=4))
        assert store.provider_count <= 1000 // 10 + 1

    def test_the_latest_maker_of_the_same_vectors_wins(self, store: metadata._Remembered) -> None:
        texts = [f"text {i}" for i in range(8)]
        first = polars_embed.resolve_provider("hashing", dims=8)
        second = first.with_options(batch_size=3)  # the same vectors, another provider
        polars_embed.embed(texts, first)
        vectors = polars_embed.embed(texts, second)
        assert store.chunk_count == 1 and store.provider_count == 1
        assert provider_of(vectors).batch_size == 3


def random_vectors(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4), dtype=np.float32)


class TestParquet:
    def test_the_spec_travels_in_the_file(self, frame: pl.DataFrame, tmp_path: Path) -> None:
        write_parquet(frame, tmp_path / "docs.parquet")
        stored = json.loads(pl.read_parquet_metadata(tmp_path / "docs.parquet")[METADATA_KEY])
        assert set(stored) == {"vec"}
        assert stored["vec"]["provider"] == "hashing"
        assert stored["vec"]["dimension"] == 32 and stored["vec"]["normalized"] is True
        assert stored["vec"]["options"]["dims"] == 32 and stored["vec"]["library"] == polars_embed.__version__

    def test_another_process_reads_the_provider_back(self, frame: pl.DataFrame, tmp_path: Path) -> None:
        write_parquet(frame, tmp_path / "docs.parquet")
        script = (
            "import polars_embed.metadata as m\n"
            f"frame = m.read_parquet({str(tmp_path / 'docs.parquet')!r})\n"
            "print(m.provider_of(frame['vec']))\n"
            f"lazy = m.scan_parquet({str(tmp_path / 'docs.parquet')!r}).filter(m.pl.col('text') == 'beta')\n"
            "print(m.provider_of(lazy.collect()['vec']))\n"
        )
        printed = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        assert printed.splitlines() == ["HashingProvider(dims=32)"] * 2

    def test_read_and_scan_in_this_process(self, frame: pl.DataFrame, tmp_path: Path) -> None:
        write_parquet(frame, tmp_path / "docs.parquet")
        assert read_parquet(tmp_path / "docs.parquet").equals(frame)
        assert scan_parquet(tmp_path / "docs.parquet").collect().equals(frame)

    def test_other_metadata_is_kept(self, frame: pl.DataFrame, tmp_path: Path) -> None:
        write_parquet(frame, tmp_path / "docs.parquet", metadata={"owner": "analytics"})
        assert pl.read_parquet_metadata(tmp_path / "docs.parquet")["owner"] == "analytics"

    def test_a_column_from_a_callable_is_written_undescribed(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        vectors = polars_embed.embed(["x"], lambda texts: np.ones((len(texts), 2)))
        write_parquet(pl.DataFrame({"vec": vectors}), tmp_path / "f.parquet")
        assert json.loads(pl.read_parquet_metadata(tmp_path / "f.parquet")[METADATA_KEY]) == {}
        assert "a Python callable has no name" in caplog.text


class TestSecrets:
    def test_a_key_is_never_stored_not_even_as_its_variable_name(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("PE_TEST_KEY", "sk-never-in-a-file")
        for api_key in ("$env:PE_TEST_KEY", "sk-never-in-a-file", "$env:PE_UNSET_KEY:sk-never-in-a-file"):
            vectors = polars_embed.embed([f"text for {api_key}"], CountingProvider(api_key=api_key))
            write_parquet(pl.DataFrame({"vec": vectors}), tmp_path / "k.parquet")
            raw = (tmp_path / "k.parquet").read_bytes()
            assert b"sk-never-in-a-file" not in raw and b"PE_TEST_KEY" not in raw
            spec = json.loads(pl.read_parquet_metadata(tmp_path / "k.parquet")[METADATA_KEY])["vec"]
            assert "api_key" not in spec["options"]
            assert provider_of(read_parquet(tmp_path / "k.parquet")["vec"]).api_key is None


def tampered(**changes: object) -> VectorSpec:
    spec = VectorSpec.of(polars_embed.resolve_provider("hashing", dims=32))
    data = json.loads(spec.to_json())
    for key, value in changes.items():
        if key.startswith("option_"):
            data["options"][key.removeprefix("option_")] = value
        else:
            data[key] = value
    return VectorSpec.from_json(json.dumps(data))


class TestUntrustedMetadata:
    def test_an_honest_spec_rebuilds_its_provider(self) -> None:
        assert tampered().create_provider() == polars_embed.resolve_provider("hashing", dims=32)

    def test_unknown_top_level_keys(self) -> None:
        with pytest.raises(ConfigError, match=r"unknown keys \['exec'\]"):
            tampered(exec="import os")

    def test_wrong_types(self) -> None:
        with pytest.raises(ConfigError, match="'dimension' must be a int"):
            tampered(dimension="32")

    def test_unknown_option(self) -> None:
        with pytest.raises(ConfigError, match="unknown option 'callback'"):
            tampered(option_callback="os.system").create_provider()

    def test_an_unknown_provider_is_an_error_not_an_import(self) -> None:
        with pytest.raises(
            UnknownProviderError, match=r"not installed: no embedding provider named 'evil\.module'"
        ):
            tampered(provider="evil.module").create_provider()
        assert "evil" not in sys.modules

    def test_trust_remote_code_can_never_come_from_a_file(self) -> None:
        spec = VectorSpec(
            provider="sentence-transformers", options={"trust_remote_code": True}, dimension=384
        )
        with pytest.raises(
            ConfigError, match="code_only option 'trust_remote_code', which only code may set"
        ):
            spec.create_provider()

    def test_runtime_options_do_not_come_from_a_file(self) -> None:
        spec = VectorSpec(provider="sentence-transformers", options={"device": "cuda"}, dimension=384)
        with pytest.raises(ConfigError, match="runtime option 'device'"):
            spec.create_provider()

    def test_a_secret_value_is_refused(self) -> None:
        spec = VectorSpec(provider="counting", options={"api_key": "sk-pasted-into-a-file"}, dimension=8)
        with pytest.raises(
            ConfigError, match=r"names a credential \('api_key'\).*configure\('counting'"
        ) as raised:
            spec.create_provider()
        assert "sk-pasted-into-a-file" not in str(raised.value)

    def test_a_reference_in_an_identity_option_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="option 'model' holds a reference"):
            tampered(option_model="$env:HOME").create_provider()

    def test_another_provider_version_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="version 2 of provider 'hashing'"):
            tampered(version=2).create_provider()

    def test_a_width_that_disagrees_with_the_column(self, frame: pl.DataFrame, tmp_path: Path) -> None:
        write_parquet(frame, tmp_path / "docs.parquet")
        metadata = pl.read_parquet_metadata(tmp_path / "docs.parquet")
        stored = json.loads(metadata[METADATA_KEY])
        stored["vec"]["dimension"] = 64
        frame.write_parquet(tmp_path / "lying.parquet", metadata={METADATA_KEY: json.dumps(stored)})
        with pytest.raises(ConfigError, match="its metadata says 64-wide"):
            read_parquet(tmp_path / "lying.parquet")

    @pytest.mark.parametrize("text", ["not json", "[1, 2]"])
    def test_garbage(self, text: str) -> None:
        with pytest.raises(ConfigError):
            VectorSpec.from_json(text)
