"""The trust model: a file is data, every value read back is bounded, references stay references.

Remote providers go through their real SDKs to fake services on 127.0.0.1 that count every
connection they accept, so "nothing was sent" is checked at the socket.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

import duckdb_ext
import polars_embed
from duckdb_ext._catalog import quote_literal
from polars_embed import AuthenticationError, ConfigError, EmbeddingIncompleteError
from polars_embed.metadata import METADATA_KEY, VectorSpec, provider_of, read_parquet, scan_parquet
from tests.fake_servers import FakeCohere, FakeOpenAI, FakeServer

pytest.importorskip("cohere")
pytest.importorskip("openai")

SECRET = "sk-the-users-own-secret-0123456789"
SDK_VARIABLES = ("CO_API_KEY", "COHERE_API_KEY", "CO_API_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")
SHORT = 300  # the longest error message a refusal may give


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield
    registry = polars_embed.get_registry()
    for name in registry.names():
        registry.configure(name)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def spec_for(provider: str, server: FakeServer, **options: Any) -> dict[str, Any]:
    """What a hostile file says about its vectors: the user's key, sent to the file's server."""
    model, url = (
        ("embed-english-light-v3.0", server.url)
        if provider == "cohere"
        else ("text-embedding-3-small", f"{server.url}/v1")
    )
    chosen = {"model": model, "base_url": url, **options}
    if provider == "openai":
        chosen.setdefault("dimensions", 16)
    width = 384 if provider == "cohere" else 16
    return {"provider": provider, "options": chosen, "dimension": width, "normalized": False, "version": 1}


def frame_of(width: int) -> pl.DataFrame:
    texts = ["alpha", "beta", None]
    vectors = polars_embed.embed(["alpha", "beta", "gamma"], "hashing", dims=width)
    return pl.DataFrame({"text": texts, "vec": vectors})


def write_described(path: Path, frame: pl.DataFrame, specs: dict[str, Any] | str) -> Path:
    payload = specs if isinstance(specs, str) else json.dumps(specs)
    frame.write_parquet(path, metadata={METADATA_KEY: payload})
    return path


def table_described(con: duckdb.DuckDBPyConnection, width: int, comment: str) -> None:
    con.register(
        "docs_frame",
        frame_of(width).with_columns(
            pl.col("vec").head(2).append(pl.Series([None], dtype=pl.Array(pl.Float32, width)))
        ),
    )
    con.sql("CREATE TABLE docs AS SELECT * FROM docs_frame")
    con.unregister("docs_frame")
    con.sql("UPDATE docs SET text = 'gamma' WHERE text IS NULL")
    con.sql(f"COMMENT ON COLUMN docs.vec IS {quote_literal(comment)}")


@pytest.fixture(params=["cohere", "openai"])
def service(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeServer]]:
    with (FakeCohere if request.param == "cohere" else FakeOpenAI)(key=None) as server:
        yield request.param, server


class TestAFileNeverChoosesWhereRequestsGo:
    """A file names an endpoint and a credential; nothing may reach that endpoint."""

    @pytest.fixture(params=["a variable of the file's choice", "the provider's own variable"])
    def hostile(
        self, request: pytest.FixtureRequest, service: tuple[str, FakeServer], monkeypatch: pytest.MonkeyPatch
    ) -> tuple[dict[str, Any], FakeServer]:
        name, server = service
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        monkeypatch.setenv("CO_API_KEY" if name == "cohere" else "OPENAI_API_KEY", SECRET)
        if request.param == "a variable of the file's choice":
            return spec_for(name, server, api_key="$env:AWS_SECRET_ACCESS_KEY"), server
        return spec_for(name, server), server

    @contextlib.contextmanager
    def refused(self, server: FakeServer) -> Iterator[None]:
        with pytest.raises(ConfigError, match=r"base_url|credential") as raised:
            yield
        message = str(raised.value)
        assert "configure(" in message and len(message) < SHORT and SECRET not in message
        assert server.connections == 0 and server.requests == []

    @pytest.mark.parametrize("lazy", [False, True], ids=["read_parquet", "scan_parquet"])
    def test_parquet(self, hostile: tuple[dict[str, Any], FakeServer], tmp_path: Path, lazy: bool) -> None:
        spec, server = hostile
        path = write_described(tmp_path / "hostile.parquet", frame_of(spec["dimension"]), {"vec": spec})
        with self.refused(server):
            if lazy:
                scan_parquet(path).embed.search("q", on="vec").collect()
            else:
                read_parquet(path).embed.search("q", on="vec")

    def test_duckdb_search_and_embed_table(
        self, hostile: tuple[dict[str, Any], FakeServer], con: duckdb.DuckDBPyConnection
    ) -> None:
        spec, server = hostile
        table_described(con, spec["dimension"], json.dumps(spec))
        with self.refused(server):
            duckdb_ext.search(con, "docs", "vec", "q").fetchall()
        with self.refused(server):
            duckdb_ext.embed_table(con, "docs", "text", into="vec")
        assert con.sql("SELECT count(*) FROM docs WHERE vec IS NULL").fetchall() == [(1,)]


class TestYourConfigurationSuppliesTheRest:
    """Files carry identity only; the endpoint and the key come from the user, even for old files."""

    @pytest.fixture
    def local_server(self) -> Iterator[FakeOpenAI]:
        with FakeOpenAI(key=None, widths={"nomic-embed-text": 24}) as server:
            yield server

    def written(self, server: FakeOpenAI, tmp_path: Path) -> Path:
        provider = polars_embed.resolve_provider("openai:nomic-embed-text", base_url=f"{server.url}/v1")
        frame = pl.DataFrame({"text": ["alpha", "beta"]}).with_columns(
            vec=pl.col("text").embed.with_provider(provider)
        )
        frame.embed.write_parquet(tmp_path / "docs.parquet")
        return tmp_path / "docs.parquet"

    def test_the_file_holds_no_endpoint_and_no_key(self, local_server: FakeOpenAI, tmp_path: Path) -> None:
        stored = json.loads(pl.read_parquet_metadata(self.written(local_server, tmp_path))[METADATA_KEY])[
            "vec"
        ]
        assert stored["options"] == {"model": "nomic-embed-text", "dimensions": None}

    def test_a_registry_default_says_where_the_query_goes(
        self, local_server: FakeOpenAI, tmp_path: Path
    ) -> None:
        path = self.written(local_server, tmp_path)
        polars_embed.get_registry().configure("openai", base_url=f"{local_server.url}/v1")
        sent = len(local_server.requests)
        hits = read_parquet(path).embed.search("alpha", on="vec", k=1)
        assert hits["text"].to_list() == ["alpha"]
        assert [request.texts for request in local_server.requests[sent:]][-1] == ["alpha"]

    def test_an_explicit_provider_is_compared_on_identity_only(
        self, local_server: FakeOpenAI, tmp_path: Path
    ) -> None:
        frame = read_parquet(self.written(local_server, tmp_path))
        mine = polars_embed.resolve_provider(
            "openai:nomic-embed-text",
            base_url=f"{local_server.url}/v1",
            api_key="$env:PE_UNSET:local",
            timeout=5,
            dims=24,
        )
        assert frame.embed.search("beta", on="vec", k=1, provider=mine)["text"].to_list() == ["beta"]
        other = mine.with_options(model="text-embedding-3-small", dimensions=24)
        with pytest.raises(
            ConfigError,
            match=r"\(dimensions None stored, 24 given; model 'nomic-embed-text' stored, "
            r"'text-embedding-3-small' given\)",
        ):
            frame.embed.search("beta", on="vec", k=1, provider=other)

    def test_duckdb_search_and_resume_with_a_registry_default(
        self, local_server: FakeOpenAI, con: duckdb.DuckDBPyConnection
    ) -> None:
        con.sql("CREATE TABLE docs AS SELECT * FROM (VALUES ('alpha'), ('beta')) t(text)")
        provider = polars_embed.resolve_provider("openai:nomic-embed-text", base_url=f"{local_server.url}/v1")
        assert duckdb_ext.embed_table(con, "docs", "text", into="vec", provider=provider) == 2
        (comment,) = con.sql("SELECT comment FROM duckdb_columns() WHERE column_name = 'vec'").fetchall()[0]
        assert "base_url" not in comment and "127.0.0.1" not in comment
        polars_embed.get_registry().configure("openai", base_url=f"{local_server.url}/v1")
        con.sql("INSERT INTO docs VALUES ('gamma', NULL)")
        assert duckdb_ext.embed_table(con, "docs", "text", into="vec") == 1
        assert duckdb_ext.search(con, "docs", "vec", "gamma", k=1).select("text").fetchall() == [("gamma",)]
        assert local_server.texts.count("gamma") == 2  # the row, then the query

    def test_a_file_from_polars_embed_0_1_is_read_once_you_configure(
        self, local_server: FakeOpenAI, tmp_path: Path
    ) -> None:
        # 0.1 wrote base_url as an identity option and the key as a reference to its variable.
        old = {
            "provider": "openai",
            "options": {
                "model": "nomic-embed-text",
                "dimensions": None,
                "base_url": "http://old-host:11434/v1",
                "api_key": "$env:OPENAI_API_KEY",
            },
            "dimension": 16,
            "normalized": False,
            "version": 1,
            "library": "0.1.0",
        }
        path = write_described(tmp_path / "old.parquet", frame_of(16), {"vec": old})
        with pytest.raises(
            ConfigError, match=r"sets runtime option 'base_url'.*configure\('openai', base_url=\.\.\.\)"
        ):
            read_parquet(path)
        polars_embed.get_registry().configure("openai", base_url=f"{local_server.url}/v1")
        provider = provider_of(read_parquet(path)["vec"])
        assert provider.base_url == f"{local_server.url}/v1" and provider.api_key is None
        # What 0.1 wrote for every remote provider is harmless with no configuration at all:
        # a null base_url, and a reference to the provider's own key variable.
        polars_embed.get_registry().configure("openai")
        harmless = {**old, "options": {**old["options"], "base_url": None}}
        assert VectorSpec.from_data(harmless).create_provider().api_key is None

    def test_defaults_take_only_what_a_file_may_not_say(self) -> None:
        registry = polars_embed.get_registry()
        with pytest.raises(ConfigError, match="'model' of provider 'openai' is an identity option"):
            registry.configure("openai", model="text-embedding-3-large")
        with pytest.raises(
            ConfigError, match="'trust_remote_code' of provider 'sentence-transformers' is code-only"
        ):
            registry.configure("sentence-transformers", trust_remote_code=True)
        with pytest.raises(ConfigError, match="has no option 'bse_url'"):
            registry.configure("openai", bse_url="http://x")
        with pytest.raises(
            ConfigError, match=r"'timeout' of provider 'cohere' must be from 0\.001 to 86400, got -1"
        ):
            registry.configure("cohere", timeout=-1)
        registry.configure("cohere", timeout=3, api_key="$env:TEAM_KEY")
        assert registry.create("cohere").timeout == 3
        assert registry.create("cohere", timeout=9).timeout == 9  # what is given wins
        registry.configure("cohere")
        assert registry.create("cohere").timeout == 60.0 and registry.defaults("cohere") == {}


class TestBounds:
    def test_hashing_n_grams_and_width_are_bounded_in_code_references_and_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(
            ConfigError, match="'max_n' of provider 'hashing' must be from 1 to 32, got 1000000000"
        ):
            polars_embed.resolve_provider("hashing", max_n=10**9)
        with pytest.raises(ConfigError, match="'dims' of provider 'hashing' must be from 1 to 65536"):
            polars_embed.resolve_provider("hashing", dims=10**7)
        monkeypatch.setenv("PE_TEST_MAX_N", str(10**9))
        referenced = polars_embed.resolve_provider("hashing", max_n="$env:PE_TEST_MAX_N")
        with pytest.raises(ConfigError, match=r"got 1000000000 from '\$env:PE_TEST_MAX_N'"):
            polars_embed.embed(["a"], referenced)
        spec = {
            "provider": "hashing",
            "options": {"model": "words+chars", "dims": 8, "min_n": 3, "max_n": 10**9},
            "dimension": 8,
            "version": 1,
        }
        path = write_described(tmp_path / "slow.parquet", frame_of(8), {"vec": spec})
        with pytest.raises(ConfigError, match="must be from 1 to 32") as raised:
            read_parquet(path)
        assert len(str(raised.value)) < SHORT

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            (
                json.dumps(
                    {"vec": {"provider": "hashing", "options": {"model": "x" * 10_000_000}, "dimension": 8}}
                ),
                "10000.* characters long; at most 1048576",
            ),
            (
                json.dumps(
                    {"vec": {"provider": "hashing", "options": {"model": "x" * 100_000}, "dimension": 8}}
                ),
                "'model' is 100000 characters long; at most 4096",
            ),
            (
                '{"vec": {"provider": "hashing", "options": ' + "[" * 200_000 + "]" * 200_000 + "}}",
                "characters long|nested too deeply",
            ),
            (
                '{"vec": {"provider": "hashing", "options": ' + "[" * 100_000 + "]" * 100_000 + "}}",
                "nested too deeply",
            ),
            (
                json.dumps({"vec": {"provider": "hashing", "options": {"model": ["words"]}, "dimension": 8}}),
                "must be a string, a number, true, false or null",
            ),
            (
                json.dumps({"vec": {"provider": "hashing", "options": {}, "dimension": 10**9}}),
                "'dimension' must have a value from 1 to 65536",
            ),
            ('{"vec": {"provider": "hashing", "options": {}, "dimension": NaN}}', "NaN"),
            (
                json.dumps({"vec": {"provider": "hashing" * 100, "dimension": 8}}),
                "'provider' must have a length from 1 to 100",
            ),
            (
                json.dumps(
                    {"vec": {"provider": "hashing", "dimension": 8, **{f"k{i}" * 50: 1 for i in range(1000)}}}
                ),
                "unknown keys",
            ),
            ("9" * 10_000, "cannot be read"),
        ],
        ids=[
            "10 MB",
            "a long string",
            "huge and deep",
            "deep",
            "a list",
            "a huge width",
            "NaN",
            "a long name",
            "many keys",
            "a huge number",
        ],
    )
    def test_what_a_file_says_is_bounded(self, payload: str, message: str, tmp_path: Path) -> None:
        path = write_described(tmp_path / "f.parquet", frame_of(8), payload)
        with pytest.raises(ConfigError, match=message) as raised:
            read_parquet(path)
        assert len(str(raised.value)) < SHORT

    @pytest.mark.parametrize(
        ("comment", "message"),
        [
            (
                '{"provider": "hashing", "options": {"model": "' + "x" * 10_000_000 + '"}, "dimension": 8}',
                "at most 65536",
            ),
            (
                '{"provider": "hashing", "options": ' + "[" * 30_000 + "]" * 30_000 + ', "dimension": 8}',
                "nested too deeply",
            ),
        ],
        ids=["10 MB", "deep"],
    )
    def test_what_a_duckdb_comment_says_is_bounded(
        self, con: duckdb.DuckDBPyConnection, comment: str, message: str
    ) -> None:
        table_described(con, 8, comment)
        for call in (
            lambda: duckdb_ext.search(con, "docs", "vec", "q").fetchall(),
            lambda: duckdb_ext.embed_table(con, "docs", "text", into="vec"),
        ):
            with pytest.raises(ConfigError, match=message) as raised:
                call()
            assert len(str(raised.value)) < SHORT

    def test_a_note_in_a_comment_is_still_someone_elses(self, con: duckdb.DuckDBPyConnection) -> None:
        table_described(con, 8, "x" * 1_000_000)
        with pytest.raises(ConfigError, match="does not describe its vectors") as raised:
            duckdb_ext.embed_table(con, "docs", "text", into="vec", provider="hashing", dims=8)
        assert len(str(raised.value)) < SHORT

    def test_a_long_value_is_quoted_by_a_short_prefix(self) -> None:
        with pytest.raises(ConfigError, match=r"takes a int, got 'xxxx.*\(10000002 characters\)") as raised:
            polars_embed.resolve_provider("hashing", dims="x" * 10_000_000)
        assert len(str(raised.value)) < SHORT


class TestReferences:
    def test_a_var_key_is_written_and_read_back(
        self, service: tuple[str, FakeServer], tmp_path: Path
    ) -> None:
        name, server = service
        registry = polars_embed.get_registry()
        registry.set_var("pe_team_key", SECRET)
        options = spec_for(name, server)["options"]
        provider = polars_embed.resolve_provider(
            name, **options, api_key="$var:pe_team_key", dims="$var:pe_width:16" if name == "openai" else None
        )
        frame = pl.DataFrame({"text": ["alpha"]}).with_columns(
            vec=pl.col("text").embed.with_provider(provider)
        )
        frame.embed.write_parquet(tmp_path / "docs.parquet")
        assert SECRET.encode() not in (tmp_path / "docs.parquet").read_bytes()
        registry.configure(name, base_url=options["base_url"], api_key="$var:pe_team_key")
        back = provider_of(read_parquet(tmp_path / "docs.parquet")["vec"])
        assert back.api_key == "$var:pe_team_key" and back.spec() == provider.spec()
        sent = len(server.requests)
        assert read_parquet(tmp_path / "docs.parquet").embed.search("alpha", on="vec", k=1).height == 1
        assert server.requests[sent].headers["authorization"] == f"Bearer {SECRET}"

    @pytest.mark.parametrize(
        "reference", ["$env:PE_UNSET_DIMS:12", "$var:pe_unset_width:12", "$var:pe_width"]
    )
    def test_references_travel_as_references(self, reference: str) -> None:
        polars_embed.get_registry().set_var("pe_width", 12)
        provider = polars_embed.resolve_provider("hashing", dims=reference)
        back = pickle.loads(pickle.dumps(provider))
        assert back == provider and back.dims == reference and back.dimension == 12
        assert provider.spec()["dims"] == 12  # what a file gets: what made the vectors

    def test_a_secret_default_is_masked_everywhere_and_refused_on_read(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        with FakeOpenAI(key="the-server-key") as server:
            provider = polars_embed.resolve_provider(
                "openai",
                model="text-embedding-3-small",
                dimensions=8,
                base_url=f"{server.url}/v1",
                api_key=f"$env:PE_UNSET_KEY:{SECRET}",
            )
            assert "api_key='$env:PE_UNSET_KEY:***'" in repr(provider)
            with pytest.raises(EmbeddingIncompleteError) as raised:
                polars_embed.embed(["alpha"], provider)
            assert isinstance(raised.value.__cause__, AuthenticationError)
            used = server.requests[0].headers["authorization"]
            assert used == f"Bearer {SECRET}"  # it was used, only never shown
        with pytest.raises(ConfigError, match="pass api_key='\\$env:NAME'") as refused:
            pickle.dumps(provider)
        shown = [
            repr(provider),
            str(provider.spec()),
            str(raised.value),
            str(raised.value.__cause__),
            caplog.text,
            str(refused.value),
        ]
        assert not any(SECRET in text for text in shown)
        spec = {
            "provider": "openai",
            "options": {"model": "text-embedding-3-small", "api_key": f"$env:PE_UNSET_KEY:{SECRET}"},
            "dimension": 1536,
            "version": 1,
        }
        with pytest.raises(ConfigError, match="names a credential") as read:
            VectorSpec.from_data(spec).create_provider()
        assert SECRET not in str(read.value)


class TestPathsFromFiles:
    @pytest.mark.parametrize(
        "model",
        [
            "/opt/models/evil",
            "~/models/evil",
            "../evil",
            "./evil",
            "org/../../evil",
            "C:\\models\\evil",
            "a/b/c",
        ],
    )
    def test_a_local_path_is_never_loaded_from_a_file(self, model: str) -> None:
        spec = VectorSpec(provider="sentence-transformers", options={"model": model}, dimension=384)
        with pytest.raises(ConfigError, match=r"not a hub model name.*never names a local path"):
            spec.create_provider()

    def test_a_hub_name_that_is_a_directory_here_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "org" / "model").mkdir(parents=True)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError, match="names a local path here"):
            VectorSpec(
                provider="sentence-transformers", options={"model": "org/model"}, dimension=384
            ).create_provider()

    def test_a_hub_name_is_read_and_a_path_is_fine_in_code(self, tmp_path: Path) -> None:
        spec = VectorSpec(
            provider="sentence-transformers",
            options={"model": "sentence-transformers/all-MiniLM-L6-v2"},
            dimension=384,
        )
        assert spec.create_provider().model == "sentence-transformers/all-MiniLM-L6-v2"
        assert polars_embed.resolve_provider("sentence-transformers", model=str(tmp_path)).model == str(
            tmp_path
        )


def two_wide(texts: list[str]) -> np.ndarray:
    """A provider function another process can import (a lambda could not be pickled)."""
    return np.array([[len(text), 1.0] for text in texts], dtype=np.float32)


BUILT_IN = {
    "hashing": lambda: polars_embed.resolve_provider("hashing", dims="$env:PE_UNSET_DIMS:16", max_n=4),
    "sentence-transformers": lambda: polars_embed.resolve_provider(
        "sentence-transformers", device="$env:PE_UNSET_DEVICE:cpu", query_prompt="query: ", batch_size=8
    ),
    "cohere": lambda: polars_embed.resolve_provider(
        "cohere:embed-v4.0", output_dimension=256, api_key="$env:PE_TEST_KEY", base_url="http://127.0.0.1:9/"
    ),
    "openai": lambda: polars_embed.resolve_provider(
        "openai:nomic-embed-text",
        api_key="$var:pe_team_key",
        base_url="http://127.0.0.1:9/v1",
        dims=24,
        timeout=5,
    ),
    "callable": lambda: polars_embed.resolve_provider(two_wide, dims=2),
}


class TestProvidersTravel:
    @pytest.mark.parametrize("name", sorted(BUILT_IN))
    def test_every_provider_pickles_to_an_equal_one_without_its_key(
        self, name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PE_TEST_KEY", SECRET)
        polars_embed.get_registry().set_var("pe_team_key", SECRET)
        provider = BUILT_IN[name]()
        pickled = pickle.dumps(provider)
        back = pickle.loads(pickled)
        assert back == provider and type(back) is type(provider) and repr(back) == repr(provider)
        assert back.spec() == provider.spec()
        assert SECRET.encode() not in pickled

    @pytest.mark.parametrize("name", ["cohere", "openai"])
    def test_a_literal_key_is_never_pickled(self, name: str) -> None:
        provider = polars_embed.resolve_provider(name, api_key=SECRET)
        with pytest.raises(ConfigError, match=r"never pickled.*pass api_key='\$env:NAME'") as raised:
            pickle.dumps(provider)
        assert SECRET not in str(raised.value)
        assert copy.deepcopy(provider) is provider  # in this process it may be copied freely

    def test_clients_and_probes_stay_behind_and_are_rebuilt(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PE_TEST_KEY", "test-key")
        with FakeOpenAI(widths={"my-model": 8}) as server:
            provider = polars_embed.resolve_provider(
                "openai:my-model", base_url=f"{server.url}/v1", api_key="$env:PE_TEST_KEY"
            )
            first = polars_embed.embed(["alpha"], provider)
            assert {"_sdk_client", "_width_from_probe", "_registry"} <= set(provider.__dict__)
            assert pickle.loads(pickle.dumps(provider)) is provider  # this process built it already
            polars_embed.get_registry()._providers.clear()  # as in a process that has built nothing
            back = pickle.loads(pickle.dumps(provider))
            assert not {"_sdk_client", "_width_from_probe"} & set(back.__dict__)
            assert polars_embed.embed(["alpha", "beta"], back)[0].to_list() == first[0].to_list()
            assert len(server.requests) == 4  # a probe and a batch, each side

    def test_registry_defaults_apply_on_the_unpickling_side(self) -> None:
        registry = polars_embed.get_registry()
        plain = pickle.dumps(
            polars_embed.resolve_provider("openai:nomic-embed-text", api_key="$env:PE_TEST_KEY")
        )
        pointed = pickle.dumps(
            polars_embed.resolve_provider("openai:nomic-embed-text", base_url="http://mine/v1")
        )
        registry.configure("openai", base_url="http://team-server/v1", timeout=7)
        back = pickle.loads(plain)
        assert (back.base_url, back.timeout, back.api_key) == ("http://team-server/v1", 7, "$env:PE_TEST_KEY")
        assert pickle.loads(pointed).base_url == "http://mine/v1"  # what the sender set travels with it

    def test_another_process_uses_its_own_environment(self, tmp_path: Path) -> None:
        with FakeOpenAI(key="key-of-the-other-process") as server:
            providers = [
                polars_embed.resolve_provider("hashing", dims=8),
                polars_embed.resolve_provider(
                    "openai", dimensions=8, base_url=f"{server.url}/v1", api_key="$env:PE_TEST_KEY"
                ),
            ]
            (tmp_path / "providers.pickle").write_bytes(pickle.dumps(providers))
            script = (
                "import pickle, sys, polars_embed\n"
                f"providers = pickle.loads(open({str(tmp_path / 'providers.pickle')!r}, 'rb').read())\n"
                "for provider in providers:\n"
                "    print(polars_embed.embed(['alpha'], provider)[0].to_list())\n"
            )
            environment = {**os.environ, "PE_TEST_KEY": "key-of-the-other-process", "POLARS_EMBED_CACHE": "0"}
            printed = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=environment
            ).stdout
            hashed, remote = (json.loads(line) for line in printed.splitlines())
            assert hashed == polars_embed.embed(["alpha"], providers[0])[0].to_list()
            assert np.allclose(remote, server.vectors(["alpha"], 8, ""))
            assert server.requests[0].headers["authorization"] == "Bearer key-of-the-other-process"
