"""The provider base class, its options, and the trust model they follow.

A provider turns a batch of strings into an ``(n, d)`` float32 array, and that is
all it does: batching, retries, deduplication, caching, null handling, progress
and validation live once in :mod:`polars_embed.engine`.

Options
-------
Configuration is a set of typed dataclass fields, declared with :func:`option`.
Each has one role:

- *identity* (the default): it changes the vectors (model, width, prompts,
  normalisation). It is part of :meth:`Provider.spec`, stored with the vectors,
  and the only kind of option ever read back from a file.
- *runtime* (``runtime=True``): where and how to run: the endpoint (``base_url``),
  the device, batch size, timeouts, concurrency. Set in code or as a registry
  default (:meth:`~polars_embed.Registry.configure`); never stored.
- *secret* (``secret=True``): a credential. Like a runtime option, and never
  shown: reprs, logs and errors mask it, and a reference's default with it.
- *code-only* (``code_only=True``): settable only where a provider is built in
  code, never from a file nor as a registry default, such as ``trust_remote_code``.

Each option declares its bounds once (``low``/``high``, ``choices``,
``max_length``; strings are at most :data:`MAX_TEXT_LENGTH` characters unless
declared otherwise), and the same check runs on a value given in code, on what a
reference resolves to, on a registry default and on a value read from a file.
``from_file`` adds what a file may not say even where code may, such as a local
model path.

Trust
-----
A file (Parquet metadata, a DuckDB column comment) is data, never a destination
or a credential: it may name the provider, the model and identity options; the
user's own configuration supplies the rest (a provider passed in code, or the
registry's defaults for that provider). A non-identity option in a file is
ignored when it chooses nothing (it is null or its default, or names one of the
provider's own documented key variables, as older releases wrote) or when the
registry has a default for it, and refused otherwise
(:meth:`~polars_embed.metadata.VectorSpec.create_provider`).

References
----------
Any option may hold a reference instead of a value, resolved each time it is
used: ``"$env:NAME"``, ``"$env:NAME:default"``, ``"$var:name"`` or
``"$var:name:default"`` (see :meth:`Registry.set_var`). :meth:`Provider.spec`
stores identity options resolved (what made the vectors); everywhere else a
reference stays a reference.

Pickling
--------
A provider pickles as its class and the options that differ from their
defaults, references as references; unpickling builds it through the registry
of the receiving process, whose defaults fill the rest. SDK clients, loaded
models, probes and the registry are never in the state; they are rebuilt on
use. A literal secret (or a secret reference with a default) is never pickled:
pickling refuses, asking for ``"$env:NAME"``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import importlib
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from polars_embed._env import switch_value
from polars_embed.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from polars_embed.registry import Registry

Kind = Literal["document", "query"]
KINDS: tuple[Kind, ...] = ("document", "query")
#: What a provider embeds: texts, and for some models images into the same space.
InputKind = Literal["text", "image"]


def check_kind(kind: str) -> Kind:
    """``kind`` if it is ``"document"`` or ``"query"``, else a :class:`ConfigError`."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


Role = Literal["identity", "runtime", "secret", "code_only"]
REFERENCE_PREFIXES = ("$env:", "$var:")
#: The widest vectors any option may ask for.
MAX_DIMENSION = 65_536
#: The longest string an option may hold, unless the option declares otherwise.
MAX_TEXT_LENGTH = 4_096
_SHORT = 60  # characters of a value quoted in an error message

_RULES = "polars_embed_option"
_SECRET_SALT = os.urandom(16)


