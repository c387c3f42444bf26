"""What a table holds, declared once, as a class or as a Polars schema, and kept in the database.

A declaration names the id column, the ordinary columns, at most one metadata
column (JSON, optionally checked against a JSON Schema) and one or more vector
columns, each embedded from a source column by a provider. It is stored as JSON
in the database's ``__polars_embed_tables`` catalog and read back as untrusted
input: only known keys of the right types, every value bounded, and each
provider spec through :meth:`polars_embed.metadata.VectorSpec.from_json`, the
one reader of vector descriptions. Column types are never stored: they are the
DuckDB table's own.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl

from polars_embed.engine import check_accepts
from polars_embed.errors import ConfigError, ValidationError
from polars_embed.metadata import VectorSpec
from polars_embed.provider import Provider, option_role
from polars_embed.registry import ProviderLike, resolve_provider

FORMAT = 1
DEFAULT_ID_MAX_LENGTH = 300
#: Names a search result adds, and DuckDB's row ids: no declared column may take them.
RESERVED_NAMES = ("score", "query_index", "rowid")
#: What a vector is embedded from: text, or encoded images (for a provider that embeds them).
SOURCE_TYPES = (pl.String, pl.Binary)
# Bounds on what a stored declaration may hold. A declaration a user writes must
# fit them too, so that every stored declaration is one this module reads back.
MAX_ID_LENGTH = 65_536
MAX_NAME_CHARS = 255
MAX_COLUMNS = 1_000
MAX_VECTOR_COLUMNS = 64
MAX_DECLARATION_BYTES = 1_048_576
MAX_SCHEMA_BYTES = 65_536
MAX_SCHEMA_DEPTH = 32
MAX_DEFAULT_CHARS = 4_096
_KEYS = {"format", "id", "required", "defaults", "metadata", "vectors"}
_REFERENCE_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


class Vector:
    """The annotation of a vector field: ``body_vec: pe.Vector = pe.VectorOf("body")``.

    In Polars the column is ``pl.Array(pl.Float32, d)``, in DuckDB ``FLOAT[d]``.
    """


@dataclass(frozen=True)
class Id:
    """Marks the id field of a :class:`Model`: non-empty, unique text of at most ``max_length`` characters."""

    max_length: int = DEFAULT_ID_MAX_LENGTH


@dataclass(frozen=True)
class Source:
    """Marks a text field (``str``), or an image field (``bytes``: encoded PNG, JPEG, ...), that a
    :class:`VectorOf` embeds (for readers of the class; optional)."""


class VectorOf:
    """A vector column embedded from ``source`` by a provider.

    Parameters
    ----------
    source
        The text column to embed. Null and blank texts give null vectors. A
        ``bytes`` column of encoded images embeds as images, with a provider that
        embeds them (a CLIP model); a text query then finds them.
    provider
        A registered name (``"hashing"``), ``"name:model"`` or a Provider;
        default: the local sentence-transformers model. Its width is read from
        the provider without a model call.
    **options
        Provider options, e.g. ``dims=64``.
    """

    def __init__(self, source: str, provider: ProviderLike = None, **options: Any) -> None:
        self.source = source
        self.provider = provider
        self.options = options

    def resolve(self) -> Provider:
        """The provider this declaration names."""
        return resolve_provider(self.provider, **self.options)

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"VectorOf({self.source!r}, provider={self.provider!r}{', ' if shown else ''}{shown})"


@dataclass(frozen=True)
class _Field:
    name: str
    dtype: pl.DataType | None  # None for vector fields
    required: bool
    default: Any
    marker: Id | Source | VectorOf | None
    metadata: bool


class Model:
    """A typed declaration of an embedding table, written once as a class.

    Annotate each field with its Python type; ``X | None`` (or a default) makes
    it optional. One field is the id (``= pe.Id()``); a ``dict`` field is the
    JSON metadata column; ``pe.Vector`` fields are embedded from a source field
    (``= pe.VectorOf("body", provider=...)``).

    Instances are records that :meth:`Table.add` and :meth:`Table.upsert` accept.

    Examples
    --------
    >>> import polars_embed as pe
    >>> class Doc(pe.Model):
    ...     id: str = pe.Id()
    ...     body: str | None = pe.Source()
    ...     body_vec: pe.Vector = pe.VectorOf("body", provider="hashing", dims=8)
    ...     meta: dict | None = None
    >>> Doc(id="doc-1", body="a cat")
    Doc(id='doc-1', body='a cat', body_vec=None, meta=None)
    """

    __polars_embed_fields__: ClassVar[tuple[_Field, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Annotations may be strings (``from __future__ import annotations``) naming what the
        # class statement's own scope can see, a function's locals among them.
        defining = sys._getframe(1)
        cls.__polars_embed_fields__ = _fields_of(cls, {**defining.f_globals, **defining.f_locals})
        _check_fields(cls.__name__, cls.__polars_embed_fields__)

    def __init__(self, **values: Any) -> None:
        fields = {field.name: field for field in type(self).__polars_embed_fields__}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValidationError(
                f"{type(self).__name__} has no field {unknown[0]!r}; its fields are {list(fields)}"
            )
        for name, spec in fields.items():
            if name not in values and spec.required and spec.default is None:
                raise ValidationError(f"{type(self).__name__} needs a value for {name!r}, which is required")
            setattr(self, name, values.get(name, spec.default))

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict of its fields."""
        return {field.name: getattr(self, field.name) for field in type(self).__polars_embed_fields__}

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.to_dict().items())
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(value, getattr(other, name)) for name, value in self.to_dict().items())

    __hash__ = None  # type: ignore[assignment]  # records are mutable


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
        return bool(np.array_equal(left, right))
    return bool(left == right)


