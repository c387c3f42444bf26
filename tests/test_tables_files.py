"""Embedding tables in database files: other processes, crashes, locks, tampered declarations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import polars_embed as pe

ROOT = Path(__file__).resolve().parent.parent
CREATE = """
import polars as pl
import polars_embed as pe
db = pe.connect({path!r})
docs = db.create_table(
    "docs",
    {{"id": pl.String, "body": pl.String, "lang": pl.String}},
    vectors={{"vec": pe.VectorOf("body", provider="hashing", dims=64)}},
    metadata="meta",
)
"""


def python(script: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finished(process: subprocess.Popen, timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A database file with a table of three records, written by this process and closed."""
    path = tmp_path / "docs.duckdb"
    with pe.connect(path) as db:
        docs = db.create_table(
            "docs",
            {"id": pl.String, "body": pl.String, "lang": pl.String},
            vectors={"vec": pe.VectorOf("body", provider="hashing", dims=64)},
            metadata="meta",
        )
        docs.add(
            [
                {"id": "a", "body": "how to parse a date", "lang": "en", "meta": {"author": "Alice"}},
                {"id": "b", "body": "comment lire une date", "lang": "fr", "meta": {"author": "Bob"}},
                {"id": "c", "body": "joining two tables", "lang": "en", "meta": {"author": "Bob"}},
            ]
        )
    return path


def test_a_fresh_process_reopens_and_searches_with_no_provider_named(stored: Path) -> None:
    out = finished(
        python(
            f"""
            import duckdb_ext  # first: duckdb_ext and polars_embed import each other
            import polars as pl, polars_embed as pe
            docs = pe.connect({str(stored)!r}).open_table("docs")
            found = docs.search("parse a date", k=2).where(pl.col("lang") == "en").to_polars()
            in_memory = docs.to_polars().embed.search("parse a date", on="vec", k=1)  # no provider= either
            print(found["id"].to_list(), docs.provider().label, len(docs), in_memory["id"][0])
            """
        )
    )
    assert out.split() == ["['a',", "'c']", "hashing:words+chars", "3", "a"]


def test_a_process_killed_mid_add_leaves_only_whole_transactions(tmp_path: Path) -> None:
    path = tmp_path / "docs.duckdb"
    writer = python(
        CREATE.format(path=str(path))
        + textwrap.dedent(
            """
            batch = 0
            while True:
                rows = [{"id": f"t{batch}-{i}", "body": f"text {batch} {i}"} for i in range(2000)]
                docs.add(rows)
                print(batch, flush=True)
                batch += 1
            """
        )
    )
    try:
        committed = [writer.stdout.readline() for _ in range(3)]
        assert all(line.strip() for line in committed), writer.stderr.read()
        time.sleep(0.3)  # well inside a later add: embedding, inserting or committing
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)
    with pe.connect(path) as db:
        docs = db.open_table("docs")
        records = docs.to_polars()
        groups = records.group_by(pl.col("id").str.extract(r"^(t\d+)-")).len()
        assert records.height >= 3 * 2000 and records.height % 2000 == 0
        assert groups["len"].to_list() == [2000] * groups.height
        assert records["vec"].null_count() == 0
        assert docs.search("text 1 7", k=1).to_polars()["id"].to_list() == ["t1-7"]
        docs.add([{"id": "after", "body": "the table still takes writes", "lang": "en"}])


