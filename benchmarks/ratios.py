"""Print a pytest-benchmark JSON file as Markdown tables of ratios to each group's reference.

Usage: python benchmarks/ratios.py bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as file:
        results = json.load(file)
    groups = defaultdict(list)
    for bench in results["benchmarks"]:
        groups[bench["group"]].append(bench)
    print(f"Machine: {results['machine_info'].get('cpu', {}).get('brand_raw', '?')}")
    for group, benches in groups.items():
        reference = next(b for b in benches if b["extra_info"].get("reference"))
        ref_min, ref_median = reference["stats"]["min"], reference["stats"]["median"]
        print(f"\n### {group}\n")
        print("| benchmark | min (s) | median (s) | min / ref min | median / ref median |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for bench in sorted(benches, key=lambda b: b["stats"]["min"]):
            stats = bench["stats"]
            name = bench["name"].removeprefix("test_") + (
                " (reference)" if bench is reference else ""
            )
            print(
                f"| {name} | {stats['min']:.4f} | {stats['median']:.4f} "
                f"| {stats['min'] / ref_min:.2f} | {stats['median'] / ref_median:.2f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