@dataclass(frozen=True)
class OptionRules:
    """What an option is for and which values it takes (see :func:`option`)."""

    role: Role = "identity"
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    max_length: int = MAX_TEXT_LENGTH
    from_file: Callable[[Any], str | None] | None = None


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    runtime: bool = False,
    secret: bool = False,
    code_only: bool = False,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[Any] | None = None,
    max_length: int | None = None,
    from_file: Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare a provider option (a dataclass field): its role and its bounds.

    ``low`` and ``high`` bound a number (inclusive), ``choices`` lists the values
    allowed, ``max_length`` bounds a string, and ``from_file`` tells why a value
    read back from a file is refused (or returns ``None``). A subclass that
    redeclares an option to change its default keeps the role and bounds it does
    not restate.
    """
    declared: dict[str, Any] = {"low": low, "high": high, "max_length": max_length, "from_file": from_file}
    declared["choices"] = None if choices is None else tuple(choices)
    if secret or runtime or code_only:
        declared["role"] = "secret" if secret else "runtime" if runtime else "code_only"
    rules = {key: value for key, value in declared.items() if value is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_RULES: rules})


@functools.cache
def option_rules(cls: type, name: str) -> OptionRules:
    """The rules of option ``name`` of ``cls``, merged from every class that declares it."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None:
            merged.update(declared.metadata.get(_RULES, {}))
    return OptionRules(**merged)


def option_role(cls: type, name: str) -> Role:
    """``"identity"``, ``"runtime"``, ``"secret"`` or ``"code_only"``."""
    return option_rules(cls, name).role


def is_reference(value: object) -> bool:
    """Whether ``value`` is an ``$env:`` or ``$var:`` reference."""
    return isinstance(value, str) and value.startswith(REFERENCE_PREFIXES)


def parse_reference(value: str) -> tuple[str, str, str | None]:
    """``("env" or "var", name, default or None)`` of a reference."""
    source, _, rest = value[1:].partition(":")
    name, has_default, default = rest.partition(":")
    return source, name, default if has_default else None


def masked(value: Any) -> Any:
    """A secret as it may be shown: a reference by its name only, anything else as ``***``."""
    if value is None:
        return None
    if not is_reference(value):
        return "***"
    source, name, default = parse_reference(value)
    return value if default is None else f"${source}:{name}:***"


def secret_digest(value: Any) -> str:
    """A digest that tells whether two secrets are the same, to keep beside what was built
    with one: salted per process, so it holds nothing to show, and cannot test a guess elsewhere."""
    return hmac.new(_SECRET_SALT, str(value).encode(), hashlib.sha256).hexdigest()


def brief(value: Any) -> str:
    """``repr(value)``, cut to a short prefix: what an error message may quote of a value."""
    shown = repr(value)
    return shown if len(shown) <= _SHORT else f"{shown[:_SHORT]}... ({len(shown)} characters)"


def resolve_reference(value: Any, variables: Mapping[str, Any], *, option_name: str = "") -> Any:
    """Return ``value`` with an ``$env:``/``$var:`` reference looked up.

    ``"$env:NAME"`` reads the environment and ``"$var:name"`` the registry
    variables; a third part after a colon is the default when the name is unset.
    """
    if not is_reference(value):
        return value
    source, key, default = parse_reference(value)
    found = os.environ.get(key) if source == "env" else variables.get(key)
    if found is not None:
        return found
    if default is not None:
        return default
    where = "environment variable" if source == "env" else "registry variable"
    used_by = f" (used by option {option_name!r})" if option_name else ""
    hint = f"export {key}=..." if source == "env" else f"get_registry().set_var({key!r}, ...)"
    raise ConfigError(f"{where} {key!r} is not set{used_by}; set it with {hint}")


