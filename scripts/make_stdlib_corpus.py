"""Make the quickstart corpus: the docstrings of the Python standard library's public API.

    python3.11 scripts/make_stdlib_corpus.py

writes ``polars_embed/data/stdlib_docstrings.parquet`` (one row per public function or
class of a public standard-library module, with its docstring's opening) and copies
Python's licence beside it: the docstrings are the PSF's, under the PSF licence. Run it
on Python 3.11 to remake the file that ships; other versions give other rows.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parent.parent / "polars_embed" / "data"
# Modules that act when imported, need a display or a platform not this one, or are tests.
SKIPPED = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
    "ensurepip", "pydoc_data", "msilib", "winreg", "winsound", "msvcrt", "nt", "xxlimited",
    "xxsubtype", "xxlimited_35", "venv", "__main__", "__phello__",
}  # fmt: skip
MAX_CHARS = 480


def module_names() -> list[str]:
    """Public standard-library modules, packages' public submodules included."""
    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIPPED:
            continue
        names.append(top)
        try:
            module = importlib.import_module(top)
        except ImportError:
            continue
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, prefix=f"{top}.", onerror=lambda _: None):
                parts = info.name.split(".")
                if not any(part.startswith("_") or part in SKIPPED or "test" in part for part in parts):
                    names.append(info.name)
    return names


def opening(doc: str) -> str:
    """The docstring's first paragraphs (past a signature line), whitespace folded, capped."""
    text = ""
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        text = f"{text} {' '.join(paragraph.split())}".strip()
        if len(text) >= 120:
            break
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0] + " …"
    return text


def rows() -> list[dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except Exception:  # a platform's module, or one with a missing C library
            continue
        public = getattr(module, "__all__", None) or [key for key in vars(module) if not key.startswith("_")]
        for attribute in sorted(set(public)):
            value = getattr(module, attribute, None)
            if inspect.isclass(value):
                kind = "class"
            elif inspect.isfunction(value) or inspect.isbuiltin(value):
                kind = "function"
            else:
                continue
            doc = value.__doc__  # its own docstring, never one inherited from a base class
            if getattr(value, "__module__", None) != name or not isinstance(doc, str) or not doc.strip():
                continue
            text = opening(doc)
            qualified = f"{name}.{attribute}"
            if len(text) >= 20 and qualified not in found:
                found[qualified] = {"name": qualified, "module": name, "kind": kind, "doc": text}
    return sorted(found.values(), key=lambda row: row["name"])


def main() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"note: the shipped corpus is made on Python 3.11; this is {sys.version.split()[0]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules warn as they are imported
        corpus = pl.DataFrame(rows())
    corpus.write_parquet(DATA / "stdlib_docstrings.parquet", compression="zstd", compression_level=19)
    shutil.copyfile(Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt", DATA / "stdlib_docstrings.LICENSE")
    print(f"{corpus.height} docstrings from {corpus['module'].n_unique()} modules")


if __name__ == "__main__":
    main()
