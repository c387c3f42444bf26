"""Command line front end: ``polars-embed demo`` and ``polars-embed providers``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.resources import files

import polars as pl

import polars_embed

DEMO_QUERIES = ("how do I cook pasta?", "what happened on the stock market?", "looking after a young cat")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="polars-embed", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="embed a small corpus with a local model and search it")
    demo.add_argument(
        "--provider", default=None, help="provider name or 'name:model' (default: local MiniLM)"
    )
    demo.add_argument("-q", "--query", action="append", help="a query (repeatable); default: three examples")
    demo.add_argument("-k", type=int, default=3, help="results per query")

    commands.add_parser("providers", help="list the installed providers")

    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(message)s")
    if arguments.command == "providers":
        for name in polars_embed.list_providers():
            entry = polars_embed.get_registry().get(name)
            print(f"{name:<24} {entry.origin}")
        return 0
    return _demo(arguments.provider, arguments.query or list(DEMO_QUERIES), arguments.k)


def _demo(provider_name: str | None, queries: list[str], k: int) -> int:
    corpus = files("polars_embed").joinpath("data/demo_corpus.txt").read_text().splitlines()
    provider = polars_embed.resolve_provider(provider_name)
    print(f"embedding {len(corpus)} sentences with {provider.label} ...")
    documents = pl.DataFrame({"text": corpus}).with_columns(vec=pl.col("text").embed.with_provider(provider))
    # No provider named here: the column knows the model that made it.
    hits = documents.embed.search(queries, on="vec", k=k)
    for query_index, query in enumerate(queries):
        print(f"\n{query}")
        for text, score in (
            hits.filter(pl.col("query_index") == query_index).select("text", "score").iter_rows()
        ):
            print(f"  {score:.3f}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
