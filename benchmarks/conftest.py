"""Benchmarks report every figure as a ratio to a reference measured in the same run.

A benchmark joins a group with ``benchmark.group = ...``; the group's reference
sets ``benchmark.extra_info["reference"] = True``. After the run, a table of
medians and ratios is printed (and kept in ``--benchmark-json`` output).
"""

from __future__ import annotations

from collections import defaultdict

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    ran = [bench for bench in getattr(session, "benchmarks", []) if bench]
    if not ran:
        return
    groups: dict[str, list] = defaultdict(list)
    for bench in ran:
        groups[bench.group or bench.name].append(bench)
    terminalreporter.section("median time, and ratio to the group's reference")
    for group, members in sorted(groups.items()):
        reference = next((bench for bench in members if bench.extra_info.get("reference")), None)
        terminalreporter.write_line(group)
        for bench in sorted(members, key=lambda bench: bench.stats.median):
            ratio = _ratio(bench.stats.median / reference.stats.median) if reference else ""
            marker = "  (reference)" if bench is reference else ""
            terminalreporter.write_line(
                f"  {bench.name:<58} {bench.stats.median * 1e3:10.2f} ms {ratio}{marker}"
            )


def _ratio(ratio: float) -> str:
    return f"{ratio:7.2f}x" if ratio >= 0.1 else f"{ratio:7.4f}x ({1 / ratio:,.0f}x faster)"
