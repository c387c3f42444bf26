"""Every benchmark as a ratio to its group's reference, in Markdown tables.

A group's reference sets ``benchmark.extra_info["reference"] = True``. The tables
are printed after every benchmark run (see ``conftest.py``), and can be made again
from a saved run::

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/ratios.py bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


def tables(benchmarks: Iterable[Mapping[str, Any]]) -> str:
    """Markdown tables, one per group, of pytest-benchmark results (as in its JSON)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for bench in benchmarks:
        groups[bench["group"] or bench["name"]].append(bench)
    lines: list[str] = []
    for group, members in sorted(groups.items()):
        reference = next((bench for bench in members if bench["extra_info"].get("reference")), None)
        lines += [
            f"### {group}",
            "",
            "| benchmark | min (s) | median (s) | min / reference | median / reference |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for bench in sorted(members, key=lambda bench: bench["stats"]["min"]):
            stats = bench["stats"]
            name = bench["name"].removeprefix("test_") + (" (reference)" if bench is reference else "")
            ratios = (
                f"{_ratio(stats['min'] / reference['stats']['min'])} "
                f"| {_ratio(stats['median'] / reference['stats']['median'])}"
                if reference
                else "| "
            )
            lines.append(f"| {name} | {stats['min']:.4f} | {stats['median']:.4f} | {ratios} |")
        lines.append("")
    return "\n".join(lines)


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.4f} ({1 / ratio:,.0f}x faster)"


def main(path: str) -> None:
    with open(path) as file:
        results = json.load(file)
    print(f"Machine: {results['machine_info'].get('cpu', {}).get('brand_raw', '?')}\n")
    print(tables(results["benchmarks"]))


if __name__ == "__main__":
    main(sys.argv[1])
