"""Vectors that remember their model.

Searching vectors with a query from another model gives nonsense, so the project
keeps track of which provider made every vector column, two ways:

- **In files**: :func:`write_parquet` stores a :class:`VectorSpec` per vector column
  in the Parquet key-value metadata (DuckDB tables keep it in a column comment).
  It names the provider, its identity options and the width, never an endpoint,
  a key or a local path. Read back with :func:`read_parquet` or
  :func:`scan_parquet` (or from a comment by ``duckdb_ext``), it is untrusted data
  read by one reader, :meth:`VectorSpec.from_json` and
  :meth:`VectorSpec.create_provider`: only known keys and identity options, each
  within its bounds (sizes, nesting and numbers), and an unknown provider is an
  error, not an import. Where requests go and which key they carry come from the
  user's own configuration (see the trust model in :mod:`polars_embed.provider`).
- **In this process**: document vectors the engine makes, or that were read from a
  described file, are recognised by their content (a digest per row), so the
  knowledge survives filters, sorts, joins and renames. :func:`provider_of` answers
  which provider made a column. Query vectors are not remembered, so searches never
  grow the store, and the store's size and lookup cost are bounded (see
  :class:`_Remembered`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np
import polars as pl

from polars_embed.errors import ConfigError, DimensionMismatchError, UnknownProviderError
from polars_embed.provider import (
    MAX_DIMENSION,
    MAX_TEXT_LENGTH,
    Provider,
    brief,
    check_option,
    is_reference,
    option_role,
    option_rules,
)

log = logging.getLogger(__name__)

METADATA_KEY = "polars_embed"
#: The most characters read of one column's description (a DuckDB comment), and of all of a file's.
MAX_SPEC_CHARS = 65_536
MAX_METADATA_CHARS = 1_048_576
#: The longest provider, library or option name read back.
MAX_NAME_LENGTH = 100
#: Each key a spec may hold: its type, and the bounds of its value (a string's or object's length).
_SPEC_TYPES: dict[str, tuple[type, int, int]] = {
    "provider": (str, 1, MAX_NAME_LENGTH),
    "version": (int, 0, 1_000_000),
    "options": (dict, 0, 64),
    "dimension": (int, 1, MAX_DIMENSION),
    "normalized": (bool, 0, 1),
    "library": (str, 0, MAX_NAME_LENGTH),
}
_SPEC_KEYS = set(_SPEC_TYPES)
_SAMPLE_ROWS = 16
_REMEMBERED_ROWS = 4_000_000  # about 64 MB of digests and makers; the oldest are forgotten first
_CHUNK_ROWS = _REMEMBERED_ROWS // 16  # merged chunks stop growing here, so forgetting is gradual


@dataclass(frozen=True)
class VectorSpec:
    """What made a vector column, in a form that is safe to persist.

    Attributes
    ----------
    provider
        The registry name of the provider.
    options
        Its identity options (``model`` among them) as resolved when the vectors
        were made.
    dimension
        The width of the vectors.
    normalized
        Whether the vectors have unit length.
    version
        The provider's own version of its algorithm.
    library
        The polars-embed version that made them.
    """

    provider: str
    options: Mapping[str, Any] = field(default_factory=dict)
    dimension: int = 0
    normalized: bool = False
    version: int = 1
    library: str = ""

    @classmethod
    def of(cls, provider: Provider) -> VectorSpec:
        """The spec of the vectors ``provider`` makes."""
        from polars_embed import __version__

        spec = provider.spec()
        options = {key: value for key, value in spec.items() if key not in ("provider", "version")}
        return cls(
            provider=provider.name,
            options=options,
            dimension=provider.dimension,
            normalized=provider.normalized,
            version=provider.version,
            library=__version__,
        )

    @property
    def label(self) -> str:
        """``"name:model"``, for messages."""
        return f"{self.provider}:{self.options.get('model', '?')}"

    def to_json(self) -> str:
        """The spec as JSON; a provider without a stable identity (a callable) has none."""
        try:
            return json.dumps(dataclasses.asdict(self), sort_keys=True)
        except TypeError:
            raise ConfigError(
                f"vectors made by {self.label} cannot be described in a file: "
                "a Python callable has no name another process could look up"
            ) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> VectorSpec:
        """Read a spec from untrusted JSON: only known keys, of the right types, within bounds."""
        try:
            data = _parsed(text, "vector metadata", MAX_SPEC_CHARS)
        except json.JSONDecodeError as error:
            raise ConfigError(f"vector metadata is not valid JSON: {error}") from None
        return cls.from_data(data)

    @classmethod
    def from_comment(cls, comment: str) -> VectorSpec | None:
        """The spec a DuckDB column comment holds, or ``None`` when the comment is
        someone else's note (not a JSON object naming a provider)."""
        if not comment.lstrip().startswith("{"):
            return None
        try:
            data = _parsed(comment, "the column comment", MAX_SPEC_CHARS)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or "provider" not in data:
            return None
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: object) -> VectorSpec:
        """Read a spec from parsed, untrusted JSON: only known keys, of the right types, within bounds."""
        if not isinstance(data, dict):
            raise ConfigError("vector metadata must be a JSON object")
        unknown = sorted(set(data) - _SPEC_KEYS, key=str)
        if unknown:
            raise ConfigError(
                f"vector metadata has unknown keys {brief(unknown)}; expected {sorted(_SPEC_KEYS)}"
            )
        for key, value in data.items():
            expected, low, high = _SPEC_TYPES[key]
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"vector metadata key {key!r} must be a {expected.__name__}")
            size = len(value) if isinstance(value, str | dict) else value
            if isinstance(size, int) and not low <= size <= high:
                what = "length" if isinstance(value, str | dict) else "value"
                raise ConfigError(f"vector metadata key {key!r} must have a {what} from {low} to {high}")
        if "provider" not in data or "dimension" not in data:
            raise ConfigError("vector metadata must name its provider and dimension")
        for name, value in data.get("options", {}).items():
            if not (isinstance(name, str) and len(name) <= MAX_NAME_LENGTH):
                raise ConfigError(f"vector metadata has an option named {brief(name)}, not an option name")
            if not (value is None or isinstance(value, bool | int | float | str)):
                raise ConfigError(
                    f"vector metadata option {name!r} must be a string, a number, true, false or null"
                )
            if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
                raise ConfigError(
                    f"vector metadata option {name!r} is {len(value)} characters long; at most "
                    f"{MAX_TEXT_LENGTH} are read"
                )
        return cls(**data)

    def provider_for(self, given: Provider | None) -> Provider:
        """``given`` when it makes these vectors, else :meth:`create_provider`.

        A provider the user passed whose identity is the stored one is taken as it
        is, so a model the file may not name (a local folder) still serves a search
        or a rerun when the user names it in code.
        """
        if given is not None:
            spec = given.spec()
            options = {key: value for key, value in spec.items() if key not in ("provider", "version")}
            if (given.name, given.version, options) == (self.provider, self.version, dict(self.options)):
                return given
        return self.create_provider()

    def create_provider(self) -> Provider:
        """Build the provider that made these vectors, trusting nothing in the spec.

        Identity options come from the spec, checked against their bounds; everything
        else comes from the registry's defaults for the provider (see the trust model in
        :mod:`polars_embed.provider`). Any other option the spec sets is ignored when it
        chooses nothing and refused when it would choose.
        """
        from polars_embed.registry import get_registry

        registry = get_registry()
        try:
            entry = registry.get(self.provider)
        except UnknownProviderError as error:
            raise UnknownProviderError(
                f"these vectors were made by a provider that is not installed: {error}"
            ) from None
        provider_class = entry.provider_class
        if self.version != provider_class.version:
            raise ConfigError(
                f"these vectors were made by version {self.version} of provider {self.provider!r}, "
                f"but version {provider_class.version} is installed: its vectors are not comparable"
            )
        fields = {f.name: f for f in dataclasses.fields(provider_class) if f.init}
        identity = {}
        for name, value in self.options.items():
            if name not in fields:
                raise ConfigError(
                    f"vector metadata for provider {self.provider!r} has unknown option {brief(name)}"
                )
            role = option_role(provider_class, name)
            if role == "identity":
                _check_identity(provider_class, name, value)
                identity[name] = value
            elif not (
                _chooses_nothing(provider_class, fields[name], value)
                or name in registry.defaults(self.provider)
            ):
                raise ConfigError(_not_from_a_file(self.provider, name, role))
        return entry.create(**identity)


