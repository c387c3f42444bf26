"""The command line: embed, search and describe files, preview costs, look after the cache.

::

    polars-embed embed docs.csv --column body -o docs.parquet
    polars-embed search docs.parquet "refund not received" -k 5 --where "lang = 'en'"
    polars-embed info docs.parquet
    polars-embed estimate docs.csv --column body --provider openai:text-embedding-3-small
    polars-embed cache stats | clear | path
    polars-embed providers

Every command is a thin front end over the library: files are read with Polars (Parquet,
CSV, NDJSON), embedded by the engine, and written as Parquet with the vector metadata that
:func:`polars_embed.read_parquet` reads back. Provider options come only from the command
line (``--option base_url=...``), never from a file.

Exit status, for scripts (:class:`Exit`): 0 done; 1 an unexpected error; 2 the command
cannot run as given (a usage error, an unknown provider, option or column, a missing
extra); 3 an input file is missing or unreadable; 4 over the ``--max-tokens`` budget;
5 the provider failed (a rerun resumes from the cache); 130 interrupted by Ctrl-C (a
rerun resumes from the cache). Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import polars as pl
import pyarrow.parquet as pq

import polars_embed
from polars_embed import metadata
from polars_embed.cache import EmbeddingCache, cache_settings
from polars_embed.engine import as_text_series, embed_series, progress_bar
from polars_embed.errors import (
    BudgetExceededError,
    ConfigError,
    DimensionMismatchError,
    MissingDependencyError,
    PolarsEmbedError,
    ProviderError,
    UnknownProviderError,
)
from polars_embed.provider import KINDS, Provider, option_role
from polars_embed.registry import ProviderEntry, get_registry, resolve_provider

DEMO_QUERIES = ("how do I cook pasta?", "what happened on the stock market?", "looking after a young cat")
READERS: dict[str, Callable[..., pl.LazyFrame]] = {
    "parquet": pl.scan_parquet,
    "csv": pl.scan_csv,
    "ndjson": pl.scan_ndjson,
}
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}


class Exit(IntEnum):
    """The exit status of ``polars-embed``."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INPUT = 3
    BUDGET = 4
    PROVIDER = 5
    INTERRUPTED = 130


