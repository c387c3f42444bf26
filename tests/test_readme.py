"""The README's Python examples run as written, in order, in a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_RUN = re.compile(r"<!-- no-run: \S.* -->")

# Runs each block as README.md itself, so a traceback points at the README's own lines.
RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for line, code in json.load(sys.stdin):
    exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), namespace)
"""


def python_blocks() -> tuple[list[tuple[int, str]], list[int]]:
    """The README's ```python blocks as (line of the first code line, code), and the lines of
    those marked ``<!-- no-run: why -->`` on the line before them."""
    lines = (ROOT / "README.md").read_text().splitlines()
    runnable, skipped = [], []
    for number, line in enumerate(lines):
        if line != "```python":
            continue
        end = lines.index("```", number + 1)
        marker = lines[number - 1].strip() if number else ""
        if marker.startswith("<!-- no-run"):
            assert NO_RUN.fullmatch(marker), f"README.md:{number}: write the marker as <!-- no-run: why -->"
            skipped.append(number + 2)
        else:
            runnable.append((number + 2, "\n".join(lines[number + 1 : end]) + "\n"))
    return runnable, skipped


def test_the_readme_says_how_it_marks_blocks_that_do_not_run() -> None:
    runnable, skipped = python_blocks()
    assert len(runnable) >= 6  # the quick start, Polars, DuckDB, handoff, providers, references, plugins
    assert len(skipped) <= 2, (
        f"the blocks at README.md lines {skipped} are not run: make one runnable (a remote service "
        f"can be one of tests/fake_servers.py) before marking another"
    )
    assert "<!-- no-run: why -->" in (ROOT / "README.md").read_text()


def test_every_python_block_of_the_readme_runs_in_order(tmp_path: Path) -> None:
    runnable, _ = python_blocks()
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "POLARS_EMBED_CACHE": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(runnable),
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=480,  # the Ray section starts a local cluster
    )
    if result.returncode:
        pytest.fail(f"a README block failed:\n{result.stderr[-4000:]}", pytrace=False)
