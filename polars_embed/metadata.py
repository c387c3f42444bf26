"""Vectors that remember their model.

Searching vectors with a query from another model gives nonsense, so the project
keeps track of which provider made every vector column, two ways:

- **In files**: :func:`write_parquet` stores a :class:`VectorSpec` per vector column
  in the Parquet key-value metadata (DuckDB tables keep it in a column comment).
  It names the provider, its identity options and the width; an API key appears
  only as the name of its environment variable. Read back with
  :func:`read_parquet` or :func:`scan_parquet`, it is untrusted input: only known
  keys and options are accepted, code-only options such as
  ``trust_remote_code`` never are, and an unknown provider is an error, not an import.
- **In this process**: vectors the engine makes, or that were read from a described
  file, are recognised by their content (a digest per row), so the knowledge
  survives filters, sorts, joins and renames. :func:`provider_of` answers which
  provider made a column.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np
import polars as pl

from polars_embed.errors import ConfigError, DimensionMismatchError, UnknownProviderError
from polars_embed.provider import Provider, is_reference, option_role

log = logging.getLogger(__name__)

METADATA_KEY = "polars_embed"
_SPEC_KEYS = {"provider", "version", "options", "dimension", "normalized", "library"}
_SAMPLE_ROWS = 16
_REMEMBERED_ROWS = 4_000_000  # about 40 MB of digests; the oldest are forgotten first


@dataclass(frozen=True)
class VectorSpec:
    """What made a vector column, in a form that is safe to persist.

    Attributes
    ----------
    provider
        The registry name of the provider.
    options
        Its identity options (``model`` among them) as resolved when the vectors
        were made, and secrets only as ``$env:`` references.
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
        """Read a spec from untrusted JSON: only known keys, of the right types."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"vector metadata is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError("vector metadata must be a JSON object")
        unknown = sorted(set(data) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(f"vector metadata has unknown keys {unknown}; expected {sorted(_SPEC_KEYS)}")
        expected_types = {
            "provider": str,
            "options": dict,
            "dimension": int,
            "normalized": bool,
            "version": int,
            "library": str,
        }
        for key, value in data.items():
            if not isinstance(value, expected_types[key]) or (
                expected_types[key] is int and isinstance(value, bool)
            ):
                raise ConfigError(f"vector metadata key {key!r} must be a {expected_types[key].__name__}")
        if "provider" not in data or "dimension" not in data:
            raise ConfigError("vector metadata must name its provider and dimension")
        return cls(**data)

    def create_provider(self) -> Provider:
        """Build the provider that made these vectors, trusting nothing in the spec."""
        from polars_embed.registry import get_registry

        try:
            entry = get_registry().get(self.provider)
        except UnknownProviderError as error:
            raise UnknownProviderError(
                f"these vectors were made by a provider that is not installed: {error}"
            ) from None
        fields = {f.name: f for f in dataclasses.fields(entry.provider_class) if f.init}
        for name, value in self.options.items():
            if name not in fields:
                raise ConfigError(
                    f"vector metadata for provider {self.provider!r} has unknown option {name!r}"
                )
            role = option_role(fields[name])
            if role not in ("identity", "secret"):
                raise ConfigError(
                    f"vector metadata for provider {self.provider!r} sets {role} option {name!r}, "
                    "which only code may set, never a file"
                )
            if role == "secret" and not (isinstance(value, str) and value.startswith("$env:")):
                raise ConfigError(
                    f"vector metadata holds a value for the secret option {name!r}; "
                    "only an $env: reference to an environment variable is accepted"
                )
            if role == "identity" and is_reference(value):
                raise ConfigError(
                    f"vector metadata option {name!r} holds a reference; identity options are stored resolved"
                )
        if self.version != entry.provider_class.version:
            raise ConfigError(
                f"these vectors were made by version {self.version} of provider {self.provider!r}, "
                f"but version {entry.provider_class.version} is installed: its vectors are not comparable"
            )
        return entry.create(**self.options)


def check_width(provider: Provider, width: int, *, column: str, made_by: str | None = None) -> None:
    """Fail when ``provider``'s vectors cannot be compared with a column of ``width``."""
    if provider.dimension != width:
        by = f" (made by {made_by})" if made_by else ""
        raise DimensionMismatchError(
            f"column {column!r} holds vectors of width {width}{by}, but {provider.label} makes "
            f"vectors of width {provider.dimension}: a query must come from the model that made the column"
        )