class InputError(PolarsEmbedError, OSError):
    """An input file is missing, of an unknown format, or unreadable."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=arguments, prog_name="polars-embed", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.exceptions.NoArgsIsHelpError as help_:
        click.echo(help_.ctx.get_help() if help_.ctx else help_.format_message())
        return Exit.USAGE
    except (KeyboardInterrupt, click.Abort):
        _say("interrupted; whatever was embedded is in the embedding cache: the same command resumes")
        return Exit.INTERRUPTED
    except Exception as error:
        if "--debug" in arguments:
            raise
        code = exit_code(error)
        hint = " (--debug shows where)" if code == Exit.ERROR else ""
        _say(f"error: {one_line(error)}{hint}")
        return code
    return Exit.OK


def exit_code(error: BaseException) -> Exit:
    """The exit status for an error (see the module docstring)."""
    if isinstance(error, BudgetExceededError):
        return Exit.BUDGET
    if isinstance(error, ProviderError):
        return Exit.PROVIDER
    if isinstance(error, InputError):
        return Exit.INPUT
    usage = (
        click.UsageError,
        UnknownProviderError,
        ConfigError,
        DimensionMismatchError,
        MissingDependencyError,
        pl.exceptions.ColumnNotFoundError,
        pl.exceptions.SQLInterfaceError,
        pl.exceptions.SQLSyntaxError,
        pl.exceptions.DuplicateError,
    )
    return Exit.USAGE if isinstance(error, usage) else Exit.ERROR


def one_line(error: BaseException) -> str:
    """An error as one readable line: its first line (Polars adds plan dumps below it)."""
    if isinstance(error, click.ClickException):
        return error.format_message()
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return first or type(error).__name__


def _say(message: str) -> None:
    click.echo(f"polars-embed: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(polars_embed.__version__, "-V", "--version", prog_name="polars-embed")
@click.option("-v", "--verbose", is_flag=True, help="Log what the engine does.")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def cli(verbose: bool, debug: bool) -> None:
    """Embed and search text files with polars-embed.

    Exit status: 0 done, 1 unexpected error, 2 bad command line (or unknown provider,
    option, column), 3 input missing or unreadable, 4 over --max-tokens, 5 the provider
    failed, 130 interrupted. After 5 or 130 the same command resumes from the cache.
    """
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")


def _provider_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "-O",
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="A provider option, e.g. base_url=http://localhost:11434/v1 or dims=64 (repeatable).",
    )(function)
    return click.option(
        "-p", "--provider", default=None, help="'name' or 'name:model' (default: the local MiniLM)."
    )(function)


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as provider options; a value that reads as JSON is taken as such."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options[key.strip()] = value if isinstance(value, str | int | float | bool) or value is None else text
    return options


def scan(path: str, format: str | None = None, *, text: str | None = None) -> pl.LazyFrame:
    """A file as a LazyFrame, by its format (from the suffix unless given).

    ``text`` names the text column: a CSV file's column is read as text as written,
    even where it looks like numbers; elsewhere it must be a String column.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"no file {path!r}")
    chosen = format or SUFFIXES.get(source.suffix.lower())
    if chosen is None:
        raise InputError(
            f"cannot tell the format of {path!r} from its suffix; pass --format parquet, csv or ndjson"
        )
    try:
        frame = READERS[chosen](source)
        schema = frame.collect_schema()
        if chosen == "csv" and text in schema and schema[text] != pl.String:
            frame = pl.scan_csv(source, schema_overrides={text: pl.String})
            schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise InputError(f"cannot read {path!r} as {chosen}: {one_line(error)}") from None
    if text is not None:
        if text not in schema:
            raise click.BadParameter(
                f"no column {text!r} in {path}; its columns are {', '.join(map(repr, schema))}",
                param_hint="--column",
            )
        if schema[text] not in (pl.String, pl.Null):
            raise click.BadParameter(
                f"column {text!r} of {path} is {schema[text]}, not text", param_hint="--column"
            )
    return frame


@contextmanager
def reading(path: str) -> Iterator[None]:
    """Report a failure to read ``path`` part way through as an input error."""
    try:
        yield
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, OSError) as error:
        if isinstance(error, PolarsEmbedError):
            raise
        raise InputError(f"cannot read {path!r}: {one_line(error)}") from None


