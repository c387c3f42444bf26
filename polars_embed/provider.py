"""The provider base class.

A provider turns a batch of strings into an ``(n, d)`` float32 array, and that is
all it does: batching, retries, deduplication, caching, null handling, progress
and validation live once in :mod:`polars_embed.engine`.

Configuration is a set of typed dataclass fields. Each field is one of:

- an *identity* option (the default): it changes the vectors, so it is part of
  :meth:`Provider.spec` and is persisted with them;
- a *runtime* option (``runtime=True``): how to compute, not what (device,
  batch size, concurrency), never persisted;
- a *secret* (``secret=True``): hidden from ``repr``; persisted only as the name
  of the environment variable it was read from, never as a value;
- a *code-only* option (``code_only=True``): may be set in code but never from
  persisted metadata, such as ``trust_remote_code``.

Any option may hold a reference instead of a value, resolved each time it is
used and never stored resolved: ``"$env:NAME"``, ``"$env:NAME:default"``,
``"$var:name"`` or ``"$var:name:default"`` (see :meth:`Registry.set_var`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from polars_embed.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from polars_embed.registry import Registry

Kind = Literal["document", "query"]
KINDS: tuple[Kind, ...] = ("document", "query")


def check_kind(kind: str) -> Kind:
    """``kind`` if it is ``"document"`` or ``"query"``, else a :class:`ConfigError`."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


_OPTION_ROLE = "polars_embed_role"
REFERENCE_PREFIXES = ("$env:", "$var:")


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    runtime: bool = False,
    secret: bool = False,
    code_only: bool = False,
) -> Any:
    """Declare a provider option (a dataclass field) and its role."""
    role = "secret" if secret else "runtime" if runtime else "code_only" if code_only else "identity"
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_OPTION_ROLE: role})


def option_role(field: dataclasses.Field) -> str:
    """``"identity"``, ``"runtime"``, ``"secret"`` or ``"code_only"``."""
    return field.metadata.get(_OPTION_ROLE, "identity")


def is_reference(value: object) -> bool:
    """Whether ``value`` is an ``$env:`` or ``$var:`` reference."""
    return isinstance(value, str) and value.startswith(REFERENCE_PREFIXES)


def resolve_reference(value: Any, variables: Mapping[str, Any], *, option_name: str = "") -> Any:
    """Return ``value`` with an ``$env:``/``$var:`` reference looked up.

    ``"$env:NAME"`` reads the environment and ``"$var:name"`` the registry
    variables; a third part after a colon is the default when the name is unset.
    """
    if not is_reference(value):
        return value
    source, _, rest = value[1:].partition(":")
    key, has_default, default = rest.partition(":")
    found = os.environ.get(key) if source == "env" else variables.get(key)
    if found is not None:
        return found
    if has_default:
        return default
    where = "environment variable" if source == "env" else "registry variable"
    used_by = f" (used by option {option_name!r})" if option_name else ""
    hint = f"export {key}=..." if source == "env" else f"get_registry().set_var({key!r}, ...)"
    raise ConfigError(f"{where} {key!r} is not set{used_by}; set it with {hint}")


@dataclass(frozen=True)
class Embedded:
    """What a provider may return instead of a bare array, to report usage.

    Attributes
    ----------
    vectors
        One row per input text.
    tokens
        Tokens the provider billed for this batch.
    """

    vectors: Any
    tokens: int = 0