def _fields_of(cls: type, namespace: dict[str, Any]) -> tuple[_Field, ...]:
    try:
        hints = typing.get_type_hints(cls, localns=namespace)
    except NameError as error:
        raise ConfigError(f"{cls.__name__} has an annotation Python cannot resolve: {error}") from None
    fields = []
    for name, annotation in hints.items():
        if name.startswith("_") or typing.get_origin(annotation) is ClassVar or annotation is ClassVar:
            continue
        default = cls.__dict__.get(name)
        members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
        optional = type(None) in members
        (kind, *more) = [member for member in members if member is not type(None)] or [type(None)]
        if more:
            raise ConfigError(
                f"{cls.__name__}.{name} is {annotation}: a field has one type, or that type | None"
            )
        marker = default if isinstance(default, Id | Source | VectorOf) else None
        plain_default = None if marker is not None else default
        if isinstance(marker, VectorOf) or kind is Vector:
            if not isinstance(marker, VectorOf) or kind is not Vector:
                raise ConfigError(
                    f"{cls.__name__}.{name}: a vector field is annotated pe.Vector and set to "
                    f"pe.VectorOf(source, provider=...)"
                )
            fields.append(_Field(name, None, False, None, marker, metadata=False))
            continue
        is_metadata = kind is dict or typing.get_origin(kind) is dict
        dtype = pl.String if is_metadata else _dtype_of(cls.__name__, name, kind)
        required = not optional and plain_default is None
        fields.append(_Field(name, dtype, required, plain_default, marker, metadata=is_metadata))
    return tuple(fields)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _dtype_of(model: str, name: str, kind: Any) -> pl.DataType:
    """The Polars type of a field's annotation, as Polars itself maps Python types."""
    try:
        return pl.Schema({name: kind})[name]
    except (TypeError, ValueError):
        raise ConfigError(
            f"{model}.{name} is annotated {kind!r}, which Polars has no column type for; "
            "use a Python type such as str, int, float, bool, datetime, list[str], or a Polars type"
        ) from None


def _check_fields(model: str, fields: tuple[_Field, ...]) -> None:
    ids = [field.name for field in fields if isinstance(field.marker, Id)]
    if len(ids) > 1:
        raise ConfigError(f"{model} marks {ids} with pe.Id(); a table has one id field")
    for field_ in fields:
        if isinstance(field_.marker, Source) and field_.dtype not in SOURCE_TYPES:
            raise ConfigError(
                f"{model}.{field_.name} is pe.Source(), so it must be str or bytes (images), or those | None"
            )
    sources = {field_.marker.source for field_ in fields if isinstance(field_.marker, VectorOf)}
    unused = [f.name for f in fields if isinstance(f.marker, Source) and f.name not in sources]
    if unused:
        raise ConfigError(f"{model}.{unused[0]} is pe.Source(), but no pe.VectorOf embeds it")


