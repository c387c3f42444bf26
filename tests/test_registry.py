"""The provider registry: lookup, plugins, entry points, options and references."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import polars_embed
from polars_embed import (
    ConfigError,
    DuplicateProviderError,
    MissingDependencyError,
    Provider,
    Registry,
    UnknownProviderError,
)
from polars_embed.providers.hashing import HashingProvider
from polars_embed.providers.sentence_transformers import SentenceTransformersProvider
from tests.providers import CountingProvider


def test_builtin_providers_are_listed() -> None:
    assert {"hashing", "sentence-transformers"} <= set(polars_embed.list_providers())


def test_get_then_create_returns_a_configured_provider() -> None:
    provider = polars_embed.get_registry().get("hashing").create(dims=32)
    assert isinstance(provider, HashingProvider)
    assert provider.dimension == 32


def test_name_colon_model_sets_the_model() -> None:
    provider = polars_embed.get_registry().create("sentence-transformers:paraphrase-MiniLM-L3-v2")
    assert isinstance(provider, SentenceTransformersProvider)
    assert provider.model == "paraphrase-MiniLM-L3-v2"


def test_model_after_the_colon_may_itself_contain_colons() -> None:
    provider = polars_embed.get_registry().create("hashing:words")
    assert provider.model == "words"
    with pytest.raises(ConfigError, match="option 'model' of provider 'hashing' must be one of"):
        polars_embed.get_registry().create("hashing:words:v2")


def test_conflicting_model_in_string_and_option_is_an_error() -> None:
    with pytest.raises(ConfigError, match="names model 'chars' but model='words'"):
        polars_embed.get_registry().create("hashing:chars", model="words")


def test_unknown_provider_lists_what_is_installed_and_suggests() -> None:
    with pytest.raises(UnknownProviderError) as raised:
        polars_embed.get_registry().get("hashin")
    message = str(raised.value)
    assert "installed: " in message
    assert "hashing" in message and "sentence-transformers" in message
    assert "Did you mean 'hashing'?" in message
    assert isinstance(raised.value, KeyError)


def test_unknown_option_lists_the_options() -> None:
    with pytest.raises(ConfigError, match=r"no option 'dimz'; its options are: .*dims"):
        polars_embed.get_registry().create("hashing", dimz=3)


def test_option_of_the_wrong_type_is_an_error() -> None:
    with pytest.raises(ConfigError, match="option 'dims' of provider 'hashing' takes a int"):
        polars_embed.get_registry().create("hashing", dims="many")
    with pytest.raises(ConfigError, match="takes a int, got True"):
        polars_embed.get_registry().create("hashing", dims=True)


def test_registering_a_taken_name_is_an_error_not_an_overwrite() -> None:
    registry = Registry(entry_points=False)

    @dataclass(frozen=True, kw_only=True, repr=False)
    class Impostor(HashingProvider):
        name: ClassVar[str] = "hashing"

    with pytest.raises(DuplicateProviderError, match="'hashing' is registered twice"):
        registry.register(Impostor)
    assert registry.get("hashing").provider_class is HashingProvider


def test_a_plugin_object_registers_its_providers() -> None:
    registry = Registry(entry_points=False)

    class Plugin:
        @polars_embed.hookimpl
        def polars_embed_providers(self) -> list[type[Provider]]:
            return [CountingProvider]

    registry.register_plugin(Plugin(), origin="tests")
    entry = registry.get("counting")
    assert entry.origin == "tests"
    assert entry.create(dims=4).dimension == 4


def test_missing_optional_dependency_names_the_extra() -> None:
    @dataclass(frozen=True, kw_only=True, repr=False)
    class NeedsSomething(Provider):
        name: ClassVar[str] = "needs-something"
        extra: ClassVar[str | None] = "something"
        model: str = "m"

        @property
        def dimension(self) -> int:
            self.require("a_module_that_is_not_installed")
            return 1

    with pytest.raises(MissingDependencyError, match=r"pip install 'polars-embed\[something\]'"):
        _ = NeedsSomething().dimension


class TestReferences:
    def test_env_reference_is_resolved_when_used_and_never_stored_resolved(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        provider = polars_embed.get_registry().create("hashing", dims="$env:PE_TEST_DIMS")
        monkeypatch.setenv("PE_TEST_DIMS", "24")
        assert provider.dimension == 24
        assert provider.dims == "$env:PE_TEST_DIMS"
        monkeypatch.setenv("PE_TEST_DIMS", "12")
        assert provider.dimension == 12

    def test_unset_env_reference_names_the_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("PE_TEST_DIMS", raising=False)
        provider = polars_embed.get_registry().create("hashing", dims="$env:PE_TEST_DIMS")
        with pytest.raises(ConfigError, match="environment variable 'PE_TEST_DIMS' is not set"):
            _ = provider.dimension

    def test_env_reference_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("PE_TEST_DIMS", raising=False)
        provider = polars_embed.get_registry().create("hashing", dims="$env:PE_TEST_DIMS:20")
        assert provider.dimension == 20
        vectors = polars_embed.embed(["hello"], provider)
        assert vectors.dtype.shape == (20,)

    def test_env_value_of_the_wrong_type_is_an_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PE_TEST_DIMS", "wide")
        provider = polars_embed.get_registry().create("hashing", dims="$env:PE_TEST_DIMS")
        with pytest.raises(ConfigError, match="takes a int; its reference '\\$env:PE_TEST_DIMS' gave 'wide'"):
            _ = provider.dimension

    @pytest.mark.parametrize(
        ("text", "expected"), [("Off", False), (" YES ", True), ("0", False), ("on", True)]
    )
    def test_env_switch_reads_as_every_switch_does(
        self, monkeypatch: pytest.MonkeyPatch, text: str, expected: bool
    ) -> None:
        provider = polars_embed.get_registry().create(
            "sentence-transformers", normalize="$env:PE_TEST_NORMALIZE"
        )
        monkeypatch.setenv("PE_TEST_NORMALIZE", text)
        assert provider.resolve("normalize") is expected

    def test_env_switch_that_is_neither_on_nor_off_is_an_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        provider = polars_embed.get_registry().create(
            "sentence-transformers", normalize="$env:PE_TEST_NORMALIZE"
        )
        monkeypatch.setenv("PE_TEST_NORMALIZE", "maybe")
        with pytest.raises(
            ConfigError, match="takes a bool; its reference '\\$env:PE_TEST_NORMALIZE' gave 'maybe'"
        ):
            provider.resolve("normalize")

    def test_optional_numbers_are_checked_and_converted_too(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ConfigError, match="option 'dims' of provider 'openai' takes a int, got 'wide'"):
            polars_embed.get_registry().create("openai", dims="wide")
        monkeypatch.setenv("PE_TEST_DIMS", "768")
        provider = polars_embed.get_registry().create(
            "openai:local-model", base_url="http://x", dims="$env:PE_TEST_DIMS"
        )
        assert provider.dimension == 768

    def test_registry_variables(self) -> None:
        registry = Registry(entry_points=False)
        provider = registry.create("hashing", dims="$var:width", model="$var:features:chars")
        registry.set_var("width", 16)
        assert provider.dimension == 16
        assert provider.resolve("model") == "chars"
        registry.set_var("features", "words")
        assert provider.resolve("model") == "words"
        assert registry.get_var("width") == 16

    def test_unset_registry_variable_is_an_error(self) -> None:
        provider = Registry(entry_points=False).create("hashing", dims="$var:width")
        with pytest.raises(ConfigError, match="registry variable 'width' is not set"):
            _ = provider.dimension

    def test_spec_holds_resolved_identity_and_no_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PE_TEST_KEY", "sk-live-123456")
        by_reference = CountingProvider(api_key="$env:PE_TEST_KEY", dims="$env:PE_TEST_DIMS:4")
        assert by_reference.spec()["dims"] == 4  # what made the vectors: resolved and typed
        literal = CountingProvider(api_key="sk-live-123456")
        assert "api_key" not in literal.spec() and "api_key" not in by_reference.spec()
        for provider in (by_reference, literal):
            assert "sk-live-123456" not in repr(provider)
            assert "sk-live-123456" not in str(provider.spec())
        assert "api_key='***'" in repr(literal)
        assert "api_key='$env:PE_TEST_KEY'" in repr(by_reference)


class TestCallables:
    def test_a_plain_function_is_a_provider(self) -> None:
        seen: list[list[str]] = []

        def shout(texts: list[str]) -> np.ndarray:
            seen.append(texts)
            return np.array([[len(text), 1.0] for text in texts])

        vectors = polars_embed.embed(["ab", None, "abc", "ab"], shout, dims=2)
        assert vectors.to_list() == [[2.0, 1.0], None, [3.0, 1.0], [2.0, 1.0]]
        assert seen == [["abc", "ab"]]  # one call: distinct texts, nulls never sent

    def test_a_chroma_style_embedding_function_object(self) -> None:
        class ChromaStyle:
            def __call__(self, input: list[str]) -> list[list[float]]:
                return [[1.0, float(len(text))] for text in input]

        vectors = polars_embed.embed(["x", "yy"], ChromaStyle())
        assert vectors.to_list() == [[1.0, 1.0], [1.0, 2.0]]

    def test_width_is_probed_once_when_not_declared(self) -> None:
        calls: list[list[str]] = []

        def three_wide(texts: list[str]) -> np.ndarray:
            calls.append(texts)
            return np.ones((len(texts), 3))

        provider = polars_embed.resolve_provider(three_wide)
        assert provider.dimension == 3
        assert provider.dimension == 3
        assert len(calls) == 1

    def test_not_a_provider_at_all(self) -> None:
        with pytest.raises(TypeError, match="provider must be a name"):
            polars_embed.embed(["x"], 42)  # type: ignore[arg-type]


def _build_wheel(directory: Path, distribution: str, module: str, source: str) -> Path:
    """A minimal, valid wheel whose module is registered in the polars_embed entry-point group."""
    info = f"{distribution}-0.1.dist-info"
    files = {
        f"{module}.py": textwrap.dedent(source),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[polars_embed]\n{module} = {module}\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    wheel = directory / f"{distribution}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _pip_install(wheel: Path, target: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )


REVERSING_PLUGIN = """
    from dataclasses import dataclass
    from typing import ClassVar

    import numpy as np

    from polars_embed import Provider, hookimpl


    @dataclass(frozen=True, kw_only=True, repr=False)
    class LengthProvider(Provider):
        name: ClassVar[str] = "{name}"
        model: str = "length-v1"

        @property
        def dimension(self) -> int:
            return 2

        def embed_batch(self, texts, *, kind):
            return np.array([[len(text), 1.0] for text in texts])


    @hookimpl
    def polars_embed_providers():
        return [LengthProvider]