@dataclass(frozen=True, kw_only=True, repr=False)
class Provider:
    """Base class of every embedding provider.

    Subclasses set ``name``, declare their options as fields, and implement
    :attr:`dimension` and :meth:`embed_batch`. A provider must be safe to use
    from several threads at once.
    """

    #: The registry name, as in ``"name"`` or ``"name:model"``.
    name: ClassVar[str] = ""
    #: The pip extra that installs this provider's dependency.
    extra: ClassVar[str | None] = None
    #: A hard limit on texts per request imposed by the service.
    max_batch_size: ClassVar[int | None] = None
    #: Limits on tokens per request and per text, where the service has them (a text
    #: over ``max_text_tokens`` is refused by the service, so the engine refuses it first).
    max_batch_tokens: ClassVar[int | None] = None
    max_text_tokens: ClassVar[int | None] = None
    #: Bump when the same options start giving different vectors (it changes the spec).
    version: ClassVar[int] = 1
    #: Whether the embedding cache keeps this provider's vectors.
    cacheable: ClassVar[bool] = True

    model: str
    batch_size: int = option(32, runtime=True)
    max_concurrency: int = option(1, runtime=True)
    max_retries: int = option(5, runtime=True)

    # --- what a subclass implements -------------------------------------------------------

    @property
    def dimension(self) -> int:
        """The width of the vectors, known without embedding anything."""
        raise NotImplementedError

    @property
    def normalized(self) -> bool:
        """Whether every vector this provider returns has unit length."""
        return False

    def embed_batch(self, texts: list[str], *, kind: Kind) -> np.ndarray | Embedded:
        """Embed non-blank ``texts`` as documents or queries; one row per text."""
        raise NotImplementedError

    @property
    def max_input_tokens(self) -> int | None:
        """How many tokens of a text the model reads: a longer text is embedded from
        its beginning only. ``None`` when the whole text is read, or the limit is not
        known. The engine counts such texts (:meth:`count_tokens`) and warns or refuses."""
        return None

    def count_tokens(self, texts: Sequence[str], *, kind: Kind = "document") -> list[int] | None:
        """Tokens per text as the model sees it for ``kind`` (prompt and special tokens
        included), for the limits above; ``None`` when not counted. Where an exact count
        would decide nothing, a bound may stand in: at least the count for a text within
        :attr:`max_input_tokens`, at most the count for one over it."""
        return None

    # --- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, **options: Any) -> Provider:
        """Build a provider from options, with a clear error for an unknown one."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ConfigError(
                f"provider {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(sorted(fields))}"
            )
        for key, value in options.items():
            _check_type(cls, fields[key], value)
        return cls(**options)

    def with_options(self, **options: Any) -> Provider:
        """A copy with some options changed."""
        if not options:
            return self
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        copy = type(self).create(**{**current, **options})
        object.__setattr__(copy, "_registry", self.__dict__.get("_registry"))
        return copy

    def bind(self, registry: Registry) -> Provider:
        """Read ``$var:`` references from ``registry`` (the default registry otherwise)."""
        object.__setattr__(self, "_registry", registry)
        return self

    # --- reading options ----------------------------------------------------------------

    def resolve(self, option_name: str) -> Any:
        """The value of an option, with any reference looked up and converted to its type."""
        from polars_embed.registry import get_registry

        registry = self.__dict__.get("_registry") or get_registry()
        value = getattr(self, option_name)
        resolved = resolve_reference(value, registry.variables, option_name=option_name)
        if resolved is value:
            return value
        field = next(f for f in dataclasses.fields(self) if f.name == option_name)
        return _coerce(resolved, field, type(self))

    def require(self, module: str) -> ModuleType:
        """Import an optional dependency, naming the extra that installs it if missing."""
        try:
            return importlib.import_module(module)
        except ImportError as error:
            extra = f"polars-embed[{self.extra}]" if self.extra else module
            raise MissingDependencyError(
                f"provider {self.name!r} needs the {module!r} package, which is not "
                f"installed; install it with: pip install '{extra}'"
            ) from error

    @property
    def label(self) -> str:
        """``"name:model"``, for messages and progress bars."""
        return f"{self.name}:{self.model}"

    def spec(self) -> dict[str, Any]:
        """The options that define the vectors, safe to persist.

        Identity options appear with references resolved (what made the vectors);
        runtime and code-only options are left out; a secret appears only as the
        ``$env:`` reference it was given as, never as a value.
        """
        spec: dict[str, Any] = {"provider": self.name, "version": self.version}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            role = option_role(field)
            if role == "identity":
                spec[field.name] = self.resolve(field.name)
            elif role == "secret" and is_reference(value):
                spec[field.name] = value
        return spec

    def redact(self, message: str) -> str:
        """``message`` with any secret value this provider holds replaced by ``***``."""
        for field in dataclasses.fields(self):
            if option_role(field) != "secret":
                continue
            try:
                secret = self.resolve(field.name)
            except ConfigError:
                continue
            if isinstance(secret, str) and len(secret) >= 4:
                message = message.replace(secret, "***")
        return message

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if option_role(field) == "secret" and value is not None and not is_reference(value):
                value = "***"
            if value != field.default:
                shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


_SIMPLE_TYPES = (bool, int, float, str)


@functools.cache
def _simple_type(cls: type, name: str) -> type | None:
    """The simple type an option holds, from its annotation: ``int`` for ``int | None``."""
    annotation = typing.get_type_hints(cls)[name]
    members = [member for member in typing.get_args(annotation) or (annotation,) if member is not type(None)]
    return members[0] if len(members) == 1 and members[0] in _SIMPLE_TYPES else None


def _check_type(cls: type, field: dataclasses.Field, value: Any) -> None:
    """Reject a value of the wrong simple type early; references are checked when used."""
    expected = _simple_type(cls, field.name)
    if is_reference(value) or value is None or expected is None:
        return
    accepted = (int, float) if expected is float else (expected,)
    # bool is an int in Python, but batch_size=True is a mistake, not a number
    if isinstance(value, accepted) and (expected is bool or not isinstance(value, bool)):
        return
    raise ConfigError(
        f"option {field.name!r} of provider {getattr(cls, 'name', cls.__name__)!r} "
        f"takes a {expected.__name__}, got {value!r}"
    )


def _coerce(value: Any, field: dataclasses.Field, cls: type) -> Any:
    """Turn a string read from the environment into the option's type."""
    expected = _simple_type(cls, field.name)
    if not isinstance(value, str) or expected in (str, None):
        return value
    try:
        if expected is bool:
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return lowered in ("1", "true", "yes", "on")
        return expected(value)
    except ValueError:
        raise ConfigError(
            f"option {field.name!r} of provider {cls.name!r} takes a {expected.__name__}; "
            f"its reference gave {value!r}"
        ) from None


@dataclass(frozen=True, kw_only=True, repr=False)
class CallableProvider(Provider):
    """Any function (or object with ``__call__``) from a list of strings to vectors.

    This is the embedding-function protocol Chroma uses, so such objects work
    here unchanged, and get batching, deduplication and null handling from the
    engine. Pass ``dims`` to know the width without a call; otherwise the
    function is called once on a short probe text, and the width remembered.
    """

    name: ClassVar[str] = "callable"
    cacheable: ClassVar[bool] = False  # a function has no stable identity to key vectors on

    function: Callable[[list[str]], Any]
    model: str = ""
    dims: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise ConfigError(f"a callable provider needs a function, got {self.function!r}")
        if not self.model:
            function = self.function
            described = getattr(function, "__qualname__", None) or type(function).__qualname__
            object.__setattr__(self, "model", described)

    @cached_property
    def dimension(self) -> int:
        declared = self.dims or getattr(self.function, "dimension", None)
        if declared:
            return int(declared)
        probe = np.asarray(self.function(["dimension probe"]))
        return int(probe.shape[-1])

    def embed_batch(self, texts: list[str], *, kind: Kind) -> np.ndarray | Embedded:
        return self.function(texts)