def check_width(provider: Provider, width: int, *, column: str, made_by: str | None = None) -> None:
    """Fail when ``provider``'s vectors cannot be compared with a column of ``width``."""
    if provider.dimension != width:
        by = f" (made by {made_by})" if made_by else ""
        raise DimensionMismatchError(
            f"column {column!r} holds vectors of width {width}{by}, but {provider.label} makes "
            f"vectors of width {provider.dimension}: a query must come from the model that made the column"
        )


def check_same_provider(given: Provider, stored: Provider, *, column: str) -> None:
    """Fail when a provider passed by the user does not make the vectors of the column.

    Only identity options count: the endpoint, key and runtime settings are the user's.
    """
    ours, theirs = given.spec(), stored.spec()
    if ours != theirs:
        differing = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
        shown = "; ".join(
            f"{key} {brief(theirs.get(key))} stored, {brief(ours.get(key))} given" for key in differing[:3]
        )
        raise ConfigError(
            f"column {column!r} was embedded with {stored.label}, but the query would be embedded with "
            f"{given.label} ({shown}); leave provider= out to use the stored one"
        )


def provider_for_query(
    given: Provider | None, stored: Provider | None, *, column: str, width: int, unknown: str
) -> Provider:
    """The provider that embeds a text query against a vector column of ``width``.

    The one ``given``, which must be the column's own when that is known (``stored``);
    else the column's own. ``unknown`` tells the user what to do when neither is known.
    """
    chosen = given if given is not None else stored
    if chosen is None:
        raise ConfigError(
            f"which model made column {column!r} is not known, so a text query cannot be embedded "
            f"to match it: {unknown}"
        )
    check_width(chosen, width, column=column, made_by=stored.label if stored else None)
    if given is not None and stored is not None:
        check_same_provider(given, stored, column=column)
    return chosen