def check_option(cls: type, name: str, value: Any, *, reference: str | None = None) -> None:
    """Fail with a short :class:`ConfigError` unless ``value`` is one that option ``name`` takes.

    A reference is checked for its form here and for its value when it is resolved
    (``reference`` is then the reference it came from, for the message).
    """
    rules = option_rules(cls, name)
    shown = masked(value) if rules.role == "secret" else value
    source = f" from {brief(reference)}" if reference else ""
    where = f"option {name!r} of provider {getattr(cls, 'name', '') or cls.__name__!r}"
    if is_reference(value):
        if len(value) > MAX_TEXT_LENGTH or not parse_reference(value)[1]:
            raise ConfigError(
                f"{where} holds a malformed reference {brief(shown)}; write $env:NAME[:default]"
            )
        return
    if value is None:
        return
    expected = _simple_type(cls, name)
    if expected is not None:
        accepted = (int, float) if expected is float else (expected,)
        # bool is an int in Python, but batch_size=True is a mistake, not a number
        if not isinstance(value, accepted) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where} takes a {expected.__name__}, got {brief(shown)}{source}")
    if isinstance(value, str) and len(value) > rules.max_length:
        raise ConfigError(f"{where} takes at most {rules.max_length} characters, got {len(value)}{source}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if (rules.low is not None and value < rules.low) or (rules.high is not None and value > rules.high):
            raise ConfigError(f"{where} must be {_range(rules)}, got {brief(shown)}{source}")
        if value != value:  # NaN passes every comparison
            raise ConfigError(f"{where} must be a number, got NaN{source}")
    if rules.choices is not None and value not in rules.choices:
        raise ConfigError(f"{where} must be one of {rules.choices}, got {brief(shown)}{source}")


def _range(rules: OptionRules) -> str:
    if rules.low is not None and rules.high is not None:
        return f"from {rules.low} to {rules.high}"
    return f"at least {rules.low}" if rules.low is not None else f"at most {rules.high}"


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

    Subclasses set ``name``, declare their options as fields (with :func:`option`
    for a role or bounds), and implement :attr:`dimension` and :meth:`embed_batch`.
    A subclass's own ``__post_init__`` calls ``super().__post_init__()``, which
    checks every option. A provider must be safe to use from several threads at once.
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
    batch_size: int = option(32, runtime=True, low=1, high=1_000_000)
    max_concurrency: int = option(1, runtime=True, low=1, high=1_024)
    max_retries: int = option(5, runtime=True, low=0, high=100)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if field.init:
                check_option(type(self), field.name, getattr(self, field.name))

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
        """Embed non-blank ``texts`` as documents or queries; one row per text.

        A provider whose :attr:`input_kinds` include ``"image"`` is also given
        batches of RGB ``PIL.Image`` images (decoded and downscaled by the engine)."""
        raise NotImplementedError

    @property
    def input_kinds(self) -> tuple[InputKind, ...]:
        """What the provider embeds, known without loading a model: ``("text",)``, or
        ``("text", "image")`` for a model that puts both in one space (CLIP). The engine
        refuses a column of another kind before anything is sent."""
        return ("text",)

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

    @property
    def token_counter(self) -> str | None:
        """How :meth:`count_tokens` counts, in a few words, for cost previews."""
        return None

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray] | None:
        """Each text's tokens (no prompt, no special tokens) as an ``(m, 2)`` array of
        character offsets, where they start and end, for cutting long texts into chunks;
        ``None`` when this provider has no tokenizer (chunks then use an estimate)."""
        return None

    # --- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, **options: Any) -> Provider:
        """Build a provider from options, with a clear error for an unknown or out-of-bounds one."""
        check_known(cls, options)
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

    # --- travelling between processes -----------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        from polars_embed.registry import rebuild_provider

        return rebuild_provider, (type(self), self._pickled_options())

    def __copy__(self) -> Provider:
        return self  # frozen: a copy would be the same provider

    def __deepcopy__(self, memo: dict[int, Any]) -> Provider:
        return self

    def _pickled_options(self) -> dict[str, Any]:
        """The options that differ from their defaults, references unresolved; never a key."""
        given = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not field.init or value == field.default:
                continue
            if option_role(type(self), field.name) == "secret" and masked(value) != value:
                raise ConfigError(
                    f"{self.label} holds its {field.name} as a value, which is never pickled; "
                    f"pass {field.name}='$env:NAME' so each process reads it from its own environment"
                )
            given[field.name] = value
        return given

    # --- reading options ----------------------------------------------------------------

    def resolve(self, option_name: str) -> Any:
        """The value of an option, with any reference looked up, converted and checked."""
        from polars_embed.registry import get_registry

        registry = self.__dict__.get("_registry") or get_registry()
        value = getattr(self, option_name)
        resolved = resolve_reference(value, registry.variables, option_name=option_name)
        if resolved is value:
            return value
        converted = _coerce(resolved, option_name, type(self), reference=value)
        check_option(type(self), option_name, converted, reference=value)
        return converted

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
        model = self.model if len(str(self.model)) <= _SHORT else f"{str(self.model)[:_SHORT]}..."
        return f"{self.name}:{model}"

    def spec(self) -> dict[str, Any]:
        """The options that define the vectors, safe to persist and read back.

        Identity options only, with references resolved (what made the vectors);
        runtime, secret and code-only options are left out.
        """
        spec: dict[str, Any] = {"provider": self.name, "version": self.version}
        for field in dataclasses.fields(self):
            if option_role(type(self), field.name) == "identity":
                spec[field.name] = self.resolve(field.name)
        return spec

    def cache_scope(self) -> str | None:
        """What besides :meth:`spec` decides the vectors, for the embedding cache to key on
        (an OpenAI-compatible server's endpoint); ``None`` when the spec says it all. It is
        the user's own configuration, so it is never stored with the vectors."""
        return None

    def redact(self, message: str) -> str:
        """``message`` with any secret value this provider holds replaced by ``***``."""
        for field in dataclasses.fields(self):
            if option_role(type(self), field.name) != "secret":
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
            if value != field.default:
                if option_role(type(self), field.name) == "secret":
                    value = masked(value)
                shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def check_known(cls: type[Provider], options: Mapping[str, Any]) -> None:
    """Fail unless every key of ``options`` is an option of ``cls``."""
    known = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(options) - known)
    if unknown:
        named = brief(unknown) if len(unknown) > 3 else ", ".join(map(brief, unknown))
        raise ConfigError(
            f"provider {cls.name!r} has no option {named}; its options are: {', '.join(sorted(known))}"
        )


