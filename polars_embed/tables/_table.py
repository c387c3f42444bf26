"""An embedding table: a DuckDB table whose vector columns are embedded on write.

Writes (``add``, ``upsert``, ``delete``) are each one transaction. Texts are
embedded through the engine, so nulls and blanks give null vectors, each
distinct text is embedded once and the embedding cache keeps what a failed
write had already paid for. ``upsert`` compares the incoming rows with the
stored ones in DuckDB first: unchanged rows are not written, and a row whose
source text is unchanged keeps its vector. A write that changes nothing (an
upsert of records as stored, a delete or fill with nothing to do) leaves the
table's generation as it was, so searches keep what they read of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
from polars.io.plugins import register_io_source

import duckdb_ext
from duckdb_ext._catalog import Table as CatalogTable
from duckdb_ext._catalog import quote_identifier, quote_literal, registered, resolve_table, row_id_condition
from polars_embed.engine import OnError, embed_series
from polars_embed.errors import (
    ConfigError,
    ConflictError,
    MissingDependencyError,
    PolarsEmbedError,
    RecordNotFoundError,
    UnknownProviderError,
    ValidationError,
)
from polars_embed.keywords import Fusion
from polars_embed.metadata import check_width, remember
from polars_embed.namespaces._vectors import null_where
from polars_embed.provider import Provider
from polars_embed.quantization import Quantization, QuantizedVectors, quantize
from polars_embed.registry import ProviderLike, RerankerLike, resolve_provider
from polars_embed.tables._declaration import (
    MAX_VECTOR_COLUMNS,
    RESERVED_NAMES,
    Declaration,
    VectorColumn,
    VectorOf,
    vector_column,
)
from polars_embed.tables._records import RowsLike, listed, prepare
from polars_embed.tables._search import Agreement, Filter, Search, agreement
from polars_embed.tables._sql import CATALOG, run

if TYPE_CHECKING:
    from polars_embed.tables._database import Database

log = logging.getLogger(__name__)

# Columns a write adds to the rows while it plans; declared names never start with "__polars_embed".
_ROW = "__polars_embed_row"
_PRESENT = "__polars_embed_present"
_UNCHANGED = "__polars_embed_unchanged"
_EMBED = "__polars_embed_embed_{}"
_KEEP = "__polars_embed_keep_{}"
# Rows per Arrow batch when a vector column is read for search (DuckDB's row groups are 122,880).
_READ_BATCH_ROWS = 131072


@dataclass(frozen=True)
class _Vectors:
    """A vector column held in memory for search, with the table state it was read at."""

    state: tuple[int, int]  # (generation, records)
    ids: pl.Series
    matrix: np.ndarray  # in numpy's memory (see Table._vectors_for_search)
    normalized: bool
    row_ids: np.ndarray  # where each record was when read: a hint, checked when used
    twins: dict[str, QuantizedVectors] = dataclasses.field(default_factory=dict, compare=False)

    def twin(self, kind: Quantization) -> QuantizedVectors:
        """The quantised twin of these vectors, made by their first quantised search."""
        twin = self.twins.get(kind)
        if twin is None:
            twin = self.twins[kind] = quantize(self.matrix, kind)
        return twin


class Table:
    """An embedding table. Made by :meth:`Database.create_table` or :meth:`Database.open_table`.

    Examples
    --------
    >>> import polars as pl
    >>> import polars_embed as pe
    >>> db = pe.connect()
    >>> docs = db.create_table(
    ...     "docs",
    ...     {"id": pl.String, "body": pl.String},
    ...     vectors={"body_vec": pe.VectorOf("body", provider="hashing", dims=64)},
    ... )
    >>> docs.add(
    ...     [{"id": "a", "body": "a black cat"}, {"id": "b", "body": "a red car"}, {"id": "c", "body": None}]
    ... )
    3
    >>> docs.search("black cats", k=2).to_polars().select("id", "body", pl.col("score").round(2))
    shape: (2, 3)
    ┌─────┬─────────────┬───────┐
    │ id  ┆ body        ┆ score │
    │ --- ┆ ---         ┆ ---   │
    │ str ┆ str         ┆ f32   │
    ╞═════╪═════════════╪═══════╡
    │ a   ┆ a black cat ┆ 0.77  │
    │ b   ┆ a red car   ┆ 0.16  │
    └─────┴─────────────┴───────┘
    """

    def __init__(
        self, database: Database, name: str, declaration: Declaration, providers: Mapping[str, ProviderLike]
    ) -> None:
        self._database = database
        self.name = name
        self._declaration = declaration
        self._providers: dict[str, Provider] = {}
        self._vectors: dict[str, _Vectors] = {}
        for column, given in providers.items():
            self._providers[column] = self._checked(declaration.vector(column), resolve_provider(given))

    # --- what the table is ----------------------------------------------------------------

    @property
    def schema(self) -> pl.Schema:
        """Every column as Polars types: vectors are ``pl.Array(pl.Float32, d)``, metadata JSON text."""
        return pl.Schema(
            {
                **self._declaration.schema,
                **{column.name: pl.Array(pl.Float32, column.width) for column in self._declaration.vectors},
            }
        )

    @functools.cached_property
    def _located(self) -> CatalogTable:
        """Where the DuckDB catalog has the table (for duckdb_ext's index helpers)."""
        with self._database._lock:
            return resolve_table(self._database.connection, self.name)

    @property
    def vector_columns(self) -> list[str]:
        """The vector columns, in the order they were declared."""
        return self._declaration.vector_names

    @property
    def id_column(self) -> str:
        """The column that holds each record's id."""
        return self._declaration.id

    def provider(self, column: str | None = None) -> Provider:
        """The provider of a vector column (the only one when ``column`` is None), built on first use.

        Raises the stored description's refusal (tampered, not installed, another
        provider version) naming the table and the column.
        """
        vectors = self._declaration.vector(column)
        if vectors.name not in self._providers:
            try:
                provider = vectors.spec.create_provider()
            except (ConfigError, UnknownProviderError, MissingDependencyError) as error:
                raise type(error)(
                    f"table {self.name!r} cannot embed into {vectors.name!r} "
                    f"(made by {vectors.spec.label}): {error}"
                ) from None
            self._providers[vectors.name] = self._checked(vectors, provider)
        return self._providers[vectors.name]

    def _checked(self, vectors: VectorColumn, provider: Provider) -> Provider:
        check_width(provider, vectors.width, column=vectors.name, made_by=vectors.spec.label)
        if not vectors.made_by(provider):
            raise ConfigError(
                f"column {vectors.name!r} of table {self.name!r} was embedded with {vectors.spec.label} "
                f"({dict(vectors.spec.options)}), but the provider given for it is {provider.label} "
                f"({provider.spec()}): give the provider it was made with, or none to use the stored one"
            )
        return provider

    def __repr__(self) -> str:
        vectors = ", ".join(f"{c.name}: {c.spec.label} x {c.width}" for c in self._declaration.vectors)
        return f"Table({self.name!r}, vectors=[{vectors}])"

    # --- reads ------------------------------------------------------------------------------

    def _sql(self, column: str) -> str:
        return quote_identifier(column)

    @property
    def _table_sql(self) -> str:
        return quote_identifier(self.name)

    def _arrow(self, query: str) -> pa.Table:
        # Values go into the SQL as quoted literals: with bound parameters duckdb tries to import
        # pandas on every call, which costs milliseconds where pandas is not installed.
        with self._database._lock:
            try:
                return self._database.connection.sql(query).to_arrow_table()
            except duckdb.Error as error:
                raise self._refused(error) from None

    def _refused(self, error: duckdb.Error) -> ConfigError:
        return ConfigError(
            f"DuckDB refused a query on table {self.name!r} ({str(error).splitlines()[0]}); "
            "check any SQL filter given"
        )

    def _frame(self, query: str) -> pl.DataFrame:
        frame = pl.from_arrow(self._arrow(query))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def _where_id(self, id: str) -> str:
        if not isinstance(id, str):
            raise ConfigError(f"an id is text, got {type(id).__name__}")
        return f"{self._sql(self.id_column)} = {quote_literal(id)}"

    def count(self, where: Filter | None = None) -> int:
        """The number of records, or of those matching ``where`` (a Polars expression or SQL)."""
        if where is None:
            with self._database._lock:
                return self._database.connection.sql(f"SELECT count(*) FROM {self._table_sql}").fetchall()[0][
                    0
                ]
        matching = self._matching_ids([where])
        assert matching is not None
        return len(matching)

    def __len__(self) -> int:
        return self.count()

    def get(self, id: str) -> dict[str, Any] | None:
        """The record ``id`` as a dict (metadata decoded, vectors as float32 arrays), or None."""
        frame = self._frame(f"SELECT * FROM {self._table_sql} WHERE {self._where_id(id)}")
        if frame.height == 0:
            return None
        found = frame.row(0, named=True)
        metadata = self._declaration.metadata
        if metadata is not None and found[metadata] is not None:
            found[metadata] = json.loads(found[metadata])
        for name in self.vector_columns:
            if found[name] is not None:
                found[name] = np.asarray(found[name], dtype=np.float32)
        return found

    def list(self, *, limit: int = 100, offset: int = 0) -> pl.DataFrame:
        """``limit`` records from ``offset`` on, in the stable order of their ids."""
        for name, value, low in (("limit", limit, 1), ("offset", offset, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")
        return self._remembered(
            self._frame(
                f"SELECT * FROM {self._table_sql} ORDER BY {self._sql(self.id_column)} "
                f"LIMIT {limit} OFFSET {offset}"
            )
        )

    def to_arrow(self) -> pa.Table:
        """Every record as an Arrow table; vectors are ``fixed_size_list<float>[d]``."""
        return self._arrow(f"SELECT * FROM {self._table_sql}")

    def to_polars(self) -> pl.DataFrame:
        """Every record as a DataFrame; vectors are ``pl.Array(pl.Float32, d)``.

        Its vector columns remember their provider, so ``df.embed.search("text", on=...)``
        embeds a text query with the column's own model.
        """
        return self._remembered(self._frame(f"SELECT * FROM {self._table_sql}"))

    def _remembered(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame``, its vector columns noted as made by their providers (where those can be built)."""
        for column in self._declaration.vectors:
            if column.name in frame.columns:
                try:
                    remember(frame[column.name], self.provider(column.name))
                except PolarsEmbedError as error:
                    log.debug("column %s is read without its provider: %s", column.name, error)
        return frame

    def scan(self) -> pl.LazyFrame:
        """A LazyFrame over the table that reads only the columns a query uses, when it is collected.

        Examples
        --------
        >>> import polars as pl
        >>> import polars_embed as pe
        >>> docs = pe.connect().create_table(
        ...     "docs", {"id": str, "body": str}, vectors={"vec": pe.VectorOf("body", provider="hashing")}
        ... )
        >>> _ = docs.add([{"id": "a", "body": "hello"}, {"id": "b", "body": None}])
        >>> docs.scan().filter(pl.col("vec").is_null()).select("id").collect()
        shape: (1, 1)
        ┌─────┐
        │ id  │
        │ --- │
        │ str │
        ╞═════╡
        │ b   │
        └─────┘
        """
        schema = self.schema
        database, table_sql, remembered = self._database, self._table_sql, self._remembered

        def batches(
            with_columns: list[str] | None,
            predicate: pl.Expr | None,
            n_rows: int | None,
            batch_size: int | None,
        ) -> Iterator[pl.DataFrame]:
            columns = list(schema) if with_columns is None else with_columns
            selected = ", ".join(map(quote_identifier, columns)) if columns else "NULL AS __polars_embed_none"
            limit = f" LIMIT {int(n_rows)}" if n_rows is not None else ""
            with database._lock:  # a cursor of its own: Polars may collect on another thread
                cursor = database.connection.cursor()
            try:
                reader = cursor.sql(f"SELECT {selected} FROM {table_sql}{limit}").to_arrow_reader(
                    batch_size or 100_000
                )
                for batch in reader:
                    frame = pl.from_arrow(batch)
                    assert isinstance(frame, pl.DataFrame)
                    frame = remembered(frame.select(columns))
                    yield frame.filter(predicate) if predicate is not None else frame
            finally:
                cursor.close()

        return register_io_source(batches, schema=schema)

    # --- filters ---------------------------------------------------------------------------

    def _matching_ids(
        self,
        where: Sequence[Filter] = (),
        include: Mapping[str, Any] | None = None,
        exclude: Mapping[str, Any] | None = None,
    ) -> pl.Series | None:
        """The ids of the records that pass every filter; None when there is no filter."""
        conditions = [condition for condition in where if isinstance(condition, str)]
        expressions = [condition for condition in where if isinstance(condition, pl.Expr)]
        odd = [condition for condition in where if not isinstance(condition, str | pl.Expr)]
        if odd:
            raise ConfigError(
                f"a filter is a Polars expression or a SQL condition, got {type(odd[0]).__name__}"
            )
        conditions += self._metadata_conditions(include, keep=True) + self._metadata_conditions(
            exclude, keep=False
        )
        if not conditions and not expressions:
            return None
        sql = " AND ".join(f"({condition})" for condition in conditions) or "TRUE"
        needed = {self.id_column}
        for expression in expressions:
            needed |= set(expression.meta.root_names())
        unknown = sorted(needed - set(self.schema))
        if unknown:
            raise ConfigError(f"a filter uses columns {unknown} that table {self.name!r} does not have")
        columns = ", ".join(map(quote_identifier, sorted(needed)))
        frame = self._frame(f"SELECT {columns} FROM {self._table_sql} WHERE {sql}")
        if expressions:
            try:
                frame = frame.filter(expressions)
            except pl.exceptions.PolarsError as error:
                raise ConfigError(
                    f"a Polars filter failed on table {self.name!r}: {str(error).splitlines()[0]}"
                ) from None
        return frame[self.id_column]

    def _metadata_conditions(self, values: Mapping[str, Any] | None, *, keep: bool) -> list[str]:
        """SQL for ``include=`` (every key has one of its values) or ``exclude=`` (no key has any)."""
        if not values:
            return []
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"include= and exclude= map metadata keys to values, got {type(values).__name__}"
            )
        metadata = self._declaration.metadata
        if metadata is None:
            raise ConfigError(
                f"table {self.name!r} has no metadata column for include= or exclude= to look in"
            )
        tests = []
        for key, value in values.items():
            options = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
            literals = ", ".join(f"{quote_literal(_json(option))}::JSON" for option in options)
            pointer = "/" + str(key).replace("~", "~0").replace("/", "~1")
            tests.append(
                f"coalesce(json_extract({quote_identifier(metadata)}, {quote_literal(pointer)}) "
                f"IN ({literals}), false)"
            )
        return [" AND ".join(tests)] if keep else [f"NOT ({' OR '.join(tests)})"]

    # --- writes ----------------------------------------------------------------------------

    def add(self, rows: RowsLike, *, progress: bool | None = None, on_error: OnError = "raise") -> int:
        """Add new records, embedding each vector column's source; returns the records added.

        All of it is one transaction: when a record is invalid, an id exists
        already or embedding fails, nothing is written (and what was embedded
        stays in the embedding cache, so a retry pays only for the rest).

        Parameters
        ----------
        rows
            A Polars or Arrow frame, or a list of dicts or :class:`Model` records.
            A vector column may come with the rows ("bring your own vectors"):
            its width, finiteness and, when this process knows it, its model are
            checked; null vectors are embedded.
        progress
            Show a progress bar while embedding.
        on_error
            ``"null"``: a record whose text the provider refuses (see
            :func:`polars_embed.embed`) is written with a null vector, which
            :meth:`fill` tries again, and listed in ``polars_embed.last_stats().failures``;
            ``"raise"`` (the default) writes nothing.

        Raises
        ------
        ValidationError
            A record breaks the declaration (the message quotes it and the field).
        ConflictError
            Some ids are in the table already (use :meth:`upsert` to replace them).
        """
        return self._write(rows, replace=False, progress=progress, on_error=on_error)

    def upsert(self, rows: RowsLike, *, progress: bool | None = None, on_error: OnError = "raise") -> int:
        """Add or replace records by id; returns the records added or changed.

        Only records that differ from the stored ones are written, and only
        vectors whose source text changed (or that are missing) are embedded:
        a record whose text is unchanged keeps its vector. One transaction, as
        :meth:`add`; ``on_error`` as for :meth:`add`. When no record differs,
        nothing is written, and searches keep the vectors, twins and keyword
        index they made of the table.
        """
        return self._write(rows, replace=True, progress=progress, on_error=on_error)

    def delete(
        self, ids: str | Sequence[str] | pl.Series | None = None, *, where: Filter | None = None
    ) -> int:
        """Delete records by id, or those matching ``where`` (a Polars expression or SQL); returns a count."""
        if (ids is None) == (where is None):
            raise ConfigError("delete takes ids or where=, one of the two")
        if isinstance(where, str):
            return self._delete_where(lambda staged: where)
        if where is not None:
            ids = self._matching_ids([where])
        doomed = pl.Series(self.id_column, [ids] if isinstance(ids, str) else ids, dtype=pl.String)
        ident = self._sql(self.id_column)
        return self._delete_where(lambda staged: f"{ident} IN (SELECT {ident} FROM {staged})", doomed)

    def _delete_where(self, condition: Callable[[str], str], ids: pl.Series | None = None) -> int:
        with self._database._transaction(self.name) as write, self._staged(ids) as staged:
            try:
                result = run(write.connection, f"DELETE FROM {self._table_sql} WHERE {condition(staged)}")
                deleted = int(result[0][0])
            except duckdb.Error as error:
                raise self._refused(error) from None
            write.changed = deleted > 0
        return deleted

    @contextlib.contextmanager
    def _staged(self, frame: pl.DataFrame | pl.Series | None) -> Iterator[str]:
        if frame is None:
            yield ""
            return
        staged = frame.to_frame() if isinstance(frame, pl.Series) else frame
        with registered(self._database.connection, staged.to_arrow()) as name:
            yield name

    def _write(self, rows: RowsLike, *, replace: bool, progress: bool | None, on_error: OnError) -> int:
        self._database._check_writable(self.name)
        frame = prepare(rows, self._declaration, table=self.name)
        if frame.height == 0:
            return 0
        frame = frame.with_row_index(_ROW)
        with self._database._transaction(self.name) as write:
            self._check_declaration()
            plan = self._plan(frame, replace=replace)  # row by row with the frame
            work = _where(frame.hstack(plan.drop(_ROW)), ~plan[_UNCHANGED])
            work = self._embedded(work, progress, on_error)
            self._store(write.connection, work)
            write.changed = work.height > 0
        log.info("%s %d records of %s", "upserted" if replace else "added", work.height, self.name)
        return work.height

    def _check_declaration(self) -> None:
        """A write needs the declaration it was checked against to be the stored one."""
        stored = self._database._stored_declaration(self.name)
        if stored is None or json.loads(stored) != json.loads(self._declaration.to_json()):
            raise ConfigError(
                f"the declaration of table {self.name!r} changed since it was opened (a vector column was "
                "added or dropped elsewhere); open it again"
            )

    def _plan(self, frame: pl.DataFrame, *, replace: bool) -> pl.DataFrame:
        """Per incoming row: whether it is stored already, whether it is unchanged, and for each
        vector column (by position) whether to embed its source or keep the stored vector.

        Only booleans come back from DuckDB, and the stored vectors are never read (that
        would read the whole column): a record whose source text is unchanged keeps the
        vector it has, even one that a :meth:`fill` has not reached yet.
        """
        declaration = self._declaration
        target, ident = self._table_sql, self._sql(declaration.id)
        given = [frame[column.name].is_not_null() for column in declaration.vectors]
        staged_frame = frame.select(
            _ROW,
            *declaration.schema,
            *[column.name for column, mine in zip(declaration.vectors, given, strict=True) if mine.any()],
        )
        with self._staged(staged_frame) as staged:
            if not replace:
                existing = self._frame(
                    f"SELECT {ident} FROM {staged} WHERE {ident} IN (SELECT {ident} FROM {target})"
                )[declaration.id]
                if len(existing):
                    raise ConflictError(
                        f"ids {listed(existing)} are in table {self.name!r} already, so nothing was added; "
                        "use upsert() to replace records"
                    )
                return frame.select(_ROW).with_columns(
                    **{_PRESENT: pl.lit(False), _UNCHANGED: pl.lit(False)},
                    **{_EMBED.format(i): ~mine for i, mine in enumerate(given)},
                    **{_KEEP.format(i): pl.lit(False) for i in range(len(given))},
                )
            same_fields = " AND ".join(
                f"{self._compared('s', name)} IS NOT DISTINCT FROM {self._compared('t', name)}"
                for name in declaration.schema
            )
            flags = [f"t.{ident} IS NOT NULL AS present", f"coalesce({same_fields}, false) AS same_fields"]
            for i, (column, mine) in enumerate(zip(declaration.vectors, given, strict=True)):
                source, vector = self._sql(column.source), self._sql(column.name)
                flags.append(
                    f"coalesce(s.{source} IS NOT DISTINCT FROM t.{source}, false) AS same_source_{i}"
                )
                if mine.any():  # vectors that came with the rows are compared with the stored ones
                    flags.append(f"coalesce(s.{vector} IS NOT DISTINCT FROM t.{vector}, false) AS same_{i}")
            compared = self._frame(
                f"SELECT s.{_ROW}, {', '.join(flags)} FROM {staged} AS s LEFT JOIN {target} AS t "
                f"ON t.{ident} = s.{ident} ORDER BY s.{_ROW}"
            )
        if compared.height != frame.height:
            doubled = compared.filter(pl.col(_ROW).is_duplicated())[_ROW].unique()
            raise ConfigError(
                f"table {self.name!r} holds ids {listed(frame[declaration.id].gather(doubled))} more than "
                "once (written with plain SQL), so upsert cannot tell which to replace; delete the extra rows"
            )
        present = compared["present"]
        changed = ~compared["same_fields"]
        plan = compared.select(_ROW, pl.col("present").alias(_PRESENT))
        for i, mine in enumerate(given):
            keep = ~mine & present & compared[f"same_source_{i}"]
            embed = ~mine & ~keep
            same_given = compared[f"same_{i}"] if f"same_{i}" in compared.columns else mine
            changed = changed | embed | (mine & ~same_given)
            plan = plan.with_columns(embed.alias(_EMBED.format(i)), keep.alias(_KEEP.format(i)))
        return plan.with_columns((present & ~changed).alias(_UNCHANGED))

    def _compared(self, alias: str, name: str) -> str:
        """A column as upsert compares it: metadata as minified JSON text."""
        column = f"{alias}.{self._sql(name)}"
        return f"json({column})::VARCHAR" if name == self._declaration.metadata else column

    def _embedded(self, work: pl.DataFrame, progress: bool | None, on_error: OnError) -> pl.DataFrame:
        """The rows to write, with every vector the plan says to embed embedded through the engine."""
        for i, column in enumerate(self._declaration.vectors):
            embed = work[_EMBED.format(i)]
            if not embed.any():
                continue
            texts = null_where(work[column.source], ~embed.to_numpy())
            vectors = embed_series(
                texts, self.provider(column.name), kind="document", progress=progress, on_error=on_error
            )
            work = work.with_columns(work[column.name].zip_with(~embed, vectors.alias(column.name)))
        return work

    def _store(self, connection: duckdb.DuckDBPyConnection, work: pl.DataFrame) -> None:
        """Insert the new records and update the changed ones.

        An update sets only the vectors that changed, so DuckDB never reads the kept
        ones: the changed records are updated in groups by which vectors they keep.
        """
        declaration = self._declaration
        names = [*declaration.schema, *declaration.vector_names]
        new = _where(work, ~work[_PRESENT])
        if new.height:
            with self._staged(new.select(names)) as staged:
                run(
                    connection,
                    f"INSERT INTO {self._table_sql} ({', '.join(map(self._sql, names))}) "
                    f"SELECT {', '.join(self._written_value(name) for name in names)} FROM {staged} AS s",
                )
        keep = [_KEEP.format(i) for i in range(len(declaration.vectors))]
        changed = _where(work, work[_PRESENT])
        for kept, group in changed.group_by(keep) if changed.height else ():
            columns = [name for name in declaration.schema if name != declaration.id]
            columns += [name for name, stays in zip(declaration.vector_names, kept, strict=True) if not stays]
            assignments = ", ".join(f"{self._sql(name)} = {self._written_value(name)}" for name in columns)
            with self._staged(group.select(declaration.id, *columns)) as staged:
                run(
                    connection,
                    f"UPDATE {self._table_sql} AS t SET {assignments} FROM {staged} AS s "
                    f"WHERE t.{self._sql(declaration.id)} = s.{self._sql(declaration.id)}",
                )

    def _written_value(self, name: str) -> str:
        """A staged column (alias ``s``) as it is written: metadata minified by DuckDB's JSON parser."""
        column = f"s.{self._sql(name)}"
        return f"json({column})" if name == self._declaration.metadata else column

    # --- search -----------------------------------------------------------------------------

    def search(
        self,
        query: Any,
        *,
        on: str | None = None,
        k: int = 10,
        where: Filter | None = None,
        include: Mapping[str, Any] | None = None,
        exclude: Mapping[str, Any] | None = None,
        exact: bool = False,
        text: str | None = None,
        hybrid: bool = False,
        fusion: Fusion = "rrf",
        weight: float = 0.5,
        rerank: RerankerLike | None = None,
        rerank_top: int = 50,
        quantized: Quantization | None = None,
        oversample: int | None = None,
    ) -> Search:
        """The records nearest to a query, as a :class:`Search` to refine and run.

        Parameters
        ----------
        query
            A text (embedded as a query by the column's own provider), a vector,
            or a batch: a list of texts, a 2-D array, a list of vectors.
        on
            The vector column; required when the table has several.
        k
            Records per query: exactly ``k`` when at least ``k`` match the filters.
        where
            A Polars expression (``pl.col("lang") == "en"``) or a SQL condition
            over the table's columns; ``.where()`` adds more.
        include, exclude
            Metadata values: ``{"lang": "en"}`` keeps records whose metadata has
            ``lang`` equal to ``"en"`` (a list: any of its values); ``exclude``
            drops those that have any.
        exact
            Rank exactly even when the column has an HNSW index (not with ``quantized``).
        text
            The text column that ``hybrid`` and ``rerank`` read; default: the vector
            column's own source (name one when that source is images).
        hybrid
            Also rank the records that pass the filters by BM25 keyword relevance of
            their text to the (text) query, and fuse the two rankings, as
            ``df.embed.search`` and ``duckdb_ext.search`` do: ``score`` is the fused
            score, and ``vector_rank`` and ``keyword_rank`` (``pl.UInt32``) say where
            each record was in each ranking (null where it was not). The vectors are
            ranked exactly, or on the twin with ``quantized``. The keyword index
            (DuckDB's fts extension, the ``fts`` extra) is built on the first hybrid
            search and again after the records change; on a duckdb without fts, a
            hybrid search is refused.
        fusion, weight
            How the rankings are fused: ``"rrf"`` (reciprocal rank fusion) or
            ``"weighted"``, with ``weight`` the vector ranking's share.
        rerank, rerank_top
            A reranker (``"cohere:rerank-v3.5"``, a cross-encoder, a
            :class:`~polars_embed.Reranker`) that reorders the best ``rerank_top``
            candidates by reading the query with each one's text; ``score`` is then
            its relevance.
        quantized, oversample
            ``"int8"`` or ``"binary"``: rank the records that pass the filters on a
            compact twin of the vectors (made by the first such search and kept
            while the table is unchanged, as the vectors are), then rescore
            ``oversample * k`` candidates exactly, as ``df.embed.search`` does (see
            :func:`polars_embed.quantized_topk`). Scores are exact cosines; the set
            found may miss a few of the exact search's. Never through an HNSW index.
        """
        return Search.of(
            self,
            query,
            on=on,
            k=k,
            where=where,
            include=include,
            exclude=exclude,
            exact=exact,
            text=text,
            hybrid=hybrid,
            fusion=fusion,
            weight=weight,
            rerank=rerank,
            rerank_top=rerank_top,
            quantized=quantized,
            oversample=oversample,
        )

    def similar(
        self,
        id: str,
        *,
        on: str | None = None,
        k: int = 10,
        where: Filter | None = None,
        include: Mapping[str, Any] | None = None,
        exclude: Mapping[str, Any] | None = None,
        exact: bool = False,
        quantized: Quantization | None = None,
        oversample: int | None = None,
    ) -> Search:
        """The records nearest to a stored record's vector, leaving that record out; see :meth:`search`."""
        column = self._declaration.vector(on)
        found = self._frame(
            f"SELECT {self._sql(column.name)} FROM {self._table_sql} WHERE {self._where_id(id)}"
        )
        if found.height == 0:
            raise RecordNotFoundError(
                f"table {self.name!r} has no record {id!r}, so nothing is similar to it"
            )
        if found[column.name].null_count():
            raise ValidationError(
                f"record {id!r} has no {column.name} vector (its {column.source} is null or blank), so "
                "nothing is similar to it"
            )
        return Search.of(
            self,
            found[column.name].to_numpy()[0],
            on=column.name,
            k=k,
            where=where,
            include=include,
            exclude=exclude,
            exact=exact,
            leave_out=id,
            quantized=quantized,
            oversample=oversample,
        )

    def _vectors_for_search(self, column: VectorColumn) -> _Vectors:
        """The column's non-null vectors and their ids, read once and kept while the table is unchanged.

        Unchanged means the same generation (every write through polars-embed
        that changes the table bumps it) and the same number of records (which plain SQL inserts and
        deletes change); after other plain SQL writes, call :meth:`refresh`.
        """
        vector = self._sql(column.name)
        # The state before the vectors: a write landing in between leaves a state that is already
        # stale, so the next search reads again (the other order could keep old vectors for good).
        state = self._state()
        kept = self._vectors.get(column.name)
        if kept is not None and kept.state == state:
            return kept
        query = (
            f"SELECT rowid, {self._sql(self.id_column)}, {vector} FROM {self._table_sql} "
            f"WHERE {vector} IS NOT NULL"
        )
        # Into numpy's own memory, a batch at a time, so that no more than a batch is held twice:
        # numpy asks Linux for huge pages and Arrow's allocator does not, and a search over
        # 1M x 384 in Arrow's memory took 12% longer (benchmarks/README.md). One matrix, not
        # chunks: a quantised search gathers its candidates from it.
        matrix = np.empty((state[1], column.width), dtype=np.float32)  # pages never written cost nothing
        row_ids, ids, filled = [], [], 0
        with self._database._lock:
            try:
                for batch in self._database.connection.sql(query).to_arrow_reader(_READ_BATCH_ROWS):
                    vectors = pl.Series(batch.column(2)).to_numpy()
                    if filled + len(vectors) > len(matrix):  # records added since the state was read
                        more = np.empty((len(matrix) + len(vectors), column.width), dtype=np.float32)
                        matrix = np.concatenate([matrix[:filled], more])
                    matrix[filled : filled + len(vectors)] = vectors
                    filled += len(vectors)
                    row_ids.append(batch.column(0).to_numpy())
                    ids.append(pl.Series(self.id_column, batch.column(1)))
            except duckdb.Error as error:
                raise self._refused(error) from None
        matrix = matrix[:filled]
        kept = _Vectors(
            state,
            pl.concat(ids).rechunk() if ids else pl.Series(self.id_column, [], dtype=pl.String),
            matrix,
            _unit_length(matrix),
            np.concatenate(row_ids) if row_ids else np.zeros(0, dtype=np.int64),
        )
        self._vectors[column.name] = kept
        return kept

    def _state(self) -> tuple[int, int]:
        """The table's generation (every change through polars-embed bumps it) and record count
        (which plain SQL inserts and deletes change): what kept vectors and keyword indexes are of."""
        # count(*), not count(vector): that one can read the whole column.
        return self._frame(
            f"SELECT (SELECT generation FROM {CATALOG} WHERE name = {quote_literal(self.name)}), "
            f"count(*) FROM {self._table_sql}"
        ).row(0)

    def _rows_by_id(self, ids: pl.Series, row_ids: np.ndarray | None = None) -> pl.DataFrame:
        """The records with these ids (in no particular order), read without scanning their vectors.

        ``row_ids`` are where the records were when their vectors were read. DuckDB fetches
        rows by row id without reading the others, but a checkpoint may renumber rows, so
        the records found there count only if they are the ones wanted; when some are
        not, they are looked up by id (and the kept vectors, whose row ids are stale, go).
        """
        wanted = ids.unique()
        if len(wanted) == 0:
            return pl.DataFrame(schema=self.schema)
        # Each lookup is one statement, in which row ids agree with rows, written as DuckDB
        # fetches by row id (duckdb 1.x would read every row for a plain list of them).
        if row_ids is not None:
            hinted = row_id_condition(self._table_sql, row_ids)
            found = self._frame(f"SELECT * FROM {self._table_sql} WHERE {hinted}").filter(
                pl.col(self.id_column).is_in(wanted.implode())
            )
            if found.height == len(wanted):
                return found
            self._vectors.clear()
        literals = ", ".join(map(quote_literal, wanted))
        return self._frame(
            f"SELECT * FROM {self._table_sql} WHERE rowid IN "
            f"(SELECT rowid FROM {self._table_sql} WHERE {self._sql(self.id_column)} IN ({literals}))"
        )

    def refresh(self) -> None:
        """Say that the table was written with plain SQL: searches read its vectors again and
        rebuild its keyword index, in this process and (in a database open for writing) in others."""
        self._vectors.clear()
        if not self._database.read_only:
            with self._database._transaction(self.name):
                pass  # a new generation: what was kept or indexed for the old one is not used again

    def create_index(self, on: str | None = None, **options: Any) -> str:
        """Build an HNSW index on a vector column (``duckdb_ext.create_hnsw_index``; needs the ``vss`` extra).

        Searches then go through it (with over-fetch for filters, and an exact
        fallback), unless a filter is a Polars expression or ``exact=True``.
        In a database file pass ``persistent=True`` and open the file with
        ``pe.connect(duckdb_ext.connect(path))``; read ``duckdb_ext.vss`` first.
        """
        self._database._check_writable(self.name)
        column = self._declaration.vector(on)
        with self._database._lock:
            return duckdb_ext.create_hnsw_index(self._database.connection, self.name, column.name, **options)

    # --- changing the model ----------------------------------------------------------------

    def add_vector_column(self, name: str, vector: VectorOf) -> None:
        """Declare a new vector column (e.g. for a new model), empty until :meth:`fill` embeds it.

        The old columns stay until :meth:`drop_vector_column`; :meth:`agreement`
        compares two of them. New records get every column embedded.
        """
        declaration = self._declaration
        if len(declaration.vectors) >= MAX_VECTOR_COLUMNS:
            raise ConfigError(f"a table has at most {MAX_VECTOR_COLUMNS} vector columns")
        if name in self.schema:
            raise ConfigError(f"table {self.name!r} has a column {name!r} already; choose another name")
        if name.lower() in RESERVED_NAMES:
            raise ConfigError(f"column name {name!r} is reserved; choose another")
        column, provider = vector_column(
            name, vector, declaration.schema, declaration.id, declaration.metadata
        )
        self._change_declaration(
            dataclasses.replace(declaration, vectors=(*declaration.vectors, column)),
            f"ALTER TABLE {self._table_sql} ADD COLUMN {self._sql(name)} FLOAT[{column.width}]",
            f"COMMENT ON COLUMN {self._table_sql}.{self._sql(name)} "
            f"IS {quote_literal(column.spec.to_json())}",
        )
        self._providers[name] = provider

    def drop_vector_column(self, name: str) -> None:
        """Drop a vector column (the last one cannot go)."""
        declaration = self._declaration
        declaration.vector(name)
        if len(declaration.vectors) == 1:
            raise ConfigError(
                f"{name!r} is the only vector column of table {self.name!r}; drop the table instead"
            )
        remaining = tuple(column for column in declaration.vectors if column.name != name)
        self._change_declaration(
            dataclasses.replace(declaration, vectors=remaining),
            f"ALTER TABLE {self._table_sql} DROP COLUMN {self._sql(name)}",
        )
        self._providers.pop(name, None)
        self._vectors.pop(name, None)

    def _change_declaration(self, new: Declaration, *statements: str) -> None:
        with self._database._transaction(self.name) as write:
            self._check_declaration()
            for statement in statements:
                run(write.connection, statement)
            self._database._store_declaration(self.name, new.to_json())
        self._declaration = new

    def fill(
        self,
        column: str | None = None,
        *,
        batch_rows: int = 10_000,
        progress: bool | None = None,
        on_error: OnError = "raise",
    ) -> int:
        """Embed the records a vector column has no vector for yet, committing each batch as it lands.

        After :meth:`add_vector_column`, or to finish a fill that stopped: a rerun
        continues where the last one stopped (``duckdb_ext.embed_table`` does the
        work). Without ``column``, every vector column is filled; ``on_error`` as for
        :meth:`add`.

        Returns
        -------
        int
            The records given a vector.
        """
        self._database._check_writable(self.name)
        columns = [self._declaration.vector(column)] if column else list(self._declaration.vectors)
        filled, finished = 0, False
        try:
            with self._database._lock:
                for vectors in columns:
                    filled += duckdb_ext.embed_table(
                        self._database.connection,
                        self.name,
                        vectors.source,
                        into=vectors.name,
                        provider=self.provider(vectors.name),
                        batch_rows=batch_rows,
                        progress=progress,
                        on_error=on_error,
                    )
            finished = True
        finally:
            # The batches committed one by one: a new generation says the kept vectors are old
            # (after a failure, some batches may have landed).
            if filled or not finished:
                with self._database._transaction(self.name):
                    pass
        return filled

    def agreement(
        self, first: str, second: str, *, queries: Sequence[str] | None = None, sample: int = 100, k: int = 10
    ) -> Agreement:
        """How far two vector columns agree: the mean overlap of their top-``k`` on a sample of queries.

        Parameters
        ----------
        first, second
            The vector columns, e.g. the old model's and the new one's.
        queries
            Query texts; default: ``sample`` source texts of records that have both vectors.
        sample
            How many source texts to take when no queries are given.
        k
            The size of each top-k.
        """
        return agreement(self, first, second, queries=queries, sample=sample, k=k)


def _where(frame: pl.DataFrame, keep: pl.Series) -> pl.DataFrame:
    """``frame.filter(keep)``, without a copy of every vector when all rows are kept."""
    return frame if keep.all() else frame.filter(keep)


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"include= and exclude= take JSON values (text, numbers, booleans): {error}"
        ) from None


def _unit_length(matrix: np.ndarray, block: int = 65_536) -> bool:
    """Whether every non-zero row has unit length, measured (a stored description is not trusted for it)."""
    for start in range(0, len(matrix), block):
        norms = np.linalg.norm(matrix[start : start + block], axis=1)
        if not np.all((norms == 0) | (np.abs(norms - 1) < 1e-4)):
            return False
    return True