@dataclass(frozen=True)
class _Chunk:
    """Sorted distinct row digests, the number of the provider that made each, and those numbers."""

    digests: np.ndarray  # uint64, sorted, distinct
    makers: np.ndarray  # int64 provider numbers, aligned with digests
    numbers: frozenset[int]

    def __len__(self) -> int:
        return len(self.digests)

    @classmethod
    def of(cls, digests: np.ndarray, number: int) -> _Chunk:
        return cls(digests, np.full(len(digests), number, dtype=np.int64), frozenset((number,)))

    @classmethod
    def merged(cls, older: _Chunk, newer: _Chunk) -> _Chunk:
        """One chunk holding both; a digest in both keeps its newer maker."""
        places = np.searchsorted(older.digests, newer.digests).clip(max=len(older) - 1)
        repeated = places[older.digests[places] == newer.digests]
        numbers = older.numbers
        if len(repeated):
            kept = np.ones(len(older), dtype=bool)
            kept[repeated] = False
            older = cls(older.digests[kept], older.makers[kept], frozenset())
            numbers = frozenset(np.unique(older.makers).tolist())
        # Where each newer digest lands among the older ones, shifted by the newer ones before it.
        landing = np.searchsorted(older.digests, newer.digests) + np.arange(len(newer))
        from_older = np.ones(len(older) + len(newer), dtype=bool)
        from_older[landing] = False
        digests = np.empty(len(from_older), dtype=np.uint64)
        makers = np.empty(len(from_older), dtype=np.int64)
        digests[landing], makers[landing] = newer.digests, newer.makers
        digests[from_older], makers[from_older] = older.digests, older.makers
        return cls(digests, makers, numbers | newer.numbers)


