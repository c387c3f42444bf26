"""The project's own promises: CI runs what the README says, and the package installs as documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    setup = re.search(r"## Set-up\n(.*?)\n## ", (ROOT / "README.md").read_text(), re.S).group(1)
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_readme_gives_two_set_up_commands() -> None:
    main_job, tests = _readme_commands()
    assert "polars-embed demo" in main_job
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = _readme_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_extra_the_readme_names_exists() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"local", "cohere", "openai", "vss", "gpu", "dev"} <= set(extras)
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()