@dataclass(frozen=True)
class VectorColumn:
    """A declared vector column: embedded from ``source`` by the provider ``spec`` describes."""

    name: str
    source: str
    spec: VectorSpec

    @property
    def width(self) -> int:
        return self.spec.dimension

    def made_by(self, provider: Provider) -> bool:
        """Whether ``provider`` makes this column's vectors: same name, identity options, width, version."""
        identity = {
            f.name for f in dataclasses.fields(provider) if option_role(type(provider), f.name) == "identity"
        }

        def key(spec: VectorSpec) -> tuple[Any, ...]:
            options = {name: value for name, value in spec.options.items() if name in identity}
            return spec.provider, options, spec.dimension, spec.version

        return key(VectorSpec.of(provider)) == key(self.spec)


@dataclass(frozen=True)
class Declaration:
    """A table's declaration: roles of its columns, and for a new table their Polars types too."""

    id: str
    id_max_length: int
    schema: pl.Schema  # the non-vector columns, id first
    vectors: tuple[VectorColumn, ...]
    required: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    metadata: str | None = None
    metadata_schema: Mapping[str, Any] | None = None

    def vector(self, name: str | None) -> VectorColumn:
        """The vector column ``name``; the only one when ``name`` is None."""
        if name is None:
            if len(self.vectors) == 1:
                return self.vectors[0]
            raise ConfigError(
                f"the table has {len(self.vectors)} vector columns {self.vector_names}: say which, with on="
            )
        for column in self.vectors:
            if column.name == name:
                return column
        raise ConfigError(
            f"the table has no vector column {name!r}; its vector columns are {self.vector_names}"
        )

    @property
    def vector_names(self) -> list[str]:
        return [column.name for column in self.vectors]

    @property
    def columns(self) -> list[str]:
        """Every column, in table order: the declared ones, then the vector columns."""
        return [*self.schema, *self.vector_names]

    def to_json(self) -> str:
        """The declaration as the JSON the catalog keeps (column types are the table's own)."""
        return json.dumps(
            {
                "format": FORMAT,
                "id": {"column": self.id, "max_length": self.id_max_length},
                "required": sorted(self.required),
                "defaults": dict(self.defaults),
                "metadata": None
                if self.metadata is None
                else {"column": self.metadata, "schema": self.metadata_schema},
                "vectors": [
                    {
                        "column": column.name,
                        "source": column.source,
                        "spec": json.loads(column.spec.to_json()),
                    }
                    for column in self.vectors
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, schema: pl.Schema, *, table: str) -> Declaration:
        """Read a stored declaration as untrusted input, and check it against the table's columns.

        ``schema`` is the DuckDB table's own, as Polars types.
        """
        reader = _Reader(table)
        data = reader.load(text)
        if data.get("format") != FORMAT:
            reader.fail(f"is format {data.get('format')!r}; this polars-embed reads format {FORMAT}")
        identity = reader.object(data, "id", {"column", "max_length"})
        id_column = reader.name(identity, "column")
        id_max_length = reader.integer(identity, "max_length", 1, MAX_ID_LENGTH)
        required = frozenset(reader.names(data, "required"))
        defaults = reader.object(data, "defaults", None)
        for name, value in defaults.items():
            reader.check_name(name)
            reader.check_scalar(name, value)
        metadata = data.get("metadata")
        metadata_column = metadata_schema = None
        if metadata is not None:
            metadata = reader.object(data, "metadata", {"column", "schema"})
            metadata_column = reader.name(metadata, "column")
            metadata_schema = metadata.get("schema")
            if metadata_schema is not None:
                try:
                    check_metadata_schema(metadata_schema)
                except ConfigError as error:
                    reader.fail(f"has a metadata schema that is refused: {error}")
        stored_vectors = data.get("vectors")
        if not isinstance(stored_vectors, list) or not 1 <= len(stored_vectors) <= MAX_VECTOR_COLUMNS:
            reader.fail(f"must list between 1 and {MAX_VECTOR_COLUMNS} vector columns")
        vectors = []
        for stored in stored_vectors:
            stored = reader.object({"vector": stored}, "vector", {"column", "source", "spec"})
            try:
                spec = VectorSpec.from_json(json.dumps(stored.get("spec")))
            except ConfigError as error:
                reader.fail(
                    f"describes the vectors of {stored.get('column')!r} in a way that is refused: {error}"
                )
            vectors.append(VectorColumn(reader.name(stored, "column"), reader.name(stored, "source"), spec))
        vector_names = {column.name for column in vectors}
        plain = pl.Schema({name: dtype for name, dtype in schema.items() if name not in vector_names})
        declaration = cls(
            id=id_column,
            id_max_length=id_max_length,
            schema=plain,
            vectors=tuple(vectors),
            required=required,
            defaults=defaults,
            metadata=metadata_column,
            metadata_schema=metadata_schema,
        )
        declaration.check_against(schema, reader)
        return declaration

    def check_against(self, schema: pl.Schema, reader: _Reader) -> None:
        """Fail unless the table's columns are the ones this declaration describes."""
        names = [self.id, *self.required, *self.defaults, *self.vector_names]
        names += [column.source for column in self.vectors] + ([self.metadata] if self.metadata else [])
        missing = sorted({name for name in names if name not in schema})
        if missing:
            reader.fail(f"names columns {missing} that the table does not have")
        if len(set(self.vector_names)) < len(self.vectors):
            reader.fail("names a vector column twice")
        for name in (self.id, *(column.source for column in self.vectors), self.metadata):
            sources = SOURCE_TYPES if name in {column.source for column in self.vectors} else (pl.String,)
            if name is not None and schema[name] not in sources:
                reader.fail(f"says {name!r} holds text, but the table's column is {schema[name]}")
        for column in self.vectors:
            if schema[column.name] != pl.Array(pl.Float32, column.width):
                reader.fail(
                    f"says {column.name!r} holds vectors of width {column.width}, "
                    f"but the table's column is {schema[column.name]}"
                )
            if column.source in self.vector_names or column.source in (self.id, self.metadata):
                reader.fail(f"embeds {column.name!r} from {column.source!r}, which is not a text column")


class _Reader:
    """Typed, bounded reads of a stored declaration; every refusal names the table."""

    def __init__(self, table: str) -> None:
        self.table = table

    def fail(self, why: str) -> typing.NoReturn:
        raise ConfigError(
            f"the stored declaration of table {self.table!r} {why}; it was changed outside polars-embed, "
            "so the table is not opened (restore the database from a copy, or recreate the table)"
        )

    def load(self, text: str) -> dict[str, Any]:
        if not isinstance(text, str) or len(text.encode()) > MAX_DECLARATION_BYTES:
            self.fail(f"is not text of at most {MAX_DECLARATION_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            self.fail("is not valid JSON")
        if not isinstance(data, dict):
            self.fail("is not a JSON object")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            self.fail(f"has unknown keys {unknown}")
        return data

    def object(self, data: Mapping[str, Any], key: str, keys: set[str] | None) -> dict[str, Any]:
        value = data.get(key)
        if not isinstance(value, dict):
            self.fail(f"must hold an object under {key!r}")
        if len(value) > MAX_COLUMNS:
            self.fail(f"holds more than {MAX_COLUMNS} entries under {key!r}")
        if keys is not None and set(value) - keys:
            self.fail(f"has unknown keys {sorted(set(value) - keys)} under {key!r}")
        return value

    def name(self, data: Mapping[str, Any], key: str) -> str:
        value = data.get(key)
        self.check_name(value)
        return value

    def check_name(self, value: Any) -> None:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS or "\x00" in value:
            self.fail(f"holds a column name that is not a string of 1 to {MAX_NAME_CHARS} characters")

    def names(self, data: Mapping[str, Any], key: str) -> list[str]:
        value = data.get(key)
        if not isinstance(value, list) or len(value) > MAX_COLUMNS:
            self.fail(f"must hold a list of at most {MAX_COLUMNS} column names under {key!r}")
        for name in value:
            self.check_name(name)
        return value

    def integer(self, data: Mapping[str, Any], key: str, low: int, high: int) -> int:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(f"must hold an integer from {low} to {high} under {key!r}")
        return value

    def check_scalar(self, name: str, value: Any) -> None:
        if not (value is None or isinstance(value, bool | int | float | str)) or (
            isinstance(value, str) and len(value) > MAX_DEFAULT_CHARS
        ):
            self.fail(f"gives column {name!r} a default that is not a number, a boolean or a short text")


def check_metadata_schema(schema: Any) -> type:
    """The jsonschema validator class for a metadata JSON Schema, or a :class:`ConfigError`.

    The schema must be a JSON object of at most ``MAX_SCHEMA_BYTES`` bytes and
    ``MAX_SCHEMA_DEPTH`` levels, valid against its draft's meta-schema, and may
    refer only inside itself (``"$ref": "#/..."``): never to a URL or a file.
    """
    from jsonschema import exceptions, validators

    if not isinstance(schema, dict):
        raise ConfigError(f"a metadata schema is a JSON Schema object, got {type(schema).__name__}")
    try:
        text = json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"a metadata schema must be plain JSON: {error}") from None
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise ConfigError(f"the metadata schema is over {MAX_SCHEMA_BYTES} bytes of JSON; shorten it")
    _check_nesting(schema, depth=1)
    if "$schema" in schema and validators.validator_for(schema, default=None) is None:
        raise ConfigError(
            f"the metadata schema's $schema {str(schema['$schema'])[:80]!r} is not a known draft"
        )
    validator = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except exceptions.SchemaError as error:
        raise ConfigError(f"the metadata schema is not a valid JSON Schema: {error.message[:200]}") from None
    return validator


def _check_nesting(value: Any, depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise ConfigError(f"the metadata schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _REFERENCE_KEYS and isinstance(item, str) and not item.startswith("#"):
                raise ConfigError(
                    f"the metadata schema refers to {item[:80]!r}; it may only refer inside itself "
                    "('#/$defs/...'), never to a URL or a file"
                )
            _check_nesting(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_nesting(item, depth + 1)


def declare(
    schema: type[Model] | Mapping[str, Any] | pl.Schema,
    *,
    id: str | None,
    vectors: Mapping[str, VectorOf] | None,
    metadata: str | None,
    metadata_schema: Mapping[str, Any] | None,
    id_max_length: int | None,
) -> tuple[Declaration, dict[str, Provider]]:
    """A new table's declaration from a :class:`Model` or a Polars schema, and its providers."""
    if isinstance(schema, type) and issubclass(schema, Model):
        if id is not None or vectors is not None or metadata is not None:
            raise ConfigError(
                f"{schema.__name__} declares the id, vector and metadata fields itself; "
                "id=, vectors= and metadata= are for a plain Polars schema"
            )
        fields = schema.__polars_embed_fields__
        declared_id = [field.name for field in fields if isinstance(field.marker, Id)]
        if not declared_id:
            raise ConfigError(f"{schema.__name__} has no id field; mark one: id: str = pe.Id()")
        id_marker = next(field.marker for field in fields if isinstance(field.marker, Id))
        metadata_fields = [field.name for field in fields if field.metadata]
        if len(metadata_fields) > 1:
            raise ConfigError(
                f"{schema.__name__} has several dict fields {metadata_fields}; "
                "a table has one metadata column"
            )
        plain = {field.name: field.dtype for field in fields if field.dtype is not None}
        declared_vectors = {
            field.name: field.marker for field in fields if isinstance(field.marker, VectorOf)
        }
        required = {field.name for field in fields if field.required}
        defaults = {
            field.name: field.default
            for field in fields
            if field.dtype is not None and field.default is not None
        }
        return _declaration(
            declared_id[0],
            id_max_length or id_marker.max_length,
            plain,
            declared_vectors,
            required,
            defaults,
            metadata_fields[0] if metadata_fields else None,
            metadata_schema,
        )
    if not isinstance(schema, Mapping):
        raise ConfigError(
            f"a table is declared by a pe.Model subclass or a Polars schema, got {type(schema).__name__}"
        )
    id_name = id or "id"
    plain = dict(pl.Schema(schema))
    if metadata is not None:
        plain.setdefault(metadata, pl.String)
    if not vectors:
        raise ConfigError(
            "declare at least one vector column: vectors={'body_vec': pe.VectorOf('body', ...)}"
        )
    return _declaration(
        id_name,
        id_max_length or DEFAULT_ID_MAX_LENGTH,
        plain,
        dict(vectors),
        {id_name},
        {},
        metadata,
        metadata_schema,
    )


def _declaration(
    id_name: str,
    id_max_length: int,
    plain: dict[str, pl.DataType],
    vectors: dict[str, VectorOf],
    required: set[str],
    defaults: dict[str, Any],
    metadata: str | None,
    metadata_schema: Mapping[str, Any] | None,
) -> tuple[Declaration, dict[str, Provider]]:
    if (
        isinstance(id_max_length, bool)
        or not isinstance(id_max_length, int)
        or not 1 <= id_max_length <= MAX_ID_LENGTH
    ):
        raise ConfigError(
            f"an id's max_length is an integer from 1 to {MAX_ID_LENGTH}, got {id_max_length!r}"
        )
    if id_name not in plain:
        raise ConfigError(f"the schema has no id column {id_name!r}; pass id= to name it")
    if plain[id_name] != pl.String:
        raise ConfigError(f"the id column {id_name!r} holds text ids (str), not {plain[id_name]}")
    if metadata_schema is not None and metadata is None:
        raise ConfigError(
            "metadata_schema= needs a metadata column: a dict field, or metadata= with a plain schema"
        )
    if metadata is not None and plain[metadata] != pl.String:
        raise ConfigError(
            f"the metadata column {metadata!r} holds JSON text (pl.String), not {plain[metadata]}"
        )
    if metadata_schema is not None:
        check_metadata_schema(metadata_schema)
    taken = [
        name
        for name in [*plain, *vectors]
        if name.lower() in RESERVED_NAMES or name.startswith("__polars_embed")
    ]
    if taken:
        raise ConfigError(
            f"column name {taken[0]!r} is reserved (search results add 'score' and 'query_index'); rename it"
        )
    clash = sorted(set(plain) & set(vectors))
    if clash:
        raise ConfigError(f"{clash[0]!r} is declared both as a vector column and as an ordinary column")
    if len(plain) + len(vectors) > MAX_COLUMNS or len(vectors) > MAX_VECTOR_COLUMNS:
        raise ConfigError(f"a table has at most {MAX_COLUMNS} columns, {MAX_VECTOR_COLUMNS} of them vectors")
    for name in [*plain, *vectors]:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or "\x00" in name:
            raise ConfigError(f"a column name is a string of 1 to {MAX_NAME_CHARS} characters, got {name!r}")
    for name, value in defaults.items():
        if not isinstance(value, bool | int | float | str) or (
            isinstance(value, str) and len(value) > MAX_DEFAULT_CHARS
        ):
            raise ConfigError(
                f"the default of {name!r} must be a number, a boolean or a short text to be stored, "
                f"got {value!r}"
            )
    providers = {}
    columns = []
    for name, vector in vectors.items():
        column, providers[name] = vector_column(name, vector, pl.Schema(plain), id_name, metadata)
        columns.append(column)
    ordered = {id_name: plain[id_name], **{name: dtype for name, dtype in plain.items() if name != id_name}}
    declaration = Declaration(
        id=id_name,
        id_max_length=id_max_length,
        schema=pl.Schema(ordered),
        vectors=tuple(columns),
        required=frozenset(required | {id_name}),
        defaults=defaults,
        metadata=metadata,
        metadata_schema=metadata_schema,
    )
    return declaration, providers


def vector_column(
    name: str, vector: Any, schema: pl.Schema, id_name: str, metadata: str | None
) -> tuple[VectorColumn, Provider]:
    """A declared vector column and its provider; its source must be a text column of ``schema``,
    or a Binary one of images for a provider that embeds images."""
    if not isinstance(vector, VectorOf):
        raise ConfigError(f"vector column {name!r} must be declared with pe.VectorOf(source, provider=...)")
    if schema.get(vector.source) not in SOURCE_TYPES or vector.source in (id_name, metadata):
        raise ConfigError(
            f"vector column {name!r} embeds {vector.source!r}, which is not a text column of the table "
            "(nor bytes, of images)"
        )
    provider = vector.resolve()
    if schema[vector.source] == pl.Binary:
        check_accepts(provider, "image", vector.source)
    spec = VectorSpec.of(provider)
    spec.to_json()  # a provider that cannot be described (a callable) cannot be stored
    return VectorColumn(name, vector.source, spec), provider