class _Remembered:
    """Row digests of vectors this process has seen, and the provider that made each.

    Chunks are kept oldest first. A new chunk is merged into the one before it while that
    one is at most twice its size and the two fit in :data:`_CHUNK_ROWS`: like the digits
    of a binary counter, chunks stay few however many calls added rows, so :meth:`find`
    costs a few binary searches, never one per call. Past :data:`_REMEMBERED_ROWS` rows
    the oldest chunks are forgotten first, and a provider with no rows left is let go.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []
        self._providers: dict[int, Provider] = {}
        self._numbers: dict[Provider, int] = {}  # the hashable providers, to number them at once
        self._next_number = 0
        self._rows = 0

    def __len__(self) -> int:
        """How many row digests are remembered."""
        return self._rows

    @property
    def chunk_count(self) -> int:
        return len(self._chunks)

    @property
    def provider_count(self) -> int:
        return len(self._providers)

    def add(self, vectors: np.ndarray, provider: Provider) -> None:
        digests = np.unique(_digests(vectors))
        if len(digests) == 0:
            return
        with self._lock:
            chunk = _Chunk.of(digests, self._number(provider))
            self._rows += len(chunk)
            dropped = False  # whether some provider may have no rows left
            while self._chunks and _mergeable(self._chunks[-1], chunk):
                older = self._chunks.pop()
                merged = _Chunk.merged(older, chunk)
                self._rows -= len(older) + len(chunk) - len(merged)
                dropped |= merged.numbers != older.numbers | chunk.numbers
                chunk = merged
            self._chunks.append(chunk)
            while self._rows > _REMEMBERED_ROWS and len(self._chunks) > 1:
                self._rows -= len(self._chunks.pop(0))
                dropped = True
            if dropped:
                self._let_go_of_providers_without_rows()

    def find(self, vectors: np.ndarray) -> Provider | None:
        digests = _digests(vectors)
        with self._lock:
            for chunk in reversed(self._chunks):  # the most recent wins
                positions = np.searchsorted(chunk.digests, digests).clip(max=len(chunk) - 1)
                hits = chunk.digests[positions] == digests
                if hits.any():
                    return self._providers[int(chunk.makers[positions[np.argmax(hits)]])]
        return None

    def _number(self, provider: Provider) -> int:
        """The number of ``provider`` (or of one equal to it); a new number for a new provider."""
        try:
            number = self._numbers.get(provider)
        except TypeError:  # an unhashable callable provider: compare it with each one
            number = next((n for n, known in self._providers.items() if known == provider), None)
        if number is None:
            number, self._next_number = self._next_number, self._next_number + 1
            self._providers[number] = provider
            with contextlib.suppress(TypeError):
                self._numbers[provider] = number
        return number

    def _let_go_of_providers_without_rows(self) -> None:
        live = frozenset().union(*(chunk.numbers for chunk in self._chunks))
        for number in self._providers.keys() - live:
            provider = self._providers.pop(number)
            with contextlib.suppress(TypeError, KeyError):
                del self._numbers[provider]


def _mergeable(older: _Chunk, newer: _Chunk) -> bool:
    return len(older) <= 2 * len(newer) and len(older) + len(newer) <= _CHUNK_ROWS


_remembered = _Remembered()


def remember(vectors: pl.Series, provider: Provider) -> None:
    """Note that ``provider`` made these vectors, so later searches can find it."""
    _remembered.add(_non_null_rows(vectors), provider)


def provider_of(vectors: pl.Series) -> Provider | None:
    """The provider that made a vector column, if this process knows it."""
    sample = _non_null_rows(vectors.head(64 * _SAMPLE_ROWS))[:_SAMPLE_ROWS]
    if len(sample) == 0:  # a column that starts with many nulls: look further
        sample = _non_null_rows(vectors.drop_nulls().head(_SAMPLE_ROWS))
    return _remembered.find(sample) if len(sample) else None


def is_vector_dtype(dtype: pl.DataType) -> bool:
    """Whether ``dtype`` is a vector column: ``pl.Array(pl.Float32, d)``."""
    return isinstance(dtype, pl.Array) and dtype.inner == pl.Float32 and len(dtype.shape) == 1


def _non_null_rows(vectors: pl.Series) -> np.ndarray:
    """The non-null, non-zero rows as a 2-D float32 array (zero rows say nothing of their maker)."""
    if not is_vector_dtype(vectors.dtype):
        return np.zeros((0, 0), dtype=np.float32)
    rows = (vectors.drop_nulls() if vectors.null_count() else vectors).to_numpy()
    return rows[rows.any(axis=1)]


def _digests(rows: np.ndarray, block: int = 8192) -> np.ndarray:
    """A 64-bit digest per row: a polynomial hash of its float32 bit patterns, in blocks of rows."""
    digests = np.zeros(len(rows), dtype=np.uint64)
    if rows.size == 0:
        return digests
    weights = np.cumprod(np.full(rows.shape[1], 0x9E3779B97F4A7C15, dtype=np.uint64))
    bits = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32)
    for start in range(0, len(rows), block):
        part = bits[start : start + block].astype(np.uint64)
        digests[start : start + block] = (part * weights).sum(axis=1, dtype=np.uint64)
    return digests ^ np.uint64(rows.shape[1])


def specs_in(metadata: Mapping[str, str]) -> dict[str, VectorSpec]:
    """The vector specs stored in a file's key-value metadata, by column."""
    stored = metadata.get(METADATA_KEY)
    if stored is None:
        return {}
    where = f"the {METADATA_KEY!r} metadata"
    try:
        columns = _parsed(stored, where, MAX_METADATA_CHARS)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(columns, dict):
        raise ConfigError(f"{where} must map column names to specs")
    return {name: VectorSpec.from_data(spec) for name, spec in columns.items()}