def test_a_second_writer_is_told_to_open_read_only_and_readers_share_the_file(
    stored: Path, tmp_path: Path
) -> None:
    writer = python(
        f"""
        import polars_embed as pe, sys
        db = pe.connect({str(stored)!r})
        print("open", flush=True)
        sys.stdin.readline()
        """
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(
            pe.DatabaseLockedError, match=rf"open in process {writer.pid}.*read_only=True"
        ) as raised:
            pe.connect(stored)
        assert isinstance(raised.value, OSError)
        with pytest.raises(pe.DatabaseLockedError, match="open for writing"):
            pe.connect(stored, read_only=True)
    finally:
        writer.communicate("done\n", timeout=60)
    readers = [
        python(
            f"""
            import os, time, polars_embed as pe
            docs = pe.connect({str(stored)!r}, read_only=True).open_table("docs")
            open({str(tmp_path / f"ready-{number}")!r}, "w").close()
            while len([name for name in os.listdir({str(tmp_path)!r}) if name.startswith("ready-")]) < 3:
                time.sleep(0.05)  # every reader has the file open at once
            print([docs.search("a date", k=1).to_polars()["id"][0] for _ in range(20)].count("a"))
            """
        )
        for number in range(3)
    ]
    assert [finished(reader).strip() for reader in readers] == ["20"] * 3


def tamper(path: Path, change: Callable[[dict], str | None]) -> None:
    """Rewrite the stored declaration as someone with the file could."""
    with pe.connect(path) as db:
        declaration = json.loads(
            db.connection.sql("SELECT declaration FROM __polars_embed_tables").fetchall()[0][0]
        )
        text = change(declaration)
        db.connection.execute(
            "UPDATE __polars_embed_tables SET declaration = ?",
            [json.dumps(declaration) if text is None else text],
        )


def set_key(*keys: str, value: object) -> Callable[[dict], None]:
    def change(declaration: dict) -> None:
        node = declaration
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (set_key("exec", value="import os"), r"has unknown keys \['exec'\]"),
        (lambda declaration: "not json", "is not valid JSON"),
        (lambda declaration: " " * 2_000_000, "is not text of at most"),
        (set_key("id", "max_length", value=10**9), "an integer from 1 to 65536"),
        (set_key("id", "column", value="x" * 300), "not a string of 1 to 255"),
        (set_key("id", "column", value="missing"), r"names columns \['missing'\]"),
        (set_key("vectors", "0", "spec", "dimension", value=128), "width 128, but the table's column"),
        (set_key("vectors", "0", "spec", "callback", value="os.system"), "unknown keys"),
        (set_key("vectors", "0", "source", value="id"), "not a text column"),
        (
            set_key("metadata", "schema", value={"$ref": "http://evil.example/x.json"}),
            "only refer inside itself",
        ),
        (set_key("metadata", "schema", value={"description": "x" * 70_000}), "over 65536 bytes"),
        (set_key("vectors", value=[]), "between 1 and 64 vector columns"),
        (set_key("format", value=99), "is format 99"),
    ],
)
def test_a_tampered_declaration_is_refused(stored: Path, change: Callable, message: str) -> None:
    tamper(stored, change)
    with pe.connect(stored) as db:
        with pytest.raises(pe.ConfigError, match=message) as raised:
            db.open_table("docs")
        assert "the stored declaration of table 'docs'" in str(raised.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trust_remote_code": True}, "code_only option 'trust_remote_code'"),
        ({"device": "cuda"}, "runtime option 'device'"),
    ],
)
def test_a_tampered_provider_spec_is_refused_before_anything_is_embedded(
    stored: Path, options: dict, message: str
) -> None:
    def change(declaration: dict) -> None:
        spec = declaration["vectors"][0]["spec"]
        spec.update(provider="sentence-transformers", options={"model": "all-MiniLM-L6-v2", **options})

    tamper(stored, change)
    with pe.connect(stored) as db:
        docs = db.open_table("docs")
        assert docs.get("a")["lang"] == "en"  # reading needs no provider
        with pytest.raises(pe.ConfigError, match=message):
            docs.search("a date")
        with pytest.raises(pe.ConfigError, match=message):
            docs.add([{"id": "d", "body": "x", "lang": "en"}])
        assert len(docs) == 3


def test_an_unknown_provider_in_a_declaration_is_not_imported(stored: Path) -> None:
    tamper(stored, set_key("vectors", "0", "spec", "provider", value="evil.module"))
    with pe.connect(stored) as db:
        docs = db.open_table("docs")
        with pytest.raises(
            pe.UnknownProviderError, match=r"not installed: no embedding provider named 'evil\.module'"
        ):
            docs.search("a date")
    assert "evil" not in sys.modules


def test_the_database_holds_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.providers import CountingProvider

    monkeypatch.setenv("PE_TABLE_KEY", "sk-never-in-the-file")
    with pe.connect(tmp_path / "k.duckdb") as db:
        for name, key in (("literal", "sk-never-in-the-file"), ("reference", "$env:PE_TABLE_KEY")):
            db.create_table(
                name,
                {"id": pl.String, "body": pl.String},
                vectors={"vec": pe.VectorOf("body", provider=CountingProvider(api_key=key))},
            ).add([{"id": "a", "body": "text"}])
        stored = db.connection.sql("SELECT declaration FROM __polars_embed_tables").fetchall()
    assert all("sk-never-in-the-file" not in row[0] for row in stored)
    assert b"sk-never-in-the-file" not in (tmp_path / "k.duckdb").read_bytes()