format_option = click.option(
    "--format",
    "input_format",
    type=click.Choice(sorted(READERS)),
    help="The input's format (default: by suffix).",
)


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-c", "--column", required=True, help="The text column to embed.")
@click.option("-o", "--output", required=True, help="The Parquet file to write.")
@click.option("--into", default="vec", show_default=True, help="The name of the vector column.")
@_provider_options
@click.option("--kind", type=click.Choice(KINDS), default="document", show_default=True)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=0),
    help="Refuse (counting the whole text column first) or stop a run that would cost more tokens.",
)
@click.option(
    "--batch-rows", type=click.IntRange(min=1), default=2048, show_default=True, help="Rows read at once."
)
@click.option("--progress/--no-progress", default=None, help="Show a progress bar (default: in a terminal).")
@format_option
def embed(
    input_path: str,
    column: str,
    output: str,
    into: str,
    provider: str | None,
    options: tuple[str, ...],
    kind: str,
    max_tokens: int | None,
    batch_rows: int,
    progress: bool | None,
    input_format: str | None,
) -> None:
    """Embed a text column of INPUT (Parquet, CSV or NDJSON) into a Parquet file.

    The input is read --batch-rows at a time, so it may be larger than memory. Each
    batch's vectors go to the embedding cache as they arrive: after a failure or
    Ctrl-C, the same command sends only what is missing. OUTPUT appears only when
    every row is embedded.
    """
    frame = scan(input_path, input_format, text=column)
    schema = frame.collect_schema()
    if into in schema:
        raise click.BadParameter(
            f"the input already has a column {into!r}; pass another name", param_hint="--into"
        )
    chosen = resolve_provider(provider, **parse_options(options))
    out_schema = pl.Schema({**schema, into: pl.Array(pl.Float32, chosen.dimension)})
    if max_tokens is not None:  # refuse before any request, on the whole file's count
        preview = polars_embed.estimate(frame, chosen, column=column, kind=kind)
        if preview.tokens > max_tokens:
            raise BudgetExceededError(
                f"{chosen.label}: the {preview.to_embed} texts of {input_path} not in the cache would "
                f"cost about {preview.tokens} tokens ({preview.token_counter}), over --max-tokens "
                f"{max_tokens}; nothing was sent"
            )
    with reading(input_path):
        rows = frame.select(pl.len()).collect().item()
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    described = {**_specs_of(input_path, input_format, schema), into: chosen}
    arrow_schema = pl.DataFrame(schema=out_schema).to_arrow(compat_level=pl.CompatLevel.oldest()).schema
    writer = pq.ParquetWriter(partial, arrow_schema.with_metadata(metadata.parquet_metadata(described)))
    spent = 0
    try:
        with progress_bar(rows, chosen.label, progress) as bar, reading(input_path):
            for batch in frame.collect_batches(chunk_size=batch_rows):
                budget = None if max_tokens is None else max_tokens - spent
                vectors = embed_series(
                    as_text_series(batch[column]), chosen, kind=kind, progress=False, max_tokens=budget
                )
                spent += polars_embed.last_stats().tokens
                table = batch.with_columns(vectors.alias(into)).to_arrow(compat_level=pl.CompatLevel.oldest())
                writer.write_table(table.cast(arrow_schema))
                bar.update(batch.height)
        writer.close()
        partial.replace(target)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    click.echo(f"wrote {rows} rows with {chosen.dimension}-wide vectors by {chosen.label} to {output}")


def _specs_of(path: str, input_format: str | None, schema: pl.Schema) -> dict[str, metadata.VectorSpec]:
    """The described vector columns of a Parquet input, carried over to the output."""
    if (input_format or SUFFIXES.get(Path(path).suffix.lower())) != "parquet":
        return {}
    return {
        name: spec
        for name, spec in metadata.specs_in(pl.read_parquet_metadata(path)).items()
        if name in schema
    }


@cli.command()
@click.argument("file")
@click.argument("queries", nargs=-1, required=True)
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="Results per query.")
@click.option("--on", default=None, help="The vector column (default: the file's only one).")
@click.option(
    "--where",
    "where",
    default=None,
    help="A Polars SQL condition on the rows searched, e.g. \"lang = 'en'\".",
)
@_provider_options
@click.option("--show", default=None, help="Columns to print, comma-separated (default: all but vectors).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "ndjson"]),
    default="table",
    show_default=True,
)
def search(
    file: str,
    queries: tuple[str, ...],
    k: int,
    on: str | None,
    where: str | None,
    provider: str | None,
    options: tuple[str, ...],
    show: str | None,
    output_format: str,
) -> None:
    """Search the vectors of a Parquet FILE written by `embed` for each of QUERIES.

    The query is embedded by the model that made the column, read from the file's
    metadata; endpoints and keys never come from the file: give them with --option.
    --where filters rows first, in Polars SQL (the table is the file).
    """
    scan(file, "parquet")
    with reading(file):
        frame = metadata.scan_parquet(file)
    schema = frame.collect_schema()
    vector_columns = [name for name, dtype in schema.items() if metadata.is_vector_dtype(dtype)]
    column = on or _only(vector_columns, file)
    stored = metadata.specs_in(pl.read_parquet_metadata(file)).get(column)
    chosen: Provider | None = None
    if provider is not None:
        chosen = resolve_provider(provider, **parse_options(options))
    elif options and stored is not None:  # the file's model, run where and how the user says
        chosen = stored.create_provider().with_options(**parse_options(options))
    if where:
        frame = frame.sql(f"SELECT * FROM self WHERE {where}")
    with reading(file):
        rows = frame.collect()
    hits = rows.embed.search(list(queries), on=column, k=k, provider=chosen)
    if len(queries) == 1:
        hits = hits.drop("query_index")
    wanted = (
        [name.strip() for name in show.split(",")]
        if show
        else [name for name in hits.columns if name not in vector_columns]
    )
    leading = [name for name in ("query_index", "score") if name in hits.columns]
    hits = hits.select(*leading, *[name for name in wanted if name not in leading])
    _print_frame(hits, output_format)