def _parsed(text: str | bytes, where: str, limit: int) -> Any:
    """JSON read from a file, within ``limit`` characters and the parser's depth.

    Raises :class:`json.JSONDecodeError` when it is not JSON, for the caller to word,
    and :class:`ConfigError` beyond the bounds.
    """
    if not isinstance(text, str | bytes):
        raise ConfigError(f"{where} must be text, not {type(text).__name__}")
    if len(text) > limit:
        raise ConfigError(f"{where} is {len(text)} characters long; at most {limit} are read")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a description of vectors") from None
    except json.JSONDecodeError:
        raise
    except ValueError as error:  # such as an integer of more digits than Python reads
        raise ConfigError(f"{where} holds a value that cannot be read: {str(error)[:80]}") from None


def _refuse_constant(name: str) -> Any:
    raise ConfigError(f"vector metadata holds {name}, which is not a number a spec can hold")


def _check_identity(provider_class: type[Provider], name: str, value: Any) -> None:
    """Fail unless a file may give ``value`` to identity option ``name``: in bounds, not a reference."""
    if is_reference(value):
        raise ConfigError(
            f"vector metadata option {name!r} holds a reference; identity options are stored resolved"
        )
    check_option(provider_class, name, value)
    from_file = option_rules(provider_class, name).from_file
    why = from_file(value) if from_file is not None else None
    if why:
        raise ConfigError(f"vector metadata option {name!r} of provider {provider_class.name!r} {why}")


def _chooses_nothing(provider_class: type[Provider], field: dataclasses.Field, value: Any) -> bool:
    """Whether a file's value for a non-identity option is what the provider does anyway:
    null, its default, or (for a key) a reference to one of the provider's own documented
    variables, as polars-embed 0.1 wrote."""
    if value is None or value == field.default:
        return True
    own = {f"$env:{name}" for name in getattr(provider_class, "key_variables", ())}
    return option_role(provider_class, field.name) == "secret" and value in own


def _not_from_a_file(provider: str, name: str, role: str) -> str:
    if role == "code_only":
        return (
            f"vector metadata for provider {provider!r} sets code_only option {name!r}, "
            "which only code may set, never a file"
        )
    what = f"names a credential ({name!r})" if role == "secret" else f"sets {role} option {name!r}"
    example = "'$env:NAME'" if role == "secret" else "..."
    return (
        f"vector metadata for provider {provider!r} {what}, which your own configuration chooses, "
        f"never a file: set yours with get_registry().configure({provider!r}, {name}={example})"
    )


