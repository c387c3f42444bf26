"""The project's own promises: CI runs what the README says, and the package installs as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_every_extra_the_readme_names_exists() -> None:
    extras = _extras()
    assert {"local", "cohere", "openai", "vss", "fts", "hybrid", "gpu", "ray", "test", "dev"} <= set(extras)
    assert extras["dev"] == ["polars-embed[local,cohere,openai,vss,fts,hybrid,ray,test]"]
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()


def test_ci_also_runs_the_tests_on_the_newest_releases() -> None:
    # The test extra must not pin what vss pins, or the second run would test the old duckdb again.
    assert not any(requirement.startswith("duckdb") for requirement in _extras()["test"])
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    install = next(line for line in lines if line.startswith(".venv-latest/bin/pip install"))
    assert "--upgrade" in install and "-c constraints.txt" in install
    assert '".[local,cohere,openai,ray,test]"' in install
    assert ".venv-latest/bin/python -m pytest" in lines


def test_ci_shrinks_every_benchmark_that_makes_much_data() -> None:
    """A benchmark size left at its default in CI's smoke run took two of its three minutes
    (the 100,000-row dedup): every size over a thousand rows must be set there."""
    read = re.compile(r'(?:environ\.get|_size)\(\s*"(POLARS_EMBED_BENCH_\w+)",\s*"([^"]*)"\)')
    sizes = {
        name: default
        for module in (ROOT / "benchmarks").glob("*.py")
        for name, default in read.findall(module.read_text())
    }
    assert "POLARS_EMBED_BENCH_DEDUP_N" in sizes and "POLARS_EMBED_BENCH_JOIN" in sizes
    large = {
        name
        for name, default in sizes.items()
        if re.fullmatch(r"[\d_x]+", default) and max(int(part) for part in default.split("x")) > 1000
    }
    smoke = (ROOT / ".ci" / "run").read_text()
    assert {name for name in large if f"{name}=" not in smoke} == set()


def test_nothing_but_polars_embed_ray_imports_ray() -> None:
    """Ray is an optional extra: every other module imports without it, and never loads it."""
    code = """
import importlib, pkgutil, sys
import duckdb_ext, polars_embed
for module in pkgutil.walk_packages(polars_embed.__path__, "polars_embed."):
    if module.name != "polars_embed.ray":
        importlib.import_module(module.name)
loaded = sorted(name for name in sys.modules if name == "ray" or name.startswith("ray."))
assert not loaded, loaded
"""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=environment, timeout=120)