"""


class TestEntryPoints:
    def test_a_third_party_distribution_is_found_through_its_entry_point(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        wheel = _build_wheel(
            tmp_path, "pe_length_plugin", "pe_length_plugin", REVERSING_PLUGIN.format(name="length")
        )
        _pip_install(wheel, tmp_path / "site")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.delitem(sys.modules, "pe_length_plugin", raising=False)

        registry = Registry()
        entry = registry.get("length")
        assert entry.origin == "pe_length_plugin"
        vectors = polars_embed.embed(["abc", None, "a"], registry.create("length"))
        assert vectors.to_list() == [[3.0, 1.0], None, [1.0, 1.0]]

    def test_broken_or_clashing_plugins_are_refused_loudly_and_the_rest_work(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        broken = _build_wheel(
            tmp_path, "pe_broken_plugin", "pe_broken_plugin", "raise RuntimeError('boom')\n"
        )
        clashing = _build_wheel(
            tmp_path, "pe_clashing_plugin", "pe_clashing_plugin", REVERSING_PLUGIN.format(name="hashing")
        )
        for wheel in (broken, clashing):
            _pip_install(wheel, tmp_path / "site")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        for module in ("pe_broken_plugin", "pe_clashing_plugin"):
            monkeypatch.delitem(sys.modules, module, raising=False)

        registry = Registry()
        assert registry.get("hashing").provider_class is HashingProvider
        assert "'hashing' is registered twice" in caplog.text
        assert "boom" in caplog.text
        with pytest.raises(UnknownProviderError, match=r"failed to load: .*pe_broken_plugin.*boom"):
            registry.get("nothing-here")