def describable(provider: Provider | VectorSpec, column: str) -> VectorSpec | None:
    """The spec of ``provider``'s vectors for a file, or ``None`` (with a warning) when they
    cannot be described in one."""
    try:
        spec = provider if isinstance(provider, VectorSpec) else VectorSpec.of(provider)
        spec.to_json()
    except ConfigError as error:
        log.warning("column %r is written without a description: %s", column, error)
        return None
    return spec


def parquet_metadata(providers: Mapping[str, Provider | VectorSpec]) -> dict[str, str]:
    """The Parquet key-value metadata that describes these vector columns (by column name)."""
    specs = {}
    for name, provider in providers.items():
        spec = describable(provider, name)
        if spec is not None:
            specs[name] = json.loads(spec.to_json())
    return {METADATA_KEY: json.dumps(specs, sort_keys=True)}


def write_parquet(frame: pl.DataFrame, path: str | PathLike[str], **options: Any) -> None:
    """``DataFrame.write_parquet``, storing the spec of every vector column this process knows."""
    providers = {}
    for name, dtype in frame.schema.items():
        if is_vector_dtype(dtype):
            provider = provider_of(frame[name])
            if provider is not None:
                providers[name] = provider
    metadata = {**(options.pop("metadata", None) or {}), **parquet_metadata(providers)}
    frame.write_parquet(path, metadata=metadata, **options)


def _read_metadata(source: str | PathLike[str]) -> dict[str, str]:
    """The key-value metadata of a Parquet file, or of the files in a directory or glob (as Ray
    Data and other dataset writers leave them), which must all describe their vectors alike."""
    path = os.fspath(source)
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.parquet"), recursive=True))
    elif "://" not in path and any(character in path for character in "*?["):
        files = sorted(glob.glob(path, recursive=True))
    else:
        return pl.read_parquet_metadata(source)
    if not files:  # the read itself says so
        return {}
    first = pl.read_parquet_metadata(files[0])
    for file in files[1:]:
        if pl.read_parquet_metadata(file).get(METADATA_KEY) != first.get(METADATA_KEY):
            raise ConfigError(
                f"{brief(files[0])} and {brief(file)} describe their vector columns differently; "
                "read them one at a time"
            )
    return first


def read_parquet(source: str | PathLike[str], **options: Any) -> pl.DataFrame:
    """``pl.read_parquet``, remembering which provider made each described vector column.

    ``source`` may be a file, a directory or a glob of files that describe their vectors alike.
    """
    frame = pl.read_parquet(source, **options)
    for name, spec in specs_in(_read_metadata(source)).items():
        if name in frame.columns:
            remember(frame[name], checked_provider(spec, frame.schema[name], name))
    return frame


def scan_parquet(source: str | PathLike[str], **options: Any) -> pl.LazyFrame:
    """``pl.scan_parquet``, whose described vector columns are remembered as they are read.

    ``source`` may be a file, a directory or a glob of files that describe their vectors alike.
    """
    frame = pl.scan_parquet(source, **options)
    schema = frame.collect_schema()
    remembered = []
    for name, spec in specs_in(_read_metadata(source)).items():
        if name in schema:
            provider = checked_provider(spec, schema[name], name)
            remembered.append(
                pl.col(name).map_batches(
                    lambda vectors, provider=provider: _remembering(vectors, provider),
                    return_dtype=schema[name],
                    is_elementwise=True,
                )
            )
    return frame.with_columns(remembered) if remembered else frame


def _remembering(vectors: pl.Series, provider: Provider) -> pl.Series:
    remember(vectors, provider)
    return vectors


def checked_provider(spec: VectorSpec, dtype: pl.DataType, column: str) -> Provider:
    """The provider that made a described column of ``dtype``, trusting nothing in the spec."""
    if dtype != pl.Array(pl.Float32, spec.dimension):
        raise ConfigError(
            f"column {brief(column)} is {dtype}, but its metadata says {spec.dimension}-wide float32 vectors"
        )
    return spec.create_provider()