_SIMPLE_TYPES = (bool, int, float, str)


@functools.cache
def _simple_type(cls: type, name: str) -> type | None:
    """The simple type an option holds, from its annotation: ``int`` for ``int | None``."""
    annotation = typing.get_type_hints(cls)[name]
    members = [member for member in typing.get_args(annotation) or (annotation,) if member is not type(None)]
    return members[0] if len(members) == 1 and members[0] in _SIMPLE_TYPES else None


def _coerce(value: Any, name: str, cls: type, *, reference: str) -> Any:
    """Turn a string read from the environment into the option's type."""
    expected = _simple_type(cls, name)
    if not isinstance(value, str) or expected in (str, None):
        return value
    try:
        if expected is bool:
            switch = switch_value(value)
            if switch is None:
                raise ValueError(value)
            return switch
        return expected(value)
    except ValueError:
        raise ConfigError(
            f"option {name!r} of provider {cls.name!r} takes a {expected.__name__}; "
            f"its reference {brief(reference)} gave {brief(value)}"
        ) from None


@dataclass(frozen=True, kw_only=True, repr=False)
class CallableProvider(Provider):
    """Any function (or object with ``__call__``) from a list of strings to vectors.

    This is the embedding-function protocol Chroma uses, so such objects work
    here unchanged, and get batching, deduplication and null handling from the
    engine. Pass ``dims`` to know the width without a call; otherwise the
    function is called once on a short probe text, and the width remembered.
    With ``images=True`` the function also embeds images: it is then given
    lists of RGB ``PIL.Image`` images, decoded and downscaled by the engine.
    """

    name: ClassVar[str] = "callable"
    cacheable: ClassVar[bool] = False  # a function has no stable identity to key vectors on

    function: Callable[[list[str]], Any]
    model: str = ""
    dims: int | None = option(None, low=1, high=MAX_DIMENSION)
    images: bool = option(False, runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
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

    @property
    def input_kinds(self) -> tuple[InputKind, ...]:
        return ("text", "image") if self.images else ("text",)

    def embed_batch(self, texts: list[str], *, kind: Kind) -> np.ndarray | Embedded:
        return self.function(texts)