def check_same_provider(given: Provider, stored: Provider, *, column: str) -> None:
    """Fail when a provider passed by the user is not the one that made the column."""
    if given.spec() != stored.spec():
        raise ConfigError(
            f"column {column!r} was embedded with {stored.label} ({stored.spec()}), but the query would "
            f"be embedded with {given.label} ({given.spec()}); leave provider= out to use the stored one"
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


class _Remembered:
    """Row digests of vectors this process has seen, and the provider that made each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[tuple[np.ndarray, int]] = []  # (sorted digests, index into _providers)
        self._providers: list[Provider] = []
        self._rows = 0

    def add(self, vectors: np.ndarray, provider: Provider) -> None:
        digests = np.unique(_digests(vectors))
        if len(digests) == 0:
            return
        with self._lock:
            try:
                index = self._providers.index(provider)
            except ValueError:
                self._providers.append(provider)
                index = len(self._providers) - 1
            self._chunks.append((digests, index))
            self._rows += len(digests)
            while self._rows > _REMEMBERED_ROWS and len(self._chunks) > 1:
                forgotten, _ = self._chunks.pop(0)
                self._rows -= len(forgotten)

    def find(self, vectors: np.ndarray) -> Provider | None:
        digests = _digests(vectors)
        with self._lock:
            for chunk, index in reversed(self._chunks):  # the most recent wins
                positions = np.searchsorted(chunk, digests).clip(max=len(chunk) - 1)
                if (chunk[positions] == digests).any():
                    return self._providers[index]
        return None


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
    try:
        columns = json.loads(stored)
    except ValueError as error:
        raise ConfigError(f"the {METADATA_KEY!r} metadata is not valid JSON: {error}") from None
    if not isinstance(columns, dict):
        raise ConfigError(f"the {METADATA_KEY!r} metadata must map column names to specs")
    return {name: VectorSpec.from_json(json.dumps(spec)) for name, spec in columns.items()}


def parquet_metadata(providers: Mapping[str, Provider | VectorSpec]) -> dict[str, str]:
    """The Parquet key-value metadata that describes these vector columns (by column name)."""
    specs = {}
    for name, provider in providers.items():
        try:
            spec = provider if isinstance(provider, VectorSpec) else VectorSpec.of(provider)
            specs[name] = json.loads(spec.to_json())
        except ConfigError as error:
            log.warning("column %r is written without a description: %s", name, error)
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


def read_parquet(source: str | PathLike[str], **options: Any) -> pl.DataFrame:
    """``pl.read_parquet``, remembering which provider made each described vector column."""
    frame = pl.read_parquet(source, **options)
    for name, spec in specs_in(pl.read_parquet_metadata(source)).items():
        if name in frame.columns:
            remember(frame[name], _checked_provider(spec, frame.schema[name], name))
    return frame


def scan_parquet(source: str | PathLike[str], **options: Any) -> pl.LazyFrame:
    """``pl.scan_parquet``, whose described vector columns are remembered as they are read."""
    frame = pl.scan_parquet(source, **options)
    schema = frame.collect_schema()
    remembered = []
    for name, spec in specs_in(pl.read_parquet_metadata(source)).items():
        if name in schema:
            provider = _checked_provider(spec, schema[name], name)
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


def _checked_provider(spec: VectorSpec, dtype: pl.DataType, column: str) -> Provider:
    if dtype != pl.Array(pl.Float32, spec.dimension):
        raise ConfigError(
            f"column {column!r} is {dtype}, but its metadata says {spec.dimension}-wide float32 vectors"
        )
    return spec.create_provider()