def _only(vector_columns: list[str], file: str) -> str:
    if len(vector_columns) == 1:
        return vector_columns[0]
    if not vector_columns:
        raise ConfigError(f"{file} has no vector column; make one with: polars-embed embed")
    raise click.BadParameter(f"{file} has vector columns {vector_columns}: choose one", param_hint="--on")


def _print_frame(frame: pl.DataFrame, output_format: str) -> None:
    if output_format == "csv":
        click.echo(frame.write_csv(), nl=False)
    elif output_format == "ndjson":
        click.echo(frame.write_ndjson(), nl=False)
    else:
        with pl.Config(
            tbl_rows=-1,
            fmt_str_lengths=80,
            tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
            tbl_formatting="UTF8_FULL_CONDENSED",
        ):
            click.echo(frame)


@cli.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(file: str, as_json: bool) -> None:
    """Describe a Parquet FILE: rows, and per column its type, nulls and (for vectors)
    which model made it and its width."""
    frame = scan(file, "parquet")
    specs = metadata.specs_in(pl.read_parquet_metadata(file))
    with reading(file):
        counts = frame.select(pl.len().alias("__rows__"), pl.all().null_count()).collect().row(0, named=True)
    columns = []
    for name, dtype in frame.collect_schema().items():
        spec = specs.get(name)
        columns.append(
            {
                "column": name,
                "type": str(dtype),
                "nulls": counts[name],
                "model": spec.label if spec else None,
                "width": spec.dimension
                if spec
                else (dtype.shape[0] if isinstance(dtype, pl.Array) else None),
                "normalized": spec.normalized if spec else None,
            }
        )
    if as_json:
        click.echo(json.dumps({"file": file, "rows": counts["__rows__"], "columns": columns}, indent=2))
        return
    click.echo(f"{file}: {counts['__rows__']} rows")
    _print_frame(
        pl.DataFrame(
            columns, schema_overrides={"model": pl.String, "width": pl.Int64, "normalized": pl.Boolean}
        ),
        "table",
    )


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-c", "--column", required=True, help="The text column.")
@_provider_options
@click.option("--kind", type=click.Choice(KINDS), default="document", show_default=True)
@click.option(
    "--price", "price", type=click.FloatRange(min=0), help="The provider's price per million tokens."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@format_option
def estimate(
    input_path: str,
    column: str,
    provider: str | None,
    options: tuple[str, ...],
    kind: str,
    price: float | None,
    as_json: bool,
    input_format: str | None,
) -> None:
    """Preview embedding a text column of INPUT: rows, distinct texts, cache hits, requests,
    tokens and (with --price) cost. Nothing is sent to the provider."""
    frame = scan(input_path, input_format, text=column)
    chosen = resolve_provider(provider, **parse_options(options))
    with reading(input_path):
        preview = polars_embed.estimate(
            frame, chosen, column=column, kind=kind, price_per_million_tokens=price
        )
    if as_json:
        fields = {**dataclasses.asdict(preview), "to_embed": preview.to_embed, "cost": preview.cost}
        click.echo(json.dumps(fields, indent=2))
    else:
        click.echo(str(preview))


@cli.group()
def cache() -> None:
    """The embedding cache: where it is, how big, and emptying it."""


@cache.command("path")
def cache_path() -> None:
    """Print the cache file's path."""
    click.echo(str(cache_settings().path))


@cache.command("stats")
def cache_stats() -> None:
    """Print whether the cache is on, where it is, and how much it holds."""
    settings = cache_settings()
    state = "on" if settings.enabled else "off (POLARS_EMBED_CACHE=0 or configure_cache)"
    used = EmbeddingCache(settings.path).size_bytes() if settings.path.exists() else 0
    click.echo(f"cache: {state}")
    click.echo(f"path: {settings.path}{'' if settings.path.exists() else ' (not created yet)'}")
    click.echo(f"used: {_size(used)} of at most {_size(settings.max_bytes)}")


@cache.command("clear")
def cache_clear() -> None:
    """Drop every vector in the cache."""
    settings = cache_settings()
    if not settings.path.exists():
        click.echo(f"nothing to clear: no cache at {settings.path}")
        return
    cached = EmbeddingCache(settings.path)
    before = cached.size_bytes()
    cached.clear()
    click.echo(f"cleared {_size(before)} of vectors from {settings.path}")


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


@cli.command()
def providers() -> None:
    """List the providers: installed or not, default model and width, options."""
    for name in get_registry().names():
        entry = get_registry().get(name)
        missing = missing_packages(entry)
        fields = {field.name: field for field in dataclasses.fields(entry.provider_class) if field.init}
        model = fields["model"].default if "model" in fields else None
        if missing:
            extra = entry.provider_class.extra
            state = f"not installed: pip install 'polars-embed[{extra}]' (needs {', '.join(missing)})"
        else:
            state = f"installed ({entry.origin})"
        click.echo(f"{name}: {state}")
        width = _default_width(entry) if not missing else None
        click.echo(f"  default model: {model}" + (f", width {width}" if width else ""))
        described = []
        for option_name, field in fields.items():
            if option_name == "model":
                continue
            default = "..." if field.default is dataclasses.MISSING else repr(field.default)
            role = option_role(entry.provider_class, option_name)
            described.append(
                f"{option_name}={default}" + ("" if role == "identity" else f" ({role.replace('_', '-')})")
            )
        click.echo(f"  options: {', '.join(described)}")


def missing_packages(entry: ProviderEntry) -> list[str]:
    """The packages of the provider's extra that cannot be imported here."""
    extra = entry.provider_class.extra
    if not extra:
        return []
    try:
        requirements = importlib.metadata.requires("polars-embed") or []
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return []
    needed = [
        re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)  # type: ignore[union-attr]
        for requirement in requirements
        if re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", requirement)
    ]
    return [name for name in needed if importlib.util.find_spec(name.replace("-", "_").lower()) is None]


