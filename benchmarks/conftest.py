"""After a benchmark run, print each result as a ratio to its group's reference (see ratios.py)."""

from __future__ import annotations

import pytest

from benchmarks.ratios import tables


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    ran = [bench for bench in getattr(session, "benchmarks", []) if bench]
    if ran:
        terminalreporter.section("ratios to each group's reference")
        terminalreporter.write_line(tables([bench.as_dict(include_data=False) for bench in ran]))
