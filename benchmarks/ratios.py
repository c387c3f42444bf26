"""Every benchmark as a ratio to its group's reference, in Markdown tables.

A group's reference sets ``benchmark.extra_info["reference"] = True``. Entries timed
by :func:`interleaved` also carry ratios measured round by round against their
reference run just before them (last two columns), which a busy machine moves far
less than ratios of separately timed entries. The tables are printed after every
benchmark run (see ``conftest.py``), and can be made again from a saved run::

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/ratios.py bench.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# After a multiply, OpenBLAS's threads spin for about 0.1 s before they sleep: on two
# cores, a candidate timed straight after its reference shared them with those threads
# (an int8 search of 1M rows took 164 ms there, 119 ms after a pause of 0.1 s).
_SETTLE_SECONDS = 0.2


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
            "| benchmark | min (s) | median (s) | min / reference | median / reference "
            "| interleaved min | interleaved median |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
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
            info = bench["extra_info"]
            paired = (
                f"{_ratio(info['interleaved_min'])} | {_ratio(info['interleaved_median'])}"
                if "interleaved_min" in info
                else " | "
            )
            lines.append(f"| {name} | {stats['min']:.4f} | {stats['median']:.4f} | {ratios} | {paired} |")
        lines.append("")
    return "\n".join(lines)


def interleaved(
    benchmark: Any,
    candidate: Callable[[], Any],
    reference: Callable[[], Any],
    *,
    rounds: int,
    warmup_rounds: int = 1,
) -> Any:
    """Time ``candidate`` with pytest-benchmark, running ``reference`` just before each round.

    Each round's ratio (candidate time over the reference time just before it)
    goes to ``extra_info``: min and median, as ``interleaved_min`` and
    ``interleaved_median``. Before each run, untimed, the machine settles for
    ``_SETTLE_SECONDS``, so that neither pays for the other's idle BLAS threads.
    Returns what the last call of ``candidate`` returned.
    """
    paired: list[float] = []
    reference_seconds: list[float] = []

    def run_reference() -> None:
        time.sleep(_SETTLE_SECONDS)
        started = time.perf_counter()
        reference()
        reference_seconds.append(time.perf_counter() - started)
        time.sleep(_SETTLE_SECONDS)

    def run_candidate() -> Any:
        started = time.perf_counter()
        result = candidate()
        paired.append((time.perf_counter() - started) / reference_seconds[-1])
        return result

    result = benchmark.pedantic(
        run_candidate, setup=run_reference, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds
    )
    measured = paired[warmup_rounds:] or paired
    benchmark.extra_info["interleaved_min"] = min(measured)
    benchmark.extra_info["interleaved_median"] = statistics.median(measured)
    return result


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.4f} ({1 / ratio:,.0f}x faster)"


def main(path: str) -> None:
    with open(path) as file:
        results = json.load(file)
    print(f"Machine: {results['machine_info'].get('cpu', {}).get('brand_raw', '?')}\n")
    print(tables(results["benchmarks"]))


if __name__ == "__main__":
    main(sys.argv[1])