def _default_width(entry: ProviderEntry) -> int | None:
    try:
        return entry.create().dimension
    except Exception:  # a width that needs a request or a key: not worth one here
        return None


@cli.command()
@click.option("--provider", default=None, help="'name' or 'name:model' (default: the local MiniLM).")
@click.option(
    "-q", "--query", "queries", multiple=True, help="A query (repeatable); default: three examples."
)
@click.option("-k", type=click.IntRange(min=1), default=3, show_default=True, help="Results per query.")
def demo(provider: str | None, queries: tuple[str, ...], k: int) -> None:
    """Embed a small corpus with a local model and search it."""
    corpus = files("polars_embed").joinpath("data/demo_corpus.txt").read_text().splitlines()
    chosen = resolve_provider(provider)
    click.echo(f"embedding {len(corpus)} sentences with {chosen.label} ...")
    documents = pl.DataFrame({"text": corpus}).with_columns(vec=pl.col("text").embed.with_provider(chosen))
    asked = list(queries or DEMO_QUERIES)
    # No provider named here: the column knows the model that made it.
    hits = documents.embed.search(asked, on="vec", k=k)
    for query_index, query in enumerate(asked):
        click.echo(f"\n{query}")
        for text, score in (
            hits.filter(pl.col("query_index") == query_index).select("text", "score").iter_rows()
        ):
            click.echo(f"  {score:.3f}  {text}")


if __name__ == "__main__":
    sys.exit(main())
